"""`cae-edge data`: obtain, cache and describe the datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .. import datasets
from ..errors import CaeEdgeError

app = typer.Typer(help="Obtain, cache and describe MNIST / Fashion-MNIST.", no_args_is_help=True)
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Directory with the IDX .gz files, tried first.", file_okay=False),
]


@app.command()
def fetch(
    name: Annotated[str, typer.Argument(help="mnist or fashion")],
    data_dir: DataDir = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never try the Keras download.")] = False,
) -> None:
    """Get a dataset from the first source that works and cache it as one compact file."""
    try:
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task(f"fetching {name}", total=None)

            def progress(what: str, done: int, total: int) -> None:
                bar.update(task, description=what, completed=done, total=total)

            ds, path = datasets.fetch(name, data_dir, download=not offline, progress=progress)
    except CaeEdgeError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    typer.echo(f"{ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test from {ds.source}")
    typer.echo(f"split: {ds.split}")
    typer.echo(f"cached at {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def info(
    name: Annotated[str | None, typer.Argument(help="mnist or fashion; both when omitted")] = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show where each dataset would be loaded from, with its size and split."""
    try:
        names = [datasets.canonical_name(name)] if name else list(datasets.DATASETS)
    except CaeEdgeError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    rows = []
    failed = False
    for n in names:
        try:
            rows.append(datasets.load(n, data_dir).summary())
        except CaeEdgeError as e:
            failed = True
            rows.append({"name": n, "error": str(e)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        table = Table("dataset", "train", "test", "split", "source")
        for r in rows:
            if "error" in r:
                table.add_row(r["name"], "-", "-", "-", f"[red]{r['error']}[/red]")
            else:
                table.add_row(r["name"], str(r["train"]), str(r["test"]), r["split"], r["source"])
        Console().print(table)
    if failed:
        raise typer.Exit(1)
