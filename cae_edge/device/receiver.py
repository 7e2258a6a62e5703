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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .. import wire
from ..errors import CaeEdgeError, PacketError
from ..payload import payload_kind
from ..wire import Packet, PayloadKind
from .mqtt import MqttReceiver, MqttReceiverOptions
from .sinks import FrameSink
from .stream import Log, ReceiverLink, StageTimer, now_us
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
    skipped: int = 0
    """Gaps in seq on a shared subscription (MQTT, ``link.shared``): frames another receiver of the group
    took, or lost; one receiver cannot tell which, so they are not counted in ``lost``."""
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
    escaped: int = 0
    """Latent values beyond the entropy model's alphabet, decoded exactly through the coder's escape."""
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

    def report(self, interval: float) -> PeerStats:
        """The stats with the rate since the last report (when ``interval`` > 0) and the latency summary."""
        ps = self.stats
        if interval > 0:
            ps.fps = round((ps.frames - self.frames_at_report) / interval, 1)
            self.frames_at_report = ps.frames
        if self.lat:
            lat = np.fromiter(self.lat, dtype=np.int64, count=len(self.lat)) / 1000.0
            ps.latency_ms = {
                "mean": round(float(lat.mean()), 3),
                "p50": round(float(np.percentile(lat, 50)), 3),
                "p95": round(float(np.percentile(lat, 95)), 3),
                "max": round(float(lat.max()), 3),
            }
        return ps


class Decoder(Protocol):
    """What the receiver needs of a decoder: payload bytes in, a 28x28 uint8 image out."""

    def decode(self, payload: bytes) -> np.ndarray: ...


class _Receiving:
    """The receiver loop's state and its per-message step: refusals, per-sender bookkeeping, stage times."""

    def __init__(
        self,
        link: ReceiverLink,
        decoder: Decoder,
        pair_id: str,
        kind: PayloadKind,
        sinks: list[FrameSink],
        log: Log,
    ) -> None:
        self.link, self.decoder, self.sinks, self.log = link, decoder, sinks, log
        self.pair_id, self.kind = pair_id, kind
        self.shared = bool(getattr(link, "shared", False))
        """The link splits each sender's frames over several receivers: seq gaps are not losses."""
        self.my_pair = wire.pair_prefix(pair_id)
        self.stats = ReceiverStats(pair_id=pair_id, endpoint=link.endpoint)
        self.peers: dict[int, _Peer] = {}
        self.logged: set[tuple] = set()
        self.timer = StageTimer("unpack", "decode", "sink")
        self.unpacked = 0
        """Messages unpacked (or refused by ``wire.unpack``): the count ``unpack`` time is over."""
        self.frames = 0
        """Frames decoded and handed to the sinks."""

    def reject(self, reason: str, key: tuple, message: str) -> None:
        """Count a refusal by ``reason``; log ``message`` the first time for this reason and ``key``."""
        rejected = self.stats.rejected
        rejected[reason] = rejected.get(reason, 0) + 1
        if (reason, *key) not in self.logged:
            self.logged.add((reason, *key))
            self.log(message)

    def take(self, msg: Any) -> None:
        """Unpack → pair and coding check → decode → sinks for one message, or count why it was refused."""
        ns = time.perf_counter_ns
        t0 = ns()
        try:
            p = wire.unpack(msg.data)
        except PacketError as e:
            self.reject(
                e.reason, (), f"refused a packet: {e} (further {e.reason!r} refusals are only counted)"
            )
            return
        finally:
            self.unpacked += 1
            self.timer.add("unpack", ns() - t0)
        peer = self.peers.get(p.sender_id)
        label = peer.stats.name if peer is not None else f"id-{p.sender_id:04x}"
        name = p.sender_name
        if name is None and msg.peer and (peer is None or not peer.named):
            name = self.peer_as_name(msg.peer, p.sender_id)
        if name is not None:
            label = name
        if p.pair != self.my_pair:
            self.reject(
                "pair",
                (p.sender_id, p.pair),
                f"refused frames from {label}: its bundle pair id starts {p.pair.hex()} but this "
                f"receiver's bundle is {self.pair_id}; sender and receiver must use the same bundle",
            )
            return
        if p.kind != self.kind:
            self.reject(
                "coding",
                (p.sender_id, p.kind),
                f"refused frames from {label}: payload coding {p.kind.name.lower()} but the bundle "
                f"uses {self.kind.name.lower()}",
            )
            return
        t1 = ns()
        try:
            image = self.decoder.decode(p.payload)
        except (PacketError, CaeEdgeError, ValueError) as e:
            reason = getattr(e, "reason", "payload")
            self.reject(reason, (p.sender_id,), f"refused a frame from {label}: {e}")
            return
        t2 = ns()
        ps = self._account(peer, label, name, p, msg)
        for sink in self.sinks:
            sink.write(ps.name, p.seq, image)
        self.timer.add("decode", t2 - t1)
        self.timer.add("sink", ns() - t2)
        self.frames += 1

    @staticmethod
    def peer_as_name(peer: str, sender_id: int) -> str | None:
        """The authenticated identity when it is the sender's name (its hash is the packet's sender id): an
        MQTT topic, a CURVE key named after the node. Names frames that do not carry the name themselves (on
        a shared MQTT subscription, the ones that do may all go to another receiver)."""
        return peer if wire.sender_id(peer) == sender_id else None

    def _account(self, peer: _Peer | None, label: str, name: str | None, p: Packet, msg: Any) -> PeerStats:
        """A decoded frame of ``p``'s sender: names, sequence gaps and restarts, bytes, latency."""
        arrived_us = now_us()
        if peer is None:
            peer = self.peers[p.sender_id] = _Peer(p.sender_id)
            self.log(
                f"new sender {label} (id {p.sender_id:#06x})"
                + (f", authenticated as {msg.peer}" if msg.peer else "")
            )
        ps = peer.stats
        if name is not None and name != ps.name:
            if peer.named:
                self.log(
                    f"sender id {p.sender_id:#06x} now calls itself {name} (was {ps.name}): "
                    "two senders share an id, or one was renamed; give them distinct names"
                )
            ps.name, peer.named = name, True
        if msg.peer:
            ps.peer = msg.peer
        if ps.last_seq >= 0:
            gap = (p.seq - ps.last_seq - 1) & wire.MASK32
            if gap >= 1 << 31:
                ps.restarts += 1
                self.log(f"sender {ps.name} restarted (seq {ps.last_seq} -> {p.seq})")
            elif self.shared:
                ps.skipped += gap
            else:
                ps.lost += gap
        ps.last_seq = p.seq
        ps.frames += 1
        ps.bytes += len(msg.data)
        ps.last_seen = arrived_us / 1e6
        peer.lat.append(arrived_us - wire.unwrap_us(p.t_us, arrived_us))
        return ps

    def report(self, interval: float) -> ReceiverStats:
        """The statistics now; per-sender rates over the last ``interval`` seconds (0: leave them)."""
        stats, frames, timer = self.stats, self.frames, self.timer
        stats.frames = frames
        stats.elapsed_s = timer.elapsed_s()
        stats.fps = round(frames / stats.elapsed_s, 1) if stats.elapsed_s > 0 else 0.0
        stats.unpack_us = timer.mean_us("unpack", self.unpacked)
        stats.decode_us = timer.mean_us("decode", frames)
        stats.sink_us = timer.mean_us("sink", frames)
        stats.escaped = getattr(getattr(self.decoder, "codec", None), "escaped_decoded", 0)
        if not self.link.closed:
            ls = self.link.stats
            stats.connects, stats.peers = ls.connects, ls.peers
        senders = {}
        for peer in self.peers.values():
            ps = peer.report(interval)
            senders[ps.name] = ps
        stats.senders = senders
        return stats


def run_receiver(
    link: ReceiverLink,
    decoder: Decoder,
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
    rx = _Receiving(link, decoder, pair_id, kind, sinks or [], on_log or (lambda _msg: None))
    clock = time.perf_counter
    start = rx.timer.start
    last_frame = start
    next_stats = start + options.stats_every_s
    time_at_report = start
    status = "stopped"
    while not stop.is_set():
        msgs = link.recv_many(options.batch, 0.1)
        for msg in msgs:
            rx.take(msg)
            if options.max_frames and rx.frames >= options.max_frames:
                break
        now = clock()
        if msgs and rx.frames:
            last_frame = now
        if options.max_frames and rx.frames >= options.max_frames:
            status = "finished"
            break
        if options.idle_timeout_s and now - last_frame >= options.idle_timeout_s:
            status = "idle" if rx.frames else "nothing-received"
            break
        if on_stats is not None and now >= next_stats:
            next_stats = now + options.stats_every_s
            on_stats(rx.report(now - time_at_report))
            time_at_report = now
    rx.stats.status = status
    return rx.report(0.0)


@dataclass
class ReceivePipeline:
    """A bundle's receiving half, built once: the decoder and the payload kind it accepts.

    :func:`receive_pipeline` builds it; :meth:`run` runs :func:`run_receiver` with it (``cae-edge stream
    receive`` through :func:`stream_receive`, and the soak test's receivers).
    """

    bundle: Any
    """The loaded bundle (:class:`~cae_edge.device.bundle.Bundle`)."""
    decoder: Decoder
    """Payload bytes → 28x28 uint8 image."""
    kind: PayloadKind
    """Wire payload kind of the bundle's coding; packets of another kind are refused."""

    @property
    def pair_id(self) -> str:
        """The bundle's pair id; packets with another pair prefix are refused."""
        return self.bundle.pair_id

    def run(
        self,
        link: ReceiverLink,
        sinks: list[FrameSink] | None = None,
        options: ReceiveOptions | None = None,
        *,
        on_stats: Callable[[ReceiverStats], None] | None = None,
        on_log: Log | None = None,
        stop: threading.Event | None = None,
    ) -> ReceiverStats:
        """:func:`run_receiver` with this pipeline's parts; the caller owns ``link`` and ``sinks``."""
        return run_receiver(
            link,
            self.decoder,
            pair_id=self.pair_id,
            kind=self.kind,
            sinks=sinks,
            options=options,
            on_stats=on_stats,
            on_log=on_log,
            stop=stop,
        )


def receive_pipeline(bundle: str | Path | Any, *, threads: int = 1) -> ReceivePipeline:
    """Load the bundle (unless loaded already) and build its decoder.

    Raises:
        BundleError: the bundle is missing or broken.
        ConfigError: a coding the wire format has no kind for.
    """
    from .bundle import load_bundle

    b = load_bundle(bundle) if isinstance(bundle, str | Path) else bundle
    decoder = b.decoder(threads)
    return ReceivePipeline(b, decoder, payload_kind(b.coding))


def open_receiver_link(
    bind: str, options: ReceiverOptions | MqttReceiverOptions | None, *, pair_id: str = ""
) -> PullReceiver | MqttReceiver:
    """The link the options ask for: a share of the frames through an MQTT broker for
    :class:`~cae_edge.device.mqtt.MqttReceiverOptions` (``bind`` is the broker), else ZeroMQ PULL bound to
    ``bind``. ``pair_id`` lets the MQTT link name nodes that announce another bundle.

    Raises:
        ConfigError: a bad endpoint or option, or the address is in use.
    """
    if isinstance(options, MqttReceiverOptions):
        return MqttReceiver(bind, replace(options, pair_id=options.pair_id or pair_id))
    return PullReceiver(bind, options or ReceiverOptions())


def stream_receive(
    bind: str,
    bundle: str | Path | Any = "mnist",
    options: ReceiveOptions | None = None,
    link_options: ReceiverOptions | MqttReceiverOptions | None = None,
    *,
    sinks: list[FrameSink] | None = None,
    threads: int = 1,
    on_stats: Callable[[ReceiverStats], None] | None = None,
    on_log: Log | None = None,
    stop: threading.Event | None = None,
) -> ReceiverStats:
    """Build the :func:`receive_pipeline`, bind (or subscribe: MQTT link options), and run it; closes the
    link and the sinks.

    Raises:
        BundleError: the bundle is missing or broken.
        ConfigError: bad endpoint (or address in use).
    """
    pipe = receive_pipeline(bundle, threads=threads)
    log = on_log or (lambda _msg: None)
    sinks = sinks or []
    try:
        with open_receiver_link(bind, link_options, pair_id=pipe.pair_id) as link:
            b = pipe.bundle
            what = f"{b.latent_dim}-byte latent, {pipe.kind.name.lower()}"
            log(f"listening on {link.endpoint} with bundle {b.pair_id} ({what})")
            return pipe.run(link, sinks, options, on_stats=on_stats, on_log=on_log, stop=stop)
    finally:
        for sink in sinks:
            sink.close()
