"""What the long-running ``cae-edge`` commands share: stderr lines, the one-line error exit, JSON files and
Ctrl-C/SIGTERM handling. Light imports only (a node without TensorFlow runs these commands)."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import typer


def say(msg: str) -> None:
    """One line to stderr (live statistics, events, summaries)."""
    typer.echo(msg, err=True)


def fail(e: Exception) -> typer.Exit:
    """Print ``error: <e>`` and return the exit (code 1, could not start) for the caller to raise."""
    say(f"error: {e}")
    return typer.Exit(1)


def write_json(path: Path | None, data: dict) -> None:
    """Write ``data`` as indented JSON to ``path`` (creating its folder); nothing when ``path`` is None."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")


def stop_on_signals() -> threading.Event:
    """An event set by the first Ctrl-C/SIGTERM (finish cleanly, with the stats summary); a second Ctrl-C
    stops at once (``KeyboardInterrupt``)."""
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop
