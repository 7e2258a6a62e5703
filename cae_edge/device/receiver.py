"""The receiver's end of a stream: a receive thread drains the socket into bounded per-sender queues, the
main loop decodes round-robin across senders, fresh frames first; every packet is decoded or counted.

::

    receive thread (cheap: no decode)                main loop (the decode budget)
    PullReceiver ─► wire.unpack ─► pair/coding ─┐    round-robin ─► age check ─► decode ─► sinks
                    (rejects counted by reason) │    over senders   (too old:               (PNG, video,
                                                ▼         ▲          "stale")                mosaic)
                    per-sender queues, bounded ─┴─────────┘
                    (full: the oldest is dropped, "backlog")

A tiled packet (``wire.Packet.tiled``: ``stream send --tiles N``) is decoded tile by tile and reassembled
(:func:`cae_edge.tiles.decode_tiled`), in this process also with decode workers; the sinks get the whole
image, and it counts as one frame.

Who a sender is: the identity the link authenticated, when there is one — on a CURVE link the name of the
sender's key in the allowed-keys directory (the ZAP ``User-Id`` each message carries), on MQTT the node of
the topic. Per-sender state, output folders and videos are keyed by it; the name in the packets is then a
label only, and a packet claiming another name is counted (``name_mismatch``). Without one (``--insecure``)
the 16-bit sender id and the claimed name are all there is.

Nothing one sender does stops the receiver or grows it without bound: a frame a sink cannot write is counted
(``sink_errors``); per-sender state is kept for at most ``max_senders`` senders, the one seen longest ago
forgotten first (``evicted``); refusals and other per-packet events are logged at most a few lines per kind
every 10 s (:class:`~cae_edge.device.lograte.RateLimitedLog`), the rest counted.

Why this shape, under overload (more frames offered than the decoder can take):

* **Age builds only in queues we count.** The receive thread takes every packet off the socket as it comes,
  so ZeroMQ's own queue (``RCVHWM``) stays nearly empty. A full ZeroMQ queue stops libzmq reading the
  connection: age builds where nobody counts it, ZMTP heartbeats (when on) time the sender out (a reconnect
  loses what sat in the dropped connection), and a hang-up meanwhile can abort libzmq 4.3.5 (docs/fleet.md).
* **Bounded age.** A frame is decoded only while it is fresh: when its turn comes, one older than
  ``max_age_ms`` is dropped (reason ``stale``), and so is one older than half of it while a newer frame of the
  same sender waits — the newest frames win and delivered frames stay well inside the bound.
* **Fairness.** Each turn of the main loop serves the next sender with waiting frames, so a fast sender
  cannot starve a slow one; each sender's queue holds ``queue_per_sender`` frames.
* **Every packet accounted for.** Per sender: ``received = frames + sum(dropped.values()) + queued``, and the
  gaps in its sequence numbers (``lost``) are what never arrived (dropped by the sender, lost in transit).
  A restarted sender is told by its epoch (``cae_edge.wire``), not by the sequence going backwards alone.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .. import wire
from ..errors import CaeEdgeError, ConfigError, PacketError
from ..payload import payload_kind
from ..tiles import decode_tiled
from ..wire import Packet, PayloadKind
from .lograte import RateLimitedLog
from .mqtt import MqttReceiver, MqttReceiverOptions
from .sinks import FrameSink, GuardedSink
from .stream import Log, ReceiverLink, Sessions, StageTimer, now_us
from .transport import PullReceiver, Received, ReceiverOptions

if TYPE_CHECKING:
    from .decode_pool import Answer

DROP_REASONS = ("stale", "backlog", "shutdown", "worker")
"""Why an arrived frame was not decoded: too old when its turn came, pushed out of a full queue, still
queued (or in a decode worker) when the receiver stopped, or in a decode worker that died. (A payload the
decoder refuses is counted under its reject reason, e.g. ``payload``.)"""
SKEW_TOLERANCE_US = 1_000_000
"""Clocks that disagree by less than this count as synchronised: a frame's age is its capture time's."""
SKEW_WINDOW_US = 5_000_000
"""The clock offset estimate is the fastest frame (arrival - capture) of the last 5-10 s."""
GIVE_WAY_STEPS = 4
"""With decode workers the receive thread pauses after a batch while more than this many batches per
decode process are queued (:attr:`_ReceiveThread.give_way`)."""
JUMP_SLACK = 1000
"""A forward sequence jump counts as lost frames only if the sender could have made them in the capture time
between the two packets (at most one per 20 µs, plus this slack); a bigger jump is counted in ``jumps``."""


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
    """Messages the receive thread takes from the socket per wake-up."""
    max_age_ms: float = 250.0
    """Latency bound, capture → decoded: a frame older than this when its turn comes is dropped undecoded
    (reason ``stale``), and so is one older than half of it while a newer frame of the same sender waits.
    0 = no bound (decode everything that fits in the queues)."""
    queue_per_sender: int = 256
    """Frames waiting for decode per sender; a full queue drops its oldest (reason ``backlog``). All senders
    together hold at most ``queue_per_sender * max_senders`` (beyond, the next sender in turn loses one)."""
    max_senders: int = 1024
    """Senders whose state (counters, latencies) is kept; beyond that the one seen longest ago is forgotten
    (``ReceiverStats.evicted``): a flood of made-up sender ids cannot grow the receiver or its status file."""
    workers: int = 1
    """Decode processes, this one counted: 1 = decode in this process only (one Python core); N > 1 = N - 1
    worker processes (:mod:`cae_edge.device.decode_pool`) are handed frames in batches, and this process
    decodes what they have no room for, so N processes decode on N cores. Each sender's frames reach the
    sinks in the order they were taken from its queue, wherever they were decoded. Sinks, the age check and
    accounting stay in this process."""

    def check(self) -> None:
        """Raise :class:`ConfigError` for a bad value."""
        if not self.max_age_ms >= 0:
            raise ConfigError(f"max age {self.max_age_ms!r} ms: must be >= 0 (0 = no bound)")
        if not 1 <= self.queue_per_sender <= 1_000_000:
            raise ConfigError(f"queue per sender {self.queue_per_sender}: must be 1 .. 1000000")
        if self.batch < 1:
            raise ConfigError(f"batch {self.batch}: must be >= 1")
        if not 1 <= self.workers <= 64:
            raise ConfigError(
                f"workers {self.workers}: must be 1 .. 64 decode processes, the receiver's own counted "
                "(1 = decode in this process only)"
            )


@dataclass
class PeerStats:
    """One sender as the receiver sees it.

    ``received = frames + sum(dropped.values()) + queued``; ``lost`` counts what never arrived.
    """

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
    received: int = 0
    """Packets of this sender that arrived and passed the wire, pair and coding checks."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Arrived but not decoded, by reason (:data:`DROP_REASONS`, or the decoder's reject reason)."""
    queued: int = 0
    """Waiting for decode now (with ``--workers`` > 1: including frames in a decode worker, and decoded ones
    waiting for this sender's earlier frames to come back from one)."""
    lost: int = 0
    """Frames that never arrived: gaps in the sequence numbers (dropped by the sender or lost in transit)."""
    skipped: int = 0
    """Gaps in seq on a shared subscription (MQTT, ``link.shared``): frames another receiver of the group
    took, or lost; one receiver cannot tell which, so they are not counted in ``lost``."""
    restarts: int = 0
    """Times the sender started a new sequence (a new epoch; for senders without one, seq going backwards)."""
    jumps: int = 0
    """Forward sequence jumps too big for the time between the two frames (not counted in ``lost``)."""
    id_conflict: bool = False
    """Two sender processes send under this id at once (their epochs alternate); ``lost`` is not counted."""
    last_seq: int = -1
    """Last sequence number received."""
    epoch: int | None = None
    """The sender's current epoch (None for senders that do not send one)."""
    bytes: int = 0
    """Packet bytes received."""
    fps: float = 0.0
    """Frames decoded per second since the previous stats report."""
    latency_ms: dict[str, float] = field(default_factory=dict)
    """Age of each decoded frame, capture → decoded (mean, p50, p95, p99, max over the last 2048 frames).
    Needs synchronised clocks across machines; see ``clock_offset_ms``."""
    clock_offset_ms: float = 0.0
    """The sender's clock behind the receiver's (ms, + = behind), when they disagree by more than 1 s: ages
    are then measured from the fastest frame of the last 5-10 s instead of the sender's clock. 0 otherwise."""
    peer: str | None = None
    """Authenticated identity from the transport (CURVE key name), when secured."""
    last_seen: float = 0.0
    """Unix time of the last packet."""

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
    received: int = 0
    """Frames that arrived, all senders (packets refused by the checks are in ``rejected`` instead)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Arrived frames not decoded, all senders, by reason (see :class:`PeerStats`)."""
    queued: int = 0
    """Frames waiting for decode now, all senders (including those in decode workers)."""
    max_age_ms: float = 0.0
    """The age bound in force (0 = none)."""
    elapsed_s: float = 0.0
    """Seconds since the loop started."""
    fps: float = 0.0
    """Decoded frames per second over the run."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Packets refused, by reason (``pair``, ``crc``, ``magic``, ``version``, ``length``, ``payload``...;
    compact frames: ``no-session`` before the sender's first session packet, ``session``, ``varint``)."""
    senders: dict[str, PeerStats] = field(default_factory=dict)
    """Per sender, by name."""
    unpack_us: float = 0.0
    """Mean ``wire.unpack`` time (receive thread)."""
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
    """Senders whose state was forgotten to keep at most ``max_senders`` (frames they still had queued are
    still decoded or dropped, and counted in the totals)."""
    log_suppressed: int = 0
    """Log lines not written because their kind exceeded its rate (the events are still counted)."""
    workers: int = 1
    """Decode processes, the receiver's own counted (1 = decoding in the receiver's process only)."""
    decoded_here: int = 0
    """Frames decoded in the receiver's own process: all of them with one decode process; with more, those
    the worker processes had no room for (and tiled frames)."""
    worker_restarts: int = 0
    """Decode workers that died and were started again (their frames: dropped, reason ``worker``)."""
    worker_cpu_s: float = 0.0
    """CPU seconds the decode worker processes spent decoding (0 with one decode process)."""
    worker_idle_s: float = 0.0
    """Seconds the decode worker processes waited for their next batch after answering one (ran dry: the
    receiver's process did not refill them in time, or there was nothing to decode), all together."""
    worker_pids: list[int] = field(default_factory=list)
    """Process ids of the decode worker processes (``workers`` - 1 of them)."""

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rejected_total"] = self.rejected_total
        return d


class Ledger(Protocol):
    """Optional record of what became of each packet, for exact accounting (the soak test keeps one).

    ``arrived`` is called on the receive thread before the packets are queued; ``dropped`` on either thread;
    ``delivered`` on the main loop after the sinks took the frame. Implementations must be thread-safe.
    """

    def arrived(self, packets: list[Packet]) -> None: ...

    def dropped(self, packet: Packet, reason: str) -> None: ...

    def delivered(self, packet: Packet, age_us: int) -> None: ...


class _ClockOffset:
    """The sender clock's offset from ours: the smallest (arrival - capture) of the last 5-10 s."""

    __slots__ = ("cur", "prev", "until", "correction")

    def __init__(self) -> None:
        self.cur = self.prev = None
        self.until = 0
        self.correction = 0
        """What :meth:`update` returned last (µs)."""

    def update(self, delay_us: int, now: int) -> int:
        """Take one frame's (arrival - capture); return the correction to add to capture times."""
        if now >= self.until:
            self.prev, self.cur, self.until = self.cur, None, now + SKEW_WINDOW_US
        if self.cur is None or delay_us < self.cur:
            self.cur = delay_us
        best = self.cur if self.prev is None else min(self.cur, self.prev)
        self.correction = best if abs(best) > SKEW_TOLERANCE_US else 0
        return self.correction


class _Peer:
    """One sender's state: statistics, sequence tracking, clock offset and its queue of frames to decode."""

    __slots__ = (
        "stats", "lat", "frames_at_report", "named", "queue", "in_ring", "evicted", "epochs", "last_t",
        "clock", "pending",
    )  # fmt: skip

    def __init__(self, sid: int) -> None:
        self.stats = PeerStats(name=f"id-{sid:04x}", sender_id=sid)
        self.lat: deque[int] = deque(maxlen=2048)
        self.frames_at_report = 0
        self.named = False
        self.queue: deque[tuple[Packet, int]] = deque()
        """(packet, capture time in our clock, µs) per frame waiting for decode, oldest first."""
        self.in_ring = False
        self.evicted = False
        """Forgotten beyond ``max_senders``: its queued frames are still served, counted in the totals."""
        self.epochs: deque[int] = deque(maxlen=8)
        self.last_t = 0
        self.clock = _ClockOffset()
        self.pending: deque[_Ticket] = deque()
        """With decode workers: this sender's frames taken for decode and not yet delivered or counted, in
        the order taken; they settle from the front only, so they reach the sinks in that order."""

    def sequence(self, p: Packet, t_us: int, log: Callable[[str, str], Any], shared: bool = False) -> None:
        """Restarts, gaps and jumps from this packet's epoch and sequence number (``t_us``: capture time;
        ``shared``: the link splits this sender's frames over several receivers, so gaps are ``skipped``)."""
        ps = self.stats
        e = p.epoch
        if e is not None and e != ps.epoch:
            if e in self.epochs:  # back to an epoch seen before: two processes under one id
                if not ps.id_conflict:
                    ps.id_conflict = True
                    log(
                        "conflict",
                        f"two senders send as {ps.name} (id {ps.sender_id:#06x}) at once: give each node its "
                        "own name; this sender's losses are no longer counted",
                    )
            else:
                if ps.epoch is not None:
                    ps.restarts += 1
                    log("restart", f"sender {ps.name} restarted (new epoch; seq {ps.last_seq} -> {p.seq})")
                self.epochs.append(e)
            ps.epoch = e
        elif ps.last_seq >= 0:
            gap = (p.seq - ps.last_seq - 1) & wire.MASK32
            if gap >= 1 << 31:  # backwards: a restart for a sender without epochs; else its epoch will tell
                if not self.epochs:
                    ps.restarts += 1
                    log("restart", f"sender {ps.name} restarted (seq {ps.last_seq} -> {p.seq})")
            elif gap and not ps.id_conflict:
                if gap > max(0, t_us - self.last_t) // 20 + JUMP_SLACK:
                    ps.jumps += 1
                elif shared:
                    ps.skipped += gap
                else:
                    ps.lost += gap
        ps.last_seq = p.seq
        self.last_t = t_us

    def pick(
        self, now: int, max_age: int, margin: int, drop: Callable[[_Peer, Packet, str], None]
    ) -> tuple | None:
        """The next frame to decode (oldest first), after dropping the stale ones; None when none is left.

        Stale: older than ``max_age`` less ``margin`` (the time a decode takes), or older than half of
        ``max_age`` while a newer frame waits.
        """
        q = self.queue
        while q:
            p, t = q[0]
            if max_age:
                age = now - t
                if age + margin > max_age or (2 * age > max_age and len(q) > 1):
                    q.popleft()
                    drop(self, p, "stale")
                    continue
            return q.popleft()
        return None

    def report(self, interval: float) -> PeerStats:
        """A copy of the stats, with the rate since the last report (``interval`` > 0) and the latencies."""
        ps = self.stats
        if interval > 0:
            ps.fps = round((ps.frames - self.frames_at_report) / interval, 1)
            self.frames_at_report = ps.frames
        ps.queued = len(self.queue) + len(self.pending)
        ps.clock_offset_ms = round(self.clock.correction / 1000, 1)
        if self.lat:
            lat = np.fromiter(self.lat, dtype=np.int64, count=len(self.lat)) / 1000.0
            p50, p95, p99 = np.percentile(lat, (50, 95, 99))
            ps.latency_ms = {
                "mean": round(float(lat.mean()), 3),
                "p50": round(float(p50), 3),
                "p95": round(float(p95), 3),
                "p99": round(float(p99), 3),
                "max": round(float(lat.max()), 3),
            }
        return dataclasses.replace(ps, dropped=dict(ps.dropped), latency_ms=dict(ps.latency_ms))


class _Ticket:
    """A frame taken for decode while decode workers run, until it is delivered or counted.

    Decoding is a function of the payload alone (compact frames are resolved on the receive thread), so a
    frame may be decoded in any worker or in this process; its sender's tickets (``_Peer.pending``) settle
    in the order they were taken, so its frames reach the sinks in that order all the same."""

    __slots__ = ("peer", "packet", "t_us", "started", "done", "image", "reason", "message", "decode_ns")

    def __init__(self, peer: _Peer, packet: Packet, t_us: int, started: int) -> None:
        self.peer, self.packet, self.t_us, self.started = peer, packet, t_us, started
        self.done = False
        """Decoded, refused, or failed (``reason``): ready to settle once the tickets before it are."""
        self.image: Any = None
        self.reason: str | None = None
        self.message = ""
        self.decode_ns = 0


class Decoder(Protocol):
    """What the receiver needs of a decoder: payload bytes in, a 28x28 uint8 image out."""

    def decode(self, payload: bytes) -> np.ndarray: ...


class _Receiving:
    """The receiver's state and its two steps: :meth:`arrive` (receive thread) and :meth:`next_frame` +
    :meth:`serve` (main loop). One lock guards the queues and the counters both threads touch."""

    def __init__(
        self,
        link: ReceiverLink,
        decoder: Decoder,
        pair_id: str,
        kind: PayloadKind,
        sinks: list[FrameSink],
        log: Log,
        options: ReceiveOptions,
        ledger: Ledger | None = None,
    ) -> None:
        self.link, self.decoder, self.log = link, decoder, log
        self.rlog = RateLimitedLog(log)
        self.sinks = [s if isinstance(s, GuardedSink) else GuardedSink(s, self.rlog) for s in sinks]
        link_options = getattr(link, "options", None)
        if getattr(link_options, "on_event", False) is None:  # refused handshakes, revocations: same log
            link_options.on_event = self.rlog  # type: ignore[union-attr]
        self.pair_id, self.kind, self.ledger = pair_id, kind, ledger
        self.shared = bool(getattr(link, "shared", False))
        """The link splits each sender's frames over several receivers: seq gaps are not losses."""
        self.my_pair = wire.pair_prefix(pair_id)
        self.sessions = Sessions(max(1, options.max_senders))
        """Each sender's last full packet, which its compact frames are read against (receive thread only)."""
        self.max_age = int(options.max_age_ms * 1000)
        self.capacity = options.queue_per_sender
        self.stats = ReceiverStats(
            pair_id=pair_id, endpoint=link.endpoint, max_age_ms=options.max_age_ms, workers=options.workers
        )
        self.peers: OrderedDict[Hashable, _Peer] = OrderedDict()  # least recently seen first
        self.max_senders = max(1, options.max_senders)
        self.forgotten: dict[str, int] = {}
        """Drops by reason of senders no longer in ``peers`` (evicted), so that totals stay whole."""
        self.forgotten_received = 0
        """Frames received from senders no longer in ``peers``."""
        self.ring: deque[_Peer] = deque()
        """Senders with frames waiting, in serving order (an evicted one stays until its queue is empty)."""
        self.queued = 0
        """Frames waiting in all queues."""
        self.max_queued = options.queue_per_sender * self.max_senders
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)
        self.logged: OrderedDict[tuple, None] = OrderedDict()
        self.timer = StageTimer("unpack", "decode", "sink")
        self.unpacked = 0
        """Messages unpacked (or refused by ``wire.unpack``): the count ``unpack`` time is over."""
        self.frames = 0
        """Frames decoded and handed to the sinks."""
        self.service_us = 0.0
        """Decode + sinks time per frame, moving average: a frame is decoded only if it will still be
        younger than the max age when the sinks have it."""
        self.workers = options.workers
        self.inflight = 0
        """Tickets not yet settled, all senders (frames in decode workers, or decoded and waiting for their
        sender's earlier frames; main loop only)."""
        self.decoded_here = 0
        """Frames decoded in this process (with workers: those handed to none, see :meth:`hand_off`)."""
        self.pool: Any = None
        """The :class:`~cae_edge.device.decode_pool.DecodePool` when decoding in workers."""

    # ------------------------------------------------------------------------------ both threads

    def reject(self, reason: str, key: tuple, message: str) -> None:
        """Count a refusal by ``reason``; log ``message`` the first time for this reason and ``key`` (the last
        256 keys are remembered) unless this reason's log rate is used up."""
        seen = (reason, *key)
        with self.lock:
            rejected = self.stats.rejected
            rejected[reason] = rejected.get(reason, 0) + 1
            first = seen not in self.logged
            self.logged[seen] = None
            self.logged.move_to_end(seen)
            if len(self.logged) > 256:
                self.logged.popitem(last=False)
        if first:
            self.rlog(reason, message)

    def _drop(self, peer: _Peer, p: Packet, reason: str) -> None:
        """Count an arrived frame that will not be decoded (caller holds the lock)."""
        dropped = self.forgotten if peer.evicted else peer.stats.dropped
        dropped[reason] = dropped.get(reason, 0) + 1
        if self.ledger is not None:
            self.ledger.dropped(p, reason)

    # ------------------------------------------------------------------------------ receive thread

    @staticmethod
    def sender_key(p: Packet, msg: Received) -> Hashable:
        """What per-sender state is keyed by (opaque to everything else): the identity the link
        authenticated when there is one, else the wire's sender id."""
        return msg.peer or p.sender_id

    def _label(self, p: Packet, msg: Received) -> str:
        name = msg.peer or p.sender_name
        if name is not None:
            return name
        peer = self.peers.get(p.sender_id)
        return peer.stats.name if peer is not None else f"id-{p.sender_id:04x}"

    def arrive(self, msgs: list[Received]) -> None:
        """Unpack and check a batch from the socket; queue each good frame for its sender (no decode here)."""
        ns = time.perf_counter_ns
        good: list[tuple[Packet, Received]] = []
        t0 = ns()
        for msg in msgs:
            try:
                p = self.sessions.unpack(msg.data, msg.peer)
            except PacketError as e:
                self.reject(e.reason, (), f"refused a packet: {e}")
                continue
            if p.pair != self.my_pair:
                who = self._label(p, msg)
                self.reject(
                    "pair",
                    (p.sender_id, p.pair),
                    f"refused frames from {who}: its bundle pair id starts {p.pair.hex()} but "
                    f"this receiver's bundle is {self.pair_id}; sender and receiver must use the same bundle",
                )
                continue
            if p.kind != self.kind:
                who = self._label(p, msg)
                self.reject(
                    "coding",
                    (p.sender_id, p.kind),
                    f"refused frames from {who}: payload coding {p.kind.name.lower()} but the "
                    f"bundle uses {self.kind.name.lower()}",
                )
                continue
            self.sessions.took(p, msg.peer)
            good.append((p, msg))
        self.unpacked += len(msgs)
        self.timer.add("unpack", ns() - t0)
        if not good:
            return
        if self.ledger is not None:
            self.ledger.arrived([p for p, _ in good])
        now = now_us()
        with self.ready:
            for p, msg in good:
                key = self.sender_key(p, msg)
                peer = self.peers.get(key)
                if peer is None:
                    peer = self._new_peer(key, p, msg)
                else:
                    self.peers.move_to_end(key)
                self._queue(peer, p, msg, now)
            self.ready.notify()

    def _new_peer(self, key: Hashable, p: Packet, msg: Received) -> _Peer:
        """State for a sender seen for the first time; beyond ``max_senders`` the one seen longest ago is
        forgotten (its queued frames are still served) (caller holds the lock)."""
        if len(self.peers) >= self.max_senders:
            _, gone = self.peers.popitem(last=False)
            gone.evicted = True
            for reason, n in gone.stats.dropped.items():
                self.forgotten[reason] = self.forgotten.get(reason, 0) + n
            self.forgotten_received += gone.stats.received
            self.stats.evicted += 1
            self.rlog("evicted", f"forgot sender {gone.stats.name}: more than {self.max_senders} senders")
        peer = self.peers[key] = _Peer(p.sender_id)
        self.rlog(
            "new-sender",
            f"new sender {self._label(p, msg)} (id {p.sender_id:#06x})"
            + (f", authenticated as {msg.peer}" if msg.peer else ""),
        )
        return peer

    def _queue(self, peer: _Peer, p: Packet, msg: Received, now: int) -> None:
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
        elif p.sender_name is not None and p.sender_name != ps.name:
            if peer.named:
                self.rlog(
                    "rename",
                    f"sender id {p.sender_id:#06x} now calls itself {p.sender_name} (was {ps.name}): two "
                    "senders share an id, or one was renamed; give them distinct names (or use CURVE keys, "
                    "which tell senders apart)",
                )
            ps.name, peer.named = p.sender_name, True
        t = wire.unwrap_us(p.t_us, now)
        peer.sequence(p, t, self.rlog, self.shared)
        t += peer.clock.update(now - t, now)
        ps.received += 1
        ps.bytes += len(msg.data)
        ps.last_seen = now / 1e6
        q = peer.queue
        q.append((p, t))
        if len(q) > self.capacity:
            self._drop(peer, q.popleft()[0], "backlog")
        else:
            self.queued += 1
        if not peer.in_ring:
            peer.in_ring = True
            self.ring.append(peer)
        if self.queued > self.max_queued:  # all queues together: the next sender in turn loses its oldest
            victim = next(v for v in self.ring if v.queue)
            self._drop(victim, victim.queue.popleft()[0], "backlog")
            self.queued -= 1

    # ------------------------------------------------------------------------------ main loop

    def next_frames(self, n: int, timeout_s: float) -> list[tuple[_Peer, Packet, int]]:
        """Up to ``n`` fresh frames, one sender's next after another (round-robin), under one lock; waits up
        to ``timeout_s`` while none is queued."""
        out: list[tuple[_Peer, Packet, int]] = []
        with self.ready:
            if not self.ring:
                self.ready.wait(timeout_s)
            now = now_us()
            margin = min(int(self.service_us), self.max_age // 2)
            ring, max_age, drop = self.ring, self.max_age, self._drop
            while ring and len(out) < n:
                peer = ring.popleft()
                before = len(peer.queue)
                item = peer.pick(now, max_age, margin, drop)
                self.queued -= before - len(peer.queue)
                if peer.queue:
                    ring.append(peer)
                else:
                    peer.in_ring = False
                if item is not None:
                    out.append((peer, item[0], item[1]))
        return out

    def next_frame(self, timeout_s: float) -> tuple[_Peer, Packet, int] | None:
        """The next sender's next fresh frame (round-robin), waiting up to ``timeout_s`` for one."""
        got = self.next_frames(1, timeout_s)
        return got[0] if got else None

    def serve(self, peer: _Peer, p: Packet, t_us: int) -> None:
        """Decode one frame and hand it to the sinks, or count why the decoder refused it."""
        ns = time.perf_counter_ns
        started = now_us()
        t1 = ns()
        try:
            image = self.decode_tiled(p.payload) if p.tiled else self.decoder.decode(p.payload)
        except (PacketError, CaeEdgeError, ValueError) as e:
            self.refused(peer, p, getattr(e, "reason", "payload"), str(e))
            return
        self.deliver(peer, p, t_us, image, ns() - t1, started)

    def refused(self, peer: _Peer, p: Packet, reason: str, message: str) -> None:
        """Count a frame the decoder refused (counted under its reject reason)."""
        self.reject(reason, (p.sender_id,), f"refused a frame from {peer.stats.name}: {message}")
        with self.lock:
            self._drop(peer, p, reason)

    def decode_tiled(self, payload: bytes) -> np.ndarray:
        """A tiled payload (:mod:`cae_edge.tiles`) -> the whole image, tile by tile."""
        fixed = getattr(self.decoder, "latent_dim", None) if self.kind == PayloadKind.INT8 else None
        return decode_tiled(self.decoder, payload, fixed=fixed)

    def hand_off(self, items: list[tuple[_Peer, Packet, int]], room: list[int]) -> None:
        """Give frames to the decode workers, as many as each has ``room`` for, and decode the rest here
        (tiled frames always here: workers return batches of 28x28 images). Each frame gets a ticket in its
        sender's ``pending`` line and counts as queued until it settles (:meth:`settle`)."""
        started = now_us()
        submit = self.pool.submit
        here: list[_Ticket] = []
        worker, left = 0, room[0] if room else 0
        for peer, p, t_us in items:
            ticket = _Ticket(peer, p, t_us, started)
            peer.pending.append(ticket)
            if p.tiled:
                here.append(ticket)
                continue
            while left <= 0 and worker + 1 < len(room):
                worker += 1
                left = room[worker]
            if left > 0:
                submit(worker, ticket, p.payload)
                left -= 1
            else:
                here.append(ticket)
        self.inflight += len(items)
        self.pool.flush()  # the workers' batches go now, before this process decodes its share
        if not here:
            return
        ns = time.perf_counter_ns
        decoder, peers = self.decoder, {}
        for ticket in here:
            p = ticket.packet
            ticket.started = now_us()
            t1 = ns()
            try:
                ticket.image = self.decode_tiled(p.payload) if p.tiled else decoder.decode(p.payload)
                self.decoded_here += 1
            except (PacketError, CaeEdgeError, ValueError) as e:
                ticket.reason, ticket.message = getattr(e, "reason", "payload"), str(e)
            ticket.decode_ns, ticket.done = ns() - t1, True
            peers[id(ticket.peer)] = ticket.peer
        for peer in peers.values():
            self.settle(peer)

    def returned(self, answer: Answer) -> None:
        """A batch back from a decode worker: its tickets are done; settle their senders."""
        t_ns = answer.decode_ns_each
        peers = {}
        for ticket, image, reason, message in answer:
            ticket.image, ticket.reason, ticket.message = image, reason, message or ""
            ticket.decode_ns, ticket.done = t_ns, True
            peers[id(ticket.peer)] = ticket.peer
        for peer in peers.values():
            self.settle(peer)

    def settle(self, peer: _Peer) -> None:
        """Deliver or count ``peer``'s done tickets from the front of its line, in order; stop at the first
        one still in a worker."""
        q = peer.pending
        while q and q[0].done:
            t = q.popleft()
            self.inflight -= 1
            if t.reason is None:
                self.deliver(peer, t.packet, t.t_us, t.image, t.decode_ns, t.started)
            elif t.reason in DROP_REASONS:  # not the payload's fault: a drop, not a refusal
                if t.reason == "worker":
                    self.rlog(
                        "worker", f"a decode worker died holding a frame from {peer.stats.name}: {t.message}"
                    )
                with self.lock:
                    self._drop(peer, t.packet, t.reason)
            else:
                self.refused(peer, t.packet, t.reason, t.message)

    def deliver(self, peer: _Peer, p: Packet, t_us: int, image: Any, decode_ns: int, started: int) -> None:
        """Hand a decoded frame to the sinks and count it (``started``: when its decode began, µs)."""
        ns = time.perf_counter_ns
        t2 = ns()
        name = peer.stats.name
        for sink in self.sinks:
            sink.write(name, p.seq, image)
        done = now_us()
        age = done - t_us
        self.timer.add("decode", decode_ns)
        self.timer.add("sink", ns() - t2)
        self.service_us += (done - started - self.service_us) / 16
        peer.stats.frames += 1
        peer.lat.append(age)
        if self.ledger is not None:
            self.ledger.delivered(p, age)
        self.frames += 1

    def drop_queued(self, reason: str = "shutdown") -> None:
        """Count every frame still queued as dropped for ``reason`` (the loop is ending)."""
        with self.lock:
            for peer in (*self.ring, *self.peers.values()):
                while peer.queue:
                    self._drop(peer, peer.queue.popleft()[0], reason)
                peer.in_ring = False
            self.ring.clear()
            self.queued = 0

    def report(self, interval: float) -> ReceiverStats:
        """The statistics now; per-sender rates over the last ``interval`` seconds (0: leave them)."""
        stats, frames, timer = self.stats, self.frames, self.timer
        stats.frames = frames
        stats.elapsed_s = timer.elapsed_s()
        stats.fps = round(frames / stats.elapsed_s, 1) if stats.elapsed_s > 0 else 0.0
        stats.unpack_us = timer.mean_us("unpack", self.unpacked)
        stats.decode_us = timer.mean_us("decode", frames)
        stats.sink_us = timer.mean_us("sink", frames)
        # escapes decoded in this process (with workers: in the frames decoded here)
        own = getattr(getattr(self.decoder, "codec", None), "escaped_decoded", 0)
        if self.pool is not None:
            stats.escaped = self.pool.escaped + own
            stats.worker_restarts = self.pool.restarts
            stats.worker_cpu_s = round(self.pool.cpu_s, 3)
            stats.worker_idle_s = round(self.pool.idle_s, 3)
            stats.worker_pids = self.pool.pids
        else:
            stats.escaped = own
        stats.decoded_here = self.decoded_here if self.pool is not None else frames
        if not self.link.closed:
            ls = self.link.stats
            stats.connects, stats.peers = ls.connects, ls.peers
            stats.refused_by = dict(getattr(ls, "refused_by", {}))
            stats.revocations = getattr(ls, "revocations", 0)
        stats.sink_errors = sum(s.errors for s in self.sinks)
        stats.log_suppressed = self.rlog.suppressed
        with self.lock:
            reports = [peer.report(interval) for peer in self.peers.values()]
            rejected = dict(stats.rejected)
            dropped = dict(self.forgotten)
            received = self.forgotten_received
            queued = self.queued + self.inflight
        senders: dict[str, PeerStats] = {}
        for ps in reports:
            name = ps.name if ps.name not in senders else f"{ps.name}#{ps.sender_id:04x}"
            senders[name] = ps
        for ps in reports:
            for reason, n in ps.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + n
        return dataclasses.replace(
            stats,
            senders=senders,
            rejected=rejected,
            dropped=dropped,
            received=received + sum(ps.received for ps in reports),
            queued=queued,
        )


class _ReceiveThread(threading.Thread):
    """Drains the socket into the per-sender queues until told to halt, then takes what already arrived."""

    FINAL_DRAIN_S = 0.25
    """After the halt, take in what already arrived for at most this long (then close: the rest is lost
    with the socket, as it would be a moment later anyway)."""
    GIVE_WAY_S = 0.001
    """With decode workers: how long this thread pauses after a batch while the queues are deep."""

    def __init__(self, link: ReceiverLink, rx: _Receiving, batch: int, give_way: int = 0) -> None:
        super().__init__(name="cae-edge-receive", daemon=True)
        self.link, self.rx, self.batch = link, rx, batch
        self.give_way = give_way
        """Frames queued beyond which this thread pauses :attr:`GIVE_WAY_S` after each batch (0: never).

        With decode workers the main loop refills them, and it shares the interpreter lock with this
        thread: while this thread is busy (a burst of packets), each time the main loop lets go of the lock
        (a decode call, a pipe write) it waits up to a switch interval (5 ms) to get it back, a step takes
        many of those, and the workers run dry. While enough frames are queued the pause costs nothing (the
        socket holds a millisecond of packets) and the main loop has the lock to itself."""
        self.halt = threading.Event()
        self.error: BaseException | None = None
        self.gave_way = 0
        """Times this thread paused for the main loop."""

    def run(self) -> None:
        link, rx, batch, give_way, pause = self.link, self.rx, self.batch, self.give_way, self.GIVE_WAY_S
        try:
            while not self.halt.is_set():
                msgs = link.recv_many(batch, 0.05)
                if msgs:
                    rx.arrive(msgs)
                    if give_way and rx.queued > give_way:
                        self.gave_way += 1
                        time.sleep(pause)
            # what already reached the socket (bounded: senders may still be streaming)
            deadline = time.monotonic() + self.FINAL_DRAIN_S
            while time.monotonic() < deadline and (msgs := link.recv_many(batch, 0.0)):
                rx.arrive(msgs)
        except BaseException as e:  # handed to the main loop, which raises it
            self.error = e
            with rx.ready:
                rx.ready.notify()


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
    ledger: Ledger | None = None,
    bundle: str | Path | None = None,
    threads: int = 1,
) -> ReceiverStats:
    """Receive → unpack → pair check → queue (receive thread); fresh frames → decode → sinks (this thread);
    until ``max_frames``, the idle timeout or ``stop``.

    With ``options.workers`` = N > 1 the decode runs in N - 1 worker processes, each loading ``bundle`` (its
    directory or name; ``threads``: the workers' interpreter threads), and in this process with ``decoder``
    for the frames the workers have no room for; each sender's frames reach the sinks in order.

    Malformed packets, packets for another bundle (pair id) or coding, and payloads the decoder refuses are
    counted in ``rejected`` by reason and skipped; the loop keeps serving the other senders. Refusals are
    logged at most a few lines per reason every 10 s (pair mismatches name both ids), the rest counted. A
    frame a sink cannot write is counted in ``sink_errors``; the loop goes on. Frames too old to decode,
    pushed out of a full queue, or still queued at the end are counted per sender in ``dropped``
    (:data:`DROP_REASONS`).

    Does not close the link or the sinks (the caller owns them).

    Raises:
        ConfigError: bad options.
    """
    options = options or ReceiveOptions()
    options.check()
    stop = stop or threading.Event()
    rx = _Receiving(link, decoder, pair_id, kind, sinks or [], on_log or (lambda _msg: None), options, ledger)
    if options.workers == 1:
        pump = _ReceiveThread(link, rx, options.batch)
        return _serve(rx, pump, _DecodeInline(rx), options, stop, on_stats)
    if bundle is None:
        raise ConfigError(f"{options.workers} decode workers need the bundle to load (bundle=...)")
    from .decode_pool import BATCH, DecodePool

    # deep: GIVE_WAY_STEPS batches per decode process queued (512 frames for 2)
    pump = _ReceiveThread(link, rx, options.batch, give_way=GIVE_WAY_STEPS * BATCH * options.workers)
    with DecodePool(bundle, options.workers - 1, threads) as rx.pool:
        rx.timer.start = time.perf_counter()  # the workers are up: the loop starts now
        return _serve(rx, pump, _DecodeInWorkers(rx, options.max_frames), options, stop, on_stats)


class _DecodeInline:
    """The main loop's step with the decode in this process: the next fresh frame, decoded, to the sinks."""

    def __init__(self, rx: _Receiving) -> None:
        self.rx = rx

    def step(self) -> bool:
        """Serve one frame (waiting up to 50 ms for one); whether a frame was decoded (or refused)."""
        item = self.rx.next_frame(0.05)
        if item is None:
            return False
        self.rx.serve(*item)
        return True

    def finish(self) -> None:
        """Nothing is held outside the queues."""


def even_share(room: list[int], held: list[int], left: int) -> list[int]:
    """Each worker's ``room``, capped so that it holds no more than an even share of what is left: the
    ``left`` frames still to take and those the workers hold (``held``), split over the workers and the
    receiver's own process (which decodes the rest). Under way (``left`` large) nothing changes; towards the
    end of a run the processes finish together."""
    fair = -(-(max(left, 0) + sum(held)) // (len(held) + 1))
    return [min(r, fair - h) for r, h in zip(room, held, strict=True)]


class _DecodeInWorkers:
    """The main loop's step with decode workers: hand the fresh frames off in batches (no more than the
    workers can hold), decode a few here when they are full, take the decoded ones back and settle them."""

    HERE = 16
    """Frames this process decodes per step while the workers are full (a quarter of a worker's batch, ~0.7 ms
    for ``mnist-hq``): it comes back to refill a worker long before the worker runs out (each holds two
    batches), and the step's own cost (a poll, a lock) is spread over 16 frames."""

    def __init__(self, rx: _Receiving, max_frames: int) -> None:
        self.rx, self.pool, self.max_frames = rx, rx.pool, max_frames
        self.progress = (0, 0)

    def step(self) -> bool:
        """Hand off, decode here what the workers have no room for, take back (waiting up to 10 ms for an
        answer when there was nothing to do); whether frames were settled or a worker was restarted (a
        restart waits for the new worker: that is not idleness).

        Each worker is given what fills its batches (so a batch is full under load, one message each way);
        this process takes up to :attr:`HERE` more and decodes them itself. Frames not taken stay in their
        queues, under the age check. Towards ``max_frames`` no worker is given more than an even share of
        what is left (the frames still to take and those the workers hold, split over the workers and this
        process), so that the processes finish together rather than this one waiting for a full worker."""
        rx, pool = self.rx, self.pool
        room = pool.room()
        if self.max_frames:  # take no more than will be needed, and at the end share it out evenly
            left = self.max_frames - rx.frames - rx.inflight
            room = even_share(room, pool.held(), left)
        n = sum(r for r in room if r > 0) + self.HERE
        if self.max_frames:
            n = min(n, left)
        items = rx.next_frames(n, 0.05 if rx.inflight == 0 else 0.0) if n > 0 else None
        if items:
            rx.hand_off(items, room)
        for answer in list(pool.answers(0.0 if items else 0.01)):
            rx.returned(answer)
        progress, self.progress = self.progress, (rx.frames, pool.restarts)
        return progress != self.progress

    def finish(self) -> None:
        """What the workers are decoding now: delivered if back within 0.5 s, else counted (``shutdown``)."""
        from .decode_pool import Answer

        rx, pool = self.rx, self.pool
        deadline = time.perf_counter() + 0.5
        while pool.in_flight and time.perf_counter() < deadline:
            for answer in list(pool.answers(0.05)):
                rx.returned(answer)
        rx.returned(Answer.failing(pool.take_all(), "shutdown", "the receiver stopped"))


def _serve(
    rx: _Receiving,
    pump: _ReceiveThread,
    decode: _DecodeInline | _DecodeInWorkers,
    options: ReceiveOptions,
    stop: threading.Event,
    on_stats: Callable[[ReceiverStats], None] | None,
) -> ReceiverStats:
    """:func:`run_receiver`'s loop, whichever way it decodes: ``decode.step()`` until ``max_frames``, the
    idle timeout or ``stop``, the stats every ``stats_every_s``; then the receive thread stops, what is
    still queued is counted (``shutdown``) and ``decode.finish()`` settles what the decoders hold."""
    clock = time.perf_counter
    start = rx.timer.start
    last_frame = time_at_report = start
    next_stats = start + options.stats_every_s
    status = "stopped"
    pump.start()
    try:
        while not stop.is_set():
            progressed = decode.step()
            if pump.error is not None:
                raise pump.error
            now = clock()
            if progressed:
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
    finally:
        pump.halt.set()
        pump.join()
        rx.drop_queued("shutdown")
        decode.finish()
    if pump.error is not None:
        raise pump.error
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
    threads: int = 1
    """Interpreter threads of the decoder (and of each decode worker)."""

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
        ledger: Ledger | None = None,
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
            ledger=ledger,
            bundle=self.bundle.path,
            threads=self.threads,
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
    return ReceivePipeline(b, decoder, payload_kind(b.coding), threads)


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
