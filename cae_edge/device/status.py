"""The receiver's per-sender state as a JSON status file, rewritten atomically (for dashboards, monitoring).

A reader (``watch cat``, a Prometheus textfile collector, a web page) never sees a half-written file: each
update goes to a temporary file in the same directory, then ``os.replace`` swaps it in. Layout::

    {
      "time": 1764000000.0,              # when written (Unix time)
      "pid": 1234,
      "secured": true,                   # CURVE on (false = --insecure)
      "receiver": {...ReceiverStats...}, # frames, fps, rejected by reason, connects, peers, senders{...}
      "senders": {                       # per sender: decoded, dropped by reason, loss, latency, key, age
        "cam-1": {"frames": 1200, "received": 1210, "dropped": {"stale": 10}, "lost": 3, "fps": 10.0,
                  "latency_ms": {...}, "peer": "cam-1", "age_s": 0.1, ...}
      },
      "auth": {"allowed_keys": 3, "accepted": {"cam-1": 1}, "denied": 0, ...}   # null when insecure
    }
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` so that readers see the old or the new file, never a mix.

    Raises:
        ConfigError: the directory does not exist or is not writable.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ConfigError(f"status file {path}: cannot write in {path.parent} ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1, default=str)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def receiver_status(stats: Any, auth: Any = None, *, secured: bool | None = None) -> dict:
    """The status document for a receiver's stats (``ReceiverStats``) and CURVE ``AuthStats``.

    ``senders`` repeats each sender's entry with ``age_s``: seconds since its last frame.
    """
    rx = stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)
    now = time.time()
    senders = {}
    for name, s in (rx.get("senders") or {}).items():
        s = dict(s)
        last = s.get("last_seen") or 0.0
        s["age_s"] = round(now - last, 3) if last else None
        senders[name] = s
    if is_dataclass(auth):
        auth = asdict(auth)
    return {
        "time": round(now, 3),
        "pid": os.getpid(),
        "secured": bool(auth is not None) if secured is None else secured,
        "receiver": rx,
        "senders": senders,
        "auth": auth,
    }


class StatusFile:
    """Rewrites a status file at most once per ``every_s`` (call :meth:`update` as often as you like)."""

    def __init__(self, path: str | Path, every_s: float = 1.0) -> None:
        """Check the directory now, so a bad ``--status`` path fails at start.

        Raises:
            ConfigError: the directory is missing.
        """
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigError(f"status file {self.path}: directory {self.path.parent} does not exist")
        self.every_s = every_s
        self._next = 0.0
        self.errors = 0
        """Writes that failed (disk full, directory gone); the receiver goes on without its status file."""
        self.error: str | None = None
        """Why the last write failed."""

    def update(self, payload: dict, *, force: bool = False) -> bool:
        """Write ``payload`` if ``every_s`` passed since the last write (or ``force``); True if written.

        A failed write is counted in :attr:`errors` (reason in :attr:`error`) and returns False: a status
        file that cannot be written must not stop the receiver.
        """
        now = time.monotonic()
        if not force and now < self._next:
            return False
        self._next = now + self.every_s
        try:
            write_json_atomic(self.path, payload)
        except (OSError, ConfigError) as e:
            self.errors += 1
            self.error = f"{self.path}: {getattr(e, 'strerror', None) or e}"
            return False
        return True
