"""What both ends of a stream share: the payload kind a bundle sends, the clock, the log callback type.

::

    node:      FrameSource ─► Preprocessor ─► Encoder.encode ─► wire.pack ─► PushSender.send
                  (capture)     (28x28 u8)      (payload)        (+24 B)      (never blocks)
    receiver:  PullReceiver ─► wire.unpack ─► pair check ─► Decoder.decode ─► sinks (PNG, video, mosaic)
                                 (rejects counted by reason)                    (per-sender stats)

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
from collections.abc import Callable

from ..errors import ConfigError
from ..wire import PayloadKind

Log = Callable[[str], None]


def now_us() -> int:
    """Unix time in microseconds (the clock packets are stamped with)."""
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


def mean_us(total_ns: int, n: int) -> float:
    """``total_ns`` over ``n`` calls, in µs rounded to 0.01 (0 when ``n`` is 0)."""
    return round(total_ns / n / 1000, 2) if n else 0.0
