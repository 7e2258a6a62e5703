"""Train the autoencoder on real MNIST / Fashion-MNIST or a user's own frames and write a run directory.

Data flow::

    load_data ─► uint8 (N,28,28) ─► seeded shuffle ─► [sample cap] ─► train | validation hold-out
        each epoch: train ─► [random shift/rotate] ─► target ─► [noise] ─► input ─► Adam step on MSE
    after training: full test split ─► encoder ─► decoder ─► uint8 ─► PSNR / SSIM / MSE (cae_edge.metrics)

Run directory (the contract other steps read; :mod:`cae_edge.rundir`)::

    RUN/encoder.keras  RUN/decoder.keras  RUN/config.json  RUN/history.json
    RUN/metrics.json   RUN/loss.png       RUN/recon.png

Options (:class:`~cae_edge.train.options.TrainOptions`) are shared with rate-distortion training
(:mod:`cae_edge.train.ratedistortion`), which sets ``TrainOptions.rd``.

``load_data`` is :func:`cae_edge.datasets.load` for MNIST / Fashion-MNIST, and
``recording.load_user_dataset`` for a recording, a folder of images or a video file (test split
by time). ``init_from`` (a run or a bundle, :mod:`cae_edge.train.from_bundle`) sets the starting weights.

Options are checked and the data is loaded before TensorFlow is imported, so bad input fails fast.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from .. import __version__, datasets
from ..device import recording
from ..errors import ConfigError
from ..metrics import quality, to_uint8
from ..rundir import LOSS_PLOT, RECON_PLOT, RunConfig, check_out_dir, make_out_dir, write_run
from .augment import random_affine
from .from_bundle import CHECK_IMAGES
from .model import build_autoencoder
from .noise import NoiseKind, add_noise
from .options import LrDecay, TrainOptions

Progress = Callable[[int, dict], None]
"""Progress callback ``(epoch, logs)``. Called once with epoch 0 before training (logs: ``device``,
``train_images``, ``val_images``, ``test_images``, ``epochs``, ``source``), then after every epoch
(1-based) with ``loss``, ``val_loss`` (when there is a hold-out), ``lr``, ``seconds``, ``images_per_s`` and
``epochs``."""

AUTO_AUGMENT_MAX_TRAIN = 20_000
"""With ``augment=None``, augmentation is on when the training split is smaller than this (8,000 digits)."""

FINAL_LR_FRACTION = 0.05
"""Both decays end at this fraction of the initial learning rate."""


@dataclass
class TrainResult:
    """What a training run produced. ``to_dict()`` is JSON-friendly (the Keras models are left out)."""

    run_dir: str
    """The run directory with the files in :data:`cae_edge.rundir.RUN_FILES`."""
    device: str
    """Where TensorFlow trained: ``GPU (<name>)`` or ``CPU``."""
    metrics: dict[str, float]
    """Test split: ``psnr`` (dB), ``ssim``, ``mse`` (0-255 scale), ``test_images``; ``denoise`` when noisy;
    training speed: ``images_per_s`` (training images per second over all epochs) and ``threads`` (size of
    TensorFlow's thread pools)."""
    history: dict[str, list[float]]
    """Per epoch: ``loss``, ``val_loss`` (when held out), ``lr``, ``seconds``, ``images_per_s``."""
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


def load_data(opts: TrainOptions) -> datasets.Dataset:
    """The run's dataset: MNIST / Fashion-MNIST, or a user's own frames split by time.

    Images and video frames get the preprocessing of the bundle the run starts from (``init_from``), else
    ``recording.DEFAULT_PREPROCESS``; a recording keeps the preprocessing it was recorded with.

    Raises:
        DataNotFoundError: no source has the dataset, or the path is not there.
        ConfigError: a user dataset that is unreadable or too small for the split.
        SourceError: images or a video OpenCV cannot read.
    """
    if not opts.user_data:
        return datasets.load(opts.dataset, opts.data_dir)
    start = opts.start()
    preprocess = None
    if start is not None and start.preprocess and recording.dataset_kind(opts.dataset) != "recording":
        preprocess = start.preprocess
    return recording.load_user_dataset(
        opts.dataset, preprocess=preprocess, test_fraction=opts.test_fraction, gap=opts.gap
    )


def data_record(ds: datasets.Dataset, counts: dict[str, int]) -> dict:
    """What ``config.json["data"]`` says of the data: summary, source name, counts; for a user's frames also
    where they are, their preprocessing, the time split and the time ranges of both splits."""
    info = {**ds.summary(), "source": ds.source_name, **{k: int(v) for k, v in counts.items()}}
    if ds.user is not None:
        info["user"] = ds.user.to_dict()
        info["time_train"] = [float(ds.t_train.min()), float(ds.t_train.max())]
        info["time_test"] = [float(ds.t_test.min()), float(ds.t_test.max())]
    return info


def example_indices(ds: datasets.Dataset, count: int = 10) -> np.ndarray:
    """Test images for ``recon.png``: one per class, or for a user's frames ``count`` spread over time."""
    from .plots import pick_examples

    if ds.user is None:
        return pick_examples(ds.y_test)
    return np.unique(np.linspace(0, len(ds.x_test) - 1, min(count, len(ds.x_test))).round().astype(np.int64))


def _to_float(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) / 255.0)[..., None]


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


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
"""TensorFlow's switch for its oneDNN CPU kernels, read once when TensorFlow is imported."""


def prefer_onednn() -> None:
    """Ask for TensorFlow's oneDNN CPU kernels unless the environment already says (call before TensorFlow is
    imported; afterwards it changes nothing in this process).

    TensorFlow turns them on by itself only on CPUs with AVX512-VNNI, AVX512-BF16 or AMX. On an AVX2-only
    2-core AMD EPYC box (2026-12-07) `train --preset hq` ran 1.25x as fast with them (its steady epochs
    1.37x) and `--preset xxl` 1.06-1.11x, test PSNR within 0.006 dB and rate within 0.05 B of the Eigen
    kernels' run (README, "How it works").
    ``TF_ENABLE_ONEDNN_OPTS=0`` keeps TensorFlow's Eigen kernels.
    """
    os.environ.setdefault(ONEDNN_ENV, "1")


def onednn_enabled() -> bool | None:
    """Whether the TensorFlow imported in this process runs its oneDNN kernels (``None``: it does not say).
    Imports TensorFlow."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def configure_threads(threads: int | None) -> int:
    """Size TensorFlow's intra-op and inter-op thread pools; returns the size in effect. Imports TensorFlow.

    Args:
        threads: pool size, >= 1; None: :func:`available_cores`.

    The pools are fixed once TensorFlow's runtime has started in this process (e.g. by an earlier run in the
    same process); then they stay as they are and their size is returned (TensorFlow's default, when nothing
    set them, is :func:`available_cores`).
    """
    import tensorflow as tf

    n = int(threads) if threads else available_cores()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:  # runtime already started: pools fixed for this process
        pass
    return tf.config.threading.get_intra_op_parallelism_threads() or available_cores()


def he_init_convs(*models) -> int:
    """Re-draw every Conv2D / Conv2DTranspose kernel of ``models`` from He-normal (biases stay zero).

    The d2s head's output conv (:data:`~cae_edge.train.model.D2S_BLOCKS`) is drawn at the scale He gives the
    convt head's output ConvT, std sqrt(2/9) (Keras takes that (3, 3, 1, d2) kernel's fan-in as 9): at its own
    Conv2D scale, sqrt(2/(9 d2)), the first images come out a near-constant grey, the fastest way down the
    loss is to push every pixel to black, and at lr 3e-3 the sigmoid saturates there for good (MNIST, 2,000
    digits: stuck at MSE 0.111 for 20 epochs; drawn this way it trains like the convt head).

    Uses Keras' global seed (set by :func:`train`), so runs stay reproducible. Returns the number of kernels.
    """
    import keras

    from .model import D2S_BLOCKS

    count = 0
    for model in models:
        for layer in model.layers:
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
                kernel = keras.initializers.HeNormal()(layer.kernel.shape)
                if layer.name == D2S_BLOCKS:
                    kernel = kernel * math.sqrt(layer.kernel.shape[-2])
                layer.kernel.assign(kernel)
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


def run_versions() -> dict[str, str]:
    """Versions recorded in ``config.json``: cae_edge, keras, tensorflow. Imports TensorFlow."""
    import keras
    import tensorflow as tf

    return {"cae_edge": __version__, "keras": keras.__version__, "tensorflow": tf.__version__}


def train(opts: TrainOptions, progress: Progress | None = None) -> TrainResult:
    """Train the autoencoder (Adam, MSE) and write the run directory.

    The run directory (:mod:`cae_edge.rundir`) receives ``encoder.keras`` and ``decoder.keras`` (separate
    models, batch dimension None, loadable with ``keras.models.load_model``), ``config.json``
    (:class:`~cae_edge.rundir.RunConfig`), ``history.json``, ``metrics.json`` (PSNR/SSIM/MSE of the Keras
    float model over the full test split, computed on uint8 images), ``loss.png`` and ``recon.png`` (one
    test image per class, original above reconstruction).

    Args:
        opts: the run's options; checked first. Rate-distortion options go to
            :func:`cae_edge.train.ratedistortion.train_rd` instead.
        progress: optional callback, see :data:`Progress`.

    Returns:
        The result, with the trained Keras encoder and decoder attached.

    Raises:
        ConfigError: a bad option, rate-distortion options, or an unwritable output directory (before
            TensorFlow is imported).
        DataNotFoundError: no source has the dataset (before TensorFlow is imported).
    """
    t_start = time.perf_counter()
    opts = opts.validated()
    if opts.rd is not None:
        raise ConfigError(
            "rate-distortion options (rd) given to train(): train them with "
            "cae_edge.train.ratedistortion.train_rd"
        )
    cfg = opts.model_config()
    out = check_out_dir(opts.out_dir)
    ds = load_data(opts)
    augment = opts.augment if opts.augment is not None else len(ds.x_train) < AUTO_AUGMENT_MAX_TRAIN
    opts = replace(opts, augment=augment)

    rng = np.random.default_rng(opts.seed)
    x_train_u8, x_val_u8 = split_train(ds.x_train, opts.max_samples, opts.val_fraction, rng)
    x_train, x_val, x_test = _to_float(x_train_u8), _to_float(x_val_u8), _to_float(ds.x_test)
    # A fixed noisy copy of the hold-out, so val losses of different epochs are comparable.
    noise_rng = np.random.default_rng([opts.seed, 1])
    x_val_in = add_noise(x_val, opts.noise, opts.noise_amount or 0.0, noise_rng)
    out = make_out_dir(out)

    import keras

    threads = configure_threads(opts.threads)
    keras.utils.set_random_seed(opts.seed)
    device = describe_device()
    encoder, decoder, autoencoder = build_autoencoder(cfg)
    if opts.init == "he":
        he_init_convs(encoder, decoder)
    start = None
    if opts.init_from:
        from .from_bundle import load_start

        start = load_start(opts.start(), encoder, decoder, x_train_u8[:CHECK_IMAGES])
    steps = math.ceil(len(x_train) / opts.batch_size)
    optimizer = keras.optimizers.Adam(learning_rate=_schedule(opts, steps))
    autoencoder.compile(optimizer=optimizer, loss="mse")
    counts = {"train_images": len(x_train), "val_images": len(x_val), "test_images": len(x_test)}
    data_info = data_record(ds, counts)
    if progress:
        progress(0, {"device": device, **counts, "epochs": opts.epochs, "source": ds.source})

    history = _fit(autoencoder, optimizer, opts, x_train, (x_val_in, x_val), rng, progress)
    recon, metrics = _evaluate(autoencoder, opts, ds.x_test, x_test)
    metrics["images_per_s"] = len(x_train) * opts.epochs / sum(history["seconds"])
    metrics["threads"] = threads
    metrics["onednn"] = onednn_enabled()
    config = RunConfig(
        dataset=opts.dataset,
        model=cfg,
        train={**opts.to_dict(), **({"start": start} if start else {})},
        command=opts.to_command(),
        data=data_info,
        device=device,
        versions=run_versions(),
    )
    write_run(out, config, encoder, decoder, history, metrics)
    _plots(out, history, ds, recon, metrics, f"{ds.name}, latent {cfg.latent_dim}")
    return TrainResult(
        run_dir=str(out),
        device=device,
        metrics=metrics,
        history=history,
        options=opts.to_dict(),
        model=cfg.to_dict(),
        data=data_info,
        command=config.command,
        seconds=time.perf_counter() - t_start,
        encoder=encoder,
        decoder=decoder,
    )


def _fit(autoencoder, optimizer, opts: TrainOptions, x_train, val, rng, progress) -> dict[str, list[float]]:
    """The epoch loop: fresh augmentation and noise per epoch, one ``fit`` epoch each; the history."""
    import keras

    x_val_in, x_val = val
    history: dict[str, list[float]] = {"loss": [], "lr": [], "seconds": [], "images_per_s": []}
    if len(x_val):
        history["val_loss"] = []
    for epoch in range(opts.epochs):
        t0 = time.perf_counter()
        target = random_affine(x_train, rng) if opts.augment else x_train
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
        logs["images_per_s"] = len(x_train) / logs["seconds"]
        if "val_loss" in fit:
            logs["val_loss"] = float(fit["val_loss"][-1])
        for k, v in logs.items():
            history[k].append(v)
        if progress:
            progress(epoch + 1, {**logs, "epochs": opts.epochs})
    return history


def _evaluate(autoencoder, opts: TrainOptions, x_test_u8: np.ndarray, x_test: np.ndarray):
    """Test-split reconstructions (uint8) and metrics; with noise, the denoising quality too."""
    recon = to_uint8(autoencoder.predict(x_test, batch_size=1024, verbose=0))
    metrics: dict[str, Any] = {**quality(x_test_u8, recon), "test_images": int(len(x_test))}
    if opts.noise != NoiseKind.NONE.value:
        noisy = add_noise(x_test, opts.noise, opts.noise_amount, np.random.default_rng([opts.seed, 2]))
        denoised = to_uint8(autoencoder.predict(noisy, batch_size=1024, verbose=0))
        metrics["denoise"] = {
            **quality(x_test_u8, denoised),
            "noisy_input": quality(x_test_u8, to_uint8(noisy)),
        }
    return recon, metrics


def _plots(out, history: dict, ds, recon: np.ndarray, metrics: dict, title: str) -> None:
    """``loss.png`` and ``recon.png`` (one test image per class, original above reconstruction)."""
    from .plots import plot_loss, plot_recon

    plot_loss(history, out / LOSS_PLOT, title=title)
    picks = example_indices(ds)
    plot_recon(
        ds.x_test[picks],
        recon[picks],
        out / RECON_PLOT,
        title=f"{title}: test PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}",
    )
