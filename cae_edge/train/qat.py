"""Quantization-aware fine-tuning: train through the int8 model's rounding, keep plain Keras models.

Post-training quantization moves ~40-50 % of an RD encoder's integer latent values by +-1 (and the decoder
then decodes symbols it was not trained on). Fine-tuning with every tensor the int8 TFLite model quantizes
fake-quantized lets encoder and decoder learn around it::

    image (exact: u8 / 255) ─ Conv2D[wq] ─ aq ─ LeakyReLU ─ aq ─ ... ─ Flatten ─ Dense[wq] ─► y (rate term)
                                                                   round (straight-through) ─► ŷ (integers)
    ŷ ─ Dense[wq] ─ aq ─ LeakyReLU ─ aq ─ ConvT[wq] ─ aq ─ ... ─ ConvT[wq] ─ aq[-6.29, 5.18] ─ sigmoid
      ─ aq(1/256)

* ``wq``: weights per output channel, symmetric, narrow range [-127, 127] (scale max|w| / 127), as the
  TFLite converter quantizes CONV_2D, TRANSPOSE_CONV and FULLY_CONNECTED kernels; the gradient passes
  straight through (``tf.quantization.fake_quant_with_min_max_vars_per_channel``).
* ``aq``: per-tensor asymmetric int8 with the range the export will give that tensor: the [100 - p, p]
  percentiles (p = 99.99, :data:`cae_edge.export.convert.DEFAULT_PERCENTILE`) of the float model's values
  on calibration images from the training split, widened to include 0, recomputed before every epoch
  (the weights move slowly in fine-tuning, so the export's calibration finds about the same ranges). The
  pre-sigmoid logits' range is cut to where the int8 sigmoid's output saturates, [-6.29, 5.18], as
  :func:`cae_edge.export.convert.tighten_logistic_inputs` does; the sigmoid output has TFLite's fixed step
  1/256. The export's channel equalization (:mod:`cae_edge.export.equalize`) is not simulated: the export
  of a QAT run leaves it out (the int8 model is then the one training saw).
* Biases: int32 in units of (input step x weight step), rounded to that grid (straight-through).

The fake quantization lives in :class:`QatModel`, a callable view of a plain model built by
:func:`~cae_edge.train.model.build_encoder` / :func:`~cae_edge.train.model.build_decoder`: it computes the
same layers with the same variables, so training updates the plain model and the run directory holds plain
Keras models that ``cae-edge export`` converts as any other run. The layers run in graph order, so the
``linear_skip`` models (a Dense beside the convolutions, ADD of the two paths) are simulated too: on the
decoder's side the Dense(784) output and the ADD (the logits) are int8 tensors of their own; the encoder's
two paths the export fuses into one FULLY_CONNECTED (:func:`cae_edge.export.convert.fuse_linear_path`),
whose int8 latent is within a few hundredths of a dB of the float one's, so a ``linear_skip`` encoder runs
in float here (its latent still rounded) and the fine-tuning is the decoder's.

TensorFlow is imported inside the functions only.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..export.convert import logistic_saturation, narrowed_range, sum_input_cuts
from ..quant import PIXEL_SCALE

ACT_PERCENTILE = 99.99
"""Activation ranges are the [100 - p, p] percentiles of calibration values (the export's default)."""
CALIB_IMAGES = 1000
"""Training images the activation ranges are calibrated on (as ``export --calib 1000``)."""
OUTPUT_STEP = 1.0 / 256.0
"""TFLite's int8 LOGISTIC output: scale 1/256, zero point -128 (real values 0 .. 255/256)."""
LOGIT_CUT = logistic_saturation(OUTPUT_STEP, -128)
"""The logits' range as the export cuts it: where the int8 sigmoid's output stops moving ([-6.29, 5.18])."""
WEIGHT_OPS = ("Conv2D", "Conv2DTranspose", "Dense")
"""Keras layer classes whose kernels are fake-quantized."""
PASS_OPS = ("InputLayer", "Flatten", "Reshape", "Permute")
"""Layers that keep their input's quantization (RESHAPE, TRANSPOSE in TFLite: the d2s head)."""
ACT_OPS = ("LeakyReLU",)
"""Layers whose output is a separately quantized tensor."""
ADD_OPS = ("Add",)
"""The sum of a ``linear_skip`` model's two paths: ADD, its output an int8 tensor of its own."""
SIGMOID_OPS = ("Activation",)
"""A separate sigmoid layer (the d2s head's, after depth-to-space): LOGISTIC, TFLite's fixed output step."""


def _activation(layer) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "linear")


def _inputs_of(layer) -> list[str]:
    """Names of the layers (an ``InputLayer`` for the model's input) whose outputs ``layer`` takes."""
    node = layer._inbound_nodes[0]
    return [t._keras_history.operation.name for t in node.input_tensors]


def check_supported(model) -> None:
    """Raise :class:`ConfigError` unless ``model`` is a chain of layers :class:`QatModel` can fake-quantize.

    Raises:
        ConfigError: a layer of another kind (e.g. a Concatenate), naming it.
    """
    known = WEIGHT_OPS + PASS_OPS + ACT_OPS + ADD_OPS + SIGMOID_OPS
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in SIGMOID_OPS and _activation(layer) != "sigmoid":
            raise ConfigError(
                f"--qat: layer {layer.name} ({kind}) applies {_activation(layer)}; only a sigmoid is "
                "supported as a separate activation layer; train without --qat"
            )
        if kind not in known:
            raise ConfigError(
                f"--qat: layer {layer.name} ({kind}) of the {model.name} is not supported by "
                "quantization-aware fine-tuning; train without --qat"
            )
        if len(getattr(layer, "_inbound_nodes", [])) > 1:  # pragma: no cover - builders use each once
            raise ConfigError(f"--qat: layer {layer.name} is used twice; each layer must be used once")


def fake_quant_weights(tf, kernel, channel_axis: int):
    """Per-channel symmetric narrow-range int8 fake quantization of a kernel (straight-through gradient).

    Args:
        tf: the TensorFlow module.
        kernel: Keras kernel tensor.
        channel_axis: its output-channel axis (Conv2D, Dense: -1; Conv2DTranspose (H, W, O, I): 2).

    Returns:
        ``kernel`` rounded to ``scale * k`` with ``k`` in [-127, 127], ``scale = max|w| / 127`` per channel.
    """
    rank = len(kernel.shape)
    axis = channel_axis % rank
    perm = [i for i in range(rank) if i != axis] + [axis]
    k = tf.transpose(kernel, perm) if axis != rank - 1 else kernel
    m = tf.stop_gradient(tf.reduce_max(tf.abs(tf.reshape(k, [-1, k.shape[-1]])), axis=0))
    m = tf.maximum(m, 1e-8)
    q = tf.quantization.fake_quant_with_min_max_vars_per_channel(k, -m, m, num_bits=8, narrow_range=True)
    if axis == rank - 1:
        return q
    inverse = list(np.argsort(perm))
    return tf.transpose(q, inverse)


def percentile_range(values: np.ndarray, percentile: float = ACT_PERCENTILE) -> tuple[float, float]:
    """``[min(P(100 - p), 0), max(P(p), 0)]`` of ``values``, as the export narrows calibrated ranges."""
    v = np.asarray(values, np.float32).ravel()
    lo = min(float(np.percentile(v, 100.0 - percentile)), 0.0)
    hi = max(float(np.percentile(v, percentile)), 0.0)
    if hi - lo < 1e-6:
        hi = lo + 1e-6
    return lo, hi


class QatModel:
    """A fake-quantized view of a plain Keras encoder or decoder (same layers, same variables).

    Call it like the model (``qat(x, training=True)``); :attr:`trainable_variables` are the plain model's.
    Activation ranges start unset: :meth:`calibrate` before the first call.
    """

    def __init__(
        self, model, input_scale: float, latent_output: bool = False, percentile: float = ACT_PERCENTILE
    ) -> None:
        """``input_scale``: the int8 model's input step (pixels 1/255, the latent 1); ``latent_output``: the
        model is the encoder, whose last layer's output is the latent (left float here: the caller rounds
        it to integers, straight-through, as the int8 model's scale-1 output does)."""
        import tensorflow as tf

        check_supported(model)
        self.tf = tf
        self.model = model
        self.percentile = float(percentile)
        self.input_scale = float(input_scale)
        self.input_name = model.layers[0].name
        self.layers = [la for la in model.layers if type(la).__name__ != "InputLayer"]  # in graph order
        self.inputs = {la.name: _inputs_of(la) for la in self.layers}
        """Layer name → the names of the layers (or the input) whose outputs it takes."""
        self.points: list[str] = []
        """Layers whose output (a sigmoid layer: its logits) is an int8 tensor of its own."""
        self.logits: set[str] = set()
        """Points whose tensor is a sigmoid's input (range cut to :data:`LOGIT_CUT` as the export does)."""
        self.fused = latent_output and any(type(la).__name__ in ADD_OPS for la in self.layers)
        """A ``linear_skip`` encoder: the export fuses its two paths (:func:`~cae_edge.export.convert.
        fuse_linear_path`), so its int8 tensors are not these layers' outputs; it runs in float here (its
        latent is still rounded by the caller) and QAT trains the decoder through the int8 rounding."""
        kinds = {la.name: type(la).__name__ for la in self.layers}
        for layer in self.layers:
            kind, act = kinds[layer.name], _activation(layer)
            if kind in WEIGHT_OPS and act not in ("linear", "sigmoid"):
                raise ConfigError(f"--qat: layer {layer.name} has activation {act}; only sigmoid/linear")
            if kind in SIGMOID_OPS:
                src = self.inputs[layer.name][0]
                while kinds.get(src) in PASS_OPS:  # RESHAPE/TRANSPOSE in between keep its quantization
                    src = self.inputs[src][0]
                self.logits.add(src)
            elif act == "sigmoid":
                self.logits.add(layer.name)
            if self.fused or (latent_output and layer is self.layers[-1]):
                continue
            if kind in ACT_OPS + ADD_OPS + WEIGHT_OPS:
                self.points.append(layer.name)
        self.ranges = {
            name: (
                tf.Variable(0.0, trainable=False, name=f"qat_min_{i}"),
                tf.Variable(0.0, trainable=False, name=f"qat_max_{i}"),
            )
            for i, name in enumerate(self.points)
        }
        self.calibrated = False

    @property
    def trainable_variables(self) -> list:
        return self.model.trainable_variables

    @property
    def name(self) -> str:
        return self.model.name

    def _apply_kernel(self, layer, x, kernel):
        """``layer``'s matmul or (transposed) convolution of ``x`` with ``kernel``, no bias."""
        import keras

        kind = type(layer).__name__
        if kind == "Dense":
            return self.tf.matmul(x, kernel)
        if kind == "Conv2D":
            return keras.ops.conv(x, kernel, strides=layer.strides, padding=layer.padding)
        return keras.ops.conv_transpose(
            x, kernel, strides=layer.strides, padding=layer.padding, output_padding=layer.output_padding
        )

    def _weight_layer(self, layer, x, in_scale):
        tf = self.tf
        axis = 2 if type(layer).__name__ == "Conv2DTranspose" else -1  # Conv2DTranspose kernel: (H, W, O, I)
        y = self._apply_kernel(layer, x, fake_quant_weights(tf, layer.kernel, axis))
        if not layer.use_bias:
            return y
        # int32 bias in units of input step x weight step (per output channel)
        channels = tf.reshape(tf.experimental.numpy.moveaxis(layer.kernel, axis, -1), [-1, y.shape[-1]])
        w_step = tf.reduce_max(tf.abs(channels), axis=0) / 127.0
        step = tf.stop_gradient(tf.maximum(w_step * in_scale, 1e-12))
        bias = layer.bias + tf.stop_gradient(tf.round(layer.bias / step) * step - layer.bias)
        return y + bias

    def _quant(self, name: str, x):
        tf = self.tf
        lo, hi = self.ranges[name]
        return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8, narrow_range=False)

    def __call__(self, x, training: bool = False, quantize: bool = True, taps: dict | None = None):
        """The model's output with every int8 tensor fake-quantized (``quantize=False``: the float model;
        ``taps`` collects each quantization point's float value, for :meth:`calibrate`)."""
        if quantize and not self.calibrated:
            raise RuntimeError("QatModel: call calibrate() before the first quantized call")
        quantize = quantize and not self.fused
        values = {self.input_name: x}
        scales = {self.input_name: self.input_scale}
        for layer in self.layers:
            ins = self.inputs[layer.name]
            arg = values[ins[0]] if len(ins) == 1 else [values[n] for n in ins]
            values[layer.name] = self.apply_layer(
                layer, arg, scales[ins[0]], training=training, quantize=quantize, taps=taps
            )
            scales[layer.name] = scales[ins[0]]
            if quantize and layer.name in self.points:
                # the step is read in the graph: calibration moves it between epochs
                lo, hi = self.ranges[layer.name]
                scales[layer.name] = (hi - lo) / 255.0
        return values[self.layers[-1].name]

    def apply_layer(
        self,
        layer,
        x,
        in_scale,
        training: bool = False,
        quantize: bool = True,
        taps: dict | None = None,
    ):
        """One layer of the chain on ``x`` (int8 step ``in_scale``), its output fake-quantized where the int8
        model quantizes it."""
        tf = self.tf
        kind = type(layer).__name__
        sigmoid = False
        if kind in WEIGHT_OPS:
            x = self._weight_layer(layer, x, in_scale) if quantize else self._weight_layer_float(layer, x)
            sigmoid = _activation(layer) == "sigmoid"
        elif kind in SIGMOID_OPS:
            sigmoid = True
        else:
            x = layer(x, training=training)
        if layer.name in self.points:
            if taps is not None:
                taps[layer.name] = x
            if quantize:
                x = self._quant(layer.name, x)
        if sigmoid:
            x = tf.sigmoid(x)
            if quantize:
                x = tf.quantization.fake_quant_with_min_max_args(
                    x, min=0.0, max=255.0 * OUTPUT_STEP, num_bits=8
                )
        return x

    def _weight_layer_float(self, layer, x):
        y = self._apply_kernel(layer, x, layer.kernel)
        return y + layer.bias if layer.use_bias else y

    def calibrate(self, x: np.ndarray, batch: int = 250) -> dict[str, tuple[float, float]]:
        """Set every activation range from the float model's values on ``x`` (as the export calibrates).

        Returns:
            ``{layer name: (min, max)}``.
        """
        found: dict[str, list[np.ndarray]] = {name: [] for name in self.points}
        for i in range(0, len(x), batch):
            taps: dict = {}
            self(x[i : i + batch], quantize=False, taps=taps)
            for name, v in taps.items():
                found[name].append(np.asarray(v).ravel())
        out = {}
        for name in self.points:
            lo, hi = percentile_range(np.concatenate(found[name]), self.percentile)
            if name in self.logits:
                lo, hi = max(lo, LOGIT_CUT[0]), min(hi, LOGIT_CUT[1])
            out[name] = (lo, hi)
        for name in self.logits & set(self.points):
            if type(self.model.get_layer(name)).__name__ in ADD_OPS:
                out.update(
                    _cut_sum_inputs(out, out[name], [self._point_behind(n) for n in self.inputs[name]])
                )
        for name, (lo_var, hi_var) in self.ranges.items():
            lo_var.assign(out[name][0])
            hi_var.assign(out[name][1])
        self.calibrated = True
        return out

    def _point_behind(self, name: str) -> str:
        """The quantization point whose int8 tensor layer ``name``'s output is (RESHAPEs pass it on)."""
        while name not in self.points:
            name = self.inputs[name][0]
        return name


def _cut_sum_inputs(ranges: dict, total: tuple[float, float], parts: list[str]) -> dict:
    """The two inputs of a sum cut to ``total``, narrowed as the export narrows an ADD's inputs before a
    sigmoid (:func:`~cae_edge.export.convert.sum_input_cuts`, then
    :func:`~cae_edge.export.convert.narrowed_range`)."""
    if len(parts) != 2 or parts[0] == parts[1]:
        return {}
    cuts = sum_input_cuts(total, ranges[parts[0]], ranges[parts[1]])
    out = {}
    for name, cut in zip(parts, cuts, strict=True):
        narrowed = narrowed_range(*ranges[name], *cut)
        if narrowed is not None:
            out[name] = narrowed
    return out


def qat_pair(encoder, decoder) -> tuple[QatModel, QatModel]:
    """Fake-quantized views of a plain encoder and decoder (:class:`QatModel`), not yet calibrated."""
    return QatModel(encoder, PIXEL_SCALE, latent_output=True), QatModel(decoder, 1.0)


def calibrate_pair(qenc: QatModel, qdec: QatModel, images: np.ndarray, latent_clip: float = 127.0) -> dict:
    """Calibrate both views on training images (N, 28, 28, 1) float in [0, 1]: the encoder on the images,
    the decoder on the fake-quantized encoder's rounded latents (what the int8 decoder is calibrated on).

    Returns:
        ``{"encoder": ranges, "decoder": ranges}`` (see :meth:`QatModel.calibrate`).
    """
    enc = qenc.calibrate(images)
    y = np.concatenate([np.asarray(qenc(images[i : i + 250])) for i in range(0, len(images), 250)])
    q = np.clip(np.rint(y), -latent_clip, latent_clip).astype(np.float32)
    return {"encoder": enc, "decoder": qdec.calibrate(q)}
