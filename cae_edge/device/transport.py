"""ZeroMQ links between camera nodes and the receiver: one class per messaging pattern.

Pattern: **PUSH (each node, connects) -> PULL (the receiver, binds)**. The stream is one-way and needs no
replies, PULL fair-queues frames from every connected node, and there is no routing envelope to build or
strip. Node identity travels in the packet (``cae_edge.wire``), so it survives reconnects — ZeroMQ routing
ids (DEALER/ROUTER) would not, and ROUTER only pays off for replies/credit-based flow control, which a live
video stream that drops frames does not need. CURVE (``cae_edge.device.security``) works on PUSH/PULL
unchanged; with it the receiver sees each frame's authenticated key name (``Received.peer``).

::

    capture ─ send() ─► [bounded deque: queue_size, drop policy] ─NOBLOCK─► PUSH ══tcp══► PULL ─► recv_many()
                        never waits; counts drops                  SNDHWM     heartbeats    RCVHWM

Send policy (the capture loop never blocks):

* every ``send`` first tries a non-blocking send of anything queued, then of the new frame;
* what ZeroMQ cannot take right now (no receiver connected, or its high-water mark reached) waits in a bounded
  deque of ``queue_size`` frames;
* when that deque is full, ``drop-oldest`` (default, live video: the newest frames matter) discards the oldest
  queued frame, ``drop-newest`` discards the new one; either way ``stats.dropped`` counts it;
* ``IMMEDIATE`` is on, so nothing is queued inside ZeroMQ for a receiver that is not there: while it is away,
  frames wait in (and fall out of) our deque, where they are counted, not in a hidden buffer;
* frames already handed to ZeroMQ when the connection breaks are lost with it; the receiver sees them as a
  gap in sequence numbers.

Reconnection: ZeroMQ reconnects by itself (``RECONNECT_IVL`` 100 ms, backing off to ``RECONNECT_IVL_MAX``),
``LINGER`` is 0 so closing never waits on a dead peer. A peer that vanished without closing its TCP connection
(power loss, Wi-Fi gone) is found by TCP itself: keepalive probes on both ends (an idle link) and, on the
sender, ``TCP_MAXRT`` (Linux ``TCP_USER_TIMEOUT``: data unacknowledged for ``tcp_maxrt_ms``). A socket monitor
counts connects, disconnects and refused handshakes for the stats.

No ZMTP heartbeats by default (``heartbeat_ivl_ms`` 0), because of a libzmq abort (4.2.0 .. 4.3.5, and
unfixed on master at the time of writing): ``Assertion failed: !_io_error (src/stream_engine_base.cpp:310)``.
When the receiving socket's queue is full (``RCVHWM``), libzmq stops reading that connection; if the peer then
closes it, the poller still reports the hang-up, and the engine marks itself ``_io_error`` (fd removed from
the poller) but stays alive until the application drains the queue. Anything that makes the engine *write*
before then asserts ``!_io_error`` in ``out_event``: the receiver's own heartbeat timer (``HEARTBEAT_IVL``),
or a PING from the sender that was already read into the engine's buffer and is decoded when input restarts
(the PONG reply). Both paths were reproduced on loopback (``tests/device/test_fleet.py``); with no PINGs in
either direction neither exists. See docs/fleet.md.

Refused handshakes are visible on both ends: the monitor reports ZAP refusals (key not allowed), CURVE
failures (the sender pinned another receiver key) and mechanism mismatches (one end ``--insecure``). The
receiver counts them by kind (``LinkStats.refused_by``) and reports each through ``on_event``; a sender that
is refused for ``give_up_refused_s`` raises :class:`~cae_edge.errors.LinkRefusedError` with the reason.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import NamedTuple, Protocol

import zmq
from zmq.utils.monitor import parse_monitor_message

from .. import wire
from ..errors import ConfigError, LinkRefusedError

POLICIES = ("drop-oldest", "drop-newest")
"""What a full send queue does: drop the oldest queued frame (live video) or the new frame."""


class SocketSecurity(Protocol):
    """Something that secures a socket before it binds/connects, e.g. ``security.CurveServer``.

    The transport calls ``apply(sock)`` once, and ``close()`` (if present) before terminating its context.
    """

    def apply(self, sock: zmq.Socket) -> None: ...


_ENDPOINT_RE = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>[^:/]*)$")


def check_endpoint(endpoint: str, *, bind: bool) -> str:
    """Return ``endpoint`` if it is ``tcp://HOST:PORT`` with a port ZeroMQ will really use (or ``ipc://``,
    ``inproc://``), else raise.

    libzmq parses the port with ``strtol`` and keeps 16 bits, so ``tcp://127.0.0.1:99999`` would quietly bind
    port 34463; such endpoints are refused here.

    Args:
        endpoint: e.g. ``tcp://192.168.1.10:5555``; for ``bind`` also ``tcp://*:5555`` or port ``*``/``0``
            (any free port).
        bind: the receiver's side (``--bind``) rather than a sender's ``--connect``.

    Raises:
        ConfigError: not ``tcp://HOST:PORT``, or the port is not 1 .. 65535 (``*``/``0`` only to bind).
    """
    example = "tcp://*:5555" if bind else "tcp://192.168.1.10:5555"
    if isinstance(endpoint, str) and re.match(r"^(ipc|inproc)://.+", endpoint):
        return endpoint  # local transports: no port to check
    m = _ENDPOINT_RE.match(endpoint) if isinstance(endpoint, str) else None
    if m is None:
        raise ConfigError(f"endpoint {endpoint!r}: use tcp://HOST:PORT, e.g. {example}")
    port = m.group("port")
    if bind and port in ("*", "0"):
        return endpoint
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        extra = " (or * for any free port)" if bind else ""
        raise ConfigError(f"endpoint {endpoint!r}: port {port!r} must be 1 .. 65535{extra}, e.g. {example}")
    if not bind and m.group("host") == "*":
        raise ConfigError(f"{endpoint}: a sender connects to one host; '*' is for --bind on the receiver")
    return endpoint


@dataclass
class LinkOptions:
    """Socket settings both ends share."""

    heartbeat_ivl_ms: int = 0
    """ZMTP PING interval; 0 = off (default). Turning it on exposes the libzmq abort described in the module
    docstring when the receiver falls behind; dead peers are found by TCP keepalive / ``TCP_MAXRT``."""
    heartbeat_timeout_ms: int = 3000
    """With heartbeats on: drop the connection when no traffic arrived for this long after a PING."""
    keepalive_idle_s: int = 10
    """TCP keepalive: probe a connection that carried nothing for this long (0 = the OS default, off)."""
    keepalive_intvl_s: int = 2
    """TCP keepalive: seconds between probes."""
    keepalive_cnt: int = 3
    """TCP keepalive: unanswered probes before the connection is dropped."""
    security: SocketSecurity | None = None
    """Applied to the socket before bind/connect (CURVE); the transport closes it on ``close()``."""

    def _apply(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        if self.heartbeat_ivl_ms > 0:
            sock.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ivl_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.heartbeat_timeout_ms)
            sock.setsockopt(zmq.HEARTBEAT_TTL, self.heartbeat_timeout_ms)
        if self.keepalive_idle_s > 0:
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, self.keepalive_idle_s)
            sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, self.keepalive_intvl_s)
            sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, self.keepalive_cnt)
        if self.security is not None:
            self.security.apply(sock)


@dataclass
class SenderOptions(LinkOptions):
    """How a node's PUSH socket queues, drops and reconnects."""

    queue_size: int = 64
    """Frames held while the receiver is slow or away (our deque, in front of ZeroMQ)."""
    policy: str = "drop-oldest"
    """``drop-oldest`` (live video) or ``drop-newest`` when the queue is full."""
    sndhwm: int = 16
    """Frames ZeroMQ itself may buffer for a connected receiver before ``send`` would block."""
    reconnect_ivl_ms: int = 100
    """First reconnect attempt this long after a connection is lost."""
    reconnect_ivl_max_ms: int = 1000
    """Reconnect back-off ceiling. libzmq retries every ceiling + up to ``reconnect_ivl_ms`` of jitter once
    backed off, so a receiver that was down for seconds is found again at most ~1.1 s after it is back (the
    soak test's 2 s resume target; with 2000 ms senders resumed ~2.0-2.1 s after a 10 s outage)."""
    connect_timeout_ms: int = 2000
    """Give up one TCP connect attempt after this long (then retry): unreachable hosts don't stall it."""
    tcp_maxrt_ms: int = 20_000
    """Drop the connection when sent data stays unacknowledged this long (``TCP_MAXRT``, Linux
    ``TCP_USER_TIMEOUT``): the receiver lost power or network. 0 = the kernel default (~15 minutes)."""
    give_up_refused_s: float = 30.0
    """Raise :class:`~cae_edge.errors.LinkRefusedError` from ``send``/``wait_connected`` once every handshake
    for this long was refused (key not allowed or revoked, wrong pinned server key, one end ``--insecure``).
    Until then refused handshakes are retried, so a key copied to the receiver late still connects.
    0 = retry forever."""
    close_flush_s: float = 1.0
    """On ``close()``, keep trying to deliver queued frames for at most this long (0 = drop them)."""
    on_drop: Callable[[bytes, str], None] | None = None
    """Called with each packet this sender discards and why: ``"queue"`` (queue full) or ``"close"`` (still
    queued when the close flush gave up). For exact loss accounting (``cae_edge.benchmark.soak``)."""

    def check(self) -> None:
        """Raise :class:`ConfigError` for a bad value."""
        if self.policy not in POLICIES:
            raise ConfigError(f"queue policy {self.policy!r}: use one of {', '.join(POLICIES)}")
        if not 1 <= self.queue_size <= 1_000_000:
            raise ConfigError(f"queue size {self.queue_size}: must be 1 .. 1000000")
        if self.sndhwm < 1:
            raise ConfigError(f"sndhwm {self.sndhwm}: must be >= 1")
        if not self.give_up_refused_s >= 0:
            raise ConfigError(f"give_up_refused_s {self.give_up_refused_s}: must be >= 0 (0 = never)")


@dataclass
class ReceiverOptions(LinkOptions):
    """The receiver's PULL socket."""

    rcvhwm: int = 128
    """Frames ZeroMQ may buffer per sender before it stops reading that sender's connection. Kept small: the
    receiver's own thread drains the socket into counted per-sender queues (``cae_edge.device.receiver``); a
    connection libzmq stops reading hides age, stops heartbeats (when on) and is where the module docstring's
    abort happens."""
    max_message_bytes: int = wire.MAX_PACKET_BYTES + 64
    """Longer messages are refused before they are read (``MAXMSGSIZE``) and their connection dropped: the
    largest packet plus CURVE's per-message overhead (33 bytes). -1 = no limit."""
    revoke_check_s: float = 1.0
    """How often the security hook is asked for revoked keys (``poll_revoked``); when one is, every
    connection is dropped (close + reopen of the listening endpoint) and the revoked node is refused on
    reconnect."""
    on_event: Callable[[str, str], None] | None = None
    """Called with ``(kind, message)`` for each refused handshake (kind ``key``, ``crypto``, ``mechanism``,
    ``protocol`` or ``handshake``) and each revocation (``revoked``); the caller rate-limits the log."""


@dataclass
class LinkStats:
    """Counters of one socket (JSON-friendly)."""

    sent: int = 0
    """Frames handed to ZeroMQ (sender)."""
    received: int = 0
    """Messages received (receiver)."""
    dropped: int = 0
    """Frames discarded because the send queue was full (sender)."""
    flushed_at_close: int = 0
    """Frames still queued at close that were delivered during the close flush (sender)."""
    lost_at_close: int = 0
    """Frames still queued when the close flush gave up (sender)."""
    queued: int = 0
    """Frames waiting in the send queue now (sender)."""
    connects: int = 0
    """Connections established (handshake done)."""
    disconnects: int = 0
    """Connections lost."""
    peers: int = 0
    """Connections up now."""
    refused: int = 0
    """Handshakes that failed: refused by the receiver (sender), or refused by us (receiver). ZeroMQ itself
    never retries after a refusal; the sender does, every ``reconnect_ivl_max_ms``, so a node whose key is
    added to the receiver's allowed-keys directory later connects without a restart."""
    refused_by: dict[str, int] = field(default_factory=dict)
    """Failed handshakes by kind: ``key`` (CURVE key not allowed or revoked), ``crypto`` (the sender pinned
    another receiver key), ``mechanism`` (one end ``--insecure``), ``protocol``, ``handshake`` (the peer
    closed or timed out mid-handshake)."""
    revocations: int = 0
    """Times the receiver dropped every connection because an allowed key was removed (receiver)."""

    def to_dict(self) -> dict:
        return asdict(self)


_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _failure_kind(event: int, value: int) -> str:
    """The ``refused_by`` key of a failed-handshake monitor event."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "key"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "handshake"
    if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return "crypto"
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "mechanism"
    return "protocol"


class ClosingLink:
    """What every link shares, ZeroMQ or MQTT: ``with link:`` closes it, and its repr names the endpoint."""

    endpoint: str

    @property
    def closed(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoint} {'closed' if self.closed else 'open'}>"


class _Link(ClosingLink):
    """Context, socket, monitor and close()/context-manager plumbing shared by both ends."""

    _EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _FAILED
    _bind = False

    def __init__(self, kind: int, endpoint: str, options: LinkOptions) -> None:
        self.endpoint = check_endpoint(endpoint, bind=self._bind)
        self.options = options
        self._stats = LinkStats()
        self._ctx = zmq.Context()
        self._sock: zmq.Socket | None = self._ctx.socket(kind)
        self._monitor: zmq.Socket | None = None
        self._monitor_lock = threading.Lock()
        try:
            options._apply(self._sock)
            self._configure(self._sock)
            self._monitor = self._sock.get_monitor_socket(self._EVENTS)
            self._open(self._sock, endpoint)
        except zmq.ZMQError as e:
            self.close()
            raise ConfigError(f"{endpoint}: {e.strerror} ({self._hint(e)})") from None
        except BaseException:
            self.close()
            raise

    def _configure(self, sock: zmq.Socket) -> None:  # pragma: no cover - overridden
        pass

    def _open(self, sock: zmq.Socket, endpoint: str) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _hint(self, e: zmq.ZMQError) -> str:
        return "use tcp://HOST:PORT"

    def _poll_monitor(self) -> None:
        with self._monitor_lock:  # the receiver reads events from its receive thread and its main loop
            self._drain_monitor()

    def _drain_monitor(self) -> None:
        mon = self._monitor
        if mon is None:
            return
        while mon.poll(0):
            msg = parse_monitor_message(mon.recv_multipart())
            event = msg["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._stats.connects += 1
                self._stats.peers += 1
                self._on_connected()
            elif event == zmq.EVENT_DISCONNECTED:
                self._stats.disconnects += 1
                self._stats.peers = max(0, self._stats.peers - 1)
            elif event & _FAILED:
                kind = _failure_kind(event, msg["value"])
                self._stats.refused += 1
                self._stats.refused_by[kind] = self._stats.refused_by.get(kind, 0) + 1
                self._on_refused(kind)

    def _on_connected(self) -> None:
        pass

    def _on_refused(self, kind: str) -> None:
        pass

    @property
    def stats(self) -> LinkStats:
        """Counters so far (a live object; copy it with ``dataclasses.replace`` to keep a snapshot)."""
        self._poll_monitor()
        return self._stats

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        """Close the socket without waiting on peers (idempotent)."""
        if self._sock is not None:
            if self._monitor is not None:
                self._poll_monitor()
                self._sock.disable_monitor()
                self._monitor.close(linger=0)
                self._monitor = None
            self._sock.close(linger=0)
            self._sock = None
        security = self.options.security
        if security is not None and hasattr(security, "close"):
            security.close()  # a ZAP thread holds a socket on our context: stop it before term()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None


class PushSender(_Link):
    """A camera node's end: connects to the receiver and sends packets without ever blocking.

    Args:
        endpoint: the receiver, e.g. ``tcp://192.168.1.10:5555``.
        options: queue, drop policy, reconnect and heartbeat settings.

    Raises:
        ConfigError: bad endpoint or options.
    """

    def __init__(self, endpoint: str, options: SenderOptions | None = None) -> None:
        options = options or SenderOptions()
        options.check()
        self._queue: deque[bytes] = deque()
        self._max = options.queue_size
        self._drop_oldest = options.policy == "drop-oldest"
        self._on_drop = options.on_drop
        self._next_poll = 0.0
        self._retry_at = 0.0
        self._refused_since = 0.0
        self._refused_last = 0.0
        self._refused_kind = ""
        super().__init__(zmq.PUSH, endpoint, options)

    _REASONS = {
        "key": "the receiver refused this node's CURVE key (not in its --allowed-keys directory, or "
        "revoked): copy NAME.key to the receiver's allowed-keys directory",
        "crypto": "the receiver could not decrypt our handshake: the pinned --server-key is not this "
        "receiver's key (copy its receiver.key again)",
        "handshake": "the receiver closed the connection during the handshake: the pinned --server-key is "
        "probably not this receiver's key (copy its receiver.key again), or the receiver is --insecure",
        "handshake-insecure": "the receiver closed the connection during the handshake: it probably "
        "requires CURVE keys and this sender is --insecure",
        "mechanism": "security mismatch: one end uses CURVE keys and the other --insecure; use keys on both",
        "protocol": "the receiver refused the ZeroMQ handshake (protocol error): is it a cae-edge receiver?",
    }

    def _on_connected(self) -> None:
        self._refused_since = 0.0

    def _on_refused(self, kind: str) -> None:
        now = time.monotonic()
        if not self._refused_since or kind != "handshake":  # keep the most telling reason of a streak
            self._refused_kind = kind
        self._refused_since = self._refused_since or now
        self._refused_last = now
        if kind in ("key", "mechanism", "protocol"):  # ZeroMQ does not retry these by itself
            self._retry_at = now + self.options.reconnect_ivl_max_ms / 1000  # type: ignore[attr-defined]

    @property
    def refusal(self) -> str | None:
        """Why the last handshake failed, while no handshake succeeded since; else ``None``."""
        self._poll_monitor()
        return self._reason() if self._refused_since else None

    def _reason(self) -> str:
        kind = self._refused_kind
        if kind == "handshake" and self.options.security is None:
            kind = "handshake-insecure"
        return self._REASONS[kind]

    def _check_refused(self) -> None:
        limit = self.options.give_up_refused_s  # type: ignore[attr-defined]
        if not (limit and self._refused_since):
            return
        now = time.monotonic()
        # refused for `limit` seconds, and still being refused (not merely a receiver that is down now)
        if now - self._refused_since >= limit and now - self._refused_last <= max(5.0, limit / 2):
            raise LinkRefusedError(
                f"{self.endpoint}: every handshake for {now - self._refused_since:.0f} s was refused "
                f"({self._stats.refused} attempts): {self._reason()}"
            )

    def _poll_monitor(self) -> None:
        super()._poll_monitor()
        if self._retry_at and time.monotonic() >= self._retry_at and self._sock is not None:
            self._retry_at = 0.0  # refused by the receiver: ZeroMQ gave up on this endpoint, so start over
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disconnect(self.endpoint)
            self._sock.connect(self.endpoint)

    def _configure(self, sock: zmq.Socket) -> None:
        o: SenderOptions = self.options  # type: ignore[assignment]
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, o.sndhwm)
        sock.setsockopt(zmq.RECONNECT_IVL, o.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, o.reconnect_ivl_max_ms)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, o.connect_timeout_ms)
        if o.tcp_maxrt_ms > 0:
            sock.setsockopt(zmq.TCP_MAXRT, o.tcp_maxrt_ms)

    def _open(self, sock: zmq.Socket, endpoint: str) -> None:
        sock.connect(endpoint)

    def _hint(self, e: zmq.ZMQError) -> str:
        return "connect to tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555"

    def send(self, data: bytes) -> bool:
        """Queue one packet and push out what the link takes now. Never blocks.

        Returns:
            False when a frame was dropped because the queue was full (the new one or the oldest).

        Raises:
            LinkRefusedError: every handshake for ``give_up_refused_s`` was refused (the message says why).
        """
        sock = self._sock
        if sock is None:
            raise ConfigError(f"{self.endpoint}: send on a closed sender")
        now = time.monotonic()
        if now >= self._next_poll:  # socket events (connects) at most every 10 ms
            self._next_poll = now + 0.01
            self._poll_monitor()
            self._check_refused()
        q = self._queue
        if not q:  # fast path: nothing waiting, try the frame directly
            try:
                sock.send(data, zmq.NOBLOCK, copy=True)
                self._stats.sent += 1
                return True
            except zmq.Again:
                q.append(data)
                return True
        q.append(data)
        self._flush_nowait()
        if len(q) > self._max:
            self._stats.dropped += 1
            dropped = q.popleft() if self._drop_oldest else q.pop()
            if self._on_drop is not None:
                self._on_drop(dropped, "queue")
            return False
        return True

    def _flush_nowait(self) -> None:
        q, sock = self._queue, self._sock
        try:
            while q:
                sock.send(q[0], zmq.NOBLOCK, copy=True)
                q.popleft()
                self._stats.sent += 1
        except zmq.Again:
            pass

    def flush(self, timeout_s: float = 0.0) -> int:
        """Try to hand queued frames to ZeroMQ for up to ``timeout_s`` (0 = one non-blocking pass).

        Returns:
            Frames still queued.
        """
        if self._sock is None:
            return len(self._queue)
        deadline = time.monotonic() + timeout_s
        self._flush_nowait()
        while self._queue and time.monotonic() < deadline:
            self._sock.poll(20, zmq.POLLOUT)
            self._flush_nowait()
        self._poll_monitor()
        return len(self._queue)

    @property
    def online(self) -> bool:
        """A receiver was connected at the last look at the socket events (``send`` looks every 10 ms)."""
        return self._stats.peers > 0

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until a receiver is connected (handshake done); True if it is.

        Raises:
            LinkRefusedError: every handshake for ``give_up_refused_s`` was refused (the message says why).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self._poll_monitor()
            if self._stats.peers > 0:
                return True
            self._check_refused()
            left = deadline - time.monotonic()
            if left <= 0 or self._monitor is None:
                return False
            self._monitor.poll(max(1, int(min(left, 0.05) * 1000)))

    @property
    def stats(self) -> LinkStats:
        s = super().stats
        s.queued = len(self._queue)
        return s

    @property
    def identifies_sender(self) -> bool:
        """The receiver learns who sent each message from the link (CURVE: the node's key)."""
        return self.options.security is not None

    @property
    def authenticates_messages(self) -> bool:
        """Every message is authenticated end to end (CURVE), so compact frames need no check of their own."""
        return self.options.security is not None

    def close(self, flush_s: float | None = None) -> None:
        """Deliver what is queued for up to ``flush_s`` (default ``options.close_flush_s``), then close.

        Frames ZeroMQ accepted get the same time to leave the machine (bounded linger); nothing waits longer.
        """
        if self._sock is not None:
            budget = self.options.close_flush_s if flush_s is None else flush_s  # type: ignore[attr-defined]
            start = time.monotonic()
            before = len(self._queue)
            if budget > 0:
                left = self.flush(budget)
                self._stats.flushed_at_close += before - left
                remaining = max(0.0, budget - (time.monotonic() - start))
                self._sock.setsockopt(zmq.LINGER, int(remaining * 1000))
                if self._monitor is not None:
                    self._poll_monitor()
                    self._sock.disable_monitor()
                    self._monitor.close(linger=0)
                    self._monitor = None
                self._sock.close()  # lingers at most `remaining` for frames inside ZeroMQ
                self._sock = None
            self._stats.lost_at_close += len(self._queue)
            if self._on_drop is not None:
                for data in self._queue:
                    self._on_drop(data, "close")
            self._stats.queued = 0
            self._queue.clear()
        super().close()


class Received(NamedTuple):
    """One message from a sender."""

    data: bytes
    """The packet bytes."""
    peer: str | None
    """The authenticated sender (CURVE key name, ZAP ``User-Id``) when the link is secured, else None."""


class PullReceiver(_Link):
    """The receiver's end: binds and collects packets from every node.

    Args:
        endpoint: where to listen, e.g. ``tcp://*:5555``.
        options: heartbeat, buffer and security settings.

    Raises:
        ConfigError: bad endpoint, or the address is in use.
    """

    _bind = True
    _MESSAGES = {
        "key": "refused a sender: its CURVE key is not in --allowed-keys (or was revoked)",
        "crypto": "refused a sender: its CURVE handshake does not decrypt (it pinned another receiver key)",
        "mechanism": "refused a sender: security mismatch (it is --insecure and this receiver uses CURVE, "
        "or the reverse)",
        "protocol": "refused a connection: ZeroMQ protocol error during the handshake",
        "handshake": "a connection closed or timed out during the handshake",
    }

    def __init__(self, endpoint: str, options: ReceiverOptions | None = None) -> None:
        super().__init__(zmq.PULL, endpoint, options or ReceiverOptions())
        self._secured = self.options.security is not None
        self._next_check = 0.0

    def _configure(self, sock: zmq.Socket) -> None:
        o: ReceiverOptions = self.options  # type: ignore[assignment]
        sock.setsockopt(zmq.RCVHWM, o.rcvhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, o.max_message_bytes)

    def _event(self, kind: str, message: str) -> None:
        hook = self.options.on_event  # type: ignore[attr-defined]
        if hook is not None:
            hook(kind, message)

    def _on_refused(self, kind: str) -> None:
        message = self._MESSAGES[kind]
        key = getattr(self.options.security, "last_denied_key", None) if kind == "key" else None
        self._event(kind, message + (f"; key {key}" if key else "") + " (counted in refused_by)")

    def _maintain(self) -> None:
        """Socket events, and revoked keys: drop every connection so the revoked node is refused."""
        self._poll_monitor()
        poll_revoked = getattr(self.options.security, "poll_revoked", None)
        if poll_revoked is None:
            return
        revoked = poll_revoked(self.options.revoke_check_s)  # type: ignore[attr-defined]
        if revoked:
            self._drop_all_connections()
            self._stats.revocations += 1
            self._event(
                "revoked",
                f"key {', '.join(revoked)} removed from --allowed-keys while connected: dropped every "
                "connection (ZeroMQ cannot drop one peer); allowed nodes reconnect, the revoked one is "
                "refused",
            )

    def _drop_all_connections(self, timeout_s: float = 5.0) -> None:
        """Close and reopen the listening endpoint: libzmq ends every connection accepted through it."""
        sock = self._sock
        assert sock is not None
        sock.unbind(self.endpoint)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                sock.bind(self.endpoint)  # the old listener closes in the I/O thread: retry briefly
                break
            except zmq.ZMQError as e:
                if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise ConfigError(
                        f"{self.endpoint}: cannot listen again after dropping connections ({e.strerror})"
                    ) from None
                time.sleep(0.005)
        self._poll_monitor()
        self._stats.peers = 0

    def _open(self, sock: zmq.Socket, endpoint: str) -> None:
        sock.bind(endpoint)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint

    def _hint(self, e: zmq.ZMQError) -> str:
        if e.errno == zmq.EADDRINUSE:
            return "another receiver (or program) uses this port; stop it or pick another port"
        return "bind to tcp://*:PORT or tcp://IP:PORT"

    @property
    def port(self) -> int | None:
        """The TCP port bound (useful with ``tcp://127.0.0.1:*``)."""
        tail = self.endpoint.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else None

    def recv_many(self, max_n: int = 256, timeout_s: float = 0.1) -> list[Received]:
        """Wait up to ``timeout_s`` for a message; return it and the others already waiting (<= max_n)."""
        sock = self._sock
        if sock is None:
            raise ConfigError(f"{self.endpoint}: receive on a closed receiver")
        out: list[Received] = []
        now = time.monotonic()
        if now >= self._next_check:  # refused handshakes, revoked keys: a few times a second
            self._next_check = now + 0.1
            self._maintain()
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            self._poll_monitor()
            return out
        secured = self._secured
        try:
            while len(out) < max_n:
                if secured:
                    frame = sock.recv(zmq.NOBLOCK, copy=False)
                    peer = frame.get("User-Id")
                    out.append(Received(frame.bytes, peer or None))
                else:
                    out.append(Received(sock.recv(zmq.NOBLOCK), None))
        except zmq.Again:
            pass
        self._stats.received += len(out)
        return out
