"""What the ``cae-edge`` command modules share: stderr lines, the one-line error exit, JSON output, progress
bars and Ctrl-C/SIGTERM handling. Light imports only (a node without TensorFlow runs these commands)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

err = Console(stderr=True)
"""Rich output on stderr (progress bars, dim step lines, coloured notes); stdout stays for results."""

StepCallback = Callable[[str, int, int], None]
"""The library's progress callback: ``(what, done, total)`` (``cae_edge.datasets.Progress`` and alike)."""


class Head(str, Enum):
    """Decoder output heads (``cae_edge.rundir.HEADS``, ``ModelConfig.head``) for ``--head``."""

    convt = "convt"
    d2s = "d2s"


def print_version(value: bool) -> None:
    """``--version``: print ``cae-edge <version>`` and exit (an eager option's callback)."""
    if value:
        from .. import __version__

        typer.echo(f"cae-edge {__version__}")
        raise typer.Exit()


def say(msg: str) -> None:
    """One line to stderr (live statistics, events, summaries)."""
    typer.echo(msg, err=True)


def dim(msg: str) -> None:
    """One dim line to stderr (a step of a long command), printed as is (no markup, no wrapping)."""
    err.print(Text(msg, style="dim"), soft_wrap=True, highlight=False)


def fail(e: Exception | str) -> typer.Exit:
    """Print the one line ``error: <e>`` to stderr and return the exit (code 1) for the caller to raise.

    ``error:`` is red on a terminal; the message is printed as is (no markup, no wrapping).
    """
    err.print(Text.assemble(("error:", "red"), " ", str(e)), soft_wrap=True, highlight=False)
    return typer.Exit(1)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON to stdout (a command's ``--json`` result)."""
    typer.echo(json.dumps(data, indent=2))


def write_json(path: Path | None, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` (creating its folder); nothing when ``path`` is None."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[StepCallback]:
    """A transient progress bar on stderr, driven by the library's ``(what, done, total)`` callbacks.

    Args:
        description: What the bar says until the first callback.
        total: Steps expected (``None``: unknown until a callback says).

    Yields:
        The callback to hand to the library function; each call sets the bar's text, position and total.
    """
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def step(what: str, done: int, total: int | None) -> None:
            bar.update(task, description=what, completed=done, total=total)

        yield step


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
