"""`cae-edge stream soak`: a fleet of simulated nodes through ZeroMQ or an MQTT broker into one receiver on
loopback, the receiver killed and restarted mid-run (and the broker, for MQTT)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import CaeEdgeError
from .common import dim, fail, say, write_json

FULL_TABLE_MAX = 12
"""Fleets up to this many nodes get a row each; bigger ones the worst nodes (every node is in --json)."""


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def soak(
    senders: Annotated[
        int, typer.Option("--senders", "-k", min=1, max=256, help="Simulated nodes (each its own link).")
    ] = 8,
    procs: Annotated[
        int,
        typer.Option("--procs", min=0, max=64, help="Sender processes the nodes share; 0 = min(senders, 4)."),
    ] = 0,
    transport: Annotated[
        str, typer.Option("--transport", help="zmq (direct, CURVE) or mqtt (local mosquitto, TLS, ACLs).")
    ] = "zmq",
    seconds: Annotated[
        float, typer.Option("--seconds", "-t", min=1, max=600, help="How long the nodes stream.")
    ] = 60.0,
    restart_at: Annotated[
        float,
        typer.Option(
            "--restart-at", help="SIGKILL the receiver after S seconds and start a new one; 0 = never."
        ),
    ] = 30.0,
    broker_restart_at: Annotated[
        float,
        typer.Option("--broker-restart-at", help="MQTT: restart the broker after B seconds; 0 = never."),
    ] = 0.0,
    broker_queue: Annotated[
        int,
        typer.Option(
            "--broker-queue",
            min=0,
            help="MQTT: broker's max_queued_messages; 0 = senders x (queue + 16) (generated config: 200).",
        ),
    ] = 0,
    down: Annotated[
        float, typer.Option("--down", min=0, max=60, help="Extra seconds the receiver stays dead.")
    ] = 0.0,
    bundle: Annotated[str, typer.Option("--bundle", "-b", help="Bundle both ends use.")] = "mnist",
    fps: Annotated[float, typer.Option("--fps", min=0, help="Per-node cap; 0 = full rate.")] = 0.0,
    queue: Annotated[int, typer.Option("--queue", min=1, help="Each node's send queue.")] = 64,
    insecure: Annotated[bool, typer.Option("--insecure", help="ZeroMQ: plaintext instead of CURVE.")] = False,
    resume_target: Annotated[
        float, typer.Option("--resume-target", min=0, help="Seconds every node may take to resume.")
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
    """Soak test on 127.0.0.1: every frame each node produced is delivered or dropped for a named reason.

    Prints a table (a row per node for small fleets, else the totals and the worst nodes): produced,
    delivered, dropped by the node and by the receiver, by reason, lost in the receiver and broker restarts,
    latency p50/p99, resume times; and per receiver its CPU, drops and latency. --json has every node.
    Exit code 0 when there was no hang, every node resumed within --resume-target after each restart and
    every frame is accounted for; 1 otherwise.
    """
    from ..benchmark.soak import SoakOptions, run_soak

    opts = SoakOptions(
        senders=senders,
        procs=procs,
        transport=transport,
        seconds=seconds,
        restart_at=restart_at or None,
        broker_restart_at=broker_restart_at or None,
        broker_queue=broker_queue,
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
        result = run_soak(opts, progress=dim)
    except CaeEdgeError as e:
        raise fail(e) from None
    d = result.to_dict()
    mqtt = transport == "mqtt"
    link = "MQTT via mosquitto (TLS)" if mqtt else ("ZeroMQ plaintext" if insecure else "ZeroMQ CURVE")
    rows = d["senders"]
    if len(rows) > FULL_TABLE_MAX:
        worst = {s.name for s in result.worst(8)}
        rows = [s for s in rows if s["name"] in worst]
        rows.sort(key=lambda s: d["worst"].index(s["name"]) if s["name"] in d["worst"] else len(d["worst"]))
        title_rows = f"the {len(rows)} worst of {senders} nodes, then the totals"
    else:
        title_rows = f"{senders} nodes"
    columns = ["node", "produced", "delivered", "tx queue", "tx close", "rx stale", "rx backlog",
               "rx shutdown", "lost restart"]  # fmt: skip
    if mqtt:
        columns += ["lost broker", "dups"]
    columns += ["lost end", "unexplained", "fps", "p50 ms", "p99 ms", "resume s"]
    if mqtt:
        columns += ["broker resume s"]
    table = Table(
        *columns,
        title=f"soak: {title_rows}, {opts.processes} processes, {d['duration_s']:.1f} s, {link}",
    )

    def restart_cell(lost: int, queued: int) -> str:
        return f"{lost} ({queued} q)" if lost else "0"

    def cells(s: dict, total: bool = False) -> list[str]:
        rx = s["rx_dropped"] if not total else {k[3:]: v for k, v in s.items() if k.startswith("rx_")}
        out = [str(s["produced"]), str(s["delivered"]), str(s["dropped_queue"]), str(s["dropped_close"]),
               str(rx.get("stale", 0)), str(rx.get("backlog", 0)), str(rx.get("shutdown", 0)),
               restart_cell(s["lost_restart"], s["lost_restart_queued"])]  # fmt: skip
        if mqtt:
            out += [str(s["lost_broker"]), str(s["duplicates"])]
        unexplained = "[green]0[/green]" if s["unexplained"] == 0 else f"[red]{s['unexplained']}[/red]"
        out += [str(s["lost_at_end"]), unexplained]
        if total:
            lat = d["latency_ms"]
            out += ["", _range(lat["p50_min"], lat["p50_max"]), _range(lat["p99_min"], lat["p99_max"]),
                    _s(d["resume_max_s"])]  # fmt: skip
            if mqtt:
                out += [_s(d["broker_resume_max_s"])]
            return out
        p50, p99 = s["latency_p50_ms"], s["latency_p99_ms"]
        out += [f"{s['fps']:.0f}", "-" if p50 is None else f"{p50:.0f}", "-" if p99 is None else f"{p99:.0f}",
                _s(s["resume_s"])]  # fmt: skip
        if mqtt:
            out += [_s(s["broker_resume_s"])]
        return out

    for s in rows:
        table.add_row(s["name"], *cells(s))
    table.add_row("total", *cells(d["totals"], total=True), style="bold")
    out = Console()
    (out if out.is_terminal else Console(width=220)).print(table)  # whole table in logs and pipes
    if len(rows) < len(d["senders"]):
        typer.echo(
            "(total row: latency p50/p99 = best-worst node; resume = slowest node; --json has each node)"
        )
    for r in d["receivers"]:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(r["dropped"].items())) or "none"
        extra = (
            f", duplicates filtered {r['duplicates_filtered']}, link dropped {r['link_dropped']}"
            if mqtt
            else ""
        )
        typer.echo(
            f"receiver #{r['incarnation']}: {r['frames']} of {r['received']} frames decoded "
            f"(dropped: {drops}), "
            f"CPU {r['cpu_s']:.1f} s ({r['cpu_percent']:.0f}% of a core over {r['alive_s']:.1f} s), "
            f"start-up {r['ready_s']:.2f} s, {r['ended']}, rejected {r['rejected']}{extra}, "
            f"latency p50 {_ms(r['latency_p50_ms'])} p99 {_ms(r['latency_p99_ms'])}"
        )
    if d["kill_at_s"] is not None:
        resume = d["resume_max_s"]
        typer.echo(
            f"receiver restart: killed at {d['kill_at_s']:.2f} s, "
            f"new receiver ready {d['restart_ready_s']:.2f} s later, "
            f"slowest node resumed {'never' if resume is None else f'{resume:.2f} s'} after that"
        )
    if d["broker_down_at_s"] is not None:
        resume = d["broker_resume_max_s"]
        typer.echo(
            f"broker restart: stopped at {d['broker_down_at_s']:.2f} s, listening again "
            f"{d['broker_up_s']:.2f} s later, slowest node resumed "
            f"{'never' if resume is None else f'{resume:.2f} s'} after that"
        )
    for h in d["hangs"]:
        say(f"hang: {h}")
    verdict = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in d["verdict"].items())
    typer.echo(f"verdict: {verdict}")
    write_json(stats_json, d)
    if not result.ok:
        raise typer.Exit(1)


def _range(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return "-"
    return f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}"
