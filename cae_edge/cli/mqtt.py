"""`cae-edge mqtt`: the broker side of the MQTT transport (an example mosquitto config for a fleet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import CaeEdgeError
from .common import fail

app = typer.Typer(
    help="MQTT transport: make a broker config (TLS, per-node passwords, topic ACLs) for a fleet.",
    no_args_is_help=True,
)


@app.command("broker-config")
def broker_config(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the files into.", file_okay=False)],
    node: Annotated[list[str], typer.Option("--node", help="A camera node's name (repeat for each node).")],
    receiver: Annotated[
        list[str], typer.Option("--receiver", help="A receiver account's name (repeat for each).")
    ],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="Name or address nodes reach the broker by (repeat; goes into the TLS certificate). "
            "Default: localhost and 127.0.0.1.",
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="The TLS listener's port.")] = 8883,
    conf_dir: Annotated[
        str | None,
        typer.Option(
            "--conf-dir", help="Where the files will live on the broker, e.g. /etc/mosquitto/cae-edge."
        ),
    ] = None,
    topic_prefix: Annotated[str, typer.Option("--topic-prefix", help="First topic level(s).")] = "cae-edge",
) -> None:
    """Write mosquitto.conf, passwd, acl, a CA and server certificate, each client's password and a node
    config per node into --out.

    Nodes may publish only under PREFIX/<node>/ (frames, retained status); receivers may read every node's
    topics. Passwords are random; each is in secrets/NAME.password (copy it to that machine only).
    """
    from ..device.broker import write_broker_config

    try:
        files = write_broker_config(
            out, node, receiver, hosts=host, port=port, conf_dir=conf_dir, prefix=topic_prefix
        )
    except CaeEdgeError as e:
        raise fail(e) from None
    typer.echo(f"wrote {files.conf}, passwd, acl and tls/ in {files.out}")
    typer.echo(f"  broker:    mosquitto -c {files.conf}")
    typer.echo(f"  nodes:     {', '.join(str(p) for p in files.node_configs.values())}")
    typer.echo(f"  passwords: {files.out / 'secrets'}/NAME.password (one per client; mode 0600)")
    typer.echo(f"  CA:        {files.ca} (every node and receiver: --ca-file)")
