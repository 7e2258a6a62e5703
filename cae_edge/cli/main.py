"""The ``cae-edge`` command: one small typer app per command group, assembled here.

Command modules import TensorFlow only inside command bodies, so ``cae-edge --help`` and
``cae-edge stream --help`` work on a node that has only the ``[node]`` extra.
"""

from __future__ import annotations

import typer

from .. import __version__

app = typer.Typer(
    name="cae-edge",
    help="Learned image compression for camera nodes: train, export int8 TFLite, benchmark, stream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cae-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Learned image compression for camera nodes: train, export int8 TFLite, benchmark, stream."""


def _register() -> None:
    # Each module adds its own command or group. Keep imports here light (no TensorFlow).
    from . import data as _data

    app.add_typer(_data.app, name="data")
    from . import train as _train

    app.command("train")(_train.train_cmd)
    from . import keys as _keys

    app.add_typer(_keys.app, name="keys")
    from . import export as _export

    app.command("export")(_export.export)
    from . import bundle as _bundle

    app.add_typer(_bundle.app, name="bundle")
    from . import benchmark as _benchmark

    app.command("benchmark")(_benchmark.benchmark)
    from . import stream as _stream

    app.add_typer(_stream.app, name="stream")
    from . import doctor as _doctor

    app.command("doctor")(_doctor.doctor)
    from . import mqtt as _mqtt

    app.add_typer(_mqtt.app, name="mqtt")


_register()


def main() -> None:  # console-script entry point
    app()
