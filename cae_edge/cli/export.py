"""`cae-edge export`: a training run directory → a verified int8 bundle (TensorFlow inside the command)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import CaeEdgeError
from .common import dim, fail, print_json


def export(
    run: Annotated[
        Path,
        typer.Argument(help="Training run directory (from `cae-edge train`).", exists=True, file_okay=False),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")],
    margin: Annotated[
        float,
        typer.Option("--margin", help="Fail when int8 loses more than this many dB PSNR vs Keras float."),
    ] = 0.5,
    calib: Annotated[int, typer.Option("--calib", help="Training images used to calibrate int8.")] = 300,
    calib_percentile: Annotated[
        float,
        typer.Option(
            "--calib-percentile",
            help="Cut each int8 activation range to this percentile of its calibration values "
            "(100 = the converter's min/max).",
        ),
    ] = 99.99,
    latent_scale: Annotated[
        float | None,
        typer.Option(
            "--latent-scale", help="Force the latent quantization scale (e.g. 1.0 for integer latents)."
        ),
    ] = None,
    latent_zero_point: Annotated[
        int, typer.Option("--latent-zero-point", help="Zero point of a forced latent quantization.")
    ] = 0,
    verify_limit: Annotated[
        int | None, typer.Option("--verify-limit", help="Verify on the first N test images (default: all).")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Directory with the IDX .gz files, tried first.", file_okay=False),
    ] = None,
    adapt_decoder: Annotated[
        int,
        typer.Option(
            "--adapt-decoder",
            help="Fine-tune the decoder this many epochs on the int8 encoder's training latents before "
            "converting it (recovers most of what int8 encoder error costs; 0 = off).",
            min=0,
        ),
    ] = 0,
    adapt_lr: Annotated[
        float, typer.Option("--adapt-lr", help="Starting learning rate of --adapt-decoder.")
    ] = 2e-4,
    bias_correction: Annotated[
        bool,
        typer.Option(
            "--bias-correction/--no-bias-correction",
            help="Remove the int8 encoder's per-channel mean latent shift, measured on calibration images.",
        ),
    ] = True,
    equalize: Annotated[
        bool,
        typer.Option(
            "--equalize/--no-equalize",
            help="Scale each LeakyReLU channel to the widest one's range before int8 PTQ (and back in the "
            "next layer): the same float model, less rounding noise (mnist-hq: int8 pair +0.15 dB).",
        ),
    ] = True,
    range_search: Annotated[
        bool,
        typer.Option(
            "--range-search",
            help="Search each int8 activation's range (the percentile range x 0.25-1.25, then each end on "
            "its own): the decoder's for the decoded calibration images closest to the originals, the "
            "encoder's for latents closest to the float encoder's (a few minutes for the xxl presets).",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing bundle directory.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Convert a training run into a verified int8 TFLite bundle (encoder, decoder, float twins, manifest).

    Full-integer PTQ on training images, batch 1, builtin int8 ops only.

    The int8 pair is run with LiteRT over the test split; the export fails if it loses more than --margin dB.
    """
    from ..export.writer import ExportOptions
    from ..export.writer import export as do_export

    args = [
        "cae-edge",
        "export",
        str(run),
        "--out",
        str(out),
        "--margin",
        f"{margin:g}",
        "--calib",
        str(calib),
        "--calib-percentile",
        f"{calib_percentile:g}",
    ]
    if latent_scale is not None:
        args += ["--latent-scale", f"{latent_scale:g}", "--latent-zero-point", str(latent_zero_point)]
    if verify_limit is not None:
        args += ["--verify-limit", str(verify_limit)]
    if adapt_decoder:
        args += ["--adapt-decoder", str(adapt_decoder), "--adapt-lr", f"{adapt_lr:g}"]
    if not bias_correction:
        args.append("--no-bias-correction")
    if not equalize:
        args.append("--no-equalize")
    if range_search:
        args.append("--range-search")
    opts = ExportOptions(
        run_dir=run,
        out_dir=out,
        margin_db=margin,
        calib=calib,
        calib_percentile=calib_percentile,
        latent_scale=latent_scale,
        latent_zero_point=latent_zero_point,
        verify_limit=verify_limit,
        data_dir=data_dir,
        overwrite=overwrite,
        adapt_epochs=adapt_decoder,
        adapt_lr=adapt_lr,
        bias_correction=bias_correction,
        equalize=equalize,
        range_search=range_search,
        command=shlex.join(args),
    )

    def progress(what: str, done: int, total: int) -> None:
        if not as_json:
            dim(what)

    try:
        result = do_export(opts, progress)
    except CaeEdgeError as e:
        raise fail(e) from None
    if as_json:
        print_json(result.to_dict())
        return
    q = result.quality
    table = Table("model", "PSNR dB", "SSIM", title=f"test quality ({q['n_images']} images)")
    for key in ("keras_float", "tflite_float", "tflite_int8"):
        table.add_row(key, f"{q[key]['psnr']:.2f}", f"{q[key]['ssim']:.4f}")
    Console().print(table)
    typer.echo(f"int8 loss vs Keras float: {result.int8_loss_db:.3f} dB (margin {margin:g})")
    if "decoder_adaptation" in q:
        a = q["decoder_adaptation"]
        typer.echo(
            f"decoder adapted to int8 latents: {a['epochs']} epochs on {a['train_images']} images, "
            f"{a['seconds']:.0f} s; Keras float before adaptation {a['keras_float_before']['psnr']:.2f} dB"
        )
    for name, size in result.sizes.items():
        typer.echo(f"{name:22s} {size / 1024:8.1f} KiB")
    lq = result.latent_quant
    typer.echo(f"latent quantization: scale {lq['scale']:.6g}, zero point {lq['zero_point']}")
    typer.echo(f"pair id {result.pair_id}")
    typer.echo(f"bundle written to {result.path}")
