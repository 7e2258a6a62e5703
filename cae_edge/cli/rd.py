"""Rate-distortion branch of `cae-edge train` (``--preset``, ``--lam``, ``--target-bytes``).

`cae-edge train` hands over here when one of those options is given; flags the user typed explicitly
override the preset's values, the others come from the preset table (:mod:`cae_edge.presets`).
"""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import CaeEdgeError

err = Console(stderr=True)

# `cae-edge train` parameter name → RDOptions field, for flags that carry over to rate-distortion runs.
_CARRY = {
    "dataset": "dataset",
    "latent": "latent_dim",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "augment": "augment",
    "seed": "seed",
    "out": "out_dir",
    "max_samples": "max_samples",
    "data_dir": "data_dir",
    "enc_widths": "enc_widths",
    "dec_widths": "dec_widths",
    "init_from": "init_from",
    "latent_jitter": "latent_jitter",
}


def explicit(ctx: typer.Context, params: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` the user gave on the command line (not defaults)."""
    out = {}
    for name, value in params.items():
        source = getattr(ctx.get_parameter_source(name), "name", None)  # click's ParameterSource enum
        if source not in (None, "DEFAULT", "DEFAULT_MAP"):
            out[name] = value
    return out


def run(
    ctx: typer.Context, params: dict[str, Any], preset: str | None, lam: float | None, target: float | None
) -> None:
    """Resolve options, train with :func:`cae_edge.train.rd.train_rd`, print the result (exit 1 on errors)."""
    from ..train.rd import RDOptions

    given = explicit(ctx, params)
    kw = {_CARRY[k]: v for k, v in given.items() if k in _CARRY}
    if kw.get("dataset") is None:
        kw["dataset"] = params.get("dataset", "mnist")
    for key in ("out_dir", "data_dir", "init_from"):
        if kw.get(key) is not None:
            kw[key] = str(kw[key])
    try:
        opts = RDOptions(preset=preset, lam=lam, target_bytes=target, **kw).resolved()
    except CaeEdgeError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ..train.rd import train_rd

    columns = (
        TextColumn("[bold]epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[logs]}"),
        TimeElapsedColumn(),
    )
    err.print(f"rate-distortion run: {opts.to_command()}", highlight=False, soft_wrap=True)
    try:
        with Progress(*columns, console=err) as bar:
            task = bar.add_task("train", total=opts.epochs, logs="loading")

            def progress(epoch: int, logs: dict) -> None:
                if epoch == 0:
                    bar.update(task, logs=f"{logs['train_images']} train images · compiling")
                    return
                text = (
                    f"PSNR {logs['psnr']:.2f} dB · {logs['bits'] / 8:.1f} B/image (prior) · "
                    f"lam {logs['lam']:.3g}"
                )
                bar.update(task, completed=epoch, logs=text)

            result = train_rd(opts, progress)
    except CaeEdgeError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"test: PSNR {result.psnr:.2f} dB  SSIM {result.ssim:.4f}  "
        f"{result.bytes_entropy:.2f} B/image entropy-coded ({result.active_dims} active dims)"
    )
    typer.echo(f"run: {result.out_dir} ({result.seconds:.0f} s)")
