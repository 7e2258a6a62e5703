"""The packet a camera node sends per frame: pure functions on bytes, no sockets, no TensorFlow.

Layout, version 1 (little-endian, 24 bytes of overhead per frame when the name is absent)::

    offset size field
    0      2    magic          b"\\xcaE"
    2      1    version        1
    3      1    flags          bits 0-1 payload kind (0 int8 latent, 1 entropy-coded), bit 2 name present,
                               bit 3 epoch present (only with the name), bit 4 tiled payload,
                               bits 5-7 reserved (must be 0)
    4      4    pair prefix    first 4 bytes of the bundle's pair_id (16 hex chars -> 8 bytes)
    8      2    sender id      crc32(sender name) & 0xffff, see :func:`sender_id`
    10     4    seq            frame counter, wraps at 2**32
    14     4    t_us           capture time, µs since the Unix epoch modulo 2**32 (:func:`unwrap_us`)
    18     2    payload length
    20     [1 + n  name        only when flag bit 2: length byte n (1..64) + n ASCII bytes]
    ...    [4      epoch       only when flag bit 3: the sender's stream epoch, see below]
    ...    len  payload
    end-4  4    crc32          zlib.crc32 of every byte before it

Why these choices:

* **pair prefix, 4 bytes** — enough to refuse a frame from the wrong encoder (a random match is 1 in 4e9)
  without sending all 8 bytes of the id on every frame.
* **sender id, 2 bytes + name now and then** — the id is derived from the name, so the receiver can check it;
  the name itself (what stats, file paths and logs show) rides only on some packets: the first one, the first
  after each reconnect, and then about once per second (the sender's choice, see ``cae_edge.device.sender``).
  Names are restricted to ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}`` so a receiver may use them in file paths.
  Two names with the same 16-bit id are detected by the receiver (a different name arrives for a known id).
* **t_us, 4 bytes** — the low 32 bits of a microsecond clock wrap every 71.6 minutes; the receiver restores
  the full time against its own clock with :func:`unwrap_us`, which is exact while clock skew plus latency
  stays under 35 minutes. End-to-end latency across machines needs synchronised clocks (NTP) anyway.
* **payload length + CRC32** — truncation and corruption are reported as such, independently of the transport.
* **epoch, 4 bytes, with the name** — a random number a sender draws when its sequence starts at 0 (a new
  process or loop). A receiver tells a restarted sender by a new epoch, not by the sequence number going
  backwards alone (which two processes sharing a name, or a restart whose first packets were dropped, fake).
  It rides only where the name does, so a frame costs nothing extra. Packets without it (older senders) stay
  readable; receivers older than the epoch refuse packets that carry it (reason ``flags``): upgrade
  receivers first.

* **tiled, 1 bit** — the payload is a grid of 28x28 tiles, each coded with the bundle, in one packet
  (layout in :mod:`cae_edge.tiles`); the kind bits say how each tile is coded. Receivers older than it refuse
  such packets (reason ``flags``); untiled packets are unchanged.

Compact frames (a few bytes instead of 24, read against the sender's last full packet) are described with
:func:`pack_compact` below; :func:`is_compact` tells the two formats apart by the first byte.

:func:`unpack` raises :class:`~cae_edge.errors.PacketError` — and nothing else — for every malformed
input; its ``reason`` (``type``, ``short``, ``magic``, ``version``, ``length``, ``crc``, ``flags``, ``kind``,
``name``) is the key receivers count rejects by. :func:`pack` raises it (reason ``field``) for
out-of-range fields.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from .errors import ConfigError, PacketError

MAGIC = b"\xcaE"
"""Two bytes every packet starts with."""
VERSION = 1
"""The layout version this module reads and writes."""
PAIR_PREFIX_BYTES = 4
NAME_MAX = 64
U32 = 1 << 32
MASK32 = U32 - 1

_HEADER = struct.Struct("<2sBB4sHIIH")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size
"""Fixed header size (20)."""
OVERHEAD_BYTES = HEADER_BYTES + _CRC.size
"""Bytes on top of the payload when no name rides along (24)."""
MAX_PAYLOAD = 0xFFFF
MAX_PACKET_BYTES = OVERHEAD_BYTES + 1 + NAME_MAX + MAX_PAYLOAD
"""The largest packet :func:`pack` can produce (name and a full payload): 65,624 bytes. Receivers refuse
anything longer before reading it (ZeroMQ ``MAXMSGSIZE``)."""

_FLAG_KIND = 0x03
_FLAG_NAME = 0x04
_FLAG_EPOCH = 0x08
_FLAG_TILED = 0x10
_FLAG_RESERVED = 0xE0
_EPOCH = struct.Struct("<I")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class PayloadKind(IntEnum):
    """What the payload bytes are."""

    INT8 = 0
    """The encoder's int8 latent, one byte per latent value."""
    ENTROPY = 1
    """The int8 latent after entropy coding (the bundle's ``coding`` says how)."""


_KINDS = tuple(PayloadKind)


@dataclass(frozen=True, slots=True)
class Packet:
    """One frame on the wire."""

    pair: bytes
    """First :data:`PAIR_PREFIX_BYTES` bytes of the bundle's pair_id (see :func:`pair_prefix`)."""
    sender_id: int
    """16-bit id of the sender, ``sender_id(name)``."""
    seq: int
    """Frame counter of this sender, 0 .. 2**32-1 (wraps)."""
    t_us: int
    """Capture time in µs since the Unix epoch, modulo 2**32."""
    payload: bytes
    """Encoded frame, at most 65,535 bytes."""
    kind: PayloadKind = PayloadKind.INT8
    """How the payload is coded."""
    sender_name: str | None = None
    """The sender's name, on the packets that carry it (else None)."""
    epoch: int | None = None
    """The sender's stream epoch (0 .. 2**32-1), drawn at random when its ``seq`` starts at 0; only on
    packets that carry the name (None on the others, and from senders that predate it)."""
    tiled: bool = False
    """The payload is a grid of tiles (:mod:`cae_edge.tiles`), each coded as ``kind`` says."""


def pair_prefix(pair_id: str) -> bytes:
    """The bytes of ``pair_id`` that go on the wire.

    Args:
        pair_id: the bundle's pair id, hex (16 chars in bundles; at least 8).

    Raises:
        ConfigError: when ``pair_id`` is not hex or is shorter than 8 chars.
    """
    text = pair_id[: 2 * PAIR_PREFIX_BYTES]
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != PAIR_PREFIX_BYTES:
        raise ConfigError(f"pair_id {pair_id!r}: must be at least {2 * PAIR_PREFIX_BYTES} hex chars")
    return raw


def check_sender_name(name: str) -> str:
    """Return ``name`` if it is a valid sender name.

    Raises:
        ConfigError: when it is empty, too long or has characters outside ``A-Z a-z 0-9 . _ -``.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"sender name {name!r}: use 1-{NAME_MAX} characters from A-Z a-z 0-9 . _ - "
            "(starting with a letter or digit)"
        )
    return name


def sender_id(name: str) -> int:
    """The 16-bit id sent for ``name``: ``zlib.crc32(name) & 0xffff``.

    Raises:
        ConfigError: for an invalid name (see :func:`check_sender_name`).
    """
    return zlib.crc32(check_sender_name(name).encode("ascii")) & 0xFFFF


def unwrap_us(t_us32: int, reference_us: int) -> int:
    """Restore a full µs timestamp from its low 32 bits, taking the one closest to ``reference_us``.

    Exact while ``|reference_us - true time| < 2**31`` µs (35.8 minutes).
    """
    d = (reference_us - t_us32) & MASK32
    if d >= 1 << 31:
        d -= U32
    return reference_us - d


def packet_size(payload_bytes: int, name: str | None = None, epoch: bool = False) -> int:
    """Bytes on the wire (before transport framing) for a payload of ``payload_bytes``."""
    return OVERHEAD_BYTES + payload_bytes + (1 + len(name) + (4 if epoch else 0) if name else 0)


def pack(p: Packet) -> bytes:
    """Serialise a packet.

    Raises:
        PacketError: reason ``field`` when a field is out of range (pair length, ids, payload size, name).
    """
    flags = int(p.kind) & _FLAG_KIND
    if int(p.kind) != flags or len(p.pair) != PAIR_PREFIX_BYTES or len(p.payload) > MAX_PAYLOAD:
        raise PacketError(
            f"cannot pack: kind {p.kind!r}, pair {len(p.pair)} bytes (need {PAIR_PREFIX_BYTES}), "
            f"payload {len(p.payload)} bytes (max {MAX_PAYLOAD})",
            "field",
        )
    if p.tiled:
        flags |= _FLAG_TILED
    name = b""
    if p.sender_name is not None:
        if not isinstance(p.sender_name, str) or not _NAME_RE.fullmatch(p.sender_name):
            raise PacketError(f"cannot pack: bad sender name {p.sender_name!r}", "field")
        raw = p.sender_name.encode("ascii")
        if zlib.crc32(raw) & 0xFFFF != p.sender_id:
            msg = f"cannot pack: sender id {p.sender_id} is not sender_id({p.sender_name!r})"
            raise PacketError(msg, "field")
        name = bytes((len(raw),)) + raw
        flags |= _FLAG_NAME
        if p.epoch is not None:
            if not isinstance(p.epoch, int) or not 0 <= p.epoch <= MASK32:
                raise PacketError(f"cannot pack: epoch {p.epoch!r} (u32)", "field")
            name += _EPOCH.pack(p.epoch)
            flags |= _FLAG_EPOCH
    elif p.epoch is not None:
        raise PacketError("cannot pack: an epoch rides only with the sender name", "field")
    try:
        head = _HEADER.pack(MAGIC, VERSION, flags, p.pair, p.sender_id, p.seq, p.t_us, len(p.payload))
    except struct.error as e:
        raise PacketError(f"cannot pack: {e} (sender_id u16, seq and t_us u32)", "field") from None
    body = b"".join((head, name, p.payload))
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes | bytearray | memoryview) -> Packet:
    """Parse and verify one packet.

    Raises:
        PacketError: for any malformed input; ``reason`` says what was wrong.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PacketError(f"packet must be bytes, got {type(data).__name__}", "type")
    if type(data) is not bytes:
        data = bytes(data)
    n = len(data)
    if n < OVERHEAD_BYTES:
        raise PacketError(f"packet of {n} bytes is shorter than the {OVERHEAD_BYTES}-byte minimum", "short")
    magic, version, flags, pair, sid, seq, t_us, plen = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PacketError(f"bad magic {magic.hex()} (want {MAGIC.hex()}): not a cae-edge packet", "magic")
    if version != VERSION:
        msg = f"wire version {version} (this receiver reads {VERSION}): upgrade the older side"
        raise PacketError(msg, "version")
    pos = HEADER_BYTES
    nlen = elen = 0
    if flags & _FLAG_NAME:
        nlen = data[pos] if n > pos else 0
        pos += 1
        elen = _EPOCH.size if flags & _FLAG_EPOCH else 0
    expected = pos + nlen + elen + plen + _CRC.size
    if n != expected:
        msg = f"packet is {n} bytes but its header says {expected} (truncated or padded)"
        raise PacketError(msg, "length")
    (crc,) = _CRC.unpack_from(data, n - _CRC.size)
    if zlib.crc32(memoryview(data)[: n - _CRC.size]) != crc:
        raise PacketError("CRC mismatch: packet corrupted in transit", "crc")
    if flags & _FLAG_RESERVED or (flags & _FLAG_EPOCH and not flags & _FLAG_NAME):
        raise PacketError(f"reserved flag bits set (flags {flags:#04x})", "flags")
    kind_value = flags & _FLAG_KIND
    if kind_value >= len(_KINDS):
        raise PacketError(f"unknown payload kind {kind_value}", "kind")
    name = None
    if flags & _FLAG_NAME:
        raw = data[pos : pos + nlen]
        text = raw.decode("latin-1")
        if not _NAME_RE.fullmatch(text) or zlib.crc32(raw) & 0xFFFF != sid:
            raise PacketError(f"bad sender name {text!r} for sender id {sid}", "name")
        name = text
        pos += nlen
    epoch = None
    if elen:
        (epoch,) = _EPOCH.unpack_from(data, pos)
        pos += elen
    tiled = bool(flags & _FLAG_TILED)
    return Packet(pair, sid, seq, t_us, data[pos : pos + plen], _KINDS[kind_value], name, epoch, tiled)


# ------------------------------------------------------------------------------------------- compact frames
#
# A compact frame is read against the sender's *session*: the last full packet (above) the receiver took from
# the same sender. It leaves out everything the session already said (pair, sender id, kind, tiling, name,
# epoch) and sends the rest as small deltas::
#
#     size   field
#     1      type      0b101TTTIC: bits 5-7 = 0b101 (0xA0-0xBF; a full packet starts with 0xCA),
#                      bits 2-4 T = session tag (low 3 bits of the session's seq: shows a lost session),
#                      bit 1 I = sender id present, bit 0 C = check present
#     [2]    sender id only with I: links that do not tell the receiver who sent a message (ZeroMQ --insecure)
#     1-5    seq delta  varint: seq - session seq (mod 2**32)
#     1-5    t delta    varint: (t_us - session t_us) in units of COMPACT_TIME_UNIT_US (1 ms), >= 0
#     n      payload    the rest of the message (ZeroMQ and MQTT keep message boundaries); tiled or not
#                       as the session packet is
#     [2]    check      only with C: crc32(session pair, id, seq, t_us + every byte before it) & 0xffff
#
# On a CURVE link (every message authenticated and encrypted, sender known by its key) that is 4 bytes per
# frame (1 + 1 + 2) while the session is under 128 frames and 16 s old; with an id and a check, 8.

COMPACT_TIME_UNIT_US = 1000
"""Capture-time resolution of compact frames (µs): 1 ms, rounded down (ages read up to 1 ms older)."""
COMPACT_MAX_T_UNITS = (1 << 21) - 1
"""Largest time delta a sender should put in a compact frame (3 varint bytes, 35 minutes); beyond it, a
session packet is due (:func:`compact_fits`)."""
_C_MARK_MASK = 0xE0
_C_MARK = 0xA0
_C_CHECK = 0x01
_C_ID = 0x02
_C_TAG_SHIFT = 2
_C_TAG_MASK = 0x07
_SESSION = struct.Struct("<4sHII")
_U16 = struct.Struct("<H")
CHECK_BYTES = 2


@dataclass(frozen=True, slots=True)
class Compact:
    """A compact frame as parsed, before it is read against its session (:func:`expand`)."""

    tag: int
    """Low 3 bits of the session's seq, as the sender knew it."""
    seq_delta: int
    """``seq - session seq`` (mod 2**32)."""
    t_units: int
    """``(t_us - session t_us) // COMPACT_TIME_UNIT_US``."""
    payload: bytes
    """Encoded frame."""
    sender_id: int | None = None
    """The 16-bit sender id, on links that do not identify the sender (else None)."""
    check: int | None = None
    """The 16-bit check, on links that do not authenticate every message (else None)."""
    checked: bytes = b""
    """The bytes the check covers (everything before it); empty without a check."""


def is_compact(data: bytes | bytearray | memoryview) -> bool:
    """True if ``data`` starts like a compact frame (else it is a full packet, or garbage)."""
    return len(data) > 0 and data[0] & _C_MARK_MASK == _C_MARK


def varint(n: int) -> bytes:
    """``n`` >= 0 as LEB128: 7 bits a byte, low first, high bit set on every byte but the last."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(
    data: bytes,
    pos: int,
    *,
    limit: int = MASK32,
    what: str = "compact frame: bad or truncated varint",
    reason: str = "varint",
) -> tuple[int, int]:
    """The :func:`varint` at ``data[pos:]`` and the position after it.

    Raises:
        PacketError: (``reason``) truncated, or a value above ``limit``.
    """
    n = shift = 0
    for i in range(pos, min(pos + (limit.bit_length() + 6) // 7, len(data))):
        b = data[i]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            if n > limit:
                break
            return n, i + 1
        shift += 7
    raise PacketError(f"{what} at byte {pos}", reason)


def _deltas(p: Packet, session: Packet) -> tuple[int, int]:
    seq_delta = (p.seq - session.seq) & MASK32
    t_delta = (p.t_us - session.t_us) & MASK32
    t_units = t_delta // COMPACT_TIME_UNIT_US if t_delta < 1 << 31 else -1
    return seq_delta, t_units


def compact_fits(p: Packet, session: Packet, max_frames: int) -> bool:
    """Whether ``p`` may go as a compact frame against ``session``: same pair, id and kind, no name, at most
    ``max_frames`` frames and :data:`COMPACT_MAX_T_UNITS` after the session, not before it in time; tiled
    if and only if the session is."""
    if (p.pair, p.sender_id, p.kind, p.tiled) != (
        session.pair,
        session.sender_id,
        session.kind,
        session.tiled,
    ):
        return False
    if p.sender_name is not None or p.epoch is not None:
        return False
    seq_delta, t_units = _deltas(p, session)
    return 0 < seq_delta <= max_frames and 0 <= t_units <= COMPACT_MAX_T_UNITS


def _check(session: Packet, body: bytes) -> int:
    head = _SESSION.pack(session.pair, session.sender_id, session.seq, session.t_us)
    return zlib.crc32(body, zlib.crc32(head)) & 0xFFFF


def pack_compact(p: Packet, session: Packet, *, check: bool, with_id: bool) -> bytes:
    """Serialise ``p`` as a compact frame read against ``session`` (the last full packet sent).

    Args:
        p: the frame (no name, no epoch; same pair, sender id, kind and tiling as the session).
        session: the sender's last full packet (the receiver must have it: it is the reference).
        check: add the 2-byte check (links that do not authenticate every message).
        with_id: add the 2-byte sender id (links that do not tell the receiver who sent a message).

    Raises:
        PacketError: reason ``field`` when ``p`` cannot be sent against ``session`` (see :func:`compact_fits`,
            whose frame limit does not apply here) or the payload is too long.
    """
    seq_delta, t_units = _deltas(p, session)
    if (
        (p.pair, p.sender_id, p.kind, p.tiled)
        != (session.pair, session.sender_id, session.kind, session.tiled)
        or p.sender_name is not None
        or p.epoch is not None
        or t_units < 0
        or len(p.payload) > MAX_PAYLOAD
        or not 0 <= session.seq <= MASK32
        or not 0 <= session.t_us <= MASK32
    ):
        raise PacketError(
            f"cannot pack compact: seq {p.seq} / t_us {p.t_us} against session seq {session.seq} / t_us "
            f"{session.t_us}, {len(p.payload)}-byte payload; send a full packet (wire.pack) instead",
            "field",
        )
    kind = _C_MARK | (session.seq & _C_TAG_MASK) << _C_TAG_SHIFT
    kind |= (_C_CHECK if check else 0) | (_C_ID if with_id else 0)
    parts = [bytes((kind,))]
    if with_id:
        parts.append(_U16.pack(p.sender_id))
    parts += [varint(seq_delta), varint(t_units), p.payload]
    body = b"".join(parts)
    if check:
        body += _U16.pack(_check(session, body))
    return body


def unpack_compact(data: bytes | bytearray | memoryview) -> Compact:
    """Parse a compact frame (the session is applied by :func:`expand`).

    Raises:
        PacketError: for any malformed input (reasons ``type``, ``short``, ``magic``, ``varint``).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PacketError(f"packet must be bytes, got {type(data).__name__}", "type")
    if type(data) is not bytes:
        data = bytes(data)
    if not is_compact(data):
        first = data[:1].hex() or "nothing"
        raise PacketError(f"compact frame starts with {first} (want a0-bf)", "magic")
    kind = data[0]
    end = len(data) - (CHECK_BYTES if kind & _C_CHECK else 0)
    pos = 1
    sid = None
    if kind & _C_ID:
        if end < 3:
            raise PacketError(f"compact frame of {len(data)} bytes is too short for its sender id", "short")
        (sid,) = _U16.unpack_from(data, 1)
        pos = 3
    if end <= pos:
        raise PacketError(f"compact frame of {len(data)} bytes is too short", "short")
    seq_delta, pos = read_varint(data[:end], pos)
    t_units, pos = read_varint(data[:end], pos)
    check = None
    if kind & _C_CHECK:
        (check,) = _U16.unpack_from(data, end)
    tag = kind >> _C_TAG_SHIFT & _C_TAG_MASK
    checked = data[:end] if check is not None else b""
    return Compact(tag, seq_delta, t_units, data[pos:end], sid, check, checked)


def expand(c: Compact, session: Packet) -> Packet:
    """The full :class:`Packet` a compact frame stands for, read against the sender's ``session``.

    Raises:
        PacketError: reason ``session`` when the frame was sent against another session (one was lost, or
            the sender id does not match), ``crc`` when the check does not match.
    """
    if c.tag != session.seq & _C_TAG_MASK or (c.sender_id is not None and c.sender_id != session.sender_id):
        raise PacketError(
            f"compact frame sent against another session (tag {c.tag}, this receiver's session has seq "
            f"{session.seq}): a session packet was lost; the next one resynchronises",
            "session",
        )
    if c.check is not None and _check(session, c.checked) != c.check:
        raise PacketError("compact frame check mismatch: corrupted in transit or another session", "crc")
    seq = (session.seq + c.seq_delta) & MASK32
    t_us = (session.t_us + c.t_units * COMPACT_TIME_UNIT_US) & MASK32
    return Packet(session.pair, session.sender_id, seq, t_us, c.payload, session.kind, tiled=session.tiled)


def compact_overhead(
    frames: int = 100,
    session_every: int = 100,
    fps: float = 30.0,
    name: str = "node",
    *,
    secured: bool = True,
) -> float:
    """Mean bytes per frame on top of the payload for a stream of ``frames`` compact-mode frames at ``fps``,
    a session packet (full header, name and epoch) every ``session_every`` frames: what the benchmark quotes.

    Args:
        secured: a CURVE link (no id, no check); False for ZeroMQ ``--insecure`` (id and check).
    """
    pair, sid = b"\0" * PAIR_PREFIX_BYTES, sender_id(name)
    total = 0
    session: Packet | None = None
    for i in range(frames):
        p = Packet(pair, sid, i, int(i * 1e6 / fps) & MASK32, b"")
        if session is not None and compact_fits(p, session, session_every):
            total += len(pack_compact(p, session, check=not secured, with_id=not secured))
        else:
            session = Packet(pair, sid, p.seq, p.t_us, b"", sender_name=name, epoch=0)
            total += len(pack(session))
    return total / frames if frames else 0.0
