"""The receiver's end of a stream: receive → unpack → pair check → decode → sinks, with per-sender stats.

::

    PullReceiver ─► wire.unpack ─► pair check ─► Decoder.decode ─► sinks (PNG, video, mosaic)
                      (rejects counted by reason)                    (per-sender stats)

Who a sender is: the identity the link authenticated, when there is one — on a CURVE link the name of the
sender's key in the allowed-keys directory (the ZAP ``User-Id`` each message carries), on MQTT the node of
the topic. Per-sender state, output folders and videos are keyed by it; the name in the packets is then a
label only, and a packet claiming another name is counted (``name_mismatch``). Without one (``--insecure``)
the 16-bit sender id and the claimed name are all there is.

Nothing one sender does stops the receiver or grows it without bound: a frame a sink cannot write is counted
(``sink_errors``); per-sender state is kept for at most ``max_senders`` senders, the one seen longest ago
forgotten first (``evicted``); refusals and other per-packet events are logged at most a few lines per kind
every 10 s (:class:`~cae_edge.device.lograte.RateLimitedLog`), the rest counted.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .. import wire
from ..errors import CaeEdgeError, PacketError
from ..payload import payload_kind
from ..wire import Packet, PayloadKind
from .lograte import RateLimitedLog
from .mqtt import MqttReceiver, MqttReceiverOptions
from .sinks import FrameSink, GuardedSink
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
    max_senders: int = 1024
    """Senders whose state (counters, latencies) is kept; beyond that the one seen longest ago is forgotten
    (``ReceiverStats.evicted``): a flood of made-up sender ids cannot grow the receiver or its status file."""


@dataclass
class PeerStats:
    """One sender as the receiver sees it."""

    name: str
    """Who the sender is: the identity the link authenticated (CURVE key name, MQTT topic node) when there
    is one — stats, folders and videos use it; else the name it claims (``id-XXXX`` until a packet carrying
    the name arrived)."""
    sender_id: int
    """16-bit wire id (of the last packet)."""
    claimed: str | None = None
    """The name the sender's packets claim (a label only when the link authenticates senders)."""
    name_mismatch: int = 0
    """Packets whose claimed name is not the sender's authenticated identity."""
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
    refused_by: dict[str, int] = field(default_factory=dict)
    """Handshakes refused, by kind (``key``, ``crypto``, ``mechanism``, ``protocol``, ``handshake``; see
    :class:`~cae_edge.device.transport.LinkStats`)."""
    revocations: int = 0
    """Times every connection was dropped because a connected key was removed from the allowed keys."""
    sink_errors: int = 0
    """Frames a sink failed to write (counted and logged; the receiver goes on)."""
    evicted: int = 0
    """Senders whose state was forgotten to keep at most ``max_senders``."""
    log_suppressed: int = 0
    """Log lines not written because their kind exceeded its rate (the events are still counted)."""

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
        max_senders: int = 1024,
    ) -> None:
        self.link, self.decoder, self.log = link, decoder, log
        self.rlog = RateLimitedLog(log)
        self.sinks = [s if isinstance(s, GuardedSink) else GuardedSink(s, self.rlog) for s in sinks]
        link_options = getattr(link, "options", None)
        if getattr(link_options, "on_event", False) is None:  # refused handshakes, revocations: same log
            link_options.on_event = self.rlog  # type: ignore[union-attr]
        self.pair_id, self.kind = pair_id, kind
        self.shared = bool(getattr(link, "shared", False))
        """The link splits each sender's frames over several receivers: seq gaps are not losses."""
        self.my_pair = wire.pair_prefix(pair_id)
        self.stats = ReceiverStats(pair_id=pair_id, endpoint=link.endpoint)
        self.peers: OrderedDict[Hashable, _Peer] = OrderedDict()  # least recently seen first
        self.max_senders = max(1, max_senders)
        self.logged: OrderedDict[tuple, None] = OrderedDict()
        self.timer = StageTimer("unpack", "decode", "sink")
        self.unpacked = 0
        """Messages unpacked (or refused by ``wire.unpack``): the count ``unpack`` time is over."""
        self.frames = 0
        """Frames decoded and handed to the sinks."""

    def reject(self, reason: str, key: tuple, message: str) -> None:
        """Count a refusal by ``reason``; log ``message`` the first time for this reason and ``key`` (the last
        256 keys are remembered) unless this reason's log rate is used up."""
        rejected = self.stats.rejected
        rejected[reason] = rejected.get(reason, 0) + 1
        seen = (reason, *key)
        if seen in self.logged:
            self.logged.move_to_end(seen)
            return
        self.logged[seen] = None
        if len(self.logged) > 256:
            self.logged.popitem(last=False)
        self.rlog(reason, message)

    def take(self, msg: Any) -> None:
        """Unpack → pair and coding check → decode → sinks for one message, or count why it was refused."""
        ns = time.perf_counter_ns
        t0 = ns()
        try:
            p = wire.unpack(msg.data)
        except PacketError as e:
            self.reject(e.reason, (), f"refused a packet: {e}")
            return
        finally:
            self.unpacked += 1
            self.timer.add("unpack", ns() - t0)
        key: Hashable = msg.peer or p.sender_id  # the authenticated identity when there is one
        peer = self.peers.get(key)
        label = peer.stats.name if peer is not None else f"id-{p.sender_id:04x}"
        name = msg.peer or p.sender_name
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
        ps = self._account(peer, key, label, name, p, msg)
        for sink in self.sinks:
            sink.write(ps.name, p.seq, image)
        self.timer.add("decode", t2 - t1)
        self.timer.add("sink", ns() - t2)
        self.frames += 1

    def _account(
        self, peer: _Peer | None, key: Hashable, label: str, name: str | None, p: Packet, msg: Any
    ) -> PeerStats:
        """A decoded frame of ``p``'s sender: names, sequence gaps and restarts, bytes, latency."""
        arrived_us = now_us()
        if peer is None:
            if len(self.peers) >= self.max_senders:
                _, gone = self.peers.popitem(last=False)
                self.stats.evicted += 1
                self.rlog("evicted", f"forgot sender {gone.stats.name}: more than {self.max_senders} senders")
            peer = self.peers[key] = _Peer(p.sender_id)
            self.rlog(
                "new-sender",
                f"new sender {label} (id {p.sender_id:#06x})"
                + (f", authenticated as {msg.peer}" if msg.peer else ""),
            )
        else:
            self.peers.move_to_end(key)
        ps = peer.stats
        ps.sender_id = p.sender_id
        if p.sender_name is not None:
            ps.claimed = p.sender_name
        if msg.peer:  # the authenticated identity names the sender; the claimed name is a label
            ps.name, ps.peer, peer.named = msg.peer, msg.peer, True
            if p.sender_name is not None and p.sender_name != msg.peer:
                ps.name_mismatch += 1
                self.rlog(
                    "name",
                    f"the node authenticated as {msg.peer} calls itself {p.sender_name}: filed under "
                    f"{msg.peer} (counted in name_mismatch)",
                )
        elif name is not None and name != ps.name:
            if peer.named:
                self.rlog(
                    "rename",
                    f"sender id {p.sender_id:#06x} now calls itself {name} (was {ps.name}): two senders "
                    "share an id, or one was renamed; give them distinct names (or use CURVE keys, which "
                    "tell senders apart)",
                )
            ps.name, peer.named = name, True
        if ps.last_seq >= 0:
            gap = (p.seq - ps.last_seq - 1) & wire.MASK32
            if gap >= 1 << 31:
                ps.restarts += 1
                self.rlog("restart", f"sender {ps.name} restarted (seq {ps.last_seq} -> {p.seq})")
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
            stats.refused_by = dict(getattr(ls, "refused_by", {}))
            stats.revocations = getattr(ls, "revocations", 0)
        stats.sink_errors = sum(s.errors for s in self.sinks)
        stats.log_suppressed = self.rlog.suppressed
        senders = {}
        for peer in self.peers.values():
            ps = peer.report(interval)
            name = ps.name if ps.name not in senders else f"{ps.name}#{ps.sender_id:04x}"
            senders[name] = ps
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
    counted in ``rejected`` by reason and skipped; the loop keeps serving the other senders. Refusals are
    logged at most a few lines per reason every 10 s (pair mismatches name both ids), the rest counted. A
    frame a sink cannot write is counted in ``sink_errors``; the loop goes on.

    Does not close the link or the sinks (the caller owns them).
    """
    options = options or ReceiveOptions()
    stop = stop or threading.Event()
    rx = _Receiving(
        link, decoder, pair_id, kind, sinks or [], on_log or (lambda _msg: None), options.max_senders
    )
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
    rx.rlog.flush()
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
