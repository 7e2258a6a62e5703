"""`cae-edge doctor`: can this node stream? One line per check, exit 0 only when nothing failed.

No TensorFlow here: the checks live in ``cae_edge.device.doctor``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import say, write_json


def doctor(
    bundle: Annotated[
        list[str] | None,
        typer.Option(
            "--bundle",
            "-b",
            metavar="NAME|DIR",
            help="Bundle to self-test (repeatable; default: every installed bundle).",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source", "-s", help="Frame source to read one frame from (as `stream send --source`)."
        ),
    ] = None,
    keys: Annotated[
        Path | None, typer.Option("--keys", help="This node's secret key file (NAME.key_secret).")
    ] = None,
    server_key: Annotated[
        Path | None, typer.Option("--server-key", help="The receiver's public key file (receiver.key).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="The node streams without CURVE: handshake in the clear.")
    ] = False,
    connect: Annotated[
        str | None,
        typer.Option("--connect", "-c", help="The receiver to try (TCP connect, then the ZeroMQ handshake)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Node config file (as `stream send --config`); flags override it."),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds the receiver gets to answer.")
    ] = 3.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report here.")] = None,
) -> None:
    """Check platform, Python, TFLite interpreter, each bundle's self-test, cameras, keys and the receiver.

    One line per check (ok, warn, skip or FAIL); every FAIL line says what to do. Exit code 0 only when the
    node can stream, 1 otherwise.
    """
    from ..device.doctor import DoctorOptions, run_doctor

    opts = DoctorOptions(
        bundles=list(bundle or []),
        source=source,
        key=keys,
        server_key=server_key,
        insecure=insecure,
        connect=connect,
        config=config,
        connect_timeout_s=timeout,
    )
    report = run_doctor(opts, on_check=lambda c: typer.echo(c.line()))
    write_json(json_out, report.to_dict())
    if report.ok:
        typer.echo("this node can stream")
        return
    n = len(report.failures)
    say(f"{n} problem{'s' if n != 1 else ''}: fix the FAIL line{'s' if n != 1 else ''} above")
    raise typer.Exit(1)
