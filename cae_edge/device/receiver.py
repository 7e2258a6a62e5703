"""The receiver's end of a stream: receive → unpack → pair check → decode → sinks, with per-sender stats.

::

    PullReceiver ─► wire.unpack ─► pair check ─► Decoder.decode ─► sinks (PNG, video, mosaic)
                      (rejects counted by reason)                    (per-sender stats)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .. import wire
from ..errors import CaeEdgeError, PacketError
from ..wire import PayloadKind
from .sinks import FrameSink
from .stream import Log, mean_us, now_us, payload_kind
from .transport import PullReceiver, ReceiverOptions


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
            arrived_us = now_us()
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
            ps.last_seen = arrived_us / 1e6
            peer.lat.append(arrived_us - wire.unwrap_us(p.t_us, arrived_us))
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
    stats.unpack_us = mean_us(t_unpack, n_unpacked)
    stats.decode_us = mean_us(t_decode, frames)
    stats.sink_us = mean_us(t_sink, frames)
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
