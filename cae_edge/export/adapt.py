"""Decoder adaptation to the int8 encoder: fine-tune the float decoder on the latents the node really sends.

::

    int8 encoder.tflite (LiteRT) ─ every training image ─► int8 latents q (what the node sends)
    Keras decoder (copy) ─ Adam, cosine LR, MSE(decoder(q), image) ─► adapted decoder ─► int8 PTQ as usual

Why: post-training quantization of the encoder moves many latent values. A rate-distortion model's integer
latent spans about ±64 with a step of 1, and five int8 layers add enough error to move 50-60 % of latent
values by ±1 (up to ±4), which costs 0.5-0.9 dB when the decoder was trained on the float encoder's latents.
The int8 encoder is a deterministic function of the image, so the decoder can learn its outputs: a few
decoder-only epochs on the int8 encoder's own training latents recover most of the loss. The encoder, its
latents and hence the entropy model are untouched; only the decoder changes.

TensorFlow is imported inside the functions only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError

Progress = Callable[[str, int, int], None]

FINAL_LR_FRACTION = 0.1
"""Cosine decay ends at this fraction of the starting learning rate."""


@dataclass(frozen=True)
class AdaptOptions:
    """How to fine-tune the decoder on int8 latents."""

    epochs: int = 0
    """Passes over the training split; 0 turns adaptation off."""
    learning_rate: float = 2e-4
    """Starting Adam learning rate (cosine decay to a tenth). Small: the decoder is already trained."""
    batch_size: int = 64
    seed: int = 0
    qat: bool = False
    """Fine-tune through the int8 decoder's rounding (:class:`~cae_edge.train.qat.QatModel`: weights
    per channel, every activation at its calibrated range, recalibrated on the latents before each epoch),
    for a decoder trained with ``train --qat``: plain fine-tuning moves it off the int8 model it learned
    (mnist-xxl, 3 epochs at 2e-5: float pair +0.08 dB, int8 -0.28 dB; docs/qat.md)."""

    def validate(self) -> AdaptOptions:
        if int(self.epochs) < 0:
            raise ConfigError(f"adapt epochs {self.epochs}: must be >= 0 (0 = no adaptation)")
        if not 0 < float(self.learning_rate) < 1:
            raise ConfigError(f"adapt learning rate {self.learning_rate}: must be in (0, 1), e.g. 2e-4")
        if int(self.batch_size) < 1:
            raise ConfigError(f"adapt batch size {self.batch_size}: must be >= 1")
        return self


@dataclass
class AdaptResult:
    """What adaptation did, recorded in the manifest (``quality.decoder_adaptation``)."""

    epochs: int
    learning_rate: float
    train_images: int
    loss_first_epoch: float
    """Mean training MSE (0-255 scale) of the first epoch."""
    loss_last_epoch: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def adapt_decoder(
    decoder,
    latents: np.ndarray,
    images_u8: np.ndarray,
    opts: AdaptOptions,
    progress: Progress | None = None,
    latent_scale: float = 1.0,
):
    """Fine-tune a copy of ``decoder`` to map ``latents`` (dequantized, float) back to ``images_u8``.

    Args:
        decoder: Trained Keras decoder; it is not modified.
        latents: (N, latent_dim) float latents, as the int8 decoder will receive them (dequantized).
        images_u8: (N, 28, 28) uint8 targets, the images those latents came from.
        opts: Epochs, learning rate, batch size, seed, QAT.
        progress: Optional callback ``(what, done, total)`` per epoch.
        latent_scale: The int8 latent's step (the decoder's input scale; 1 for an integer latent): with
            ``opts.qat``, the grid of the first layer's int32 bias.

    Returns:
        ``(adapted_decoder, AdaptResult)``.

    Raises:
        ConfigError: bad options, or latents and images that do not pair up.
    """
    import keras
    import tensorflow as tf

    opts.validate()
    latents = np.asarray(latents, np.float32)
    if latents.ndim != 2 or len(latents) != len(images_u8) or len(latents) == 0:
        raise ConfigError(
            f"adaptation needs one latent per image: got latents {latents.shape} for images "
            f"{np.shape(images_u8)}"
        )
    model = keras.models.clone_model(decoder)
    model.set_weights(decoder.get_weights())
    steps = math.ceil(len(latents) / opts.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        opts.learning_rate, max(opts.epochs * steps, 1), alpha=FINAL_LR_FRACTION
    )
    optimizer = keras.optimizers.Adam(schedule)
    weights = model.trainable_variables
    net = model
    if opts.qat:
        from ..train.qat import CALIB_IMAGES, QatModel

        net = QatModel(model, latent_scale)
        calib = latents[np.sort(np.random.default_rng(opts.seed).permutation(len(latents))[:CALIB_IMAGES])]

    @tf.function(reduce_retracing=True)
    def step(q, x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(net(q, training=True) - x))
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
        return loss

    rng = np.random.default_rng(opts.seed)
    x_all = (np.asarray(images_u8, np.float32) / 255.0)[..., None]
    losses: list[float] = []
    t0 = time.perf_counter()
    for epoch in range(opts.epochs):
        if opts.qat:
            net.calibrate(calib)
        order = rng.permutation(len(latents))
        total = 0.0
        for i in range(steps):
            idx = order[i * opts.batch_size : (i + 1) * opts.batch_size]
            total += float(step(tf.constant(latents[idx]), tf.constant(x_all[idx]))) * len(idx)
        losses.append(total / len(latents) * 255.0**2)
        if progress:
            progress(
                f"adapting the decoder to int8 latents: epoch {epoch + 1}, MSE {losses[-1]:.1f}",
                epoch + 1,
                opts.epochs,
            )
    result = AdaptResult(
        epochs=int(opts.epochs),
        learning_rate=float(opts.learning_rate),
        train_images=int(len(latents)),
        loss_first_epoch=losses[0] if losses else float("nan"),
        loss_last_epoch=losses[-1] if losses else float("nan"),
        seconds=time.perf_counter() - t0,
    )
    return model, result
