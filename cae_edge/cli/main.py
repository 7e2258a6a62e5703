"""The ``cae-edge`` command: one small typer app per command group, assembled here.

Command modules import TensorFlow only inside command bodies, so ``cae-edge --help`` and
``cae-edge stream --help`` work on a node that has only the ``[node]`` extra.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import benchmark, bundle, data, doctor, export, keys, mqtt, readapt, stream, train
from .common import print_version

app = typer.Typer(
    name="cae-edge",
    help="Learned image compression for camera nodes: train, export int8 TFLite, benchmark, stream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Learned image compression for camera nodes: train, export int8 TFLite, benchmark, stream."""


app.add_typer(data.app, name="data")
app.command("train")(train.train_cmd)
app.add_typer(keys.app, name="keys")
app.command("export")(export.export)
app.command("readapt")(readapt.readapt)
app.add_typer(bundle.app, name="bundle")
app.command("benchmark")(benchmark.benchmark)
app.add_typer(stream.app, name="stream")
app.command("doctor")(doctor.doctor)
app.add_typer(mqtt.app, name="mqtt")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":  # python -m cae_edge.cli.main (spawned decode workers import it as __mp_main__)
    main()
