"""What both ends of a stream share: the clock, the log callback type, the stage timer (the payload kind a
bundle sends is :func:`cae_edge.payload.payload_kind`).

::

    node:      FrameSource ─► Preprocessor ─► Encoder.encode ─► wire.pack ─► PushSender.send
                  (capture)     (28x28 u8)      (payload)        (+24 B)      (never blocks)
    receiver:  PullReceiver ─► wire.unpack ─► pair check ─► queue ─► age check ─► Decoder.decode ─► sinks
               (receive thread, no decode; rejects        (per     (round-robin;    (PNG, video, mosaic;
                counted by reason)                        sender)   stale dropped)   per-sender stats)

The ends live in :mod:`~cae_edge.device.sender` and :mod:`~cae_edge.device.receiver`, where decoded frames go
in :mod:`~cae_edge.device.sinks`. The loops take their parts as arguments (tests inject an
:class:`~cae_edge.device.capture.ArraySource`, an in-memory sink, ...); ``stream_send`` and
``stream_receive`` build the parts from names and options, as the ``cae-edge stream`` commands do. Neither
prints: statistics go to an ``on_stats`` callback about once per ``stats_every_s`` and events (a new sender,
a refused pair id) to ``on_log``. Both stop when ``stop`` (a :class:`threading.Event`) is set — the CLI sets
it on SIGINT/SIGTERM — and return their final statistics.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from .. import wire
from ..errors import PacketError
from ..wire import Packet

Log = Callable[[str], None]


class SenderLink(Protocol):
    """What the sender loop needs of a link: ``transport.PushSender`` (ZeroMQ) or ``mqtt.MqttSender``."""

    endpoint: str

    @property
    def closed(self) -> bool: ...

    @property
    def stats(self) -> Any: ...  # a transport.LinkStats

    def send(self, data: bytes) -> bool: ...

    def wait_connected(self, timeout_s: float) -> bool: ...


class ReceiverLink(Protocol):
    """What the receiver loop needs of a link: ``transport.PullReceiver`` (ZeroMQ) or ``mqtt.MqttReceiver``.

    A link whose ``shared`` attribute is true spreads each sender's frames over several receivers.
    """

    endpoint: str

    @property
    def closed(self) -> bool: ...

    @property
    def stats(self) -> Any: ...  # a transport.LinkStats

    def recv_many(self, max_n: int = 256, timeout_s: float = 0.1) -> list: ...


def now_us() -> int:
    """Unix time in microseconds (the clock packets are stamped with)."""
    return time.time_ns() // 1000


def mean_us(total_ns: int, n: int) -> float:
    """``total_ns`` over ``n`` calls, in µs rounded to 0.01 (0 when ``n`` is 0)."""
    return round(total_ns / n / 1000, 2) if n else 0.0


class StageTimer:
    """Time spent in each stage of a loop, summed, for the per-frame means the statistics report.

    One object replaces a local total per stage: the loop takes ``time.perf_counter_ns()`` marks and hands
    them over (:meth:`split` for back-to-back stages, :meth:`add` for one); :meth:`mean_us` divides by the
    count that stage ran. :attr:`start` is when the timer (the loop) started.
    """

    __slots__ = ("ns", "start")

    def __init__(self, *stages: str) -> None:
        self.ns = dict.fromkeys(stages, 0)
        """Nanoseconds per stage so far."""
        self.start = time.perf_counter()
        """``time.perf_counter()`` at creation."""

    def split(self, *marks: int) -> None:
        """Add ``marks[i + 1] - marks[i]`` to the i-th stage (the stages in the order given at creation)."""
        for stage, a, b in zip(self.ns, marks, marks[1:], strict=False):
            self.ns[stage] += b - a

    def add(self, stage: str, elapsed_ns: int) -> None:
        """Add ``elapsed_ns`` to ``stage``."""
        self.ns[stage] += elapsed_ns

    def mean_us(self, stage: str, n: int) -> float:
        """Mean µs of ``stage`` over ``n`` runs (0 when ``n`` is 0)."""
        return mean_us(self.ns[stage], n)

    def elapsed_s(self) -> float:
        """Seconds since :attr:`start`, rounded to ms."""
        return round(time.perf_counter() - self.start, 3)


class Sessions:
    """A receiver's reading of both packet formats: full packets as they are, compact frames against their
    sender's session — the last full packet taken from it (:mod:`cae_edge.wire`). A sender is the identity the
    link authenticated (CURVE key name, MQTT topic node), else its wire id. Used by the receive thread only.

    Args:
        max_senders: sessions remembered (least recently refreshed forgotten first).
    """

    def __init__(self, max_senders: int) -> None:
        self.max_senders = max_senders
        self._sessions: OrderedDict[Hashable, Packet] = OrderedDict()
        self._full: Packet | None = None

    def unpack(self, data: bytes, peer: str | None) -> Packet:
        """Parse one message from ``peer`` (None on links that do not identify senders).

        Raises:
            PacketError: what :func:`~cae_edge.wire.unpack` and :func:`~cae_edge.wire.expand` raise, and
                reason
                ``no-session`` for a compact frame from a sender with no session yet (a receiver started
                after the sender's last full packet: its next one, at most ``--session-every`` frames
                later, starts one).
        """
        self._full = None
        if not wire.is_compact(data):
            p = self._full = wire.unpack(data)
            return p
        c = wire.unpack_compact(data)
        key: Hashable | None = peer or c.sender_id
        session = self._sessions.get(key) if key is not None else None
        if session is None:
            who = peer or (f"id {c.sender_id:#06x}" if c.sender_id is not None else "an unidentified sender")
            raise PacketError(
                f"compact frame from {who} before any full packet from it (no session yet); "
                "its next session packet starts one",
                "no-session",
            )
        return wire.expand(c, session)

    def took(self, p: Packet, peer: str | None) -> None:
        """The receiver accepted ``p`` (pair and coding match): a full packet becomes its sender's session."""
        if p is not self._full:
            return
        key = peer or p.sender_id
        self._sessions[key] = p
        self._sessions.move_to_end(key)
        if len(self._sessions) > self.max_senders:
            self._sessions.popitem(last=False)
