"""`cae-edge keys`: make and list the CURVE key pairs that secure the stream links."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..device import security
from ..errors import CaeEdgeError
from .common import err, fail, print_json

app = typer.Typer(
    help="CURVE key pairs for encrypted, authenticated streams (one per node, one for the receiver).",
    no_args_is_help=True,
)
KeysDir = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help=f"Key directory (default: ${security.KEYS_DIR_ENV} or ~/.config/cae-edge/keys).",
        file_okay=False,
    ),
]


@app.command()
def generate(
    name: Annotated[str, typer.Argument(help="Key name, e.g. the node's hostname or 'receiver'.")],
    keys_dir: KeysDir = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing key pair of that name.")
    ] = False,
) -> None:
    """Write NAME.key (public, copy it to the other end) and NAME.key_secret (mode 0600, stays here)."""
    directory = keys_dir or security.default_keys_dir()
    try:
        files = security.generate_keypair(name, directory, overwrite=force)
    except CaeEdgeError as e:
        raise fail(e) from None
    typer.echo(f"public key  {files.public_path}")
    typer.echo(f"secret key  {files.secret_path}  (mode 0600, never copy it)")
    typer.echo(f"key         {files.public_key}")
    typer.echo(
        "next: a node's NAME.key goes into the receiver's --allowed-keys directory; "
        "the receiver's NAME.key goes to every node as --server-key"
    )


@app.command("list")
def list_(
    keys_dir: KeysDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the key pairs and public keys in a directory, flagging bad files and unsafe permissions."""
    directory = keys_dir or security.default_keys_dir()
    try:
        infos = security.list_keys(directory)
    except CaeEdgeError as e:
        raise fail(e) from None
    if as_json:
        print_json([asdict(i) for i in infos])
    else:
        table = Table("name", "public key", "files", "status", title=str(directory))
        for i in infos:
            files = " + ".join(
                f for f, present in (("public", i.public_file), ("secret", i.secret_file)) if present
            )
            status = f"[red]{i.problem}[/red]" if i.problem else "[green]ok[/green]"
            table.add_row(i.name, i.public_key or "-", files, status)
        Console().print(table)
        if not infos:
            err.print(f"no keys in {directory}: `cae-edge keys generate NAME --dir {directory}`")
    if any(i.problem for i in infos):
        raise typer.Exit(1)
