"""Keras encoder/decoder → four .tflite models: a full-integer int8 pair and float32 references.

::

    Keras encoder (batch None) ─ rebuild at batch 1 + set_weights [─ fuse the linear path] ─ TFLiteConverter,
        PTQ on training images
        ─► encoder.tflite  int8 in (scale 1/255, zp -128: pixel byte XOR 0x80)  →  int8 latent (s, z)
    int8 latents of the calibration images (dequantized) ─ PTQ calibration of the decoder
        ─► decoder.tflite  int8 latent, input params overwritten with the encoder's (s, z)  →  int8 image
                           (pre-sigmoid logits' range cut to [-8, 8]: finer steps, same pixels)

The latent quantization is identical on both sides by construction: after conversion the decoder's input
tensor gets exactly the encoder's output (scale, zero point) written into the flatbuffer (a forced
``latent_quant`` is written into both). TFLite kernels derive their requantization multipliers from tensor
parameters at Prepare time, so editing the parameters of a graph input/output is sound; the edit is an
in-place overwrite of the two numbers, every other byte stays as the converter wrote it.

A ``linear_skip`` encoder sums two Dense layers (the convolutions' and the pixels'); converted as it is, each
sum is rounded to int8 on its own before the ADD, at steps of 0.5-0.8 latent units, which moves a quarter of
the latent values by one. :func:`fuse_linear_path` converts the same function as one FULLY_CONNECTED over
the concatenated pixels and features (one int32 sum, rounded once to the latent's step of 1).

TensorFlow is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import BundleError, ExportError
from ..quant import PIXEL_SCALE, PIXEL_ZERO_POINT, QuantParams, dequantize
from ..quant import quantize as quantize_values
from .equalize import equalized_copy
from .rangesearch import (
    DECODER_OBJECTIVE,
    ENCODER_OBJECTIVE,
    RangeSearch,
    decode_error,
    latent_error,
    range_tensors,
    refiner,
)

Progress = Callable[[str, int, int], None]


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - TF always ships one
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


@contextlib.contextmanager
def _quiet():
    """The converter prints traces of captured variables to stdout; a library must not print."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def rebuild_batch1(model, builder, cfg):
    """A copy of a Keras model with a fixed batch size of 1 (no SHAPE/STRIDED_SLICE/PACK ops in TFLite).

    Args:
        model: Trained Keras model (any batch size).
        builder: ``build_encoder`` or ``build_decoder`` from :mod:`cae_edge.train.model`.
        cfg: The :class:`~cae_edge.train.model.ModelConfig` it was built with.

    Returns:
        A new Keras model built with ``batch_size=1`` and the same weights.
    """
    m1 = builder(cfg, batch_size=1, name=model.name)
    m1.set_weights(model.get_weights())
    return m1


DEFAULT_PERCENTILE = 99.99
"""Activation ranges are cut to this percentile (and 100 minus it) of what calibration saw."""

FUSED_PIXELS = "pixels"
"""Name of the fused encoder's 1x1 identity conv that puts the pixels on the concatenation's int8 grid."""


def fuse_linear_path(encoder, cfg, calib: np.ndarray, percentile: float = DEFAULT_PERCENTILE):
    """The same function as a ``linear_skip`` encoder, laid out for int8: one Dense over [pixels, features].

    ``latent = Dense_conv(features) + Dense_lin(pixels)`` becomes ``Dense([pixels, features / s])`` with the
    kernels stacked (the conv half times ``s``) and the conv path's bias. TFLite's int8 CONCATENATION puts
    both halves on one grid: ``s`` (the features' ``percentile`` on ``calib``, at least 1) brings the
    features to about the pixels' [0, 1] (folded into the last conv, which LeakyReLU commutes with), and a
    1x1 identity conv (weight 1, exact in int8) requantizes the pixels onto that grid, so the model's input
    keeps its own scale (1/255). Float outputs equal the original's to rounding.

    Args:
        encoder: Keras ``linear_skip`` encoder at batch size 1 (:func:`rebuild_batch1`).
        cfg: Its :class:`~cae_edge.train.model.ModelConfig`.
        calib: Calibration images, float32 (N, 28, 28, 1) in [0, 1].
        percentile: Feature percentile that sets ``s``.

    Returns:
        The fused Keras model (batch size 1).
    """
    import keras
    from keras import layers

    convs = [la for la in encoder.layers if isinstance(la, layers.Conv2D)]
    acts = [la for la in encoder.layers if isinstance(la, layers.LeakyReLU)]
    dense = [la for la in encoder.layers if isinstance(la, layers.Dense)]
    conv_dense = [la for la in dense if la.use_bias]
    lin_dense = [la for la in dense if not la.use_bias]
    if (
        not cfg.linear_skip
        or len(conv_dense) != 1
        or len(lin_dense) != 1
        or len(convs) != 5
        or len(acts) != 5
    ):
        raise ExportError(
            f"fuse_linear_path needs a linear_skip encoder (5 convs, a Dense with and one without bias); got "
            f"{len(convs)} convs, {len(conv_dense)} + {len(lin_dense)} Dense (linear_skip={cfg.linear_skip})"
        )
    features = np.asarray(keras.Model(encoder.input, acts[-1].output)(calib))
    s = max(1.0, float(np.percentile(features, percentile)))

    inp = keras.Input((28, 28, 1), batch_size=1, name="image")
    x = inp
    for k, conv in enumerate(convs):
        new = layers.Conv2D(conv.filters, conv.kernel_size, strides=conv.strides, padding=conv.padding)
        x = new(x)
        kernel, bias = conv.get_weights()
        new.set_weights([kernel / s, bias / s] if k == len(convs) - 1 else [kernel, bias])
        x = layers.LeakyReLU(negative_slope=cfg.leaky_alpha)(x)
    pixels = layers.Conv2D(1, 1, name=FUSED_PIXELS)
    both = layers.Concatenate()([layers.Flatten()(pixels(inp)), layers.Flatten()(x)])
    pixels.set_weights([np.ones((1, 1, 1, 1), np.float32), np.zeros(1, np.float32)])
    latent = layers.Dense(cfg.latent_dim, name="latent")
    out = latent(both)
    w_conv, b_conv = conv_dense[0].get_weights()
    latent.set_weights([np.concatenate([lin_dense[0].get_weights()[0], w_conv * s]), b_conv])
    fused = keras.Model(inp, out, name=encoder.name)
    want, got = np.asarray(encoder(calib[:64])), np.asarray(fused(calib[:64]))
    if not np.allclose(got, want, rtol=1e-4, atol=1e-3 * (1.0 + float(np.abs(want).max()))):
        raise ExportError(
            f"the fused linear-path encoder differs from the trained one by up to "
            f"{np.abs(got - want).max():.4g} latent units: the encoder's layers are not the linear_skip "
            "layout of cae_edge.train.model"
        )
    return fused


def convert_float(model) -> bytes:
    """Keras model → float32 .tflite bytes (builtin ops)."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    with _quiet():
        return bytes(conv.convert())


def convert_int8(
    model,
    representative: np.ndarray,
    percentile: float | None = DEFAULT_PERCENTILE,
    refine: Callable[[bytes, Callable[[bytes], bytes]], bytes] | None = None,
) -> bytes:
    """Keras model → full-integer .tflite bytes: int8 input and output, only TFLITE_BUILTINS_INT8 ops.

    Args:
        model: Keras model with batch size 1.
        representative: Calibration inputs, shape (N, *input shape without batch), float32.
        percentile: Cut every intermediate activation's range to the [100 - p, p] percentiles of its values
            on the calibration inputs (:func:`percentile_ranges`); ``None`` or 100 keeps the converter's
            min/max calibration.
        refine: Optional ``(calibrated bytes, quantize) -> calibrated bytes``, given the calibrated model
            (tensors carrying their min/max, after the percentile cut) and the function that quantizes one
            (e.g. :func:`~cae_edge.export.rangesearch.search_ranges`); what it returns is quantized.

    Returns:
        The .tflite bytes.
    """
    import tensorflow as tf

    reps = np.asarray(representative, dtype=np.float32)
    if len(reps) == 0:
        raise ExportError("representative dataset is empty: need at least one calibration sample")

    def gen():
        for r in reps:
            yield [r[None]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    cut = percentile is not None and percentile < 100
    if not cut and refine is None:
        with _quiet():
            return bytes(conv.convert())
    # The converter's own steps, split open: calibrate (a float model whose tensors carry min/max), narrow
    # those ranges, then quantize exactly as TFLiteConverter.convert() does with its default MLIR quantizer.
    from tensorflow.lite.python.convert import mlir_quantize

    def quantize(calibrated: bytes) -> bytes:
        with _quiet():
            return bytes(mlir_quantize(calibrated, False, input_data_type=tf.int8, output_data_type=tf.int8))

    conv._experimental_calibrate_only = True
    with _quiet():
        calibrated = bytes(conv.convert())
    if cut:
        with _quiet():
            calibrated = percentile_ranges(calibrated, reps, percentile)
    if refine is not None:
        calibrated = refine(calibrated, quantize)
    return quantize(calibrated)


def percentile_ranges(calibrated: bytes, reps: np.ndarray, percentile: float) -> bytes:
    """Narrow the min/max that calibration stored on every intermediate tensor to value percentiles.

    Min/max calibration sizes each int8 activation for its single most extreme value over the calibration
    set; trained decoders have long-tailed activations (max about 9 standard deviations), so most values
    get a coarse step. Cutting at the 99.99th percentile costs a saturated value once in 10,000 and made the
    int8 decoder of mnist-small lose 0.20 dB instead of 0.70. The graph input and output keep their ranges.

    Args:
        calibrated: Output of a calibrate-only conversion (float model, tensors carry min/max).
        reps: The calibration inputs (N, ...), run through that model with every tensor preserved.
        percentile: e.g. 99.99; each range becomes [min(P(100 - p), 0), max(P(p), 0)] within the old one.

    Returns:
        The calibrated model bytes with narrowed ranges.
    """
    from ..device.litert import make_interpreter

    s = _schema()
    buf = bytearray(calibrated)
    sg = s.Model.GetRootAs(buf, 0).Subgraphs(0)
    tensors = range_tensors(calibrated)
    it = make_interpreter(calibrated, preserve_all_tensors=True)
    inp = it.get_input_details()[0]["index"]
    values: dict[int, list[np.ndarray]] = {t: [] for t in tensors}
    for r in reps:
        it.set_tensor(inp, np.asarray(r, np.float32)[None])
        it.invoke()
        for t in tensors:
            values[t].append(it.get_tensor(t).ravel().copy())
    for t in tensors:
        v = np.concatenate(values[t])
        q = sg.Tensors(t).Quantization()
        lo, hi = q.MinAsNumpy(), q.MaxAsNumpy()  # writable views into buf
        lo[0] = max(float(lo[0]), min(float(np.percentile(v, 100.0 - percentile)), 0.0))
        hi[0] = min(float(hi[0]), max(float(np.percentile(v, percentile)), 0.0))
    return bytes(buf)


# ---- flatbuffer inspection and the io-quantization edit -------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What a .tflite flatbuffer contains (read without an interpreter)."""

    ops: tuple[str, ...]
    """Operator names, in opcode-table order (``CUSTOM`` for a custom op, ``FLEX_...`` never expected)."""
    custom_ops: tuple[str, ...]
    """Custom op codes (must be empty for a builtin-only model)."""
    tensor_types: tuple[str, ...]
    """Sorted distinct tensor element types (``INT8``, ``INT32`` for biases, ``FLOAT32``, ...)."""
    n_subgraphs: int
    """Number of subgraphs (1 for these models)."""


def model_info(tflite: bytes) -> ModelInfo:
    """Read op codes and tensor types from .tflite bytes."""
    s = _schema()
    m = s.Model.GetRootAs(bytearray(tflite), 0)
    op_names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    ops, custom = [], []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        ops.append(op_names.get(code, str(code)))
        if oc.CustomCode():
            custom.append(oc.CustomCode().decode())
    types = set()
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        for t in range(sg.TensorsLength()):
            types.add(type_names.get(sg.Tensors(t).Type(), str(sg.Tensors(t).Type())))
    return ModelInfo(tuple(ops), tuple(custom), tuple(sorted(types)), m.SubgraphsLength())


def check_int8_builtin(tflite: bytes, name: str) -> ModelInfo:
    """Raise :class:`ExportError` unless every op is a builtin and every tensor is int8 (int32 biases).

    Returns:
        The model's :class:`ModelInfo`.
    """
    info = model_info(tflite)
    if info.custom_ops or "CUSTOM" in info.ops:
        raise ExportError(f"{name}: custom ops {info.custom_ops}; only TFLite builtin int8 ops are allowed")
    bad = set(info.tensor_types) - {"INT8", "INT32"}
    if bad:
        raise ExportError(
            f"{name}: tensors of type {sorted(bad)} in the int8 model (ops {info.ops}): not fully int8"
        )
    if "DEQUANTIZE" in info.ops or "QUANTIZE" in info.ops:
        raise ExportError(
            f"{name}: (de)quantize ops {info.ops}: input/output should be int8 with no conversion"
        )
    return info


def io_quant(tflite: bytes, which: str) -> QuantParams:
    """The (scale, zero point) of the single graph ``input`` or ``output`` as stored in the flatbuffer."""
    t = _io_tensor(bytearray(tflite), which)
    q = t.Quantization()
    if q is None or q.ScaleLength() != 1:
        raise ExportError(f"graph {which} is not per-tensor quantized")
    return QuantParams(float(q.ScaleAsNumpy()[0]), int(q.ZeroPointAsNumpy()[0]), "int8")


def set_io_quant(tflite: bytes, which: str, qp: QuantParams) -> bytes:
    """Overwrite the quantization of the graph ``input`` or ``output`` tensor; every other byte is unchanged.

    Args:
        tflite: Model bytes (int8 tensor with per-tensor quantization at that end).
        which: ``"input"`` or ``"output"``.
        qp: New parameters (scale stored as float32, zero point as int64, as the schema does).

    Returns:
        The edited model bytes.
    """
    qp.validate()
    buf = bytearray(tflite)
    t = _io_tensor(buf, which)
    q = t.Quantization()
    if q is None or q.ScaleLength() != 1 or q.ZeroPointLength() != 1:
        raise ExportError(f"graph {which} is not per-tensor quantized; cannot set its quantization")
    scale, zp = q.ScaleAsNumpy(), q.ZeroPointAsNumpy()  # writable views into buf
    if which == "input":
        _rescale_input_biases(buf, float(scale[0]), float(np.float32(qp.scale)))
    scale[0] = np.float32(qp.scale)
    zp[0] = int(qp.zero_point)
    return bytes(buf)


def _rescale_input_biases(buf: bytearray, old_scale: float, new_scale: float) -> int:
    """Re-express the int32 biases of the ops reading the graph input for a new input scale.

    An int8 conv / fully-connected bias is stored in units of ``input_scale * weight_scale`` fixed at
    conversion; the kernel adds it to the accumulator as is. When the input scale is overwritten (a forced
    latent quantization on the decoder), the bias values must be rescaled by ``old / new`` or they act
    ``old / new`` times too large or small (a 16-dim latent calibrated at scale 0.024 and forced to 1.0 made
    every first-layer bias 42x too large: int8 PSNR 9 dB instead of 19). Returns the number of biases edited.
    """
    if old_scale <= 0 or new_scale <= 0 or np.float32(old_scale) == np.float32(new_scale):
        return 0
    s = _schema()
    m = s.Model.GetRootAs(buf, 0)
    sg = m.Subgraphs(0)
    graph_in = sg.Inputs(0)
    data_first = {
        s.BuiltinOperator.FULLY_CONNECTED,
        s.BuiltinOperator.CONV_2D,
        s.BuiltinOperator.DEPTHWISE_CONV_2D,
    }
    ratio = old_scale / new_scale
    edited = 0
    for o in range(sg.OperatorsLength()):
        op = sg.Operators(o)
        if _builtin_code(m, op) not in data_first or op.Inputs(0) != graph_in:
            continue
        bias = _int32_bias(m, sg, op)
        if bias is None:
            continue
        values, bscale = bias
        values[:] = np.clip(np.rint(values.astype(np.float64) * ratio), -(2**31), 2**31 - 1).astype(np.int32)
        bscale[:] = (bscale.astype(np.float64) / ratio).astype(np.float32)
        edited += 1
    return edited


def _builtin_code(m, op) -> int:
    """The builtin operator code of ``op`` (newer schemas keep codes > 127 out of the deprecated field)."""
    code = m.OperatorCodes(op.OpcodeIndex())
    return max(code.BuiltinCode(), code.DeprecatedBuiltinCode())


def _int32_bias(m, sg, op) -> tuple[np.ndarray, np.ndarray] | None:
    """Writable views ``(int32 values, float32 per-channel scales)`` of ``op``'s bias (input 2), or ``None``
    when it has no quantized int32 bias with data."""
    s = _schema()
    if op.InputsLength() < 3 or op.Inputs(2) < 0:
        return None
    bias = sg.Tensors(op.Inputs(2))
    bq = bias.Quantization()
    if bias.Type() != s.TensorType.INT32 or bq is None or bq.ScaleLength() == 0:
        return None
    data = m.Buffers(bias.Buffer()).DataAsNumpy()
    if isinstance(data, int) or data.size == 0:
        return None
    return data.view(np.int32), bq.ScaleAsNumpy()


def correct_output_bias(
    tflite: bytes, images_u8: np.ndarray, target: np.ndarray, rounds: int = 2
) -> tuple[bytes, dict]:
    """Bias correction of an int8 encoder's last layer: make its mean output match the float model's.

    Post-training quantization does not only add noise; it shifts each output channel's mean (rounding of
    weights and of every upstream activation is not zero-mean per channel). On an RD model's integer latent
    the shift averaged 0.42 and reached 1.5 latent steps, so the int8 encoder rounded to the wrong integer far
    more often than noise alone would make it. The fix (as in data-free quantization, Nagel et al. 2019, here
    measured on training images): run the int8 model, take the per-channel mean of (int8 output - float
    output) and subtract it from the int32 bias of the op that writes the graph output, in that bias's own
    per-channel units. Repeated ``rounds`` times (the second pass removes what rounding of the first left).

    Args:
        tflite: int8 encoder bytes (graph output written by FULLY_CONNECTED or CONV_2D with an int32 bias).
        images_u8: Training images (N, 28, 28) uint8.
        target: The float model's outputs for those images, (N, D), in real units (before any rounding).

    Returns:
        ``(model bytes, {"mean_abs_shift_before", "mean_abs_shift_after", "max_abs_shift_before", ...})``;
        the bytes are unchanged when the output op has no int32 bias.
    """
    s = _schema()
    target = np.asarray(target, np.float64)
    buf = bytearray(tflite)
    m = s.Model.GetRootAs(buf, 0)
    sg = m.Subgraphs(0)
    out_idx = sg.Outputs(0)
    biased = {s.BuiltinOperator.FULLY_CONNECTED, s.BuiltinOperator.CONV_2D}
    bias = None
    for o in range(sg.OperatorsLength()):
        op = sg.Operators(o)
        if op.Outputs(0) == out_idx and _builtin_code(m, op) in biased:
            bias = _int32_bias(m, sg, op)
    oq = io_quant(tflite, "output")
    stats: dict = {"rounds": 0}
    if bias is None or len(bias[0]) != target.shape[-1]:
        return tflite, stats
    values, bias_scale = bias[0], bias[1].astype(np.float64)
    for r in range(rounds + 1):
        shift = (dequantize(run_int8_encoder(bytes(buf), images_u8), oq) - target).mean(axis=0)
        if r == 0:
            stats["mean_abs_shift_before"] = float(np.abs(shift).mean())
            stats["max_abs_shift_before"] = float(np.abs(shift).max())
        if r == rounds:
            break
        step = np.rint(shift / np.broadcast_to(bias_scale, shift.shape))
        values[:] = np.clip(values.astype(np.int64) - step.astype(np.int64), -(2**31), 2**31 - 1)
    stats.update(
        rounds=rounds,
        mean_abs_shift_after=float(np.abs(shift).mean()),
        max_abs_shift_after=float(np.abs(shift).max()),
        images=int(len(images_u8)),
    )
    return bytes(buf), stats


LOGIT_CLIP = 8.0
"""Widest real range kept for the sigmoid's int8 input (sigmoid(-8) * 255 < 0.1, sigmoid(8) * 255 > 254.9);
where the LOGISTIC's output quantization says where its int8 output saturates, the range is cut there
instead (:func:`logistic_saturation`)."""

LOGIT_MARGIN = 0.05
"""Logits kept beyond the saturation points, so that the clipped end still rounds to the saturated output
in every kernel's table (at the point itself the output is half-way between two levels)."""


def logistic_saturation(scale: float, zero_point: int, margin: float = LOGIT_MARGIN) -> tuple[float, float]:
    """The logits ``[lo, hi]`` outside which an int8 sigmoid with output quantization (``scale``,
    ``zero_point``) gives its lowest or highest level whatever the input: below ``lo`` the output rounds to
    -128, above ``hi`` to 127. For TFLite's fixed (1/256, -128): ``[-6.24, 5.13]`` widened by ``margin``.
    The int8 logits need no range beyond it (an output pixel cannot move there), which is 0.72 of the
    ``[-8, 8]`` cut this replaced: a 28 % finer step where pixels are mid-grey."""
    lo_p = scale * (-128 + 0.5 - zero_point)
    hi_p = scale * (127 - 0.5 - zero_point)
    if not 0.0 < lo_p < hi_p < 1.0:
        return -LOGIT_CLIP, LOGIT_CLIP
    lo, hi = float(np.log(lo_p / (1 - lo_p))) - margin, float(np.log(hi_p / (1 - hi_p))) + margin
    return max(lo, -LOGIT_CLIP), min(hi, LOGIT_CLIP)


def tighten_logistic_inputs(tflite: bytes) -> tuple[bytes, int]:
    """Narrow the calibrated range of every LOGISTIC op's int8 input to where its output can still change
    (:func:`logistic_saturation` of its output quantization), and where an
    ADD makes that input (a linear path's logits plus the convolutions'), the ADD's two inputs as well.

    Calibration keeps the full min/max of the decoder's pre-sigmoid logits (e.g. [-89, 4.4]: background
    pixels far in the saturated tail), which makes the int8 step ~0.37 logits, about 23 grey levels at
    mid-grey. Everything below the lower cut is 0 after the sigmoid anyway, so the range is cut there and the
    producing op saturates into it (its requantization multiplier is derived from these parameters at
    Prepare time, like the LOGISTIC kernel's input table). Only scales and zero points are rewritten.

    The two halves of a sum ``a + b`` whose result is cut to ``[L, H]`` need no more than
    ``[L - max b, H - min a]`` for ``a`` (and the mirror for ``b``): below that, ``a + b`` lies under ``L``
    whatever ``b`` is, so the sum saturates either way, and both halves cannot leave their cut ranges in
    opposite directions at once (that would need ``a + b`` below ``L`` and above ``H``). mnist-xxl: the
    convolutions' logits [-40, 6] and the linear path's [-20, 3] had steps of 0.18 and 0.09 logits; cut to
    [-11, 6] and [-14, 3], both 0.07. Tensors a RESHAPE passes through unchanged (the linear path's
    FULLY_CONNECTED output) take the same parameters.

    Returns:
        ``(model bytes, number of tensors changed)``.
    """
    s = _schema()
    buf = bytearray(tflite)
    m = s.Model.GetRootAs(buf, 0)
    codes = [
        max(m.OperatorCodes(i).BuiltinCode(), m.OperatorCodes(i).DeprecatedBuiltinCode())
        for i in range(m.OperatorCodesLength())
    ]
    changed = 0
    for g in range(m.SubgraphsLength()):
        graph = _Int8Graph(s, m.Subgraphs(g), codes)
        for op in graph.ops:
            if graph.code(op) != s.BuiltinOperator.LOGISTIC or graph.quant(op.Inputs(0)) is None:
                continue
            t = op.Inputs(0)
            out = graph.quant(op.Outputs(0))
            lo_cut, hi_cut = (
                (-LOGIT_CLIP, LOGIT_CLIP)
                if out is None
                else logistic_saturation(float(out[0][0]), int(out[1][0]))
            )
            changed += graph.narrow(t, lo_cut, hi_cut)
            add = graph.maker.get(t)
            if add is None or graph.code(add) != s.BuiltinOperator.ADD or add.InputsLength() != 2:
                continue
            a, b = add.Inputs(0), add.Inputs(1)
            if a == b or graph.quant(a) is None or graph.quant(b) is None:
                continue
            cut_a, cut_b = sum_input_cuts(graph.span(t), graph.span(a), graph.span(b))
            changed += graph.narrow(a, *cut_a)
            changed += graph.narrow(b, *cut_b)
    return bytes(buf), changed


def sum_input_cuts(
    total: tuple[float, float], a: tuple[float, float], b: tuple[float, float]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The cuts for the two inputs (ranges ``a``, ``b``) of a sum whose result is cut to ``total = [L, H]``:
    ``[L - max b, H - min a]`` for ``a`` and the mirror for ``b`` (see :func:`tighten_logistic_inputs`)."""
    return (total[0] - b[1], total[1] - a[0]), (total[0] - a[1], total[1] - b[0])


def narrowed_range(lo: float, hi: float, lo_cut: float, hi_cut: float) -> tuple[float, float] | None:
    """The int8 range ``[lo, hi]`` cut to ``[lo_cut, hi_cut]``, 0 kept inside; None where it already lies
    within the cut up to one int8 step (zero-point rounding)."""
    step = (hi - lo) / 255.0
    if lo >= lo_cut - step and hi <= hi_cut + step:
        return None
    return min(max(lo, lo_cut), 0.0), max(min(hi, hi_cut), 0.0)


class _Int8Graph:
    """One subgraph of a flatbuffer being edited in place: its ops, which op makes each tensor, and the
    per-tensor int8 quantization of a tensor as writable views into the buffer."""

    def __init__(self, schema, sg, codes: list[int]) -> None:
        self.s, self.sg, self.codes = schema, sg, codes
        self.ops = [sg.Operators(o) for o in range(sg.OperatorsLength())]
        self.maker = {op.Outputs(k): op for op in self.ops for k in range(op.OutputsLength())}

    def code(self, op) -> int:
        return self.codes[op.OpcodeIndex()]

    def quant(self, t: int):
        """``(scale, zero point)`` views of an int8 per-tensor quantized tensor, else None."""
        tensor = self.sg.Tensors(t)
        q = tensor.Quantization()
        if tensor.Type() != self.s.TensorType.INT8 or q is None or q.ScaleLength() != 1:
            return None
        return q.ScaleAsNumpy(), q.ZeroPointAsNumpy()

    def span(self, t: int) -> tuple[float, float]:
        """The real values int8 tensor ``t`` can hold."""
        scale, zp = self.quant(t)
        return float(scale[0]) * (-128 - int(zp[0])), float(scale[0]) * (127 - int(zp[0]))

    def narrow(self, t: int, lo_cut: float, hi_cut: float) -> int:
        """Cut tensor ``t`` (and what a RESHAPE feeds it from) to ``[lo_cut, hi_cut]``, keeping 0 inside;
        1 if it changed."""
        cut = narrowed_range(*self.span(t), lo_cut, hi_cut)
        if cut is None:
            return 0
        new_lo, new_hi = cut
        new_scale = np.float32((new_hi - new_lo) / 255.0)
        new_zp = int(np.clip(np.round(-128 - new_lo / float(new_scale)), -128, 127))
        op, tensors = self.maker.get(t), [t]
        while op is not None and self.code(op) == self.s.BuiltinOperator.RESHAPE and self.quant(op.Inputs(0)):
            tensors.append(op.Inputs(0))
            op = self.maker.get(op.Inputs(0))
        for u in tensors:
            u_scale, u_zp = self.quant(u)
            u_scale[0], u_zp[0] = new_scale, new_zp
        return 1


def _io_tensor(buf: bytearray, which: str):
    s = _schema()
    m = s.Model.GetRootAs(buf, 0)
    if m.SubgraphsLength() != 1:
        raise ExportError(f"model has {m.SubgraphsLength()} subgraphs, expected 1")
    sg = m.Subgraphs(0)
    if which == "input":
        n, idx = sg.InputsLength(), sg.Inputs(0) if sg.InputsLength() else -1
    elif which == "output":
        n, idx = sg.OutputsLength(), sg.Outputs(0) if sg.OutputsLength() else -1
    else:
        raise ValueError(f"which={which!r}: 'input' or 'output'")
    if n != 1:
        raise ExportError(f"model has {n} graph {which}s, expected 1")
    return sg.Tensors(idx)


# ---- the pair -------------------------------------------------------------------------------------------


@dataclass
class ConvertedPair:
    """The four models of a bundle, as bytes, plus the shared latent quantization."""

    encoder: bytes
    """int8 encoder."""
    decoder: bytes
    """int8 decoder (input quantization == ``latent_quant``)."""
    encoder_float: bytes
    """float32 encoder."""
    decoder_float: bytes
    """float32 decoder."""
    latent_quant: QuantParams
    """Quantization of the latent, identical for encoder output and decoder input."""
    decoder_model: object = None
    """The Keras decoder that was converted (the adapted copy when ``convert_pair`` got ``adapt``)."""
    bias_correction: dict = field(default_factory=dict)
    """What :func:`correct_output_bias` measured and did (empty when off)."""
    range_search: dict = field(default_factory=dict)
    """What the activation-range searches found: ``{"encoder": ..., "decoder": ...}``
    (:class:`RangeSearch` as dicts; empty when off)."""


def run_int8_encoder(tflite: bytes, images_u8: np.ndarray, kernels: str = "xnnpack") -> np.ndarray:
    """Run an int8 encoder (bytes) on uint8 images (N, 28, 28) → int8 latents (N, latent_dim).

    ``kernels``: ``"xnnpack"`` (LiteRT's default), ``"builtin"`` (LiteRT without delegate) or ``"micro"``
    (tflite-micro); see :mod:`cae_edge.device.litert`.
    """
    from ..device.litert import make_interpreter
    from ..quant import pixels_to_int8

    it = make_interpreter(tflite, kernels=kernels)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = np.empty((len(images_u8), int(o["shape"][-1])), np.int8)
    for n, img in enumerate(images_u8):
        it.set_tensor(i["index"], pixels_to_int8(img).reshape(i["shape"]))
        it.invoke()
        out[n] = it.get_tensor(o["index"])[0]
    return out


def convert_encoder(
    encoder1,
    calib: np.ndarray,
    latent_quant: QuantParams | None = None,
    percentile: float | None = DEFAULT_PERCENTILE,
    search: tuple[Callable[[bytes], bytes], Callable[[bytes], float]] | None = None,
    search_report: RangeSearch | None = None,
    progress: Progress | None = None,
) -> bytes:
    """The int8 encoder: PTQ on ``calib``, input quantization the raw pixel byte's (1/255, -128).

    Args:
        encoder1: Keras encoder with batch size 1 (:func:`rebuild_batch1`, or :func:`fuse_linear_path`'s).
        calib: Calibration images, float32 (N, 28, 28, 1) in [0, 1].
        latent_quant: Force this output quantization; ``None`` keeps the calibrated one.
        percentile: Activation-range percentile (:func:`convert_int8`).
        search: ``(after, error)``: search the activation ranges (:func:`~cae_edge.export.rangesearch.
            search_ranges`) for the least ``error(after(model))``, ``after`` being what the caller does to
            the returned model (the bias correction); ``None``: the percentile ranges.
        search_report: Filled in with what that search found.
        progress: Optional callback ``(what, done, total)`` (the range search reports through it).
    """

    def finish(q: bytes) -> bytes:
        q = set_io_quant(q, "input", QuantParams(float(PIXEL_SCALE), PIXEL_ZERO_POINT))
        return q if latent_quant is None else set_io_quant(q, "output", latent_quant)

    refine = None
    if search is not None:
        after, error = search
        refine = refiner(lambda q: after(finish(q)), error, search_report, progress, "int8 encoder")
    return finish(convert_int8(encoder1, calib, percentile, refine))


def convert_decoder(
    decoder1,
    latents: np.ndarray,
    lq: QuantParams,
    percentile: float | None = DEFAULT_PERCENTILE,
    equalize: bool = False,
    search_targets: np.ndarray | None = None,
    search_report: RangeSearch | None = None,
    progress: Progress | None = None,
) -> tuple[bytes, bytes]:
    """The decoder's two models: int8 (PTQ on ``latents``, input quantization ``lq``) and float32.

    Args:
        decoder1: Keras decoder with batch size 1 (:func:`rebuild_batch1`).
        latents: Calibration latents, dequantized: the int8 encoder's outputs on calibration images.
        lq: The encoder's output quantization, written onto the decoder's input.
        percentile: Activation-range percentile (:func:`convert_int8`).
        equalize: Quantize a channel-equalized copy (:mod:`cae_edge.export.equalize`); the float32 model
            keeps the weights as trained.
        search_targets: The images (uint8, N × 28 × 28) whose int8 latents ``latents`` are: search each
            activation range for the int8 decoder whose images come closest to them
            (:func:`~cae_edge.export.rangesearch.search_ranges`); ``None``: the percentile ranges as they are.
        search_report: Filled in with what that search found (its ``objective`` set here).
        progress: Optional callback ``(what, done, total)`` (the range search reports through it).

    Returns:
        ``(int8 bytes, float32 bytes)``.
    """
    quantized = equalized_copy(decoder1, latents, percentile or 100.0)[0] if equalize else decoder1

    def finish(q: bytes) -> bytes:
        return tighten_logistic_inputs(set_io_quant(q, "input", lq))[0]

    refine = None
    if search_targets is not None:
        latents_q = quantize_values(latents, lq)
        if search_report is not None:
            search_report.objective = DECODER_OBJECTIVE
        refine = refiner(
            finish,
            lambda m: decode_error(m, latents_q, search_targets),
            search_report,
            progress,
            "int8 decoder",
        )
    return finish(convert_int8(quantized, latents, percentile, refine)), convert_float(decoder1)


def convert_pair(
    encoder,
    decoder,
    cfg,
    calib_images_u8: np.ndarray,
    latent_quant: QuantParams | None = None,
    progress: Progress | None = None,
    adapt: Callable[[bytes, QuantParams], object] | None = None,
    bias_correction: bool = True,
    percentile: float | None = DEFAULT_PERCENTILE,
    equalize: bool = True,
    range_search: bool = False,
) -> ConvertedPair:
    """Convert a trained encoder/decoder into the four bundle models.

    Args:
        encoder: Trained Keras encoder (any batch size).
        decoder: Trained Keras decoder.
        cfg: Their :class:`~cae_edge.train.model.ModelConfig`.
        calib_images_u8: Calibration images from the training split, uint8 (N, 28, 28).
        latent_quant: Force this latent quantization (e.g. scale 1.0, zero point 0 for a model trained with
            integer-rounded latents); ``None`` keeps what calibration of the encoder output found.
        progress: Optional callback ``(what, done, total)``.
        adapt: Optional ``(int8 encoder bytes, latent quantization) -> Keras decoder``, called once the int8
            encoder exists; the decoder it returns (e.g. fine-tuned on that encoder's latents, see
            :mod:`cae_edge.export.adapt`) is converted instead of ``decoder``.
        bias_correction: Remove the int8 encoder's per-channel mean output shift on the calibration images
            (:func:`correct_output_bias`), before the decoder sees any int8 latent.
        percentile: Activation-range percentile of both int8 conversions (:func:`convert_int8`).
        equalize: Channel-equalize both models before PTQ (:mod:`cae_edge.export.equalize`).
        range_search: Search both int8 models' activation ranges on the calibration images
            (:mod:`cae_edge.export.rangesearch`): the encoder's for latents closest to the float
            encoder's, the decoder's for images closest to the originals.

    Returns:
        The :class:`ConvertedPair`.

    Raises:
        ExportError: the converter produced something that is not a builtin-only int8 model.
    """
    from ..train.model import build_decoder, build_encoder

    step = progress or (lambda what, done, total: None)
    enc1 = rebuild_batch1(encoder, build_encoder, cfg)
    x = (np.asarray(calib_images_u8, np.float32) / 255.0)[..., None]

    step("convert float encoder", 0, 4)
    enc_float = convert_float(enc1)

    step("int8 encoder (PTQ)", 1, 4)
    # equalized before fusing: the fused model's last features reach the Dense through a Concatenate
    enc_src = equalized_copy(enc1, x, percentile or 100.0)[0] if equalize else enc1
    y = np.asarray(enc1(x)) if bias_correction or range_search else None  # the float latents

    def corrected(q: bytes) -> tuple[bytes, dict]:
        return correct_output_bias(q, calib_images_u8, y) if bias_correction else (q, {})

    searched_enc = RangeSearch(objective=ENCODER_OBJECTIVE) if range_search else None
    enc_q = convert_encoder(
        fuse_linear_path(enc_src, cfg, x) if cfg.linear_skip else enc_src,
        x,
        latent_quant,
        percentile,
        search=(
            (lambda q: corrected(q)[0], lambda q: latent_error(q, calib_images_u8, y))
            if range_search
            else None
        ),
        search_report=searched_enc,
        progress=progress,
    )
    lq = io_quant(enc_q, "output")
    if bias_correction:
        step("int8 encoder bias correction", 1, 4)
    enc_q, bias_stats = corrected(enc_q)

    step("int8 decoder (PTQ on the int8 encoder's latents)", 2, 4)
    try:
        latents = dequantize(run_int8_encoder(enc_q, np.asarray(calib_images_u8)), lq)
    except BundleError as e:
        raise ExportError(
            f"the int8 encoder does not run with latent quantization {lq.to_dict()}: {e}"
        ) from e
    if adapt is not None:
        decoder = adapt(enc_q, lq)
    searched = RangeSearch() if range_search else None
    dec_q, dec_float = convert_decoder(
        rebuild_batch1(decoder, build_decoder, cfg),
        latents,
        lq,
        percentile,
        equalize,
        search_targets=np.asarray(calib_images_u8) if range_search else None,
        search_report=searched,
        progress=progress,
    )

    step("check", 3, 4)
    check_int8_builtin(enc_q, "encoder.tflite")
    check_int8_builtin(dec_q, "decoder.tflite")
    if not io_quant(dec_q, "input").same_as(lq):
        raise ExportError(f"decoder input quantization {io_quant(dec_q, 'input')} != encoder output {lq}")
    step("converted", 4, 4)
    searches = {"encoder": searched_enc.to_dict(), "decoder": searched.to_dict()} if range_search else {}
    return ConvertedPair(enc_q, dec_q, enc_float, dec_float, lq, decoder, bias_stats, searches)
