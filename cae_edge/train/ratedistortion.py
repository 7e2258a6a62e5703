"""Rate-distortion training: an integer latent that is cheap to entropy-code, traded against MSE.

After Ballé, Laparra & Simoncelli, "End-to-end optimized image compression" (ICLR 2017), with a dense latent:

    image x ─ encoder ─► y (latent_dim floats, integer units) ─┬─ round (straight-through) ─► ŷ ─ decoder ─► x̂
                                                              └─ y + U(-½, ½) ─► learned factorized prior
                                                                                 (logistic per dimension:
                                                                                  location μ_i, scale s_i)
                                                                                 ─► bits(y) = -Σ log2 P(ỹ_i)
    loss = MSE(x, x̂) on the 0-255 scale + lam * bits per image

* The latent is in integer units: the exported int8 latent is ``round(y)`` with scale 1.0 and zero point 0,
  so the node sends exactly the symbols the decoder was trained on (clipped to [-127, 127]).
* The rate term sees the noisy latent (a differentiable proxy of the discrete entropy); the decoder sees the
  rounded one through a straight-through estimator, so training and deployment decode the same values.
* Dimensions the rate term finds not worth their bits collapse onto a constant, which the static model
  fitted at export (:mod:`cae_edge.entropy`) codes in ~0 bits: ``latent_dim`` is an upper bound and ``lam``
  sets the bytes.
* Augmentation (random small shifts and rotations) is on by default for the 8,000-digit MNIST set.

The run directory follows the training contract (``encoder.keras``, ``decoder.keras``, ``config.json`` with
``model`` / ``dataset`` / ``train`` / ``command``, ``history.json``, ``metrics.json``) plus ``rd`` fields:
``config.json["rd"]`` (lam, preset, prior) and ``metrics.json`` with the rounded-latent PSNR, the prior's bits
and the real entropy-coded bytes per image on the test split.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, datasets
from .. import entropy as entropy_mod
from .. import presets as presets_mod
from ..errors import ConfigError
from ..metrics import mse_per_image, psnr_per_image, ssim_per_image, to_uint8
from .augment import random_affine
from .model import ModelConfig, build_decoder, build_encoder

Progress = Callable[[int, dict], None]
"""Progress callback ``(epoch, logs)``: epoch 0 before training, then 1-based after each epoch with
``loss``, ``mse``, ``bits``, ``psnr`` (train batches, rounded latent), ``lr``, ``seconds``, ``epochs``."""

LATENT_CLIP = 127.0
"""The rounded latent is clipped to [-LATENT_CLIP, LATENT_CLIP] (int8 with zero point 0)."""
MIN_SCALE = 0.05
"""Lower bound of the prior's per-dimension scale."""
FINAL_LR_FRACTION = 0.02
"""Cosine decay ends at this fraction of the initial learning rate."""
LIKELIHOOD_FLOOR = 1e-9
"""Probabilities are floored here before the log (bounds the rate gradient of outliers)."""
RD_LATENT_GAIN = 8.0
"""Initial latent spread (see ``ModelConfig.latent_gain``) for runs without a preset."""
CODER_OVERHEAD_BYTES = 0.5
"""Bytes the range coder adds on average over the model's information (the rate target subtracts it)."""
LAM_GAIN = 0.02
"""Per-step gain of the lam controller (lam *= exp(gain * relative bit error))."""
LAM_RANGE = (1e-2, 1e4)
"""lam stays inside this range."""


@dataclass
class RDOptions:
    """Everything that defines a rate-distortion training run. ``to_command()`` reproduces it."""

    dataset: str = "mnist"
    """``mnist`` or ``fashion`` (aliases accepted)."""
    preset: str | None = None
    """Preset name (``tiny``, ``small``, ``hq``): fills model, lam, epochs, batch and learning rate;
    explicitly given values below override it."""
    latent_dim: int | None = None
    """Upper bound on latent dimensions (None: the preset's, else 64)."""
    enc_widths: tuple[int, int, int] | None = None
    """Encoder filters (see :class:`ModelConfig`); None: the preset's or the model default."""
    dec_widths: tuple[int, int, int] | None = None
    """Decoder filters (see :class:`ModelConfig`); None: the preset's or the model default."""
    lam: float | None = None
    """Rate weight (loss = MSE on the 0-255 scale + lam * bits/image); larger = fewer bytes.
    None: the preset's, else 1."""
    target_bytes: float | None = None
    """Steer ``lam`` during training so the rounded latent costs about this many bytes per image under the
    learned prior (a multiplicative controller on ``lam``); None: the preset's; 0 keeps ``lam`` fixed."""
    epochs: int | None = None
    """Passes over the training images (None: the preset's, else 20)."""
    batch_size: int | None = None
    """Images per Adam step (None: the preset's, else 64)."""
    learning_rate: float | None = None
    """Initial Adam learning rate, cosine-decayed to 2 % (None: the preset's, else 2e-3)."""
    augment: bool | None = None
    """Random small shifts/rotations; None = on for the small MNIST set, off for Fashion."""
    seed: int = 0
    """Seeds numpy and TensorFlow."""
    out_dir: str | None = None
    """Run directory; None means ``runs/<dataset>-<preset or rd>``."""
    max_samples: int | None = None
    """Use at most this many training images (quick runs and tests)."""
    init_from: str | None = None
    """Start from the weights (and prior) of an earlier run directory of the same architecture
    (fine-tuning: e.g. more epochs, or ``latent_jitter``)."""
    latent_jitter: float = 0.0
    """Std of Gaussian noise added to the latent before rounding on the decoder's path (latent units). About
    0.2 mimics the int8 encoder, which moves ~30 % of latent values by +-1, so the decoder learns to
    tolerate it."""
    max_test: int | None = None
    """Evaluate on at most this many test images (None: the full test split)."""
    data_dir: str | None = None
    """Directory with the IDX ``.gz`` files, tried before the standard places."""

    def resolved(self) -> RDOptions:
        """A copy with the preset's values filled in and everything checked.

        Raises:
            ConfigError: unknown dataset/preset, or a bad value (quoted, with what is allowed).
        """
        name = datasets.canonical_name(self.dataset)
        preset = presets_mod.resolve(self.preset) if self.preset else None
        base = preset.model if preset else ModelConfig(latent_dim=64)
        latent = base.latent_dim if self.latent_dim is None else int(self.latent_dim)
        cfg = ModelConfig(
            latent_dim=latent,
            enc_widths=tuple(self.enc_widths) if self.enc_widths else base.enc_widths,
            dec_widths=tuple(self.dec_widths) if self.dec_widths else base.dec_widths,
            leaky_alpha=base.leaky_alpha,
            latent_gain=base.latent_gain if self.preset else RD_LATENT_GAIN,
        ).validate()
        lam = self.lam if self.lam is not None else (preset.lam_for(name) if preset else 1.0)
        epochs = self.epochs if self.epochs is not None else (preset.epochs_for(name) if preset else 20)
        target = (
            self.target_bytes if self.target_bytes is not None else (preset.target_bytes if preset else 0.0)
        )
        if not (math.isfinite(float(target)) and float(target) >= 0):
            raise ConfigError(f"target bytes {target}: must be >= 0 (0 = fixed lam)")
        batch = self.batch_size if self.batch_size is not None else (preset.batch_size if preset else 64)
        lr = (
            self.learning_rate
            if self.learning_rate is not None
            else (preset.learning_rate if preset else 2e-3)
        )
        if not (math.isfinite(float(lam)) and float(lam) >= 0):
            raise ConfigError(f"lam {lam}: must be >= 0 (0 = no rate term)")
        if int(epochs) < 1:
            raise ConfigError(f"epochs {epochs}: must be >= 1")
        if int(batch) < 1:
            raise ConfigError(f"batch size {batch}: must be >= 1")
        if not (math.isfinite(float(lr)) and float(lr) > 0):
            raise ConfigError(f"learning rate {lr}: must be > 0, e.g. 2e-3")
        for what, v in (("max samples", self.max_samples), ("max test", self.max_test)):
            if v is not None and int(v) < 1:
                raise ConfigError(f"{what} {v}: must be >= 1 (or omit it)")
        out = self.out_dir or str(Path("runs") / f"{name}-{preset.name if preset else 'rd'}")
        return replace(
            self,
            dataset=name,
            preset=preset.name if preset else None,
            latent_dim=cfg.latent_dim,
            enc_widths=cfg.enc_widths,
            dec_widths=cfg.dec_widths,
            lam=float(lam),
            target_bytes=float(target),
            epochs=int(epochs),
            batch_size=int(batch),
            learning_rate=float(lr),
            out_dir=out,
        )

    def model_config(self) -> ModelConfig:
        """The architecture (call on a :meth:`resolved` copy)."""
        base = (
            presets_mod.resolve(self.preset).model if self.preset else ModelConfig(latent_gain=RD_LATENT_GAIN)
        )
        return replace(
            base,
            latent_dim=int(self.latent_dim or base.latent_dim),
            enc_widths=tuple(self.enc_widths or base.enc_widths),
            dec_widths=tuple(self.dec_widths or base.dec_widths),
        ).validate()

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("enc_widths", "dec_widths"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    def to_command(self) -> str:
        """The ``cae-edge train`` command line that reproduces this run."""
        args = ["cae-edge", "train", "--dataset", self.dataset]
        if self.preset:
            args += ["--preset", self.preset]
        args += ["--latent", str(self.latent_dim), "--lam", repr(self.lam), "--epochs", str(self.epochs)]
        if self.target_bytes:
            args += ["--target-bytes", repr(self.target_bytes)]
        args += ["--enc-widths", ",".join(map(str, self.enc_widths or ()))]
        args += ["--dec-widths", ",".join(map(str, self.dec_widths or ()))]
        args += [
            "--batch-size",
            str(self.batch_size),
            "--lr",
            repr(self.learning_rate),
            "--seed",
            str(self.seed),
        ]
        if self.augment is not None:
            args.append("--augment" if self.augment else "--no-augment")
        if self.max_samples is not None:
            args += ["--max-samples", str(self.max_samples)]
        if self.init_from:
            args += ["--init-from", str(self.init_from)]
        if self.latent_jitter:
            args += ["--latent-jitter", repr(self.latent_jitter)]
        args += ["--out", str(self.out_dir)]
        return shlex.join(args)


@dataclass
class RDResult:
    """What a rate-distortion run produced (also written to ``metrics.json``)."""

    out_dir: str
    """Run directory."""
    psnr: float
    """Mean per-image PSNR (dB) on the test images, Keras float with the rounded latent."""
    ssim: float
    """Mean SSIM on the test images."""
    bits_prior: float
    """Mean bits per image under the learned factorized prior (training-time rate estimate)."""
    bytes_entropy: float
    """Mean real bytes per image of the entropy-coded rounded latent (model fitted on training latents)."""
    bits_ideal: float
    """Mean information content (bits) of the test latents under that fitted model."""
    active_dims: int
    """Latent dimensions that take more than one value on the training split."""
    epochs: int
    """Epochs trained."""
    seconds: float
    """Wall time of the training loop."""

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- TensorFlow part


def _logistic_likelihood(tf, v, loc, scale):
    """P(V in [v - ½, v + ½]) for a logistic(loc, scale), computed on the side of the tail (stable)."""
    upper = (v + 0.5 - loc) / scale
    lower = (v - 0.5 - loc) / scale
    sign = -tf.sign(upper + lower)
    sign = tf.where(tf.equal(sign, 0.0), tf.ones_like(sign), sign)
    return tf.abs(tf.sigmoid(sign * upper) - tf.sigmoid(sign * lower))


class _Prior:
    """Learned factorized prior: per dimension a logistic with location and (softplus) scale."""

    def __init__(self, tf, latent_dim: int) -> None:
        self.tf = tf
        self.loc = tf.Variable(tf.zeros([latent_dim]), name="prior_loc")
        # softplus^-1(2) so the initial scale is 2 latent units
        self.raw_scale = tf.Variable(tf.fill([latent_dim], math.log(math.expm1(2.0))), name="prior_scale")

    @property
    def variables(self) -> list:
        return [self.loc, self.raw_scale]

    def scale(self):
        return self.tf.nn.softplus(self.raw_scale) + MIN_SCALE

    def bits(self, v):
        """Bits per image (sum over dimensions) of latents ``v`` (batch, D)."""
        tf = self.tf
        p = _logistic_likelihood(tf, v, self.loc, self.scale())
        return -tf.reduce_sum(tf.math.log(tf.maximum(p, LIKELIHOOD_FLOOR)), axis=-1) / math.log(2.0)

    def to_dict(self) -> dict:
        return {"kind": "logistic", "loc": self.loc.numpy().tolist(), "scale": self.scale().numpy().tolist()}


def quantize_latent(tf, y):
    """Round to integers (clipped to int8 range) with a straight-through gradient."""
    q = tf.clip_by_value(tf.round(y), -LATENT_CLIP, LATENT_CLIP)
    return y + tf.stop_gradient(q - y)


def encode_integer(encoder, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Float encoder → rounded, clipped int latents (N, D) as int8 (what the node sends)."""
    out = [np.asarray(encoder(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    y = np.concatenate(out) if out else np.zeros((0, encoder.output_shape[-1]))
    return np.clip(np.rint(y), -LATENT_CLIP, LATENT_CLIP).astype(np.int8)


def decode_integer(decoder, q: np.ndarray, batch: int = 500) -> np.ndarray:
    """Integer latents → uint8 images (N, 28, 28) through the float decoder."""
    qf = np.asarray(q, dtype=np.float32)
    out = [np.asarray(decoder(qf[i : i + batch], training=False)) for i in range(0, len(qf), batch)]
    return to_uint8(np.concatenate(out)[..., 0])


def evaluate(encoder, decoder, x_train_u8: np.ndarray, x_test_u8: np.ndarray) -> dict:
    """Rounded-latent quality and real entropy-coded bytes (model fitted on the training latents)."""
    xt = (x_train_u8.astype(np.float32) / 255.0)[..., None]
    xs = (x_test_u8.astype(np.float32) / 255.0)[..., None]
    q_train = encode_integer(encoder, xt)
    q_test = encode_integer(encoder, xs)
    rec = decode_integer(decoder, q_test)
    model = entropy_mod.fit(q_train)
    coder = entropy_mod.EntropyCoder(model)
    psnr = psnr_per_image(x_test_u8, rec)
    return {
        "psnr": float(psnr.mean()),
        "mse": float(mse_per_image(x_test_u8, rec).mean()),
        "ssim": float(ssim_per_image(x_test_u8[:2000], rec[:2000]).mean()),
        "bytes_entropy": coder.mean_bytes(q_test),
        "bits_ideal": float(model.bits(q_test).mean()),
        "active_dims": int((q_train.max(axis=0) != q_train.min(axis=0)).sum()),
        "latent_range": [int(q_train.min()), int(q_train.max())],
    }


def train_rd(opts: RDOptions, progress: Progress | None = None) -> RDResult:
    """Train encoder, decoder and factorized prior for rate-distortion; write the run directory.

    Args:
        opts: options (a preset name fills the unset ones).
        progress: optional callback ``(epoch, logs)``.

    Returns:
        Test-split quality, prior bits and real entropy-coded bytes.

    Raises:
        ConfigError: bad options or an unusable output directory.
        DataNotFoundError: the dataset is not available offline.
    """
    opts = opts.resolved()
    cfg = opts.model_config()
    ds = datasets.load(opts.dataset, opts.data_dir)
    rng = np.random.default_rng(opts.seed)
    x_train = ds.x_train[rng.permutation(len(ds.x_train))]
    if opts.max_samples:
        x_train = x_train[: opts.max_samples]
    x_test = ds.x_test[: opts.max_test] if opts.max_test else ds.x_test
    augment = opts.augment if opts.augment is not None else len(ds.x_train) < 20_000
    out = Path(opts.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"output dir {str(out)!r} cannot be created ({e.strerror}); choose another --out"
        ) from e

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(opts.seed)
    encoder = build_encoder(cfg)
    decoder = build_decoder(cfg)
    prior = _Prior(tf, cfg.latent_dim)
    if opts.init_from:
        _load_start(opts.init_from, cfg, encoder, decoder, prior)
    jitter = float(opts.latent_jitter)
    steps_per_epoch = math.ceil(len(x_train) / opts.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        opts.learning_rate, opts.epochs * steps_per_epoch, alpha=FINAL_LR_FRACTION
    )
    optimizer = keras.optimizers.Adam(schedule)
    weights = encoder.trainable_variables + decoder.trainable_variables + prior.variables
    lam = tf.Variable(opts.lam, dtype=tf.float32, trainable=False, name="lam")
    target_bits = tf.constant(max(8.0 * (opts.target_bytes - CODER_OVERHEAD_BYTES), 1.0), tf.float32)
    steer = bool(opts.target_bytes)

    @tf.function(reduce_retracing=True)
    def step(x):
        with tf.GradientTape() as tape:
            y = encoder(x, training=True)
            y_dec = y + tf.random.normal(tf.shape(y), stddev=jitter) if jitter else y
            x_hat = decoder(quantize_latent(tf, y_dec), training=True)
            mse = tf.reduce_mean(tf.square(x - x_hat)) * (255.0**2)
            noisy = y + tf.random.uniform(tf.shape(y), -0.5, 0.5)
            bits = tf.reduce_mean(prior.bits(noisy))
            loss = mse + lam * bits
        grads = tape.gradient(loss, weights)
        optimizer.apply_gradients(zip(grads, weights, strict=True))
        rounded_bits = tf.reduce_mean(prior.bits(tf.round(tf.stop_gradient(y))))
        if steer:
            error = tf.clip_by_value((rounded_bits - target_bits) / target_bits, -1.0, 1.0)
            lam.assign(tf.clip_by_value(lam * tf.exp(LAM_GAIN * error), LAM_RANGE[0], LAM_RANGE[1]))
        return loss, mse, rounded_bits

    if progress:
        progress(0, {"train_images": len(x_train), "test_images": len(x_test), "epochs": opts.epochs})
    history: dict[str, list[float]] = {k: [] for k in ("loss", "mse", "bits", "psnr", "lr", "lam", "seconds")}
    x_train_f = x_train.astype(np.float32) / 255.0
    t_start = time.perf_counter()
    for epoch in range(1, opts.epochs + 1):
        t0 = time.perf_counter()
        xe = random_affine(x_train_f, rng) if augment else x_train_f
        xe = xe[rng.permutation(len(xe))][..., None]
        sums = np.zeros(3)
        for i in range(steps_per_epoch):
            batch = xe[i * opts.batch_size : (i + 1) * opts.batch_size]
            sums += np.array([float(v) for v in step(tf.constant(batch))]) * len(batch)
        loss, mse, bits = sums / len(xe)
        logs = {
            "loss": loss,
            "mse": mse,
            "bits": bits,
            "psnr": 10 * math.log10(255.0**2 / max(mse, 1e-12)),
            "lr": float(schedule(optimizer.iterations)),
            "lam": float(lam.numpy()),
            "seconds": time.perf_counter() - t0,
        }
        for k, v in logs.items():
            history[k].append(float(v))
        if progress:
            progress(epoch, {**logs, "epochs": opts.epochs})
    seconds = time.perf_counter() - t_start

    encoder.save(out / "encoder.keras")
    decoder.save(out / "decoder.keras")
    ev = evaluate(encoder, decoder, x_train, x_test)
    xs = (x_test.astype(np.float32) / 255.0)[..., None]
    bits_prior = float(np.mean(prior.bits(tf.round(encoder(xs[:2000], training=False))).numpy()))
    result = RDResult(
        out_dir=str(out),
        psnr=ev["psnr"],
        ssim=ev["ssim"],
        bits_prior=bits_prior,
        bytes_entropy=ev["bytes_entropy"],
        bits_ideal=ev["bits_ideal"],
        active_dims=ev["active_dims"],
        epochs=opts.epochs,
        seconds=seconds,
    )
    train_dict = {
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "learning_rate": opts.learning_rate,
        "lr_decay": "cosine",
        "augment": bool(augment),
        "seed": opts.seed,
        "max_samples": opts.max_samples,
        "train_images": int(len(x_train)),
        "rate_distortion": True,
    }
    config = {
        "dataset": opts.dataset,
        "dataset_source": ds.source,
        "dataset_split": ds.split,
        "model": cfg.to_dict(),
        "train": train_dict,
        "rd": {
            "lam": opts.lam,
            "lam_final": float(lam.numpy()),
            "target_bytes": opts.target_bytes,
            "preset": opts.preset,
            "distortion": "mse_255",
            "latent_quantization": {"scale": 1.0, "zero_point": 0},
            "coding": "entropy",
            "prior": prior.to_dict(),
            "options": opts.to_dict(),
        },
        "command": opts.to_command(),
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tensorflow": tf.__version__,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    metrics = {**result.to_dict(), "mse": ev["mse"], "latent_range": ev["latent_range"]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plots(history, encoder, decoder, x_test, out, opts)
    return result


def _load_start(run_dir: str, cfg: ModelConfig, encoder, decoder, prior: _Prior) -> None:
    """Copy weights and prior of an earlier run into freshly built models (same architecture)."""
    import keras

    run = Path(run_dir)
    try:
        config = json.loads((run / "config.json").read_text())
        old_enc = keras.models.load_model(run / "encoder.keras", compile=False)
        old_dec = keras.models.load_model(run / "decoder.keras", compile=False)
    except Exception as e:  # keras raises many types for a bad archive
        raise ConfigError(f"--init-from {run_dir}: cannot load the run ({type(e).__name__}: {e})") from None
    if ModelConfig.from_dict(config.get("model", {})) != cfg:
        raise ConfigError(f"--init-from {run_dir}: its model {config.get('model')} is not {cfg.to_dict()}")
    encoder.set_weights(old_enc.get_weights())
    decoder.set_weights(old_dec.get_weights())
    old = (config.get("rd") or {}).get("prior") or {}
    if "loc" in old and "scale" in old:
        scale = np.maximum(np.asarray(old["scale"], np.float32) - MIN_SCALE, 1e-4)
        prior.loc.assign(np.asarray(old["loc"], np.float32))
        prior.raw_scale.assign(np.log(np.expm1(scale)))


def _plots(history: dict, encoder, decoder, x_test: np.ndarray, out: Path, opts: RDOptions) -> None:
    """loss.png and recon.png, as a plain training run writes them (best effort: plotting is optional)."""
    try:
        from . import plots
    except ImportError:  # pragma: no cover - matplotlib missing
        return
    try:
        plots.plot_loss({"loss": history["mse"]}, out / "loss.png", title=f"{opts.dataset} lam={opts.lam}")
        sample = x_test[:8]
        rec = decode_integer(decoder, encode_integer(encoder, (sample.astype(np.float32) / 255.0)[..., None]))
        if hasattr(plots, "plot_reconstructions"):
            plots.plot_reconstructions(sample, rec, out / "recon.png")
    except Exception:  # noqa: BLE001 - figures never fail a finished training
        pass


def load_rd_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a run (rate-distortion or plain)."""
    return json.loads((Path(run_dir) / "config.json").read_text())
