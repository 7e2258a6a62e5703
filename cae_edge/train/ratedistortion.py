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

Options are :class:`~cae_edge.train.options.TrainOptions` with ``rd`` set. The run directory is the one
of every training run (:mod:`cae_edge.rundir`: models, ``config.json``, ``history.json``, ``metrics.json``,
``loss.png``, ``recon.png``) with ``config.json["rd"]`` (lam, lam_final, preset, prior, ...) and a
``metrics.json`` holding the rounded-latent PSNR, the prior's bits and the real entropy-coded bytes per image
on the test split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .. import entropy as entropy_mod
from ..errors import ConfigError
from ..metrics import mse_per_image, psnr_per_image, ssim_per_image, to_uint8
from ..rundir import (
    LOSS_PLOT,
    RECON_PLOT,
    ModelConfig,
    RunConfig,
    check_out_dir,
    make_out_dir,
    write_run,
)
from .augment import random_affine
from .from_bundle import CHECK_IMAGES
from .model import build_decoder, build_encoder, logit_pixels
from .options import DISTORTIONS, TrainOptions
from .train import (
    AUTO_AUGMENT_MAX_TRAIN,
    configure_threads,
    data_record,
    describe_device,
    example_indices,
    load_data,
    onednn_enabled,
    run_versions,
)

Progress = Callable[[int, dict], None]
"""Progress callback ``(epoch, logs)``: epoch 0 before training, then 1-based after each epoch with
``loss``, ``mse``, ``bits``, ``psnr`` (train batches, rounded latent), ``lr``, ``lam``, ``seconds``,
``images_per_s`` and ``epochs``."""

LATENT_CLIP = 127.0
"""The rounded latent is clipped to [-LATENT_CLIP, LATENT_CLIP] (int8 with zero point 0)."""
MIN_SCALE = 0.05
"""Lower bound of the prior's per-dimension scale."""
FINAL_LR_FRACTION = 0.02
"""Cosine decay ends at this fraction of the initial learning rate."""
LIKELIHOOD_FLOOR = 1e-9
"""Probabilities are floored here before the log (bounds the rate gradient of outliers)."""
CODER_OVERHEAD_BYTES = 0.5
"""Bytes the range coder adds on average over the model's information (the rate target subtracts it)."""
LAM_GAIN = 0.02
"""Per-step gain of the lam controller (lam *= exp(gain * relative bit error))."""
LAM_RANGE = (1e-4, 1e4)
"""lam stays inside this range (xxl on digits stops ~30 B short of its 192 B target with lam at 1e-3)."""


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
    images_per_s: float = 0.0
    """Training images per second over the whole loop (epochs x images / ``seconds``, first epoch's tracing
    included; ``history.json`` has it per epoch)."""
    threads: int = 0
    """Size of TensorFlow's thread pools during the run."""
    onednn: bool | None = None
    """Whether TensorFlow ran its oneDNN CPU kernels (:func:`~cae_edge.train.train.prefer_onednn`)."""

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

    def assign(self, loc: np.ndarray, softplus_scale: np.ndarray) -> None:
        """Set the location and the softplus part of the scale (:meth:`scale` adds ``MIN_SCALE`` to it)."""
        self.loc.assign(np.asarray(loc, np.float32))
        self.raw_scale.assign(np.log(np.expm1(np.asarray(softplus_scale, np.float32))))

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


def train_rd(opts: TrainOptions, progress: Progress | None = None) -> RDResult:
    """Train encoder, decoder and factorized prior for rate-distortion; write the run directory.

    Args:
        opts: options with ``rd`` set (a preset name fills the unset ones).
        progress: optional callback ``(epoch, logs)``.

    Returns:
        Test-split quality, prior bits and real entropy-coded bytes.

    Raises:
        ConfigError: bad options (or no ``rd``) or an unusable output directory (before TensorFlow is
            imported).
        DataNotFoundError: the dataset is not available offline.
    """
    opts = opts.validated()  # a rate-distortion init_from sets rd
    if opts.rd is None:
        raise ConfigError(
            "train_rd needs rate-distortion options: set TrainOptions.rd (e.g. RDOptions(lam=1)) or "
            "init_from a rate-distortion run or bundle"
        )
    rd = opts.rd
    assert rd is not None
    cfg = opts.model_config()
    out = check_out_dir(opts.out_dir)
    ds = load_data(opts)
    rng = np.random.default_rng(opts.seed)
    x_train = ds.x_train[rng.permutation(len(ds.x_train))]
    if opts.max_samples:
        x_train = x_train[: opts.max_samples]
    x_test = ds.x_test[: rd.max_test] if rd.max_test else ds.x_test
    augment = opts.augment if opts.augment is not None else len(ds.x_train) < AUTO_AUGMENT_MAX_TRAIN
    opts = replace(opts, augment=augment)
    out = make_out_dir(out)

    import keras
    import tensorflow as tf

    threads = configure_threads(opts.threads)
    keras.utils.set_random_seed(opts.seed)
    encoder = build_encoder(cfg)
    decoder = build_decoder(cfg)
    prior = _Prior(tf, cfg.latent_dim)
    start = _load_start(opts, encoder, decoder, prior, x_train[:CHECK_IMAGES]) if opts.init_from else None
    if start is not None and rd.latent_scale != 1.0:
        scale_latent(encoder, decoder, prior, rd.latent_scale)
        start["latent_scale"] = rd.latent_scale
    if start is None and cfg.linear_skip:
        pca_start(encoder, decoder, prior, x_train, cfg.head)
    qat = None
    if rd.qat:
        from .qat import CALIB_IMAGES, qat_pair

        calib = (x_train[:CALIB_IMAGES].astype(np.float32) / 255.0)[..., None]
        qat = (*qat_pair(encoder, decoder), calib)
    if progress:
        progress(0, {"train_images": len(x_train), "test_images": len(x_test), "epochs": opts.epochs})
    t_start = time.perf_counter()
    history, lam_final = _fit(encoder, decoder, prior, opts, x_train, rng, progress, qat=qat)
    seconds = time.perf_counter() - t_start

    ev = evaluate(encoder, decoder, x_train, x_test)
    if qat is not None:
        qenc, qdec, calib = qat
        ev["qat"] = evaluate_qat(qenc, qdec, x_test, calib)
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
        images_per_s=len(x_train) * opts.epochs / seconds,
        threads=threads,
        onednn=onednn_enabled(),
    )
    config = _run_config(opts, cfg, ds, len(x_train), len(x_test), lam_final, prior, start)
    metrics = {**result.to_dict(), "mse": ev["mse"], "latent_range": ev["latent_range"]}
    if "qat" in ev:
        metrics["qat"] = ev["qat"]
    write_run(out, config, encoder, decoder, history, metrics)
    _plots(history, encoder, decoder, ds, len(x_test), out, opts, ev)
    return result


def _run_config(
    opts: TrainOptions,
    cfg: ModelConfig,
    ds,
    n_train: int,
    n_test: int,
    lam_final: float,
    prior: _Prior,
    start: dict | None = None,
) -> RunConfig:
    """What ``config.json`` records of a rate-distortion run (the ``rd`` block: what export needs)."""
    rd = opts.rd
    assert rd is not None
    return RunConfig(
        dataset=opts.dataset,
        model=cfg,
        train={**opts.to_dict(), **({"start": start} if start else {})},
        command=opts.to_command(),
        data=data_record(ds, {"train_images": n_train, "test_images": n_test}),
        device=describe_device(),
        versions=run_versions(),
        rd={
            "lam": rd.lam,
            "lam_final": lam_final,
            "target_bytes": rd.target_bytes,
            "preset": rd.preset,
            "distortion": "mse_255",
            "latent_quantization": {"scale": 1.0, "zero_point": 0},
            "coding": "entropy",
            "prior": prior.to_dict(),
        },
    )


PSNR_LOSS_FLOOR = 1.0
"""``distortion="psnr"``: each image's MSE (0-255 scale) is floored here before its log (a 48 dB image
weighs no more than that)."""


def distortion_term(tf, x, x_hat, kind: str = "mse"):
    """``(distortion, mse)`` of a batch: ``mse`` the MSE of all its pixels on the 0-255 scale.

    ``kind="mse"``: the distortion is that MSE. ``kind="psnr"``: its value is still that MSE, but its
    gradient is the one of the batch's mean per-image ``log(MSE_i)`` times the batch MSE: each image weighs
    by ``MSE / MSE_i`` — the mean per-image PSNR the benchmark reports, at the MSE loss's gradient scale
    (so ``lam`` means about the same for both).
    """
    if kind not in DISTORTIONS:
        raise ValueError(f"distortion {kind!r}: {' or '.join(DISTORTIONS)}")
    per_image = tf.reduce_mean(tf.square(x - x_hat), axis=[1, 2, 3]) * (255.0**2)
    mse = tf.reduce_mean(per_image)
    if kind == "mse":
        return mse, mse
    log_mean = tf.reduce_mean(tf.math.log(tf.maximum(per_image, PSNR_LOSS_FLOOR)))
    weighted = tf.stop_gradient(mse) * (log_mean - tf.stop_gradient(log_mean))
    return tf.stop_gradient(mse) + weighted, mse


def make_train_step(
    encoder,
    decoder,
    prior: _Prior,
    optimizer,
    lam,
    *,
    jitter: float = 0.0,
    target_bits: float | None = None,
    distortion: str = "mse",
):
    """The rate-distortion Adam step, as a plain function of one batch (wrap it in ``tf.function``).

    ``step(x)`` returns ``(loss, mse, rounded_bits)`` of the batch: ``loss = mse + lam * bits(y + U(-½, ½))``
    with ``mse`` on the 0-255 scale through the rounded latent (straight-through), computed with the weights
    before the update; ``rounded_bits`` is the mean bits per image of ``round(y)`` under the prior after the
    update. With ``target_bits`` set, the step also steers ``lam`` (a ``tf.Variable``) towards it.

    Args:
        encoder: float encoder (Keras).
        decoder: float decoder (Keras).
        prior: the learned factorized prior.
        optimizer: Keras optimizer (Adam with the run's schedule).
        lam: ``tf.Variable`` (float32) holding the rate weight.
        jitter: std of Gaussian noise on the decoder's latent before rounding (0: none).
        target_bits: bits per image ``lam`` is steered to; None keeps ``lam`` fixed.
        distortion: ``mse`` or ``psnr`` (:func:`distortion_term`); ``mse`` is still the pixels' MSE.
    """
    import tensorflow as tf

    weights = encoder.trainable_variables + decoder.trainable_variables + prior.variables

    def step(x):
        with tf.GradientTape() as tape:
            y = encoder(x, training=True)
            y_dec = y + tf.random.normal(tf.shape(y), stddev=jitter) if jitter else y
            x_hat = decoder(quantize_latent(tf, y_dec), training=True)
            dist, mse = distortion_term(tf, x, x_hat, distortion)
            noisy = y + tf.random.uniform(tf.shape(y), -0.5, 0.5)
            bits = tf.reduce_mean(prior.bits(noisy))
            loss = dist + lam * bits
        grads = tape.gradient(loss, weights)
        optimizer.apply_gradients(zip(grads, weights, strict=True))
        rounded_bits = tf.reduce_mean(prior.bits(tf.round(tf.stop_gradient(y))))
        if target_bits is not None:
            error = tf.clip_by_value((rounded_bits - target_bits) / target_bits, -1.0, 1.0)
            lam.assign(tf.clip_by_value(lam * tf.exp(LAM_GAIN * error), LAM_RANGE[0], LAM_RANGE[1]))
        return loss, mse, rounded_bits

    return step


class EpochRunner:
    """Runs the step over one epoch's images with the batches cut and the sums kept inside TensorFlow.

    Per batch Python only dispatches one ``tf.function`` call (slice, step, add to the sums); the
    image-weighted sums of loss, MSE and rounded bits are read back once, by :meth:`run`.
    """

    def __init__(self, step, batch_size: int) -> None:
        import tensorflow as tf

        self.tf = tf
        self.batch_size = int(batch_size)
        self.totals = tf.Variable(tf.zeros([3], tf.float64), trainable=False, name="epoch_totals")

        @tf.function(reduce_retracing=True)
        def one_batch(images, start):
            x = images[start : start + self.batch_size]
            out = tf.cast(tf.stack(step(x)), tf.float64)
            self.totals.assign_add(out * tf.cast(tf.shape(x)[0], tf.float64))

        self._one_batch = one_batch

    def run(self, images) -> dict[str, float]:
        """Train on ``images`` (N, 28, 28, 1) float32 in order, ``batch_size`` at a time.

        Returns:
            ``loss``, ``mse`` (0-255 scale) and ``bits`` (rounded latent under the prior): means over the
            images, each batch weighted by its size; ``psnr`` (dB) of that mean MSE.
        """
        tf = self.tf
        images = tf.convert_to_tensor(images, tf.float32)
        n = int(images.shape[0])
        self.totals.assign(tf.zeros([3], tf.float64))
        for start in range(0, n, self.batch_size):
            self._one_batch(images, tf.constant(start, tf.int32))
        loss, mse, bits = (float(v) / n for v in self.totals.numpy())
        psnr = 10 * math.log10(255.0**2 / max(mse, 1e-12))
        return {"loss": loss, "mse": mse, "bits": bits, "psnr": psnr}


def evaluate_qat(qenc, qdec, x_test_u8: np.ndarray, calib: np.ndarray, batch: int = 500) -> dict:
    """Test-split PSNR through the fake-quantized pair (:mod:`cae_edge.train.qat`), recalibrated on
    ``calib`` as the export would, and how many latent values it rounds unlike the float encoder."""
    from .qat import calibrate_pair

    calibrate_pair(qenc, qdec, calib)
    xs = (x_test_u8.astype(np.float32) / 255.0)[..., None]
    q = np.concatenate(
        [
            np.clip(np.rint(np.asarray(qenc(xs[i : i + batch]))), -LATENT_CLIP, LATENT_CLIP)
            for i in range(0, len(xs), batch)
        ]
    )
    q_float = encode_integer(qenc.model, xs)
    rec = np.concatenate([np.asarray(qdec(q[i : i + batch])) for i in range(0, len(q), batch)])
    return {
        "psnr_fake_quant": float(psnr_per_image(x_test_u8, to_uint8(rec[..., 0])).mean()),
        "latent_changed_vs_float": float(np.mean(q != q_float)),
        "calibration_images": int(len(calib)),
    }


def _fit(encoder, decoder, prior: _Prior, opts: TrainOptions, x_train: np.ndarray, rng, progress, qat=None):
    """The training loop; ``(history, lam_final)``.

    A worker thread prepares the next epoch's images (numpy augmentation and shuffle, same random draws in
    the same order) while TensorFlow trains on the current one; lam is steered per step inside the graph.
    ``qat``: ``(qat encoder, qat decoder, calibration images)``: the step runs through the fake-quantized
    views (:mod:`cae_edge.train.qat`), whose activation ranges are recalibrated before every epoch.
    """
    import keras
    import tensorflow as tf

    rd = opts.rd
    assert rd is not None
    steps_per_epoch = math.ceil(len(x_train) / opts.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        opts.learning_rate, opts.epochs * steps_per_epoch, alpha=FINAL_LR_FRACTION
    )
    optimizer = keras.optimizers.Adam(schedule)
    lam = tf.Variable(rd.lam, dtype=tf.float32, trainable=False, name="lam")
    target = max(8.0 * (rd.target_bytes - CODER_OVERHEAD_BYTES), 1.0) if rd.target_bytes else None
    if qat is not None:
        from .qat import calibrate_pair

        qenc, qdec, calib = qat
        calibrate_pair(qenc, qdec, calib)
        encoder, decoder = qenc, qdec
    step = make_train_step(
        encoder,
        decoder,
        prior,
        optimizer,
        lam,
        jitter=float(rd.latent_jitter),
        target_bits=target,
        distortion=rd.distortion,
    )
    runner = EpochRunner(step, opts.batch_size)

    x_train_f = x_train.astype(np.float32) / 255.0

    def epoch_images() -> np.ndarray:
        xe = random_affine(x_train_f, rng) if opts.augment else x_train_f
        return xe[rng.permutation(len(xe))][..., None]

    keys = ("loss", "mse", "bits", "psnr", "lr", "lam", "seconds", "images_per_s")
    history: dict[str, list[float]] = {k: [] for k in keys}
    with ThreadPoolExecutor(1, thread_name_prefix="rd-data") as pool:
        upcoming = pool.submit(epoch_images)
        for epoch in range(1, opts.epochs + 1):
            t0 = time.perf_counter()
            xe = upcoming.result()
            if epoch < opts.epochs:
                upcoming = pool.submit(epoch_images)
            if qat is not None and epoch > 1:
                calibrate_pair(qenc, qdec, calib)
            stats = runner.run(xe)
            seconds = time.perf_counter() - t0
            logs = {
                **stats,
                "lr": float(schedule(optimizer.iterations)),
                "lam": float(lam.numpy()),
                "seconds": seconds,
                "images_per_s": len(xe) / seconds,
            }
            for k, v in logs.items():
                history[k].append(float(v))
            if progress:
                progress(epoch, {**logs, "epochs": opts.epochs})
    return history, float(lam.numpy())


PCA_START_IMAGES = 20_000
"""Training images the PCA start of a ``linear_skip`` model is computed from."""
PCA_START_PEAK = 120.0
"""The PCA start scales the latent so the largest coefficient of those images is this many steps."""


def pca_basis(x_u8: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (784,), the top ``k`` principal directions (k, 784; unit rows) and the coefficients' std (k,) of
    uint8 images on the 0-1 scale (fewer than ``k`` directions exist: the rest are zero rows)."""
    x = x_u8.reshape(len(x_u8), -1).astype(np.float64) / 255.0
    mean = x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = np.zeros((k, x.shape[1]))
    std = np.zeros(k)
    n = min(k, len(vt))
    basis[:n], std[:n] = vt[:n], sv[:n] / math.sqrt(max(len(x) - 1, 1))
    return mean, basis, std


def pca_start(encoder, decoder, prior: _Prior, x_train: np.ndarray, head: str = "convt") -> None:
    """Start a ``linear_skip`` model as the PCA code of the training images, the convolutions silent.

    Encoder: latent = g * V (x - mean) (the conv path's last Dense zeroed, its bias carrying -g V mean);
    decoder: sigmoid(logit(mean) + (V^T q / g) / (mean (1 - mean))), the sigmoid linearised at the mean (the
    conv path's last conv zeroed; ``head``, the decoder's, says in which order it adds the 784 logits);
    prior: logistic(0, g * std) per dimension. ``g`` puts the largest coefficient at :data:`PCA_START_PEAK`
    steps, so the rounding costs a few tenths of a step.
    Training then moves everything from there (the zeroed layers get gradients and wake up).
    """
    x = x_train[:PCA_START_IMAGES]
    k = int(encoder.output_shape[-1])
    mean, basis, std = pca_basis(x, k)
    coef = (x.reshape(len(x), -1) / 255.0 - mean) @ basis.T
    g = PCA_START_PEAK / max(float(np.abs(coef).max()), 1e-6)
    dense = [la for la in encoder.layers if la.__class__.__name__ == "Dense"]
    conv_dense, lin_enc = dense[-2], dense[-1]
    conv_dense.set_weights(
        [np.zeros_like(conv_dense.get_weights()[0]), (-g * basis @ mean).astype(np.float32)]
    )
    lin_enc.set_weights([(g * basis.T).astype(np.float32)])
    m = np.clip(mean, 0.02, 0.98)
    (lin_dec,) = [la for la in decoder.layers if la.__class__.__name__ == "Dense" and la.units == 28 * 28]
    convs = [la for la in decoder.layers if la.__class__.__name__ in ("Conv2D", "Conv2DTranspose")]
    last_conv = [la for la in convs if la.filters == (4 if head == "d2s" else 1)][-1]
    pixels = logit_pixels(head)  # the Dense's columns in the order the head adds them to its logits
    lin_dec.set_weights(
        [
            (basis / g / (m * (1 - m)))[:, pixels].astype(np.float32),
            np.log(m / (1 - m))[pixels].astype(np.float32),
        ]
    )
    last_conv.set_weights([np.zeros_like(w) for w in last_conv.get_weights()])
    prior.assign(np.zeros(k), np.maximum(g * std * math.sqrt(3) / math.pi, 0.1))


def latent_layers(encoder, decoder) -> tuple[list, list]:
    """``(encoder's, decoder's)`` Dense layers that make and take the latent. In :mod:`.model`'s layouts
    every Dense layer of the encoder adds into the latent (one, or two with the linear path) and every Dense
    layer of the decoder reads it (the first layer, and the linear path's Dense(784)).

    Raises:
        ConfigError: a Dense layer that does not make (encoder) or read (decoder) the latent.
    """
    import keras

    dim = int(encoder.output.shape[-1])
    makes = [ly for ly in encoder.layers if isinstance(ly, keras.layers.Dense)]
    takes = [ly for ly in decoder.layers if isinstance(ly, keras.layers.Dense)]
    for side, layers, axis in (("encoder", makes, -1), ("decoder", takes, 0)):
        bad = [ly.name for ly in layers if ly.kernel.shape[axis] != dim]
        if bad or not layers:
            raise ConfigError(f"{side} Dense layers {bad or '(none)'}: not the latent's ({dim} values)")
    return makes, takes


def scale_latent(encoder, decoder, prior: _Prior, factor: float) -> None:
    """Multiply the latent by ``factor`` in place, the float pair's output unchanged: the encoder's latent
    Dense kernels and biases times ``factor``, the decoder's first Dense kernels divided by it, the prior's
    location and scale times ``factor``. The rounded latent gets a finer grid (more bits, less rounding
    error); training on from there settles the new rate."""
    makes, takes = latent_layers(encoder, decoder)
    for ly in makes:
        ly.set_weights([w * np.float32(factor) for w in ly.get_weights()])
    for ly in takes:
        kernel, *rest = ly.get_weights()
        ly.set_weights([kernel / np.float32(factor), *rest])
    scale = prior.scale().numpy() * np.float32(factor)
    prior.assign(prior.loc.numpy() * np.float32(factor), np.maximum(scale - MIN_SCALE, 1e-4))


def _load_start(opts: TrainOptions, encoder, decoder, prior: _Prior, images: np.ndarray) -> dict:
    """Copy weights and prior of the run or bundle ``opts.init_from`` into freshly built models (same
    architecture, checked by the options; a bundle's rebuilt pair checked on ``images``, a few training
    frames); what the run records of its start."""
    from .from_bundle import load_start

    start = opts.start()
    assert start is not None
    record = load_start(start, encoder, decoder, images)
    old = start.prior or {}
    if "loc" in old and "scale" in old:
        prior.assign(old["loc"], np.maximum(np.asarray(old["scale"], np.float32) - MIN_SCALE, 1e-4))
    elif "prior starts afresh" not in " ".join(record["notes"]):
        record["notes"].append(f"{start.kind} {start.name} records no learned prior: the prior starts afresh")
    return record


def _plots(history: dict, encoder, decoder, ds, n_test: int, out: Path, opts: TrainOptions, ev: dict) -> None:
    """``loss.png`` (MSE per epoch) and ``recon.png`` (one test image per class through the rounded
    latent, original above reconstruction), as a plain training run writes them."""
    from dataclasses import replace as dc_replace

    from .plots import plot_loss, plot_recon

    title = f"{ds.name} lam={opts.rd.lam if opts.rd else ''}"
    plot_loss({"loss": history["mse"]}, out / LOSS_PLOT, title=title)
    shown = dc_replace(ds, x_test=ds.x_test[:n_test], y_test=ds.y_test[:n_test])
    sample = shown.x_test[example_indices(shown)]
    rec = decode_integer(decoder, encode_integer(encoder, (sample.astype(np.float32) / 255.0)[..., None]))
    plot_recon(
        sample,
        rec,
        out / RECON_PLOT,
        title=f"{title}: test PSNR {ev['psnr']:.2f} dB, SSIM {ev['ssim']:.3f} (rounded latent)",
    )
