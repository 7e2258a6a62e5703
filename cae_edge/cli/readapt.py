"""`cae-edge readapt`: fine-tune a bundle's decoder on the latents of several kernel families (TensorFlow
inside the command); encoder, entropy model and payloads unchanged."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import CaeEdgeError
from .common import Head, dim, fail, print_json


def readapt(
    bundle: Annotated[str, typer.Argument(help="Shipped bundle name (mnist-hq, ...) or bundle directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")],
    kernels: Annotated[
        str,
        typer.Option(
            "--kernels", help="Comma-separated kernel families whose encoder latents the decoder learns."
        ),
    ] = "xnnpack,builtin",
    epochs: Annotated[
        int,
        typer.Option(
            "--epochs",
            min=0,
            help="Passes over (training images x families); 0: no fine-tuning, only the int8 conversion "
            "of the bundle's float decoder again (this version's export, same calibration).",
        ),
    ] = 6,
    lr: Annotated[float, typer.Option("--lr", help="Starting learning rate (cosine decay).")] = 1e-4,
    train_limit: Annotated[
        int | None, typer.Option("--train-limit", min=1, help="Fine-tune on the first N training images.")
    ] = None,
    augment_copies: Annotated[
        int,
        typer.Option(
            "--augment-copies",
            min=0,
            help="Also train on this many shifted/rotated copies of the training images (their own latents).",
        ),
    ] = 0,
    verify_limit: Annotated[
        int | None, typer.Option("--verify-limit", min=1, help="Verify on the first N test images.")
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option("--margin", help="Fail when int8 loses more dB than this (default: the manifest's)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Directory with the IDX .gz files, tried first.", file_okay=False),
    ] = None,
    head: Annotated[
        Head | None,
        typer.Option(
            "--head",
            help="Give the new decoder this output head (d2s: int8 decoder 20 instead of 32 us); the layers "
            "before it keep the bundle's weights, the head starts fresh. Default: the bundle's head.",
        ),
    ] = None,
    head_width: Annotated[
        int | None,
        typer.Option(
            "--head-width", min=1, help="With --head: filters of the new head's hidden layer (default: d2)."
        ),
    ] = None,
    head_epochs: Annotated[
        int, typer.Option("--head-epochs", min=0, help="With a new head: head-only epochs before --epochs.")
    ] = 3,
    head_lr: Annotated[
        float, typer.Option("--head-lr", help="Starting learning rate of the head-only epochs.")
    ] = 1e-3,
    equalize: Annotated[
        bool,
        typer.Option(
            "--equalize/--no-equalize",
            help="Channel-equalize the decoder before int8 PTQ (same float model, less rounding noise).",
        ),
    ] = True,
    range_search: Annotated[
        bool,
        typer.Option(
            "--range-search",
            help="Search each int8 decoder activation's range for the decoded calibration images closest to "
            "the originals (as `export --range-search`).",
        ),
    ] = False,
    qat: Annotated[
        bool,
        typer.Option(
            "--qat",
            help="Fine-tune through the int8 decoder's rounding, as `train --qat` does (for a bundle "
            "trained with --qat; with --no-equalize, as its export was).",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing bundle directory.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Re-adapt a bundle's decoder so that it decodes the latents of every kernel family equally well.

    The int8 encoder's latents differ between XNNPACK, LiteRT's builtin kernels and tflite-micro; a decoder
    adapted to one family loses quality on the others. This fine-tunes the float decoder (read back from
    decoder_float.tflite) on the training latents of every family given, converts it to int8 as export
    does, and writes a verified bundle: same encoder and entropy model, new decoder and pair id.
    """
    from ..export.readapt import ReadaptOptions, readapt_bundle

    families = tuple(k.strip() for k in kernels.split(",") if k.strip())
    args = ["cae-edge", "readapt", bundle, "--out", str(out), "--kernels", ",".join(families)]
    args += ["--epochs", str(epochs), "--lr", f"{lr:g}"]
    if train_limit is not None:
        args += ["--train-limit", str(train_limit)]
    if augment_copies:
        args += ["--augment-copies", str(augment_copies)]
    if verify_limit is not None:
        args += ["--verify-limit", str(verify_limit)]
    if margin is not None:
        args += ["--margin", f"{margin:g}"]
    if head is not None:
        args += ["--head", head.value, "--head-epochs", str(head_epochs), "--head-lr", f"{head_lr:g}"]
        if head_width is not None:
            args += ["--head-width", str(head_width)]
    if not equalize:
        args.append("--no-equalize")
    if range_search:
        args.append("--range-search")
    if qat:
        args.append("--qat")
    opts = ReadaptOptions(
        bundle=bundle,
        out_dir=out,
        kernels=families,
        epochs=epochs,
        learning_rate=lr,
        train_limit=train_limit,
        augment_copies=augment_copies,
        verify_limit=verify_limit,
        margin_db=margin,
        data_dir=data_dir,
        overwrite=overwrite,
        head=None if head is None else head.value,
        head_width=head_width,
        head_epochs=head_epochs,
        head_lr=head_lr,
        equalize=equalize,
        range_search=range_search,
        qat=qat,
        command=shlex.join(args),
    )

    def progress(what: str, done: int, total: int) -> None:
        if not as_json:
            dim(what)

    try:
        result = readapt_bundle(opts, progress)
    except CaeEdgeError as e:
        raise fail(e) from None
    if as_json:
        print_json(result.to_dict())
        return
    k = result.quality["kernels"]
    table = Table(
        "encoder kernels", "before dB", "after dB", title=f"int8 PSNR ({k['n_images']} test images)"
    )
    for fam, before in k["before"]["psnr"].items():
        table.add_row(fam, f"{before:.2f}", f"{k['after']['psnr'][fam]:.2f}")
    table.add_row("spread", f"{k['before']['spread_db']:.2f}", f"{k['after']['spread_db']:.2f}")
    Console().print(table)
    typer.echo(f"pair id {result.pair_id}")
    typer.echo(f"bundle written to {result.path}")
