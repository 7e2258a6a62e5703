"""Train the autoencoder on real MNIST / Fashion-MNIST and write a run directory.

Data flow::

    datasets.load ─► uint8 (N,28,28) ─► seeded shuffle ─► [sample cap] ─► train | validation hold-out
        each epoch: train ─► [random shift/rotate] ─► target ─► [noise] ─► input ─► Adam step on MSE
    after training: full test split ─► encoder ─► decoder ─► uint8 ─► PSNR / SSIM / MSE (cae_edge.metrics)

Run directory (the contract other steps read; details in :func:`train`)::

    RUN/encoder.keras  RUN/decoder.keras  RUN/config.json  RUN/history.json
    RUN/metrics.json   RUN/loss.png       RUN/recon.png

Options are checked and the data is loaded before TensorFlow is imported, so bad input fails fast.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, datasets
from ..errors import ConfigError
from ..metrics import quality, to_uint8
from .augment import random_affine
from .model import ModelConfig, build_autoencoder
from .noise import DEFAULT_AMOUNT, NoiseKind, add_noise, check_amount, noise_kind

Progress = Callable[[int, dict], None]
"""Progress callback ``(epoch, logs)``. Called once with epoch 0 before training (logs: ``device``,
``train_images``, ``val_images``, ``test_images``, ``epochs``, ``source``), then after every epoch
(1-based) with ``loss``, ``val_loss`` (when there is a hold-out), ``lr``, ``seconds`` and ``epochs``."""

RUN_FILES = (
    "encoder.keras",
    "decoder.keras",
    "config.json",
    "history.json",
    "metrics.json",
    "loss.png",
    "recon.png",
)
"""Files every run directory holds."""

AUTO_AUGMENT_MAX_TRAIN = 20_000
"""With ``augment=None``, augmentation is on when the training split is smaller than this (8,000 digits)."""

INITS = ("he", "keras")
"""Accepted values of :attr:`TrainOptions.init`."""

FINAL_LR_FRACTION = 0.05
"""Both decays end at this fraction of the initial learning rate."""


class LrDecay(str, Enum):
    """Learning-rate schedule over the whole run."""

    COSINE = "cosine"
    EXPONENTIAL = "exponential"
    NONE = "none"


@dataclass
class TrainOptions:
    """Everything that defines a training run. ``to_command()`` gives the CLI line that reproduces it."""

    dataset: str = "mnist"
    """``mnist`` or ``fashion`` (aliases like ``fashion-mnist`` accepted)."""
    latent_dim: int = 128
    """Length of the latent vector, >= 1 (bytes per image as int8)."""
    enc_widths: tuple[int, int, int] | None = None
    """Encoder filter counts (see :class:`ModelConfig`); None keeps the model's default."""
    dec_widths: tuple[int, int, int] | None = None
    """Decoder filter counts (see :class:`ModelConfig`); None keeps the model's default."""
    epochs: int = 10
    """Passes over the training images, >= 1."""
    batch_size: int = 128
    """Images per Adam step, >= 1."""
    learning_rate: float = 3e-3
    """Initial Adam learning rate, > 0. 3e-3 with the cosine decay: 10 MNIST epochs at latent 128 reach
    ~22 dB test PSNR (1e-3: ~20.4 dB; 5e-3: ~22.3 dB)."""
    lr_decay: str = "cosine"
    """``cosine``, ``exponential`` (both end at 5 % of the initial rate) or ``none``."""
    noise: str = "none"
    """Denoising: ``none``, ``gaussian`` or ``salt-pepper``; input corrupted, target kept clean."""
    noise_amount: float | None = None
    """Gaussian sigma (0-1 scale) or salt-and-pepper pixel fraction; None picks 0.2 / 0.05."""
    augment: bool | None = None
    """Random small shifts/rotations of training images; None = on for small sets (the 8,000 MNIST digits)."""
    seed: int = 0
    """Seeds numpy, Python and TensorFlow (data split, augmentation, noise, initial weights)."""
    out_dir: str | None = None
    """Run directory; None means ``runs/<dataset>-latent<latent_dim>``."""
    max_samples: int | None = None
    """Use at most this many training-split images (before the validation hold-out), for quick runs."""
    data_dir: str | None = None
    """Directory with the IDX ``.gz`` files, tried before the standard places."""
    val_fraction: float = 0.1
    """Fraction of the training images held out for validation loss, in [0, 0.5]."""
    init: str = "he"
    """Conv kernel initialisation: ``he`` (He-normal, re-drawn after building) or ``keras`` (as built).
    With the builder's Glorot kernels the signal shrinks ~1000x through the decoder and Adam drives the
    sigmoid output to all-black within an epoch (test PSNR stuck near 10 dB); He-normal trains."""

    def model_config(self) -> ModelConfig:
        """The :class:`ModelConfig` these options describe (validated).

        Raises:
            ConfigError: latent dim < 1 or bad widths.
        """
        kw: dict[str, Any] = {"latent_dim": _as_int(self.latent_dim, "latent dim")}
        if self.enc_widths is not None:
            kw["enc_widths"] = tuple(int(w) for w in self.enc_widths)
        if self.dec_widths is not None:
            kw["dec_widths"] = tuple(int(w) for w in self.dec_widths)
        return ModelConfig(**kw).validate()

    def validated(self) -> TrainOptions:
        """A copy with names canonicalised and every value checked; defaults that depend on the kind resolved.

        ``augment=None`` stays None here (it depends on the data); :func:`train` resolves it.

        Raises:
            ConfigError: with the bad value and what is allowed.
        """
        name = datasets.canonical_name(self.dataset)
        cfg = self.model_config()
        epochs = _as_int(self.epochs, "epochs")
        if epochs < 1:
            raise ConfigError(f"epochs {self.epochs}: must be >= 1")
        batch = _as_int(self.batch_size, "batch size")
        if batch < 1:
            raise ConfigError(f"batch size {self.batch_size}: must be >= 1")
        lr = float(self.learning_rate)
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"learning rate {self.learning_rate}: must be > 0, e.g. 3e-3")
        try:
            decay = LrDecay(str(getattr(self.lr_decay, "value", self.lr_decay)).lower())
        except ValueError:
            choices = ", ".join(d.value for d in LrDecay)
            raise ConfigError(f"unknown lr decay {self.lr_decay!r}: use one of {choices}") from None
        kind = noise_kind(self.noise)
        amount = DEFAULT_AMOUNT[kind] if self.noise_amount is None else float(self.noise_amount)
        if kind is not NoiseKind.NONE:
            amount = check_amount(kind, amount)
        cap = None if self.max_samples is None else _as_int(self.max_samples, "max samples")
        if cap is not None and cap < 1:
            raise ConfigError(f"max samples {self.max_samples}: must be >= 1 (or omit it to use all images)")
        val = float(self.val_fraction)
        if not 0.0 <= val <= 0.5:
            raise ConfigError(f"validation fraction {self.val_fraction}: must be in [0, 0.5]")
        out = (
            self.out_dir if self.out_dir is not None else str(Path("runs") / f"{name}-latent{cfg.latent_dim}")
        )
        init = str(self.init).strip().lower()
        if init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}: use one of {', '.join(INITS)}")
        return replace(
            self,
            dataset=name,
            latent_dim=cfg.latent_dim,
            enc_widths=None if self.enc_widths is None else cfg.enc_widths,
            dec_widths=None if self.dec_widths is None else cfg.dec_widths,
            epochs=epochs,
            batch_size=batch,
            learning_rate=lr,
            lr_decay=decay.value,
            noise=kind.value,
            noise_amount=amount if kind is not NoiseKind.NONE else None,
            augment=None if self.augment is None else bool(self.augment),
            seed=_as_int(self.seed, "seed"),
            out_dir=str(out),
            max_samples=cap,
            data_dir=None if self.data_dir is None else str(self.data_dir),
            val_fraction=val,
            init=init,
        )

    def to_dict(self) -> dict:
        """JSON-friendly dict of all fields (tuples become lists)."""
        d = asdict(self)
        for k in ("enc_widths", "dec_widths"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainOptions:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        known = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for k in ("enc_widths", "dec_widths"):
            if known.get(k) is not None:
                known[k] = tuple(int(w) for w in known[k])
        return cls(**known)

    def to_command(self) -> str:
        """The ``cae-edge train`` command line that reproduces these options."""
        args = [
            "cae-edge",
            "train",
            "--dataset",
            self.dataset,
            "--latent",
            str(self.latent_dim),
            "--epochs",
            str(self.epochs),
            "--batch-size",
            str(self.batch_size),
            "--lr",
            f"{self.learning_rate:g}",
            "--lr-decay",
            str(getattr(self.lr_decay, "value", self.lr_decay)),
            "--noise",
            str(getattr(self.noise, "value", self.noise)),
        ]
        if self.noise_amount is not None and str(getattr(self.noise, "value", self.noise)) != "none":
            args += ["--noise-amount", f"{self.noise_amount:g}"]
        if self.augment is not None:
            args.append("--augment" if self.augment else "--no-augment")
        if self.enc_widths is not None:
            args += ["--enc-widths", ",".join(str(w) for w in self.enc_widths)]
        if self.dec_widths is not None:
            args += ["--dec-widths", ",".join(str(w) for w in self.dec_widths)]
        args += [
            "--seed",
            str(self.seed),
            "--val-fraction",
            f"{self.val_fraction:g}",
            "--init",
            str(self.init),
        ]
        if self.max_samples is not None:
            args += ["--max-samples", str(self.max_samples)]
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        if self.out_dir is not None:
            args += ["--out", str(self.out_dir)]
        return shlex.join(args)


@dataclass
class TrainResult:
    """What a training run produced. ``to_dict()`` is JSON-friendly (the Keras models are left out)."""

    run_dir: str
    """The run directory with the files in :data:`RUN_FILES`."""
    device: str
    """Where TensorFlow trained: ``GPU (<name>)`` or ``CPU``."""
    metrics: dict[str, float]
    """Test split: ``psnr`` (dB), ``ssim``, ``mse`` (0-255 scale), ``test_images``; ``denoise`` when noisy."""
    history: dict[str, list[float]]
    """Per epoch: ``loss``, ``val_loss`` (when held out), ``lr``, ``seconds``."""
    options: dict
    """The resolved :class:`TrainOptions` as a dict."""
    model: dict
    """The :class:`ModelConfig` as a dict."""
    data: dict
    """Dataset summary (source, split) plus the image counts actually used."""
    command: str
    """The ``cae-edge train`` line that reproduces the run."""
    seconds: float
    """Wall time of the whole call."""
    encoder: Any = field(default=None, repr=False, compare=False)
    """The trained encoder (keras.Model), not serialised."""
    decoder: Any = field(default=None, repr=False, compare=False)
    """The trained decoder (keras.Model), not serialised."""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("encoder", "decoder")}


# ---------------------------------------------------------------- helpers (no TensorFlow)


def _as_int(value: Any, what: str) -> int:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r}: must be an integer") from None
    if not as_float.is_integer():
        raise ConfigError(f"{what} {value!r}: must be an integer")
    return int(as_float)


def check_out_dir(path: str | os.PathLike) -> Path:
    """Check that ``path`` is, or can become, a writable directory, without creating anything.

    Raises:
        ConfigError: the path is a file, sits under a file, or its nearest existing parent is not writable.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output dir {str(path)!r} is a file: choose a directory path for --out")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(
            f"output dir {str(path)!r}: {str(probe)!r} is not a directory; choose another --out"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output dir {str(path)!r}: {str(probe)!r} is not writable; choose another --out")
    return path


def _make_out_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"output dir {str(path)!r} is not writable ({e.strerror}); choose another --out"
        ) from e
    return path


def split_train(
    x: np.ndarray, max_samples: int | None, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle of the training split, optional cap, then a validation hold-out.

    Returns:
        ``(train_images, val_images)``; the hold-out has ``round(n * val_fraction)`` images (at least one
        training image is always kept).
    """
    order = rng.permutation(len(x))
    if max_samples is not None:
        order = order[:max_samples]
    n_val = min(int(round(len(order) * val_fraction)), len(order) - 1)
    return x[order[n_val:]], x[order[:n_val]]


def _to_float(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) / 255.0)[..., None]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------- TensorFlow part


def describe_device() -> str:
    """``GPU (<name>)`` when TensorFlow sees a GPU, else ``CPU``. Imports TensorFlow."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    try:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
    except Exception:  # details are best effort
        name = gpus[0].name
    return f"GPU ({name})" + (f" x{len(gpus)}" if len(gpus) > 1 else "")


def he_init_convs(*models) -> int:
    """Re-draw every Conv2D / Conv2DTranspose kernel of ``models`` from He-normal (biases stay zero).

    Uses Keras' global seed (set by :func:`train`), so runs stay reproducible. Returns the number of kernels.
    """
    import keras

    count = 0
    for model in models:
        for layer in model.layers:
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
                layer.kernel.assign(keras.initializers.HeNormal()(layer.kernel.shape))
                count += 1
    return count


def _schedule(opts: TrainOptions, steps_per_epoch: int):
    import keras

    total = max(opts.epochs * steps_per_epoch, 1)
    if opts.lr_decay == LrDecay.COSINE.value:
        return keras.optimizers.schedules.CosineDecay(opts.learning_rate, total, alpha=FINAL_LR_FRACTION)
    if opts.lr_decay == LrDecay.EXPONENTIAL.value:
        return keras.optimizers.schedules.ExponentialDecay(opts.learning_rate, total, FINAL_LR_FRACTION)
    return opts.learning_rate


def train(opts: TrainOptions, progress: Progress | None = None) -> TrainResult:
    """Train the autoencoder (Adam, MSE) and write the run directory.

    The run directory receives ``encoder.keras`` and ``decoder.keras`` (separate models, batch dimension
    None, loadable with ``keras.models.load_model``), ``config.json`` (``dataset``, ``model``, ``train``,
    ``command``, ``data``, ``device``, ``versions``), ``history.json``, ``metrics.json`` (PSNR/SSIM/MSE of
    the Keras float model over the full test split, computed on uint8 images), ``loss.png`` and
    ``recon.png`` (one test image per class, original above reconstruction).

    Args:
        opts: the run's options; checked first.
        progress: optional callback, see :data:`Progress`.

    Returns:
        The result, with the trained Keras encoder and decoder attached.

    Raises:
        ConfigError: a bad option or an unwritable output directory (before TensorFlow is imported).
        DataNotFoundError: no source has the dataset (before TensorFlow is imported).
    """
    t_start = time.perf_counter()
    opts = opts.validated()
    cfg = opts.model_config()
    out = check_out_dir(opts.out_dir)
    ds = datasets.load(opts.dataset, opts.data_dir)
    augment = opts.augment if opts.augment is not None else len(ds.x_train) < AUTO_AUGMENT_MAX_TRAIN
    opts = replace(opts, augment=augment)

    rng = np.random.default_rng(opts.seed)
    x_train_u8, x_val_u8 = split_train(ds.x_train, opts.max_samples, opts.val_fraction, rng)
    x_train, x_val, x_test = _to_float(x_train_u8), _to_float(x_val_u8), _to_float(ds.x_test)
    # A fixed noisy copy of the hold-out, so val losses of different epochs are comparable.
    noise_rng = np.random.default_rng([opts.seed, 1])
    x_val_in = add_noise(x_val, opts.noise, opts.noise_amount or 0.0, noise_rng)
    out = _make_out_dir(out)

    import keras

    keras.utils.set_random_seed(opts.seed)
    device = describe_device()
    encoder, decoder, autoencoder = build_autoencoder(cfg)
    if opts.init == "he":
        he_init_convs(encoder, decoder)
    steps = math.ceil(len(x_train) / opts.batch_size)
    optimizer = keras.optimizers.Adam(learning_rate=_schedule(opts, steps))
    autoencoder.compile(optimizer=optimizer, loss="mse")
    data_info = {
        **ds.summary(),
        "train_images": int(len(x_train)),
        "val_images": int(len(x_val)),
        "test_images": int(len(x_test)),
    }
    if progress:
        progress(
            0,
            {
                "device": device,
                "train_images": len(x_train),
                "val_images": len(x_val),
                "test_images": len(x_test),
                "epochs": opts.epochs,
                "source": ds.source,
            },
        )

    history: dict[str, list[float]] = {"loss": [], "lr": [], "seconds": []}
    if len(x_val):
        history["val_loss"] = []
    for epoch in range(opts.epochs):
        t0 = time.perf_counter()
        target = random_affine(x_train, rng) if augment else x_train
        inputs = add_noise(target, opts.noise, opts.noise_amount or 0.0, rng)
        fit = autoencoder.fit(
            inputs,
            target,
            batch_size=opts.batch_size,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=True,
            verbose=0,
            validation_data=(x_val_in, x_val) if len(x_val) else None,
        ).history
        logs = {
            "loss": float(fit["loss"][-1]),
            "lr": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
            "seconds": time.perf_counter() - t0,
        }
        if "val_loss" in fit:
            logs["val_loss"] = float(fit["val_loss"][-1])
        for k, v in logs.items():
            history[k].append(v)
        if progress:
            progress(epoch + 1, {**logs, "epochs": opts.epochs})

    recon = to_uint8(autoencoder.predict(x_test, batch_size=1024, verbose=0))
    metrics: dict[str, Any] = {**quality(ds.x_test, recon), "test_images": int(len(x_test))}
    if opts.noise != NoiseKind.NONE.value:
        noisy = add_noise(x_test, opts.noise, opts.noise_amount, np.random.default_rng([opts.seed, 2]))
        denoised = to_uint8(autoencoder.predict(noisy, batch_size=1024, verbose=0))
        metrics["denoise"] = {
            **quality(ds.x_test, denoised),
            "noisy_input": quality(ds.x_test, to_uint8(noisy)),
        }

    from .plots import pick_examples, plot_loss, plot_recon

    command = opts.to_command()
    encoder.save(out / "encoder.keras")
    decoder.save(out / "decoder.keras")
    config = {
        "dataset": opts.dataset,
        "model": cfg.to_dict(),
        "train": opts.to_dict(),
        "command": command,
        "data": data_info,
        "device": device,
        "versions": {"cae_edge": __version__, "keras": keras.__version__, "tensorflow": _tf_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(out / "config.json", config)
    _write_json(out / "history.json", history)
    _write_json(out / "metrics.json", metrics)
    title = f"{opts.dataset}, latent {cfg.latent_dim}"
    plot_loss(history, out / "loss.png", title=title)
    picks = pick_examples(ds.y_test)
    plot_recon(
        ds.x_test[picks],
        recon[picks],
        out / "recon.png",
        title=f"{title}: test PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}",
    )
    return TrainResult(
        run_dir=str(out),
        device=device,
        metrics=metrics,
        history=history,
        options=opts.to_dict(),
        model=cfg.to_dict(),
        data=data_info,
        command=command,
        seconds=time.perf_counter() - t_start,
        encoder=encoder,
        decoder=decoder,
    )


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def load_run(run_dir: str | os.PathLike) -> tuple[Any, Any, dict]:
    """Load a run directory's ``(encoder, decoder, config)``; imports Keras.

    Raises:
        ConfigError: a file of :data:`RUN_FILES` needed here is missing.
    """
    run = Path(run_dir)
    missing = [n for n in ("encoder.keras", "decoder.keras", "config.json") if not (run / n).is_file()]
    if missing:
        raise ConfigError(
            f"run dir {str(run)!r}: missing {', '.join(missing)}; train one with `cae-edge train`"
        )
    import keras

    config = json.loads((run / "config.json").read_text())
    return (
        keras.models.load_model(run / "encoder.keras"),
        keras.models.load_model(run / "decoder.keras"),
        config,
    )
