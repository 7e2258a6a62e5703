"""The two ends of a stream: the node's sender loop and the receiver's decode loop, with their statistics.

::

    node:      FrameSource ─► Preprocessor ─► Encoder.encode ─► wire.pack ─► PushSender.send
                  (capture)     (28x28 u8)      (payload)        (+24 B)      (never blocks)
    receiver:  PullReceiver ─► wire.unpack ─► pair check ─► Decoder.decode ─► sinks (PNG, video, mosaic)
                                 (rejects counted by reason)                    (per-sender stats)

The loops take their parts as arguments (tests inject an :class:`~cae_edge.device.capture.ArraySource`,
an in-memory sink, ...); :func:`stream_send` and :func:`stream_receive` build the parts from names and
options, as the ``cae-edge stream`` commands do. Neither prints: statistics go to an ``on_stats`` callback
about once per ``stats_every_s`` and events (a new sender, a refused pair id) to ``on_log``. Both stop when
``stop`` (a :class:`threading.Event`) is set — the CLI sets it on SIGINT/SIGTERM — and return their final
statistics.

Exit codes used by the CLI (:data:`EXIT_CODES`): 0 finished (source ended, ``max_frames`` reached, stopped by
a signal, or the receiver's idle timeout after frames arrived); 1 could not start (bad option, bundle, source,
address); 2 usage error (typer); 3 the source failed mid-stream (camera gone); 4 the receiver's idle timeout
passed without a single frame.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zmq

from .. import wire
from ..errors import CaeEdgeError, ConfigError, PacketError, SourceError
from ..wire import Packet, PayloadKind
from .capture import ArraySource, FrameSource, SyntheticSource, open_source
from .preprocess import Preprocessor
from .transport import LinkStats, PullReceiver, PushSender, ReceiverOptions, SenderOptions

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SOURCE_FAILED = 3
EXIT_NOTHING_RECEIVED = 4
EXIT_CODES = {
    EXIT_OK: "finished: source ended, --max-frames reached, stopped by Ctrl-C/SIGTERM, or idle after frames",
    EXIT_ERROR: "could not start: bad option, bundle, source or address",
    EXIT_USAGE: "usage error (unknown flag, missing argument)",
    EXIT_SOURCE_FAILED: "the frame source failed mid-stream (camera unplugged, stream dropped)",
    EXIT_NOTHING_RECEIVED: "receiver: --timeout passed without a single decoded frame",
}

Log = Callable[[str], None]


def _now_us() -> int:
    return time.time_ns() // 1000


def payload_kind(coding: dict) -> PayloadKind:
    """The wire payload kind for a bundle's ``coding`` block.

    Raises:
        ConfigError: for a coding kind the wire format has no code for.
    """
    kind = str((coding or {}).get("kind", "int8"))
    if kind == "int8":
        return PayloadKind.INT8
    if kind == "entropy":
        return PayloadKind.ENTROPY
    raise ConfigError(f"coding kind {kind!r}: the wire format knows int8 and entropy")


def _mean_us(total_ns: int, n: int) -> float:
    return round(total_ns / n / 1000, 2) if n else 0.0


# ================================================================================================ sender


@dataclass
class SendOptions:
    """What the sender loop does (the link's own settings are :class:`SenderOptions`)."""

    name: str = "node"
    """Sender name shown by the receiver (``A-Z a-z 0-9 . _ -``, at most 64); its 16-bit id goes in every
    packet, the name itself in the first packet, the first after each reconnect and about once a second."""
    fps: float = 0.0
    """Frame-rate cap; 0 = as fast as the source delivers."""
    max_frames: int = 0
    """Stop after this many frames; 0 = until the source ends or ``stop`` is set."""
    name_every_s: float = 1.0
    """Carry the name at least this often (so a restarted receiver learns it)."""
    stats_every_s: float = 1.0
    """Call ``on_stats`` this often."""
    wait_connected_s: float = 0.0
    """Before capturing, wait up to this long for a receiver (useful for files; 0 = start at once)."""
    save_inputs: Path | None = None
    """Write each preprocessed 28x28 input as ``DIR/<name>/<seq>.png`` (to compare with the receiver)."""

    def check(self) -> None:
        """Raise :class:`ConfigError` for a bad value."""
        wire.check_sender_name(self.name)
        if not (self.fps >= 0 and math.isfinite(self.fps)):
            raise ConfigError(f"fps {self.fps!r}: must be >= 0 (0 = no cap)")
        if self.max_frames < 0:
            raise ConfigError(f"max frames {self.max_frames}: must be >= 0 (0 = no limit)")


@dataclass
class SenderStats:
    """A sender's counters and timings (JSON via :meth:`to_dict`)."""

    name: str = ""
    """Sender name."""
    sender_id: int = 0
    """Its 16-bit wire id."""
    pair_id: str = ""
    """Bundle pair id."""
    source: str = ""
    """Where frames come from."""
    status: str = "running"
    """``running``, ``finished`` (source ended / max frames), ``stopped`` (signal) or ``source-error``."""
    error: str | None = None
    """The source error, when status is ``source-error``."""
    frames: int = 0
    """Frames captured, preprocessed, encoded and packed."""
    sent: int = 0
    """Packets handed to ZeroMQ."""
    dropped: int = 0
    """Packets dropped because the send queue was full (receiver slow or away)."""
    queued: int = 0
    """Packets waiting in the send queue."""
    lost_at_close: int = 0
    """Packets still queued when the sender closed and the flush time ran out."""
    connects: int = 0
    """Connections to the receiver established."""
    disconnects: int = 0
    """Connections lost."""
    connected: bool = False
    refused: int = 0
    """Handshakes the receiver refused (this node's CURVE key is not in its allowed keys); retried."""
    """A receiver is connected now."""
    elapsed_s: float = 0.0
    """Seconds since the loop started."""
    fps: float = 0.0
    """Frames per second over the whole run."""
    fps_recent: float = 0.0
    """Frames per second since the previous stats report."""
    bytes_per_frame: float = 0.0
    """Mean packet size (header + name when carried + payload + CRC), before ZeroMQ framing (+2 B on TCP)."""
    payload_bytes: float = 0.0
    """Mean payload size."""
    capture_us: float = 0.0
    """Mean time in ``source.read()`` (waiting for the camera included)."""
    preprocess_us: float = 0.0
    """Mean time to turn a frame into the 28x28 input."""
    encode_us: float = 0.0
    """Mean encoder time (LiteRT invoke + payload coding)."""
    pack_us: float = 0.0
    """Mean ``wire.pack`` time."""
    send_us: float = 0.0
    """Mean ``PushSender.send`` time."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def absorb(self, link: LinkStats) -> SenderStats:
        """Copy the link's counters in."""
        self.sent, self.dropped, self.queued = link.sent, link.dropped, link.queued
        self.lost_at_close = link.lost_at_close
        self.connects, self.disconnects, self.connected = link.connects, link.disconnects, link.peers > 0
        self.refused = link.refused
        return self


class _Encoder(Protocol):
    def encode(self, image_u8: np.ndarray) -> bytes: ...


def run_sender(
    source: FrameSource,
    preprocess: Callable[[np.ndarray], np.ndarray],
    encoder: _Encoder,
    link: PushSender,
    *,
    pair_id: str,
    options: SendOptions,
    kind: PayloadKind = PayloadKind.INT8,
    on_stats: Callable[[SenderStats], None] | None = None,
    stop: threading.Event | None = None,
) -> SenderStats:
    """Capture → preprocess → encode → pack → send until the source ends, ``max_frames`` or ``stop``.

    Does not close the source or the link (the caller owns them); a source that fails mid-stream ends the
    loop with ``status="source-error"`` instead of raising. Packets the link could not take yet are still in
    its queue when this returns: ``link.close()`` (or ``link.flush(timeout)``) delivers them.

    Returns:
        Final statistics (link counters as of the return; absorb ``link.stats`` again after closing it).

    Raises:
        ConfigError: bad options or pair id.
    """
    options.check()
    stop = stop or threading.Event()
    sid = wire.sender_id(options.name)
    pair = wire.pair_prefix(pair_id)
    stats = SenderStats(
        name=options.name, sender_id=sid, pair_id=pair_id, source=getattr(source, "description", "")
    )
    saver = _PngWriter(options.save_inputs) if options.save_inputs else None
    clock = time.perf_counter
    ns = time.perf_counter_ns
    t_cap = t_pre = t_enc = t_pack = t_send = 0
    wire_bytes = payload_bytes = 0
    period = 1.0 / options.fps if options.fps > 0 else 0.0
    if options.wait_connected_s > 0:
        link.wait_connected(options.wait_connected_s)
    start = clock()
    next_frame = start
    next_stats = start + options.stats_every_s
    next_link_check = start
    last_name = -math.inf
    seen_connects = -1
    frames_at_report, time_at_report = 0, start
    seq = 0
    status = "stopped"
    try:
        while not stop.is_set():
            if options.max_frames and seq >= options.max_frames:
                status = "finished"
                break
            if period:
                now = clock()
                if now < next_frame and stop.wait(next_frame - now):
                    break
                # keep the cadence, but never burst to catch up after a stall
                next_frame = max(next_frame + period, clock() - period)
            t0 = ns()
            try:
                frame = source.read()
            except SourceError as e:
                status, stats.error = "source-error", str(e)
                break
            if frame is None:
                status = "finished"
                break
            t_us = _now_us() & wire.MASK32
            t1 = ns()
            image = preprocess(frame)
            t2 = ns()
            payload = encoder.encode(image)
            t3 = ns()
            now = clock()
            if now >= next_link_check:
                next_link_check = now + 0.05
                connects = link.stats.connects
                if connects != seen_connects:
                    seen_connects, last_name = connects, -math.inf  # new connection: tell it who we are
            name = None
            if now - last_name >= options.name_every_s:
                name, last_name = options.name, now
            data = wire.pack(Packet(pair, sid, seq & wire.MASK32, t_us, payload, kind, name))
            t4 = ns()
            link.send(data)
            t5 = ns()
            if saver is not None:
                saver.write(options.name, seq, image)
            t_cap += t1 - t0
            t_pre += t2 - t1
            t_enc += t3 - t2
            t_pack += t4 - t3
            t_send += t5 - t4
            wire_bytes += len(data)
            payload_bytes += len(payload)
            seq += 1
            if on_stats is not None and now >= next_stats:
                next_stats = now + options.stats_every_s
                stats.fps_recent = round((seq - frames_at_report) / max(now - time_at_report, 1e-9), 1)
                frames_at_report, time_at_report = seq, now
                on_stats(
                    _fill(
                        stats,
                        link,
                        seq,
                        start,
                        t_cap,
                        t_pre,
                        t_enc,
                        t_pack,
                        t_send,
                        wire_bytes,
                        payload_bytes,
                    )
                )
    finally:
        stats.status = status
        _fill(stats, link, seq, start, t_cap, t_pre, t_enc, t_pack, t_send, wire_bytes, payload_bytes)
    return stats


def _fill(stats: SenderStats, link: PushSender, n: int, start: float, *t: int) -> SenderStats:
    t_cap, t_pre, t_enc, t_pack, t_send, wire_bytes, payload_bytes = t
    stats.frames = n
    stats.elapsed_s = round(time.perf_counter() - start, 3)
    stats.fps = round(n / stats.elapsed_s, 1) if stats.elapsed_s > 0 else 0.0
    stats.capture_us, stats.preprocess_us = _mean_us(t_cap, n), _mean_us(t_pre, n)
    stats.encode_us, stats.pack_us, stats.send_us = (
        _mean_us(t_enc, n),
        _mean_us(t_pack, n),
        _mean_us(t_send, n),
    )
    stats.bytes_per_frame = round(wire_bytes / n, 2) if n else 0.0
    stats.payload_bytes = round(payload_bytes / n, 2) if n else 0.0
    if not link.closed:
        stats.absorb(link.stats)
    return stats


def stream_send(
    source: str | FrameSource,
    connect: str,
    bundle: str | Path | Any = "mnist",
    options: SendOptions | None = None,
    link_options: SenderOptions | None = None,
    *,
    preprocess: dict | None = None,
    threads: int = 1,
    loop: bool = False,
    on_stats: Callable[[SenderStats], None] | None = None,
    on_log: Log | None = None,
    stop: threading.Event | None = None,
) -> SenderStats:
    """Open everything by name and run :func:`run_sender`; closes what it opened (the link flushes).

    Args:
        source: a source spec for :func:`~cae_edge.device.capture.open_source` or an open source.
        connect: the receiver, e.g. ``tcp://192.168.1.10:5555``.
        bundle: shipped bundle name, bundle directory or a loaded bundle.
        options: loop options (name, fps, ...).
        link_options: queue, drop policy, reconnect, security.
        preprocess: overrides of the bundle manifest's ``preprocess`` block.
        threads: encoder interpreter threads.
        loop: replay files and folders endlessly.
        on_stats: called with statistics about once per ``options.stats_every_s``.
        on_log: called with one line per notable event.
        stop: set it to stop (the CLI does on SIGINT/SIGTERM).

    Raises:
        SourceError: the source cannot be opened.
        BundleError: the bundle is missing or broken.
        ConfigError: a bad option or endpoint.
    """
    from .bundle import load_bundle

    options = options or SendOptions()
    options.check()
    b = load_bundle(bundle) if isinstance(bundle, str | Path) else bundle
    spec = dict(b.preprocess)
    spec.update(preprocess or {})
    pre = Preprocessor(spec)
    kind = payload_kind(b.coding)
    encoder = b.encoder(threads)
    src = source
    if isinstance(source, str):
        src = open_source(source, loop=loop, paper=bool(spec.get("invert")))
    log = on_log or (lambda _msg: None)
    try:
        with PushSender(connect, link_options or SenderOptions()) as link:
            log(
                f"sending {src.description} as {options.name!r} (id {wire.sender_id(options.name):#06x}) to "
                f"{connect} with bundle {b.pair_id} ({b.latent_dim}-byte latent, {kind.name.lower()})"
            )
            stats = run_sender(
                src,
                pre,
                encoder,
                link,
                pair_id=b.pair_id,
                options=options,
                kind=kind,
                on_stats=on_stats,
                stop=stop,
            )
            link.close()
            stats.absorb(link.stats)
    finally:
        if isinstance(source, str):
            src.close()
    return stats


# ============================================================================================== receiver


class FrameSink(Protocol):
    """Where decoded frames go."""

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        """Take one decoded 28x28 uint8 frame of ``sender`` with wire sequence number ``seq``."""
        ...

    def close(self) -> None: ...


class _PngWriter:
    def __init__(self, directory: str | Path) -> None:
        import cv2

        self.dir = Path(directory)
        self._imwrite = cv2.imwrite
        self._made: set[str] = set()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{self.dir}: cannot create the output folder ({e.strerror})") from None

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        if sender not in self._made:
            (self.dir / sender).mkdir(exist_ok=True)
            self._made.add(sender)
        self._imwrite(str(self.dir / sender / f"{seq:08d}.png"), image)

    def close(self) -> None:
        pass


class PngSink(_PngWriter):
    """Each frame as ``DIR/<sender>/<seq>.png`` (8-digit wire sequence number; a restarted sender overwrites).

    Raises:
        ConfigError: the folder cannot be created.
    """


class VideoSink:
    """One video per sender: ``path`` for the first sender, ``<stem>-<sender><suffix>`` for the others
    (or put ``{sender}`` in the path). Frames are enlarged ``scale`` times (nearest neighbour).

    Codec by suffix: ``.avi`` MJPG, ``.mkv`` FFV1 (lossless), otherwise mp4v.
    """

    def __init__(self, path: str | Path, fps: float = 30.0, scale: int = 4) -> None:
        self.path = Path(path)
        self.fps = fps
        self.scale = max(1, int(scale))
        self._writers: dict[str, Any] = {}
        if not self.path.parent.is_dir():
            raise ConfigError(f"{self.path}: folder {self.path.parent} does not exist")

    def _path_for(self, sender: str) -> Path:
        if "{sender}" in str(self.path):
            return Path(str(self.path).format(sender=sender))
        if not self._writers:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{sender}{self.path.suffix}")

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        import cv2

        writer = self._writers.get(sender)
        if writer is None:
            path = self._path_for(sender)
            codec = {".avi": "MJPG", ".mkv": "FFV1"}.get(path.suffix.lower(), "mp4v")
            size = 28 * self.scale
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), self.fps, (size, size), False)
            if not writer.isOpened():
                raise ConfigError(f"{path}: OpenCV cannot write this video (codec {codec}); try .avi or .mkv")
            self._writers[sender] = writer
        if self.scale > 1:
            image = cv2.resize(image, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_NEAREST)
        writer.write(image)

    def close(self) -> None:
        for w in self._writers.values():
            w.release()
        self._writers.clear()


class MosaicSink:
    """A live window (``cv2.imshow``) with the latest frame of every sender side by side.

    Raises:
        ConfigError: OpenCV has no GUI here (``opencv-python-headless``, or no display).
    """

    def __init__(self, title: str = "cae-edge", scale: int = 6, refresh_s: float = 1 / 30) -> None:
        import cv2

        self._cv2 = cv2
        self.title = title
        self.scale = scale
        self.refresh_s = refresh_s
        self._latest: dict[str, np.ndarray] = {}
        self._next = 0.0
        try:
            cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
        except cv2.error:
            raise ConfigError(
                "--show needs OpenCV with a GUI and a display: `pip install opencv-python` (this one is "
                "headless or $DISPLAY is unset); use --out or --video instead"
            ) from None

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        self._latest[sender] = image
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.refresh_s
        row = np.hstack([self._latest[k] for k in sorted(self._latest)])
        big = self._cv2.resize(row, None, fx=self.scale, fy=self.scale, interpolation=self._cv2.INTER_NEAREST)
        self._cv2.imshow(self.title, big)
        self._cv2.waitKey(1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._cv2.destroyWindow(self.title)


class MemorySink:
    """Keeps the last ``limit`` frames in memory: ``frames[(sender, seq)] = image`` (tests, benchmarks)."""

    def __init__(self, limit: int | None = None) -> None:
        self.frames: dict[tuple[str, int], np.ndarray] = {}
        self.limit = limit

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        if self.limit is not None and len(self.frames) >= self.limit:
            self.frames.pop(next(iter(self.frames)))
        self.frames[(sender, seq)] = image

    def close(self) -> None:
        pass


@dataclass
class ReceiveOptions:
    """What the receiver loop does (the socket's own settings are :class:`ReceiverOptions`)."""

    max_frames: int = 0
    """Stop after this many decoded frames; 0 = until stopped."""
    idle_timeout_s: float = 0.0
    """Stop after this long without a decoded frame; 0 = never."""
    stats_every_s: float = 1.0
    """Call ``on_stats`` this often."""
    batch: int = 256
    """Messages taken from the socket per wake-up."""


@dataclass
class PeerStats:
    """One sender as the receiver sees it."""

    name: str
    """Sender name (``id-XXXX`` until a packet carrying the name arrived)."""
    sender_id: int
    """16-bit wire id."""
    frames: int = 0
    """Frames decoded."""
    lost: int = 0
    """Frames missing from the sequence (gaps in seq: dropped at the sender or lost in transit)."""
    restarts: int = 0
    """Times the sequence number went backwards (the sender process restarted)."""
    last_seq: int = -1
    """Last sequence number received."""
    bytes: int = 0
    """Packet bytes received."""
    fps: float = 0.0
    """Frames per second since the previous stats report."""
    latency_ms: dict[str, float] = field(default_factory=dict)
    """End-to-end latency capture → decoded (mean, p50, p95, max over the last 2048 frames; needs
    synchronised clocks across machines)."""
    peer: str | None = None
    """Authenticated identity from the transport (CURVE key name), when secured."""
    last_seen: float = 0.0
    """Unix time of the last frame."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReceiverStats:
    """The receiver's counters (JSON via :meth:`to_dict`)."""

    pair_id: str = ""
    """This receiver's bundle pair id."""
    endpoint: str = ""
    """Where it listens."""
    status: str = "running"
    """``running``, ``finished`` (max frames), ``stopped`` (signal), ``idle`` (timeout after frames) or
    ``nothing-received`` (timeout without frames)."""
    frames: int = 0
    """Frames decoded, all senders."""
    elapsed_s: float = 0.0
    """Seconds since the loop started."""
    fps: float = 0.0
    """Decoded frames per second over the run."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Packets refused, by reason (``pair``, ``crc``, ``magic``, ``version``, ``length``, ``payload``...)."""
    senders: dict[str, PeerStats] = field(default_factory=dict)
    """Per sender, by name."""
    unpack_us: float = 0.0
    """Mean ``wire.unpack`` time."""
    decode_us: float = 0.0
    """Mean decoder time (payload → 28x28 image)."""
    sink_us: float = 0.0
    """Mean time writing a frame to the sinks."""
    connects: int = 0
    """Sender connections accepted so far."""
    peers: int = 0
    """Sender connections up now."""

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rejected_total"] = self.rejected_total
        return d


class _Peer:
    __slots__ = ("stats", "lat", "frames_at_report", "named")

    def __init__(self, sid: int) -> None:
        self.stats = PeerStats(name=f"id-{sid:04x}", sender_id=sid)
        self.lat: deque[int] = deque(maxlen=2048)
        self.frames_at_report = 0
        self.named = False


class _Decoder(Protocol):
    def decode(self, payload: bytes) -> np.ndarray: ...


def run_receiver(
    link: PullReceiver,
    decoder: _Decoder,
    *,
    pair_id: str,
    kind: PayloadKind = PayloadKind.INT8,
    sinks: list[FrameSink] | None = None,
    options: ReceiveOptions | None = None,
    on_stats: Callable[[ReceiverStats], None] | None = None,
    on_log: Log | None = None,
    stop: threading.Event | None = None,
) -> ReceiverStats:
    """Receive → unpack → pair check → decode → sinks, until ``max_frames``, the idle timeout or ``stop``.

    Malformed packets, packets for another bundle (pair id) or coding, and payloads the decoder refuses are
    counted in ``rejected`` by reason and skipped; the loop keeps serving the other senders. The first refusal
    per sender and reason is logged (pair mismatches name both ids).

    Does not close the link or the sinks (the caller owns them).
    """
    options = options or ReceiveOptions()
    stop = stop or threading.Event()
    sinks = sinks or []
    log = on_log or (lambda _msg: None)
    my_pair = wire.pair_prefix(pair_id)
    stats = ReceiverStats(pair_id=pair_id, endpoint=link.endpoint)
    peers: dict[int, _Peer] = {}
    rejected = stats.rejected
    logged: set[tuple] = set()
    ns = time.perf_counter_ns
    clock = time.perf_counter
    t_unpack = t_decode = t_sink = 0
    n_unpacked = 0
    start = clock()
    last_frame = start
    next_stats = start + options.stats_every_s
    time_at_report = start
    frames = 0

    def reject(reason: str, key: tuple, message: str) -> None:
        rejected[reason] = rejected.get(reason, 0) + 1
        if (reason, *key) not in logged:
            logged.add((reason, *key))
            log(message)

    status = "stopped"
    while not stop.is_set():
        msgs = link.recv_many(options.batch, 0.1)
        for msg in msgs:
            t0 = ns()
            try:
                p = wire.unpack(msg.data)
            except PacketError as e:
                reject(
                    e.reason, (), f"refused a packet: {e} (further {e.reason!r} refusals are only counted)"
                )
                continue
            finally:
                n_unpacked += 1
                t_unpack += ns() - t0
            peer = peers.get(p.sender_id)
            label = peer.stats.name if peer is not None else f"id-{p.sender_id:04x}"
            if p.sender_name is not None:
                label = p.sender_name
            if p.pair != my_pair:
                reject(
                    "pair",
                    (p.sender_id, p.pair),
                    f"refused frames from {label}: its bundle pair id starts {p.pair.hex()} but this "
                    f"receiver's bundle is {pair_id}; sender and receiver must use the same bundle",
                )
                continue
            if p.kind != kind:
                reject(
                    "coding",
                    (p.sender_id, p.kind),
                    f"refused frames from {label}: payload coding {p.kind.name.lower()} but the bundle "
                    f"uses {kind.name.lower()}",
                )
                continue
            t1 = ns()
            try:
                image = decoder.decode(p.payload)
            except (PacketError, CaeEdgeError, ValueError) as e:
                reason = getattr(e, "reason", "payload")
                reject(reason, (p.sender_id,), f"refused a frame from {label}: {e}")
                continue
            t2 = ns()
            now_us = _now_us()
            if peer is None:
                peer = peers[p.sender_id] = _Peer(p.sender_id)
                log(
                    f"new sender {label} (id {p.sender_id:#06x})"
                    + (f", authenticated as {msg.peer}" if msg.peer else "")
                )
            ps = peer.stats
            if p.sender_name is not None and p.sender_name != ps.name:
                if peer.named:
                    log(
                        f"sender id {p.sender_id:#06x} now calls itself {p.sender_name} (was {ps.name}): "
                        "two senders share an id, or one was renamed; give them distinct names"
                    )
                ps.name, peer.named = p.sender_name, True
            if msg.peer:
                ps.peer = msg.peer
            if ps.last_seq >= 0:
                gap = (p.seq - ps.last_seq - 1) & wire.MASK32
                if gap >= 1 << 31:
                    ps.restarts += 1
                    log(f"sender {ps.name} restarted (seq {ps.last_seq} -> {p.seq})")
                else:
                    ps.lost += gap
            ps.last_seq = p.seq
            ps.frames += 1
            ps.bytes += len(msg.data)
            ps.last_seen = now_us / 1e6
            peer.lat.append(now_us - wire.unwrap_us(p.t_us, now_us))
            for sink in sinks:
                sink.write(ps.name, p.seq, image)
            t_decode += t2 - t1
            t_sink += ns() - t2
            frames += 1
            if options.max_frames and frames >= options.max_frames:
                break
        now = clock()
        if msgs and frames:
            last_frame = now
        if options.max_frames and frames >= options.max_frames:
            status = "finished"
            break
        if options.idle_timeout_s and now - last_frame >= options.idle_timeout_s:
            status = "idle" if frames else "nothing-received"
            break
        if on_stats is not None and now >= next_stats:
            next_stats = now + options.stats_every_s
            on_stats(
                _fill_rx(
                    stats,
                    link,
                    peers,
                    frames,
                    start,
                    now - time_at_report,
                    t_unpack,
                    n_unpacked,
                    t_decode,
                    t_sink,
                )
            )
            time_at_report = now
    stats.status = status
    return _fill_rx(stats, link, peers, frames, start, 0.0, t_unpack, n_unpacked, t_decode, t_sink)


def _fill_rx(
    stats: ReceiverStats,
    link: PullReceiver,
    peers: dict[int, _Peer],
    frames: int,
    start: float,
    interval: float,
    t_unpack: int,
    n_unpacked: int,
    t_decode: int,
    t_sink: int,
) -> ReceiverStats:
    stats.frames = frames
    stats.elapsed_s = round(time.perf_counter() - start, 3)
    stats.fps = round(frames / stats.elapsed_s, 1) if stats.elapsed_s > 0 else 0.0
    stats.unpack_us = _mean_us(t_unpack, n_unpacked)
    stats.decode_us = _mean_us(t_decode, frames)
    stats.sink_us = _mean_us(t_sink, frames)
    if not link.closed:
        ls = link.stats
        stats.connects, stats.peers = ls.connects, ls.peers
    senders = {}
    for peer in peers.values():
        ps = peer.stats
        if interval > 0:
            ps.fps = round((ps.frames - peer.frames_at_report) / interval, 1)
            peer.frames_at_report = ps.frames
        if peer.lat:
            lat = np.fromiter(peer.lat, dtype=np.int64, count=len(peer.lat)) / 1000.0
            ps.latency_ms = {
                "mean": round(float(lat.mean()), 3),
                "p50": round(float(np.percentile(lat, 50)), 3),
                "p95": round(float(np.percentile(lat, 95)), 3),
                "max": round(float(lat.max()), 3),
            }
        senders[ps.name] = ps
    stats.senders = senders
    return stats


def stream_receive(
    bind: str,
    bundle: str | Path | Any = "mnist",
    options: ReceiveOptions | None = None,
    link_options: ReceiverOptions | None = None,
    *,
    sinks: list[FrameSink] | None = None,
    threads: int = 1,
    on_stats: Callable[[ReceiverStats], None] | None = None,
    on_log: Log | None = None,
    stop: threading.Event | None = None,
) -> ReceiverStats:
    """Load the bundle, bind, and run :func:`run_receiver`; closes the link and the sinks.

    Raises:
        BundleError: the bundle is missing or broken.
        ConfigError: bad endpoint (or address in use).
    """
    from .bundle import load_bundle

    b = load_bundle(bundle) if isinstance(bundle, str | Path) else bundle
    decoder = b.decoder(threads)
    kind = payload_kind(b.coding)
    log = on_log or (lambda _msg: None)
    sinks = sinks or []
    try:
        with PullReceiver(bind, link_options or ReceiverOptions()) as link:
            what = f"{b.latent_dim}-byte latent, {kind.name.lower()}"
            log(f"listening on {link.endpoint} with bundle {b.pair_id} ({what})")
            return run_receiver(
                link,
                decoder,
                pair_id=b.pair_id,
                kind=kind,
                sinks=sinks,
                options=options,
                on_stats=on_stats,
                on_log=on_log,
                stop=stop,
            )
    finally:
        for sink in sinks:
            sink.close()


# ============================================================================================= benchmark


@dataclass
class BenchResult:
    """Throughput of both ends on this machine (JSON via :meth:`to_dict`).

    Wall-clock figures depend on what else runs on the machine (``load_avg``); the CPU-time figures per
    stage (this thread's CPU time in tight loops, best of 3) are what one otherwise idle core would need.
    """

    frames: int
    """Frames pushed through each end."""
    pair_id: str
    """Bundle measured."""
    threads: int
    """Interpreter threads."""
    source: str
    """``canvas`` (120x160 synthetic camera frames) or ``digits`` (28x28 test images)."""
    frame_shape: list[int]
    """Shape of the in-memory source frames."""
    sender_fps: float
    """preprocess → encode → pack → send over loopback TCP (drained by a C proxy thread), wall clock."""
    sender_us: dict[str, float]
    """Mean wall µs per frame by stage in that run: preprocess, encode, pack, send, and total."""
    receiver_fps: float
    """unpack → pair check → decode to a 28x28 image (no network, no sink), wall clock."""
    receiver_us: dict[str, float]
    """Mean wall µs per frame by stage: unpack, decode, and total."""
    stage_cpu_us: dict[str, float]
    """CPU µs per frame by stage (tight loops, this thread): preprocess, encode, pack, send, unpack,
    decode."""
    sender_cpu_us: float
    """preprocess + encode + pack + send CPU µs per frame."""
    receiver_cpu_us: float
    """unpack + decode CPU µs per frame."""
    sender_fps_cpu: float
    """1e6 / sender_cpu_us: the sender's rate on one idle core."""
    receiver_fps_cpu: float
    """1e6 / receiver_cpu_us: the receiver's rate on one idle core."""
    bytes_per_frame: float
    """Mean packet size (24-byte header/CRC + payload; the name adds 1 + len once a second)."""
    dropped: int
    """Packets the sender dropped during the run."""
    load_avg: float
    """1-minute load average when the run started (context for the wall-clock figures)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _proxy_until_closed(front: zmq.Socket, back: zmq.Socket) -> None:
    with contextlib.suppress(zmq.ContextTerminated, zmq.ZMQError):
        zmq.proxy(front, back)
    front.close(linger=0)
    back.close(linger=0)


def _cpu_us(fn: Callable[[Any], Any], items: list, repeat: int = 3) -> float:
    """Best-of-``repeat`` CPU time of this thread per call of ``fn`` over ``items``, in µs."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.thread_time_ns()
        for x in items:
            fn(x)
        best = min(best, (time.thread_time_ns() - t0) / len(items) / 1000)
    return round(best, 2)


def bench(
    bundle: str | Path | Any = "mnist", frames: int = 5000, *, threads: int = 1, source: str = "canvas"
) -> BenchResult:
    """Measure the sender pipeline from an in-memory source and the receiver's decode, on this machine.

    Args:
        bundle: bundle name, directory or loaded bundle.
        frames: frames through each end.
        threads: interpreter threads.
        source: ``canvas`` — :class:`~cae_edge.device.capture.SyntheticSource` camera frames (120x160, drawn
            beforehand, so capture costs nothing) — or ``digits``: the 28x28 test images themselves.

    The sender really sends over loopback TCP, to a PULL socket drained by ``zmq.proxy`` in C (no GIL).
    """
    import os

    from .bundle import load_bundle

    if source not in ("canvas", "digits"):
        raise ConfigError(f"bench source {source!r}: use canvas or digits")
    load = os.getloadavg()[0]
    b = load_bundle(bundle) if isinstance(bundle, str | Path) else bundle
    pre = Preprocessor(b.preprocess)
    kind = payload_kind(b.coding)
    paper = bool(b.preprocess.get("invert"))
    synth = SyntheticSource("mnist", paper=paper)
    n_unique = min(frames, 240)
    if source == "canvas":
        pool = np.stack([synth.frame(i) for i in range(n_unique)])
    else:
        from .. import datasets

        pool = datasets.load("mnist").x_test[:n_unique]
        pool = 255 - pool if paper else pool
    encoder = b.encoder(threads)
    decoder = b.decoder(threads)
    pair = wire.pair_prefix(b.pair_id)
    images = [pre(f) for f in pool]
    payloads = [encoder.encode(im) for im in images]
    packets = [Packet(pair, 1, i, i, p, kind) for i, p in enumerate(payloads)]
    packed = [wire.pack(p) for p in packets]
    stage = {
        "preprocess": _cpu_us(pre, list(pool)),
        "encode": _cpu_us(encoder.encode, images),
        "pack": _cpu_us(wire.pack, packets),
    }
    ctx = zmq.Context()
    sink = ctx.socket(zmq.PULL)
    sink.setsockopt(zmq.LINGER, 0)
    port = sink.bind_to_random_port("tcp://127.0.0.1")
    void = ctx.socket(zmq.PUB)  # nobody subscribes: the proxy drains the PULL socket in C, without the GIL
    void.setsockopt(zmq.LINGER, 0)
    void.bind("inproc://void")
    thread = threading.Thread(target=_proxy_until_closed, args=(sink, void), daemon=True)
    thread.start()
    try:
        with PushSender(f"tcp://127.0.0.1:{port}", SenderOptions(queue_size=frames)) as tx:
            tx.wait_connected(5.0)
            stage["send"] = _cpu_us(tx.send, packed)
            tx.flush(5.0)
            src = ArraySource(pool, loop=True, limit=frames)
            s = run_sender(
                src, pre, encoder, tx, pair_id=b.pair_id, options=SendOptions(name="bench"), kind=kind
            )
            tx.flush(5.0)
            dropped = tx.stats.dropped
    finally:
        ctx.term()  # closes the proxy's sockets (ETERM ends it)
        thread.join(5.0)
    stage["unpack"] = _cpu_us(wire.unpack, packed)
    stage["decode"] = _cpu_us(decoder.decode, payloads)
    # receiver, end to end: unpack + pair check + decode, cycling through the packets
    ns = time.perf_counter_ns
    t_unpack = t_decode = 0
    for i in range(frames):
        t0 = ns()
        p = wire.unpack(packed[i % len(packed)])
        if p.pair != pair:  # pragma: no cover - same bundle
            raise ConfigError("bench: pair mismatch")
        t1 = ns()
        decoder.decode(p.payload)
        t_decode += ns() - t1
        t_unpack += t1 - t0
    rx_total = (t_unpack + t_decode) / frames / 1000
    tx_total = s.preprocess_us + s.encode_us + s.pack_us + s.send_us
    tx_cpu = stage["preprocess"] + stage["encode"] + stage["pack"] + stage["send"]
    rx_cpu = stage["unpack"] + stage["decode"]
    return BenchResult(
        frames=frames,
        pair_id=b.pair_id,
        threads=threads,
        source=source,
        frame_shape=list(pool.shape[1:]),
        sender_fps=s.fps,
        sender_us={
            "preprocess": s.preprocess_us,
            "encode": s.encode_us,
            "pack": s.pack_us,
            "send": s.send_us,
            "total": round(tx_total, 2),
        },
        receiver_fps=round(1e6 / rx_total, 1),
        receiver_us={
            "unpack": _mean_us(t_unpack, frames),
            "decode": _mean_us(t_decode, frames),
            "total": round(rx_total, 2),
        },
        stage_cpu_us=stage,
        sender_cpu_us=round(tx_cpu, 2),
        receiver_cpu_us=round(rx_cpu, 2),
        sender_fps_cpu=round(1e6 / tx_cpu, 1),
        receiver_fps_cpu=round(1e6 / rx_cpu, 1),
        bytes_per_frame=s.bytes_per_frame,
        dropped=dropped,
        load_avg=round(load, 2),
    )
