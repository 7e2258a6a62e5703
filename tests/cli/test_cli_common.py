"""The CLI's shared helpers: the one-line error exit, JSON output and the progress-bar adapter."""

from __future__ import annotations

import io
import json

import typer
from rich.console import Console
from typer.testing import CliRunner

from cae_edge.cli.common import fail, print_json, progress_bar


def _run(body) -> object:
    app = typer.Typer()
    app.command()(body)
    return CliRunner().invoke(app, [])


def test_fail_prints_one_line_with_the_message_as_is():
    message = "pip install 'cae-edge[node]' " + "x" * 150 + " [red]not markup[/red]"

    def cmd() -> None:
        raise fail(ValueError(message))

    r = _run(cmd)
    assert r.exit_code == 1
    assert r.stderr == f"error: {message}\n" and r.stdout == ""


def test_print_json_writes_indented_json_to_stdout():
    def cmd() -> None:
        print_json({"a": [1, 2], "b": "[x]"})

    r = _run(cmd)
    assert r.exit_code == 0 and json.loads(r.stdout) == {"a": [1, 2], "b": "[x]"}
    assert r.stdout.startswith('{\n  "a"')


def test_progress_bar_takes_the_library_callback(monkeypatch):
    import cae_edge.cli.common as common

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(common, "err", terminal)
    with progress_bar("start") as step:
        step("fetching thing", 2, 4)
    drawn = screen.getvalue()
    assert "start" in drawn and "fetching thing" in drawn and " 50% " in drawn
    assert drawn.endswith("\x1b[2K")  # transient: the bar is erased at the end
