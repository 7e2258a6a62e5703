"""The convolutional autoencoder: two separate Keras models, encoder and decoder.

Data flow (shapes for the defaults)::

    image 28x28x1 ─ Conv2D 32, 2x2, stride 2 ─► 14x14x32 ─ LeakyReLU
                  ─ Conv2D w1, 3x3, stride 2 ─► 7x7xw1    ─ LeakyReLU
                  ─ Conv2D w1, 3x3           ─► 7x7xw1    ─ LeakyReLU
                  ─ Conv2D w2, 3x3, stride 2 ─► 4x4xw2    ─ LeakyReLU
                  ─ Conv2D b,  1x1           ─► 4x4xb     ─ LeakyReLU
                  ─ Flatten ─ Dense(latent)  ─► latent vector (128 by default)   ══ wire ══►
    latent ─ Dense 3x3xd0 ─ LeakyReLU ─ ConvT d0, 3x3, s2 valid ─► 7x7 ─ ConvT d1, 3x3, s2 ─► 14x14
           ─ ConvT d2, 3x3, s2 ─► 28x28 ─ ConvT 1, 3x3 ─► sigmoid ─► image 28x28x1
    head "d2s", from the 14x14xd1 features on:
           ─ Conv2D d2, 3x3 ─► 14x14xd2 ─ LeakyReLU ─ Conv2D 4, 3x3 ─► 14x14x4 ─ sigmoid
           ─ depth-to-space 2 ─► image 28x28x1

Five conv layers in the encoder and four transposed-conv layers in the decoder, as in the reference
paper, but with the dense layers kept small (a 6272x128 dense layer alone is 800 KB of int8 weights):
the encoder fits in well under 64 KB and the decoder under 128 KB as int8 TFLite.

With ``linear_skip`` (the scenes presets) each side also has a linear path around its convolutions: pixels ─
Dense ─► added to the latent, latent ─ Dense(784) ─► added to the image logits. The linear pair learns a
PCA-like transform within the first epoch (natural scenes have much of their energy there), the convolutions
learn what it misses; it costs 784 x latent weights on each side.

The ``d2s`` head (``ModelConfig.head``) replaces the 14→28 ConvT and the 1-channel ConvT, which run at a few
per cent of the int8 peak (a GEMM with one output column), by a d2-filter conv at 14x14 and a 4-channel conv
whose channels are the 2x2 pixel blocks of the image (int8 preset decoder: 16 µs with d2 = 24, 20 µs with 48
as shipped, against 32 µs on the same core; the 4-channel conv alone would be 12 µs but drops the last hidden
layer). Depth-to-space is Reshape/Permute/Reshape (TFLite RESHAPE and TRANSPOSE, int8 in XNNPACK, no
arithmetic). Its linear path is a Dense(784) laid out as 14x14x4, added to the conv's logits before the
sigmoid, so the graph never has a 1-channel tensor next to a conv (docs/latency.md).

Encoder and decoder share nothing across the bottleneck (no skip connections): they run on different
machines. Both take a fixed batch size when ``batch_size`` is given, which keeps the TFLite graphs free of
SHAPE/STRIDED_SLICE/PACK ops.
"""

from __future__ import annotations

from ..rundir import ModelConfig

__all__ = [
    "ModelConfig",
    "build_autoencoder",
    "build_decoder",
    "build_encoder",
    "depth_to_space",
    "logit_pixels",
]


D2S_BLOCKS = "blocks"
"""Name of the d2s head's output conv (14x14x4: the logits of the image's 2x2 pixel blocks)."""


def _glorot(gain: float):
    """Glorot-uniform initializer scaled by ``gain`` (gain 1 is Keras' default)."""
    import keras

    if gain == 1.0:
        return "glorot_uniform"
    return keras.initializers.VarianceScaling(scale=float(gain) ** 2, mode="fan_avg", distribution="uniform")


def build_encoder(cfg: ModelConfig, batch_size: int | None = None, name: str = "encoder"):
    """Image (28, 28, 1) float in [0, 1] → latent (latent_dim,) float."""
    import keras
    from keras import layers

    cfg.validate()
    w1, w2, b = cfg.enc_widths
    inp = keras.Input((28, 28, 1), batch_size=batch_size, name="image")
    x = inp
    for filters, kernel, stride in ((32, 2, 2), (w1, 3, 2), (w1, 3, 1), (w2, 3, 2), (b, 1, 1)):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same")(x)
        x = layers.LeakyReLU(negative_slope=cfg.leaky_alpha)(x)
    x = layers.Flatten()(x)
    if not cfg.linear_skip:
        out = layers.Dense(cfg.latent_dim, kernel_initializer=_glorot(cfg.latent_gain), name="latent")(x)
        return keras.Model(inp, out, name=name)
    x = layers.Dense(cfg.latent_dim, kernel_initializer=_glorot(cfg.latent_gain))(x)
    lin = layers.Dense(cfg.latent_dim, use_bias=False, kernel_initializer=_glorot(cfg.latent_gain))(
        layers.Flatten()(inp)
    )
    out = layers.Add(name="latent")([x, lin])
    return keras.Model(inp, out, name=name)


def depth_to_space(x, size: int, block: int = 2, name: str | None = None):
    """``(size, size, block*block)`` → ``(size*block, size*block, 1)``: channel ``a*block + b`` of pixel
    ``(i, j)`` becomes pixel ``(i*block + a, j*block + b)`` (``tf.nn.depth_to_space``'s order for one output
    channel), with Keras layers only (Reshape, Permute, Reshape)."""
    from keras import layers

    x = layers.Reshape((size, size, block, block))(x)  # (i, j, a, b)
    x = layers.Permute((1, 3, 2, 4))(x)  # (i, a, j, b)
    return layers.Reshape((size * block, size * block, 1), name=name)(x)


def logit_pixels(head: str):
    """Which image pixel (row-major index into 28x28) each of the decoder's 784 logits is, for ``head``: the
    order the linear path's Dense(784) columns are in (``convt``: raster; ``d2s``: 14x14 blocks of 2x2)."""
    import numpy as np

    if head == "d2s":  # logit (i, j, a, b) is pixel (2i + a, 2j + b)
        return np.arange(28 * 28).reshape(14, 2, 14, 2).transpose(0, 2, 1, 3).ravel()
    return np.arange(28 * 28)


def build_decoder(cfg: ModelConfig, batch_size: int | None = None, name: str = "decoder"):
    """Latent (latent_dim,) float → image (28, 28, 1) in [0, 1] (sigmoid); ``cfg.head`` picks the last
    layers (see the module docstring)."""
    import keras
    from keras import layers

    cfg.validate()
    d0, d1, d2 = cfg.dec_widths
    inp = keras.Input((cfg.latent_dim,), batch_size=batch_size, name="latent")
    x = layers.Dense(3 * 3 * d0, kernel_initializer=_glorot(1.0 / cfg.latent_gain))(inp)
    x = layers.LeakyReLU(negative_slope=cfg.leaky_alpha)(x)
    x = layers.Reshape((3, 3, d0))(x)
    x = layers.Conv2DTranspose(d0, 3, strides=2, padding="valid")(x)  # 3 → 7
    x = layers.LeakyReLU(negative_slope=cfg.leaky_alpha)(x)
    x = layers.Conv2DTranspose(d1, 3, strides=2, padding="same")(x)  # 7 → 14
    x = layers.LeakyReLU(negative_slope=cfg.leaky_alpha)(x)
    if cfg.head == "d2s":
        x = layers.Conv2D(d2, 3, padding="same")(x)  # 14x14xd2
        x = layers.LeakyReLU(negative_slope=cfg.leaky_alpha)(x)
        x = layers.Conv2D(4, 3, padding="same", name=D2S_BLOCKS)(x)  # 14x14x4: the 2x2 pixel blocks' logits
        if cfg.linear_skip:
            lin = layers.Dense(28 * 28, kernel_initializer=_glorot(1.0 / cfg.latent_gain))(inp)
            x = layers.Add()([x, layers.Reshape((14, 14, 4))(lin)])
        x = layers.Activation("sigmoid")(x)
        return keras.Model(inp, depth_to_space(x, 14, 2, name="image"), name=name)
    x = layers.Conv2DTranspose(d2, 3, strides=2, padding="same")(x)  # 14 → 28
    x = layers.LeakyReLU(negative_slope=cfg.leaky_alpha)(x)
    if not cfg.linear_skip:
        out = layers.Conv2DTranspose(1, 3, padding="same", activation="sigmoid", name="image")(x)
        return keras.Model(inp, out, name=name)
    x = layers.Conv2DTranspose(1, 3, padding="same")(x)
    lin = layers.Dense(28 * 28, kernel_initializer=_glorot(1.0 / cfg.latent_gain))(inp)
    x = layers.Add()([x, layers.Reshape((28, 28, 1))(lin)])
    out = layers.Activation("sigmoid", name="image")(x)
    return keras.Model(inp, out, name=name)


def build_autoencoder(cfg: ModelConfig, batch_size: int | None = None):
    """Return ``(encoder, decoder, autoencoder)``; the autoencoder chains the two separate models."""
    import keras

    encoder = build_encoder(cfg, batch_size)
    decoder = build_decoder(cfg, batch_size)
    inp = keras.Input((28, 28, 1), batch_size=batch_size, name="image")
    autoencoder = keras.Model(inp, decoder(encoder(inp)), name="autoencoder")
    return encoder, decoder, autoencoder
