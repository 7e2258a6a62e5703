"""Wire format: round trips, every reject reason, and fuzzing (only PacketError may ever come out)."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cae_edge import wire
from cae_edge.errors import ConfigError, PacketError
from cae_edge.wire import Packet, PayloadKind

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)


@st.composite
def packets(draw) -> Packet:
    name = draw(st.none() | names)
    sid = wire.sender_id(name) if name else draw(st.integers(0, 0xFFFF))
    return Packet(
        pair=draw(st.binary(min_size=4, max_size=4)),
        sender_id=sid,
        seq=draw(st.integers(0, wire.MASK32)),
        t_us=draw(st.integers(0, wire.MASK32)),
        payload=draw(st.binary(max_size=300)),
        kind=draw(st.sampled_from(PayloadKind)),
        sender_name=name,
        epoch=draw(st.none() | st.integers(0, wire.MASK32)) if name else None,
        tiled=draw(st.booleans()),
    )


def _good() -> bytes:
    sid = wire.sender_id("cam1")
    return wire.pack(Packet(b"\x01\x02\x03\x04", sid, 7, 123, bytes(range(32)), sender_name="cam1"))


@given(packets())
@settings(deadline=None)  # a loaded CI box must not turn into a failure: no timing in tests
def test_round_trip(p: Packet) -> None:
    data = wire.pack(p)
    assert len(data) == wire.packet_size(len(p.payload), p.sender_name, p.epoch is not None)
    assert wire.unpack(data) == p
    assert wire.unpack(bytearray(data)) == p
    assert wire.unpack(memoryview(data)) == p


def test_overhead_is_24_bytes_without_name() -> None:
    p = Packet(b"abcd", 1, 2, 3, b"x" * 32)
    assert len(wire.pack(p)) == 32 + 24 == wire.packet_size(32)
    assert wire.OVERHEAD_BYTES == 24


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_random_bytes_only_packet_error(data: bytes) -> None:
    try:
        wire.unpack(data)
    except PacketError as e:
        assert isinstance(e.reason, str) and e.reason
    # A random packet that parses is possible only with a valid CRC; no other exception may escape.


@given(packets(), st.data())
@settings(max_examples=300, deadline=None)
def test_bit_flips_are_rejected(p: Packet, data) -> None:
    raw = bytearray(wire.pack(p))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(PacketError) as e:
        wire.unpack(bytes(raw))
    # A single flipped bit is always caught: CRC32 detects every 1-bit error.
    assert e.value.reason in {"magic", "version", "length", "crc"}


@given(packets(), st.data())
@settings(max_examples=300, deadline=None)
def test_truncations_and_extensions_are_rejected(p: Packet, data) -> None:
    raw = wire.pack(p)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(PacketError):
        wire.unpack(raw[:cut])
    with pytest.raises(PacketError) as e:
        wire.unpack(raw + data.draw(st.binary(min_size=1, max_size=8)))
    assert e.value.reason == "length"


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:10], "short"),
        (lambda b: b"XX" + b[2:], "magic"),
        (lambda b: b[:2] + b"\x02" + b[3:], "version"),
        (lambda b: b[:-5] + b[-4:], "length"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), "crc"),
        (lambda b: _with_crc(b[:3] + bytes([b[3] | 0x80]) + b[4:-4]), "flags"),
        (lambda b: _with_crc(b[:3] + bytes([b[3] | 0x20]) + b[4:-4]), "flags"),
        (lambda b: _with_crc(b[:3] + bytes([(b[3] & ~3) | 3]) + b[4:-4]), "kind"),
        (lambda b: _with_crc(b[:21] + b"x" + b[22:-4]), "name"),  # "xam1" does not match the id of "cam1"
        (lambda b: _with_crc(b[:21] + b"/" + b[22:-4]), "name"),  # not allowed in a name
    ],
)
def test_each_reason(mutate, reason: str) -> None:
    with pytest.raises(PacketError) as e:
        wire.unpack(mutate(_good()))
    assert e.value.reason == reason


@pytest.mark.parametrize("bad", [None, "text", 12, [1, 2]])
def test_non_bytes_is_packet_error(bad) -> None:
    with pytest.raises(PacketError) as e:
        wire.unpack(bad)
    assert e.value.reason == "type"


@pytest.mark.parametrize(
    "p",
    [
        Packet(b"abc", 1, 1, 1, b""),
        Packet(b"abcd", 70000, 1, 1, b""),
        Packet(b"abcd", 1, -1, 1, b""),
        Packet(b"abcd", 1, 1, 1 << 32, b""),
        Packet(b"abcd", 1, 1, 1, b"x" * 70000),
        Packet(b"abcd", 1, 1, 1, b"", sender_name="has space"),
        Packet(b"abcd", 1, 1, 1, b"", sender_name="cam1"),  # id does not match the name
        Packet(b"abcd", 1, 1, 1, b"", epoch=7),  # an epoch rides only with the name
        Packet(b"abcd", wire.sender_id("cam1"), 1, 1, b"", sender_name="cam1", epoch=1 << 32),
    ],
)
def test_pack_rejects_bad_fields(p: Packet) -> None:
    with pytest.raises(PacketError) as e:
        wire.pack(p)
    assert e.value.reason == "field"


def test_epoch_rides_with_the_name_and_older_packets_stay_readable() -> None:
    sid = wire.sender_id("cam1")
    old = wire.pack(Packet(b"abcd", sid, 5, 9, b"xyz", sender_name="cam1"))
    new = wire.pack(Packet(b"abcd", sid, 5, 9, b"xyz", sender_name="cam1", epoch=0xDEADBEEF))
    assert len(new) == len(old) + 4
    assert wire.unpack(old).epoch is None and wire.unpack(new).epoch == 0xDEADBEEF
    assert wire.unpack(new).payload == b"xyz" and wire.unpack(new).sender_name == "cam1"
    no_name = wire.pack(Packet(b"abcd", sid, 5, 9, b"xyz"))  # the epoch bit without a name is refused
    with pytest.raises(PacketError) as e:
        wire.unpack(_with_crc(no_name[:3] + bytes([no_name[3] | 0x08]) + no_name[4:-4]))
    assert e.value.reason == "flags"


def test_pair_prefix_and_names() -> None:
    assert wire.pair_prefix("0123456789abcdef") == bytes.fromhex("01234567")
    for bad in ("xyz", "0123", "zz23456789abcdef"):
        with pytest.raises(ConfigError, match="pair_id"):
            wire.pair_prefix(bad)
    assert wire.sender_id("cam1") == zlib.crc32(b"cam1") & 0xFFFF
    for bad in ("", "-cam", "a/b", "x" * 65, "café"):
        with pytest.raises(ConfigError, match="sender name"):
            wire.sender_id(bad)


@given(st.integers(0, 1 << 62), st.integers(-(1 << 31) + 1, (1 << 31) - 1))
@settings(deadline=None)
def test_unwrap_us(true_us: int, skew: int) -> None:
    assert wire.unwrap_us(true_us & wire.MASK32, true_us + skew) == true_us
