"""MQTT v5 links through a broker: the second transport, with the same interface as the ZeroMQ one.

:class:`MqttSender` behaves like :class:`~cae_edge.device.transport.PushSender` and :class:`MqttReceiver` like
:class:`~cae_edge.device.transport.PullReceiver` (``send``/``flush``/``close``/``stats`` and ``recv_many``
returning :class:`~cae_edge.device.transport.Received`), so ``run_sender`` and ``run_receiver`` take either.
The packets are the same ``cae_edge.wire`` packets; only the path differs::

    node cam1 ──TLS, user cam1──► broker ──$share/GROUP/cae-edge/+/frames──► receiver rx1 ┐ one frame each,
                 PUBLISH QoS 1      │                                  └───► receiver rx2 ┘ in turn
                 cae-edge/cam1/frames     (ACL: cam1 may write only cae-edge/cam1/...)
                 cae-edge/cam1/status  retained {"state": "online", "pair_id": ...}; last will "offline"

* **Load sharing.** Receivers subscribe through a shared subscription: the broker hands each frame to one
  member of the group, so another receiver machine adds capacity, and when one dies the others get its share
  as soon as the broker notices (at once for a closed connection, 1.5 keep-alives for a silent one). Frames
  of one node are spread over the group, so a receiver sees gaps in that node's sequence that are not losses:
  :attr:`MqttReceiver.shared` tells the receiver loop to count them as ``skipped``, not ``lost``.
* **At least once.** Frames travel with QoS 1, so the broker acknowledges each one (that is the sender's flow
  control); after a broken connection a node resends what was not acknowledged, and the receiver drops the
  copies it already has (``stats.duplicates``; a copy routed to another receiver of the group is not seen).
* **Identity.** The broker authenticates each client (user name + password over TLS) and its ACL lets a node
  publish only under its own topic, so the topic's node level is the sender's identity: it arrives as
  :attr:`Received.peer`, like the CURVE key name on the ZeroMQ path.
* **Presence.** Each node keeps a retained status message (with its bundle pair id); the broker replaces it
  with the node's last will (``offline``) when the connection is lost. Receivers follow every node's status
  (not shared): ``stats.peers`` counts the nodes online, and ``on_status`` reports each change.
* **Never blocking.** The sender keeps at most ``window`` frames in flight (published, not yet acknowledged by
  the broker, QoS 1); what the link cannot take waits in a bounded deque with the ZeroMQ sender's drop
  policy, and is counted when it falls out. Frames carry an MQTT message expiry (``expiry_s``): a broker never
  delivers a frame older than that to a receiver that fell behind.

``paho-mqtt`` (>= 2) is imported when a link is made, so the rest of the device side works without it.
"""

from __future__ import annotations

import json
import os
import ssl
import stat
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..wire import check_sender_name
from .broker import DEFAULT_PREFIX, check_prefix, frames_topic, status_topic
from .transport import POLICIES, ClosingLink, LinkStats, Received

SCHEMES = {"mqtts": 8883, "mqtt": 1883}
"""URL schemes and their default ports (``mqtt://`` is unencrypted: only with ``insecure``)."""
DEFAULT_GROUP = "cae-edge"
"""Shared-subscription group receivers join unless told otherwise."""


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:  # pragma: no cover - paho is in the [device] extra
        raise ConfigError(
            "the MQTT transport needs paho-mqtt >= 2: pip install 'paho-mqtt>=2' (or 'cae-edge[device]')"
        ) from None
    return mqtt


def parse_broker_url(url: str) -> tuple[str, str, int]:
    """``mqtts://HOST[:PORT]`` → (scheme, host, port).

    Raises:
        ConfigError: another scheme, no host, a path, or a bad port.
    """
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        raise ConfigError(
            f"broker {url!r}: {e}; use mqtts://HOST:PORT, e.g. mqtts://broker.lan:8883"
        ) from None
    if u.scheme not in SCHEMES or not u.hostname or u.path not in ("", "/") or u.query or u.username:
        raise ConfigError(f"broker {url!r}: use mqtts://HOST:PORT (TLS), e.g. mqtts://broker.lan:8883")
    return u.scheme, u.hostname, port or SCHEMES[u.scheme]


def read_password_file(path: str | Path) -> str:
    """The password in ``path`` (first line), refusing a file that group or others can read.

    Raises:
        ConfigError: missing, empty, or readable by others (the message gives the ``chmod``).
    """
    path = Path(path).expanduser()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"password file {path}: {e.strerror or e}") from None
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(
            f"password file {path} has mode {mode:04o} (group/world can read it): run `chmod 600 {path}`, "
            "and change the password on the broker if others could read it"
        )
    password = text.splitlines()[0].strip() if text.strip() else ""
    if not password:
        raise ConfigError(
            f"password file {path} is empty: put the client's broker password on its first line"
        )
    return password


@dataclass
class MqttOptions:
    """How both ends reach the broker."""

    username: str | None = None
    """Broker user name; the sender's default is its node name."""
    password_file: Path | None = None
    """File holding the password (mode 0600); required unless ``insecure``."""
    ca_file: Path | None = None
    """CA certificate that signed the broker's certificate; default: the system's CAs."""
    insecure: bool = False
    """Allow ``mqtt://`` (no TLS) and no credentials: trusted lab networks only."""
    topic_prefix: str = DEFAULT_PREFIX
    """First topic level(s); the broker's ACL must use the same."""
    keepalive_s: int = 10
    """MQTT keep-alive: the broker declares a silent client gone after 1.5 times this (last will)."""
    reconnect_min_s: float = 0.1
    """First reconnect attempt this long after the connection is lost, doubling up to ``reconnect_max_s``."""
    reconnect_max_s: float = 1.0
    """Reconnect back-off ceiling."""
    client_id: str | None = None
    """MQTT client id; default: the node name (sender) or ``USER-RANDOM`` (receiver)."""
    on_log: Callable[[str], None] | None = None
    """Called (from the MQTT thread) with one line per notable event: connected, refused, lost."""

    def check(self, url: str) -> tuple[str, int, bool]:
        """Check the options against the broker URL; returns (host, port, tls).

        Raises:
            ConfigError: ``mqtt://`` or no password file without ``insecure``; no CA file; a bad prefix.
        """
        scheme, host, port = parse_broker_url(url)
        tls = scheme == "mqtts"
        check_prefix(self.topic_prefix)
        if not tls and not self.insecure:
            raise ConfigError(
                f"broker {url}: mqtt:// is unencrypted; use mqtts://{host}:8883 with --ca-file, "
                "or --insecure to stream in the clear"
            )
        if self.password_file is None and not self.insecure:
            raise ConfigError(
                f"broker {url}: no password file: give --password-file (this client's broker password, "
                "from `cae-edge mqtt broker-config`), or --insecure for a broker without credentials"
            )
        if self.ca_file is not None and not Path(self.ca_file).expanduser().is_file():
            raise ConfigError(f"CA file {self.ca_file} not found: copy the broker's ca.crt there")
        if not 1 <= self.keepalive_s <= 65535:
            raise ConfigError(f"keepalive {self.keepalive_s} s: must be 1 .. 65535")
        return host, port, tls


@dataclass
class MqttSenderOptions(MqttOptions):
    """A node's MQTT link: the broker, its bounded queue and drop policy."""

    queue_size: int = 64
    """Frames held while the broker is slow or away."""
    policy: str = "drop-oldest"
    """``drop-oldest`` (live video) or ``drop-newest`` when the queue is full."""
    window: int = 16
    """Frames published but not yet acknowledged by the broker (QoS 1) before frames wait in the queue."""
    expiry_s: int = 5
    """MQTT message expiry: the broker discards a frame it could not deliver within this many seconds
    (0 = never). The receiver's own age limit still applies."""
    close_flush_s: float = 1.0
    """On ``close()``, keep trying to deliver queued frames for at most this long (0 = drop them)."""
    on_drop: Callable[[bytes, str], None] | None = None
    """Called with each packet this sender discards and why: ``"queue"`` (queue full) or ``"close"`` (still
    queued when the close flush gave up), as the ZeroMQ sender's ``on_drop`` (exact loss accounting)."""

    def check(self, url: str) -> tuple[str, int, bool]:
        if self.policy not in POLICIES:
            raise ConfigError(f"queue policy {self.policy!r}: use one of {', '.join(POLICIES)}")
        if not 1 <= self.queue_size <= 1_000_000:
            raise ConfigError(f"queue size {self.queue_size}: must be 1 .. 1000000")
        if not 1 <= self.window <= 65535:
            raise ConfigError(f"window {self.window}: must be 1 .. 65535")
        if self.expiry_s < 0:
            raise ConfigError(f"expiry {self.expiry_s} s: must be >= 0 (0 = never)")
        return super().check(url)


@dataclass
class MqttReceiverOptions(MqttOptions):
    """A receiver's MQTT link: the shared-subscription group and its buffer."""

    group: str = DEFAULT_GROUP
    """Shared-subscription group: receivers in one group split the frames; ``""`` = take every frame."""
    queue_size: int = 10_000
    """Frames buffered between the MQTT thread and the receiver loop; the oldest is dropped when full."""
    pair_id: str = ""
    """The receiver's bundle pair id: a node announcing another one is logged when it comes online."""
    on_status: Callable[[NodeStatus], None] | None = None
    """Called (from the MQTT thread) with each node status change."""

    def check(self, url: str) -> tuple[str, int, bool]:
        if self.group and any(c in self.group for c in "/+#\0"):
            raise ConfigError(f"group {self.group!r}: a shared-subscription group name has no / + or #")
        if self.queue_size < 1:
            raise ConfigError(f"queue size {self.queue_size}: must be >= 1")
        return super().check(url)


@dataclass
class MqttLinkStats(LinkStats):
    """The ZeroMQ link counters, read the MQTT way, plus the broker's own.

    Sender: ``sent`` frames handed to the MQTT client, ``connects``/``disconnects``/``peers`` its broker
    connection, ``refused`` connections the broker refused (credentials). Receiver: ``received`` frames,
    ``connects`` nodes seen coming online, ``disconnects`` nodes going offline, ``peers`` nodes online now.
    """

    acked: int = 0
    """Frames the broker acknowledged (sender)."""
    denied: int = 0
    """Publishes the broker refused, e.g. not authorised by its ACL (sender)."""
    unacked_at_close: int = 0
    """Frames published but not acknowledged when the sender closed (they may still have arrived)."""
    broker_connects: int = 0
    """Connections to the broker established."""
    broker_disconnects: int = 0
    """Connections to the broker lost."""
    refused_reason: str = ""
    """The broker's last reason for refusing the connection or a publish/subscription."""
    connect_failures: int = 0
    """Connection attempts that failed before MQTT (broker unreachable, TLS verification failed)."""
    last_error: str = ""
    """Why the last connection attempt failed."""
    bad_topic: int = 0
    """Messages on a topic that is not ``PREFIX/<node>/frames|status`` (receiver)."""
    bad_status: int = 0
    """Status messages that are not the JSON a node publishes (receiver)."""
    duplicates: int = 0
    """Frames that arrived twice and were dropped (receiver): QoS 1 is at-least-once, so a node resends what
    the broker had not acknowledged when the connection broke."""


@dataclass
class NodeStatus:
    """A node's retained status as the receiver last saw it."""

    node: str
    """Node name (its topic level)."""
    state: str
    """``online`` or ``offline``."""
    pair_id: str = ""
    """The bundle pair id the node announced."""
    reason: str = ""
    """Why it is offline: ``closed`` (it said goodbye) or ``connection lost`` (its last will)."""
    time: float = 0.0
    """Unix time the node wrote the status (the will: when it connected)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _acked(info: Any) -> bool:
    """Whether the broker acknowledged a publish (paho's ``MQTTMessageInfo``). A frame published while the
    connection was going down has ``rc`` NO_CONN: paho keeps it and sends it again after reconnecting, but its
    ``is_published()`` raises for it (paho-mqtt 2.2), so the flag is read directly."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return bool(getattr(info, "_published", False))


class _MqttLink(ClosingLink):
    """A paho client in its own network thread; connects, reconnects and counts for both ends."""

    def __init__(self, url: str, options: MqttOptions, client_id: str) -> None:
        mqtt = _paho()
        from paho.mqtt.enums import CallbackAPIVersion

        self.options = options
        host, port, tls = options.check(url)
        self.url = url
        self.endpoint = url
        self.prefix = options.topic_prefix
        self._stats = MqttLinkStats()
        self._log = options.on_log or (lambda _msg: None)
        self._connected = threading.Event()
        self._refusals_logged: set[str] = set()
        self._connect_failure_logged = False
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if options.password_file is not None or options.username:
            password = read_password_file(options.password_file) if options.password_file else None
            c.username_pw_set(self._username(), password)
        if tls:
            ca = str(Path(options.ca_file).expanduser()) if options.ca_file else None
            c.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
        c.reconnect_delay_set(options.reconnect_min_s, options.reconnect_max_s)  # type: ignore[arg-type]
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        self._prepare(c)
        self._client: Any = c
        try:
            c.connect_async(host, port, keepalive=options.keepalive_s)
        except (OSError, ValueError) as e:
            raise ConfigError(f"broker {url}: {e}") from None
        c.loop_start()  # connects, reconnects and runs the callbacks in paho's thread

    def _username(self) -> str | None:
        return self.options.username

    def _prepare(self, client: Any) -> None:  # pragma: no cover - overridden
        pass

    def _refused(self, what: str, reason: Any) -> None:
        self._stats.refused_reason = f"{what}: {reason}"
        if what not in self._refusals_logged:
            self._refusals_logged.add(what)
            self._log(f"broker {self.url} refused {what}: {reason} (further refusals are only counted)")

    def _on_connect(self, client: Any, _ud: Any, _flags: Any, rc: Any, _props: Any) -> None:
        if rc.is_failure:
            self._stats.refused += 1
            hint = " (check the user name and password file)" if rc.value in (134, 135) else ""
            self._refused(f"the connection as {self._username()!r}", f"{rc}{hint}")
            return
        self._stats.broker_connects += 1
        self._connect_failure_logged = False
        self._connected.set()
        self._log(f"connected to {self.url} as {self._username()!r}")
        self._connected_now(client)

    def _connected_now(self, client: Any) -> None:  # pragma: no cover - overridden
        pass

    def _on_disconnect(self, _client: Any, _ud: Any, _flags: Any, rc: Any, _props: Any) -> None:
        if self._connected.is_set():
            self._connected.clear()
            self._stats.broker_disconnects += 1
            if self._client is not None:
                self._log(f"lost the broker {self.url} ({rc}); reconnecting")

    def _on_connect_fail(self, _client: Any, _ud: Any) -> None:
        err = sys.exc_info()[1]  # paho calls this while handling the connect error
        if isinstance(err, ssl.SSLCertVerificationError):
            why = f"TLS: {err.verify_message} (--ca-file must be the CA that signed the broker's certificate)"
        else:
            why = f"{err or 'cannot connect'}"
        self._stats.connect_failures += 1
        self._stats.last_error = why
        if not self._connect_failure_logged:
            self._connect_failure_logged = True
            self._log(
                f"cannot connect to the broker {self.url}: {why}; retrying (further failures only counted)"
            )

    @property
    def connected(self) -> bool:
        """Connected to the broker now."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected to the broker; True if it is."""
        return self._connected.wait(timeout_s)

    @property
    def stats(self) -> MqttLinkStats:
        """Counters so far (a live object)."""
        return self._stats

    @property
    def closed(self) -> bool:
        return self._client is None

    def close(self) -> None:
        """Disconnect and stop the network thread (idempotent)."""
        c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            c.loop_stop()
            self._connected.clear()


class MqttSender(_MqttLink):
    """A camera node's end: publishes packets to ``PREFIX/<node>/frames`` without ever blocking.

    Args:
        url: the broker, e.g. ``mqtts://broker.lan:8883``.
        node: this node's name: its topic level, default user name and client id.
        options: credentials, TLS, queue, drop policy, window, expiry.
        pair_id: the bundle pair id announced in the retained status.

    Raises:
        ConfigError: bad URL, node name or options; an unreadable password file.
    """

    def __init__(
        self, url: str, node: str, options: MqttSenderOptions | None = None, *, pair_id: str = ""
    ) -> None:
        options = options or MqttSenderOptions()
        self.node = check_sender_name(node)
        self.pair_id = pair_id
        self.topic = frames_topic(node, options.topic_prefix)
        self.status_topic = status_topic(node, options.topic_prefix)
        self._queue: deque[bytes] = deque()
        self._max = options.queue_size
        self._window = options.window
        self._drop_oldest = options.policy == "drop-oldest"
        self._inflight: deque[tuple[float, Any]] = deque()
        self._denied_mids: set[int] = set()  # frames the broker refused (added by paho's thread)
        self._status_mids: set[int] = set()  # status publishes in flight (paho's thread only)
        self._ack_timeout = max(2.0 * options.keepalive_s, 5.0)
        self._props: Any = None
        super().__init__(url, options, options.client_id or node)
        self.endpoint = f"{url} ({self.topic})"

    def _username(self) -> str | None:
        return self.options.username or self.node

    def _status(self, state: str, reason: str = "") -> bytes:
        doc = {"node": self.node, "state": state, "pair_id": self.pair_id, "time": round(time.time(), 3)}
        if reason:
            doc["reason"] = reason
        return json.dumps(doc).encode()

    def _prepare(self, client: Any) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        expiry = self.options.expiry_s  # type: ignore[attr-defined]
        if expiry:
            self._props = Properties(PacketTypes.PUBLISH)
            self._props.MessageExpiryInterval = expiry
        client.will_set(self.status_topic, self._status("offline", "connection lost"), qos=1, retain=True)
        client.on_publish = self._on_publish

    def _connected_now(self, client: Any) -> None:
        info = client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        self._status_mids.add(info.mid)

    def _on_publish(self, _client: Any, _ud: Any, mid: int, rc: Any, _props: Any) -> None:
        # runs under paho's lock, before the message counts as published: only note things here
        status = mid in self._status_mids
        self._status_mids.discard(mid)
        if rc.is_failure:
            self._stats.denied += 1
            if not status:
                self._denied_mids.add(mid)
            self._refused(
                f"publishing to {self.topic}", f"{rc} (its ACL must let {self._username()!r} write there)"
            )

    def _reap(self) -> int:
        """Forget acknowledged frames (and ones unacknowledged for too long); returns frames in flight."""
        inflight = self._inflight
        if inflight:
            stale = time.monotonic() - self._ack_timeout
            while inflight and (_acked(inflight[0][1]) or inflight[0][0] < stale):
                _t, info = inflight.popleft()
                if info.mid in self._denied_mids:
                    self._denied_mids.discard(info.mid)
                elif _acked(info):
                    self._stats.acked += 1
        return len(inflight)

    def _publish(self, data: bytes) -> None:
        info = self._client.publish(self.topic, data, qos=1, properties=self._props)
        self._inflight.append((time.monotonic(), info))
        self._stats.sent += 1

    def _flush_nowait(self) -> None:
        q = self._queue
        if not self._connected.is_set():
            return
        room = self._window - self._reap()
        while q and room > 0:
            self._publish(q.popleft())
            room -= 1

    def send(self, data: bytes) -> bool:
        """Queue one packet and publish what the window allows now. Never blocks.

        Returns:
            False when a frame was dropped because the queue was full (the new one or the oldest).
        """
        if self._client is None:
            raise ConfigError(f"{self.endpoint}: send on a closed sender")
        q = self._queue
        if not q and self._connected.is_set() and self._reap() < self._window:
            self._publish(data)
            return True
        q.append(data)
        self._flush_nowait()
        if len(q) > self._max:
            self._stats.dropped += 1
            dropped = q.popleft() if self._drop_oldest else q.pop()
            on_drop = self.options.on_drop  # type: ignore[attr-defined]
            if on_drop is not None:
                on_drop(dropped, "queue")
            return False
        return True

    def flush(self, timeout_s: float = 0.0) -> int:
        """Publish queued frames and wait for the broker's acknowledgements for up to ``timeout_s``.

        Returns:
            Frames still queued or unacknowledged.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self._flush_nowait()
            left = len(self._queue) + self._reap()
            if not left or time.monotonic() >= deadline or self._client is None:
                return left
            time.sleep(0.005)

    identifies_sender = True
    """The receiver learns who sent each message from its topic (the broker's ACL binds it to the login)."""
    authenticates_messages = False
    """TLS ends at the broker, and the receiver's duplicate filter needs each message to differ: compact
    frames carry their 2-byte check (which covers the session)."""

    @property
    def stats(self) -> MqttLinkStats:
        s = self._stats
        s.queued = len(self._queue)
        s.connects, s.disconnects = s.broker_connects, s.broker_disconnects
        s.peers = int(self._connected.is_set())
        return s

    def close(self, flush_s: float | None = None) -> None:
        """Deliver what is queued for up to ``flush_s`` (default ``options.close_flush_s``), mark the node
        ``offline`` (retained) and disconnect."""
        c = self._client
        if c is None:
            return
        budget = self.options.close_flush_s if flush_s is None else flush_s  # type: ignore[attr-defined]
        before = len(self._queue)
        if budget > 0:
            self.flush(budget)
        s = self._stats
        s.flushed_at_close += before - len(self._queue)
        s.lost_at_close += len(self._queue)
        s.unacked_at_close += self._reap()
        on_drop = self.options.on_drop  # type: ignore[attr-defined]
        if on_drop is not None:
            for data in self._queue:
                on_drop(data, "close")
        self._queue.clear()
        if self._connected.is_set():
            info = c.publish(self.status_topic, self._status("offline", "closed"), qos=1, retain=True)
            deadline = time.monotonic() + 1.0
            while not _acked(info) and self._connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.005)
        super().close()
        s.queued = s.peers = 0


class MqttReceiver(_MqttLink):
    """The receiver's end: takes its share of every node's frames through a shared subscription.

    Args:
        url: the broker, e.g. ``mqtts://broker.lan:8883``.
        options: credentials, TLS, group, buffer.

    Raises:
        ConfigError: bad URL or options; an unreadable password file.
    """

    def __init__(self, url: str, options: MqttReceiverOptions | None = None) -> None:
        options = options or MqttReceiverOptions()
        prefix = options.topic_prefix
        frames = f"{prefix}/+/frames"
        self.subscription = f"$share/{options.group}/{frames}" if options.group else frames
        self._frames: deque[Received] = deque()
        self._cond = threading.Condition()
        self._max = options.queue_size
        self.nodes: dict[str, NodeStatus] = {}
        """Every node's last status, by name."""
        self._on_status = options.on_status
        self._subscribed = threading.Event()
        self._recent: dict[str, tuple[deque[int], set[int]]] = {}
        user = options.username or "rx"
        super().__init__(url, options, options.client_id or f"{user}-{uuid.uuid4().hex[:8]}")
        self.endpoint = f"{url} ({self.subscription})"

    @property
    def shared(self) -> bool:
        """Frames are split over a group: a sequence gap here may be another receiver's share."""
        return bool(self.options.group)  # type: ignore[attr-defined]

    def _prepare(self, client: Any) -> None:
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe

    def _connected_now(self, client: Any) -> None:
        client.subscribe([(self.subscription, 1), (status_topic("+", self.prefix), 1)])

    def _on_subscribe(self, _client: Any, _ud: Any, _mid: int, codes: list, _props: Any) -> None:
        for topic, rc in zip((self.subscription, status_topic("+", self.prefix)), codes, strict=False):
            if not rc.is_failure:
                if topic == self.subscription:
                    self._subscribed.set()
            else:
                self._stats.refused += 1
                self._refused(
                    f"the subscription {topic}", f"{rc} (its ACL must let {self._username()!r} read)"
                )

    def _on_message(self, _client: Any, _ud: Any, msg: Any) -> None:
        topic, head = msg.topic, self.prefix + "/"
        node, kind = "", ""
        if topic.startswith(head):
            node, _, kind = topic[len(head) :].partition("/")
        try:
            check_sender_name(node)
        except ConfigError:
            kind = ""
        if kind == "frames":
            if self._duplicate(node, msg.payload):
                self._stats.duplicates += 1
                return
            with self._cond:
                if len(self._frames) >= self._max:
                    self._frames.popleft()
                    self._stats.dropped += 1
                self._frames.append(Received(msg.payload, node))
                self._cond.notify()
        elif kind == "status":
            self._take_status(node, msg.payload)
        else:
            self._stats.bad_topic += 1

    def _duplicate(self, node: str, data: bytes) -> bool:
        """Seen among this node's last 64 packets? (Each packet is unique: its seq and time differ.)"""
        recent = self._recent.get(node)
        if recent is None:
            recent = self._recent[node] = (deque(), set())
        order, seen = recent
        h = hash(data)
        if h in seen:
            return True
        order.append(h)
        seen.add(h)
        if len(order) > 64:
            seen.discard(order.popleft())
        return False

    def _on_disconnect(self, client: Any, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        self._subscribed.clear()
        super()._on_disconnect(client, ud, flags, rc, props)

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until subscribed (frames published from now on reach this receiver's group); True if so."""
        return self._subscribed.wait(timeout_s)

    def _take_status(self, node: str, payload: bytes) -> None:
        if not payload:  # a cleared retained message: the node was removed
            self.nodes.pop(node, None)
            return
        try:
            doc = json.loads(payload)
            st = NodeStatus(node, str(doc["state"]), str(doc.get("pair_id", "")), str(doc.get("reason", "")),
                            float(doc.get("time", 0.0)))  # fmt: skip
            if st.state not in ("online", "offline"):
                raise ValueError(st.state)
        except (ValueError, KeyError, TypeError):
            self._stats.bad_status += 1
            return
        old = self.nodes.get(node)
        self.nodes[node] = st
        if old is not None and old.state == st.state and old.pair_id == st.pair_id:
            return
        if st.state == "online":
            self._stats.connects += 1
            mine = self.options.pair_id  # type: ignore[attr-defined]
            note = ""
            if mine and st.pair_id and st.pair_id != mine:
                note = f" -- this receiver's bundle is {mine}: its frames will be refused"
            self._log(f"node {node} online (bundle {st.pair_id or '?'}){note}")
        elif old is not None and old.state == "online":
            self._stats.disconnects += 1
            self._log(f"node {node} offline ({st.reason or 'no reason given'})")
        if self._on_status is not None:
            self._on_status(st)

    @property
    def stats(self) -> MqttLinkStats:
        s = self._stats
        s.peers = sum(1 for st in list(self.nodes.values()) if st.state == "online")
        return s

    def recv_many(self, max_n: int = 256, timeout_s: float = 0.1) -> list[Received]:
        """Wait up to ``timeout_s`` for a frame; return it and the others already waiting (<= max_n)."""
        if self._client is None:
            raise ConfigError(f"{self.endpoint}: receive on a closed receiver")
        with self._cond:
            if not self._frames:
                self._cond.wait(timeout_s)
            q = self._frames
            n = min(max_n, len(q))
            out = [q.popleft() for _ in range(n)]
        self._stats.received += n
        return out
