"""`cae-edge stream soak`: K senders into one receiver on loopback, receiver killed and restarted mid-run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import CaeEdgeError
from .common import write_json

err = Console(stderr=True)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def soak(
    senders: Annotated[int, typer.Option("--senders", "-k", min=1, max=32, help="Sender processes.")] = 8,
    seconds: Annotated[
        float, typer.Option("--seconds", "-t", min=1, max=600, help="How long the senders stream.")
    ] = 60.0,
    restart_at: Annotated[
        float,
        typer.Option(
            "--restart-at", help="SIGKILL the receiver after S seconds and start a new one; 0 = never."
        ),
    ] = 30.0,
    down: Annotated[
        float, typer.Option("--down", min=0, max=60, help="Extra seconds the receiver stays dead.")
    ] = 0.0,
    bundle: Annotated[str, typer.Option("--bundle", "-b", help="Bundle both ends use.")] = "mnist",
    fps: Annotated[float, typer.Option("--fps", min=0, help="Per-sender cap; 0 = full rate.")] = 0.0,
    queue: Annotated[int, typer.Option("--queue", min=1, help="Each sender's send queue.")] = 64,
    insecure: Annotated[bool, typer.Option("--insecure", help="Plaintext instead of CURVE.")] = False,
    resume_target: Annotated[
        float, typer.Option("--resume-target", min=0, help="Seconds every sender may take to resume.")
    ] = 2.0,
    rcvhwm: Annotated[
        int | None, typer.Option("--rcvhwm", min=1, help="Receiver's ZeroMQ high-water mark per sender.")
    ] = None,
    sndhwm: Annotated[
        int | None, typer.Option("--sndhwm", min=1, help="Senders' ZeroMQ high-water mark.")
    ] = None,
    max_age_ms: Annotated[
        float,
        typer.Option("--max-age-ms", min=0, help="Receiver's age bound: older frames dropped; 0 = none."),
    ] = 250.0,
    png: Annotated[
        bool, typer.Option("--png", help="Receivers also write each decoded frame as a PNG (a slow sink).")
    ] = False,
    sink_ms: Annotated[
        float,
        typer.Option(
            "--sink-ms",
            min=0,
            max=1000,
            help="Receivers' sink sleeps this long per frame (fixes their capacity).",
        ),
    ] = 0.0,
    keep: Annotated[
        Path | None, typer.Option("--keep", help="Keep records, logs, keys and status files in DIR.")
    ] = None,
    stats_json: Annotated[Path | None, typer.Option("--json", help="Write the full result here.")] = None,
) -> None:
    """Soak test on 127.0.0.1: every frame each sender produced is delivered or dropped for a named reason.

    Prints a table per sender (produced, delivered, dropped by the sender and by the receiver, by reason, lost
    in flight at the restart, resume time) and per receiver its CPU, drops and latency p50/p99.
    Exit code 0 when there was no hang, every sender resumed within --resume-target after the restart and
    every frame is accounted for; 1 otherwise.
    """
    from ..benchmark.soak import SoakOptions, run_soak

    opts = SoakOptions(
        senders=senders,
        seconds=seconds,
        restart_at=restart_at or None,
        down_s=down,
        bundle=bundle,
        fps=fps,
        queue_size=queue,
        secure=not insecure,
        resume_target_s=resume_target,
        workdir=keep,
        rcvhwm=rcvhwm,
        sndhwm=sndhwm,
        max_age_ms=max_age_ms,
        png=png,
        sink_ms=sink_ms,
    )
    try:
        result = run_soak(opts, progress=lambda m: err.print(f"[dim]{m}[/dim]"))
    except CaeEdgeError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    d = result.to_dict()
    table = Table(
        "sender", "produced", "delivered", "tx queue", "tx close", "rx stale", "rx backlog", "rx shutdown",
        "lost restart", "lost end", "unexplained", "fps", "resume s",
        title=f"soak: {senders} senders, {d['duration_s']:.1f} s, {'plaintext' if insecure else 'CURVE'}",
    )  # fmt: skip

    def restart_cell(lost: int, queued: int) -> str:
        return f"{lost} ({queued} q)" if lost else "0"

    for s in d["senders"]:
        rx = s["rx_dropped"]
        table.add_row(
            s["name"], str(s["produced"]), str(s["delivered"]), str(s["dropped_queue"]),
            str(s["dropped_close"]), str(rx.get("stale", 0)), str(rx.get("backlog", 0)),
            str(rx.get("shutdown", 0)), restart_cell(s["lost_restart"], s["lost_restart_queued"]),
            str(s["lost_at_end"]),
            ("[green]0[/green]" if s["unexplained"] == 0 else f"[red]{s['unexplained']}[/red]"),
            f"{s['fps']:.0f}", "-" if s["resume_s"] is None else f"{s['resume_s']:.2f}",
        )  # fmt: skip
    t = d["totals"]
    table.add_row(
        "total", str(t["produced"]), str(t["delivered"]), str(t["dropped_queue"]), str(t["dropped_close"]),
        str(t["rx_stale"]), str(t["rx_backlog"]), str(t["rx_shutdown"]),
        restart_cell(t["lost_restart"], t["lost_restart_queued"]), str(t["lost_at_end"]),
        str(t["unexplained"]), "", "",
        style="bold",
    )  # fmt: skip
    out = Console()
    (out if out.is_terminal else Console(width=170)).print(table)  # whole table in logs and pipes
    for r in d["receivers"]:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(r["dropped"].items())) or "none"
        typer.echo(
            f"receiver #{r['incarnation']}: {r['frames']} of {r['received']} frames decoded "
            f"(dropped: {drops}), "
            f"CPU {r['cpu_s']:.1f} s ({r['cpu_percent']:.0f}% of a core over {r['alive_s']:.1f} s), "
            f"start-up {r['ready_s']:.2f} s, {r['ended']}, rejected {r['rejected']}, "
            f"latency p50 {_ms(r['latency_p50_ms'])} p99 {_ms(r['latency_p99_ms'])}"
        )
    if d["kill_at_s"] is not None:
        resume = d["resume_max_s"]
        typer.echo(
            f"restart: killed at {d['kill_at_s']:.2f} s, "
            f"new receiver ready {d['restart_ready_s']:.2f} s later, "
            f"slowest sender resumed {'never' if resume is None else f'{resume:.2f} s'} after that"
        )
    for h in d["hangs"]:
        err.print(f"[red]hang:[/red] {h}")
    verdict = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in d["verdict"].items())
    typer.echo(f"verdict: {verdict}")
    write_json(stats_json, d)
    if not result.ok:
        raise typer.Exit(1)
