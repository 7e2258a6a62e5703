"""A log that cannot be flooded: a few lines per category and time window, then one summary line.

A receiver logs refused packets and handshakes. A hostile or broken sender can cause them at line rate
(300k packets with random pair ids, 65k handshakes), so the log keeps at most ``lines`` messages per category
in each ``window_s`` and reports the rest as a count when the window ends. Memory is one small record per
category; callers use a fixed set of categories (refusal reasons), never an attacker-chosen value (an id).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimitedLog:
    """``log(category, message)``: passes the first ``lines`` messages of a category per window to ``sink``.

    Thread-safe (the ZAP handler logs from its own thread).

    Args:
        sink: where lines go (e.g. the CLI's stderr writer).
        lines: messages passed per category and window.
        window_s: window length; the suppressed count of a category is reported when its next message
            arrives after the window, or on :meth:`flush`.
        clock: monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        sink: Callable[[str], None],
        lines: int = 5,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._lines = lines
        self._window = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, list] = {}  # category -> [window start, passed, suppressed]
        self.suppressed = 0
        """Messages not passed on so far, all categories."""

    def __call__(self, category: str, message: str) -> bool:
        """Log ``message`` unless its category used up this window; True if it was passed on."""
        now = self._clock()
        out: list[str] = []
        with self._lock:
            st = self._state.get(category)
            if st is None or now - st[0] >= self._window:
                if st is not None and st[2]:
                    out.append(self._summary(category, st[2]))
                st = self._state[category] = [now, 0, 0]
            passed = st[1] < self._lines
            if passed:
                st[1] += 1
                out.append(message)
            else:
                st[2] += 1
                self.suppressed += 1
        for line in out:
            self._sink(line)
        return passed

    def _summary(self, category: str, n: int) -> str:
        return f"... and {n} more {category!r} messages in {self._window:.0f} s (counted, not logged)"

    def flush(self) -> None:
        """Report every pending suppressed count now (at exit)."""
        with self._lock:
            out = [self._summary(c, st[2]) for c, st in self._state.items() if st[2]]
            for st in self._state.values():
                st[2] = 0
        for line in out:
            self._sink(line)
