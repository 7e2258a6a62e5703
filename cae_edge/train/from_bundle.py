"""Keras models back from a bundle's float TFLite files: where ``train --init-from BUNDLE`` starts.

A shipped bundle has no run directory, only its four ``.tflite`` files and the manifest. The manifest's
``train.model`` block is the architecture (:class:`~cae_edge.rundir.ModelConfig`); the float pair
(``encoder_float.tflite`` / ``decoder_float.tflite``) holds the float weights exactly, one TFLite op per
Keras layer with weights::

    encoder_float.tflite: CONV_2D x5 ─ FULLY_CONNECTED          ─► Conv2D x5, Dense          (build_encoder)
      linear_skip (scenes): + FULLY_CONNECTED, no bias, beside  ─► + Dense(use_bias=False) on the pixels
    decoder_float.tflite: FULLY_CONNECTED ─ TRANSPOSE_CONV x4    ─► Dense, Conv2DTranspose x4 (build_decoder)
      linear_skip (scenes): + FULLY_CONNECTED 784, beside       ─► + Dense(784) on the latent
      head "d2s": FULLY_CONNECTED ─ TRANSPOSE_CONV x2 ─ CONV_2D x2 ─► Dense, Conv2DTranspose x2, Conv2D x2

    TFLite layout                    Keras layout
    CONV_2D          (O, H, W, I)  ─► Conv2D          (H, W, I, O)
    TRANSPOSE_CONV   (O, H, W, I)  ─► Conv2DTranspose (H, W, O, I)
    FULLY_CONNECTED  (O, I)        ─► Dense           (I, O)

Ops and layers are paired by place in the data flow, not by list order: the same op kind at the same depth
(weight layers between the model input and it), and where two share both (the two dense layers reading a
scenes decoder's latent) the same shapes. The converter writes a linear path where it likes, and Keras lists
it where it likes; only the data flow is the same on both sides. After loading, :func:`check_against_tflite`
runs both pairs on the bundle's self-test images (real test images) and names the first layer that differs.

A rate-distortion bundle's manifest also keeps the learned factorized prior of its training run
(``train.rd.prior``: per-dimension logistic location and scale), so fine-tuning continues with it; a bundle
without one (plain int8 bundles) needs none.

Reading the weights uses the LiteRT interpreter (no TensorFlow); building the Keras models imports Keras.
:func:`read_start` (no Keras either) says what an ``--init-from`` path is: a run directory or a bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, ConfigError
from ..rundir import CONFIG_FILE, ModelConfig, RunConfig, read_config

WEIGHT_OPS = ("CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED")
"""TFLite ops that carry a Keras layer's kernel (and its bias, where the layer has one)."""

KERAS_OPS = {"Conv2D": "CONV_2D", "Conv2DTranspose": "TRANSPOSE_CONV", "Dense": "FULLY_CONNECTED"}
"""The TFLite op each weight-carrying Keras layer class becomes."""

CHECK_IMAGES = 16
"""Frames of a run's own training data that check a bundle's rebuilt pair (:func:`load_start`)."""

MAX_DIFF = 1e-3
"""Largest difference between a rebuilt Keras model and its float TFLite file on the bundle's self-test
images, relative to the largest output value (float round-off is ~1e-6; a mis-mapped layer is ~1)."""


@dataclass
class StartPoint:
    """What ``--init-from`` names: a training run directory or a bundle (shipped name or directory)."""

    kind: str
    """``run`` or ``bundle``."""
    path: Path
    """The run or bundle directory."""
    model: ModelConfig
    """The architecture of its models."""
    dataset: str
    """The dataset it was trained on (``mnist``, ``fashion``, or a user dataset's kind)."""
    rd: dict | None = None
    """Its rate-distortion record (lam, lam_final, target_bytes, preset, prior); None for plain models."""
    preprocess: dict | None = None
    """A bundle's manifest ``preprocess`` block (None for a run directory)."""
    name: str = ""
    """How it was named on the command line."""
    notes: list[str] = field(default_factory=list)
    """What could not be carried over (e.g. a missing prior), for the run's record."""

    def instead(self) -> str:
        """What to start from when this one cannot be rebuilt (for error messages)."""
        preset = (self.rd or {}).get("preset")
        afresh = f"train afresh with --preset {preset}" if preset else "train afresh without --init-from"
        return f"start from a training run directory of this architecture (--init-from RUN) or {afresh}"

    @property
    def prior(self) -> dict | None:
        """The learned prior ``{"loc": [...], "scale": [...]}`` when recorded."""
        p = (self.rd or {}).get("prior")
        return p if isinstance(p, dict) and "loc" in p and "scale" in p else None


def read_start(name_or_path: str | Path) -> StartPoint:
    """Say what an ``--init-from`` value is, reading only JSON (no Keras, no interpreter).

    Raises:
        ConfigError: neither a run directory (``config.json``) nor a bundle (``manifest.json``), or a bundle
            whose manifest has no model config.
    """
    s = str(name_or_path)
    path = Path(s).expanduser()
    if (path / CONFIG_FILE).is_file():
        config = read_config(path)
        return StartPoint("run", path, config.model, config.dataset, config.rd, None, s)
    from ..device.bundle import resolve_bundle
    from ..manifest import Manifest

    try:
        bdir = resolve_bundle(s)
        manifest = Manifest.read(bdir)
    except BundleError as e:
        raise ConfigError(
            f"--init-from {s!r}: not a run directory (no {CONFIG_FILE}) and not a bundle ({e})"
        ) from None
    try:
        config = RunConfig.from_dict(manifest.train, f"{bdir}/manifest.json train")
    except ConfigError as e:
        raise ConfigError(f"--init-from {s!r}: the manifest records no usable model config ({e})") from None
    start = StartPoint(
        "bundle",
        bdir,
        config.model,
        str(manifest.dataset.get("name") or config.dataset),
        config.rd,
        dict(manifest.preprocess),
        s,
    )
    if start.rd is not None and start.prior is None:
        start.notes.append("the bundle records no learned prior: the prior starts afresh")
    return start


@dataclass
class WeightOp:
    """One weight-carrying op of a float TFLite model."""

    op: str
    """``CONV_2D``, ``TRANSPOSE_CONV`` or ``FULLY_CONNECTED``."""
    depth: int
    """Weight ops between the model input and this op's data input (0: it reads the input itself)."""
    weights: list[np.ndarray]
    """``[kernel]`` or ``[kernel, bias]`` in TFLite layout (see the module docstring)."""
    tensor: str
    """The kernel tensor's name, for messages."""
    output: int = -1
    """The op's output tensor index (readable after ``invoke`` with ``preserve_all_tensors``)."""


def tflite_weights(model: str | Path | bytes) -> list[WeightOp]:
    """The weight-carrying ops of a float TFLite model, in graph order, each with its depth.

    The depth places an op in the data flow without relying on the order the converter wrote parallel
    branches in (the linear path of a ``linear_skip`` model runs beside the convolutions).

    Raises:
        BundleError: the file is not a float model of this family (quantized weights, an op with no
            weights).
    """
    from ..device.litert import make_interpreter

    it = make_interpreter(model, xnnpack=False)
    details = {t["index"]: t for t in it.get_tensor_details()}
    depth: dict[int, int] = {}  # tensor index -> weight ops upstream (constants and the input: 0)
    out = []
    for op in it._get_ops_details():
        name = op["op_name"]
        ins = [int(i) for i in op["inputs"]]
        if name in WEIGHT_OPS:
            if name == "TRANSPOSE_CONV":  # (output shape, weights, input[, bias])
                data, w_idx, b_idx = ins[2], ins[1], ins[3] if len(ins) > 3 else -1
            else:  # (input, weights[, bias])
                data, w_idx, b_idx = ins[0], ins[1], ins[2] if len(ins) > 2 else -1
            if w_idx < 0:
                raise BundleError(
                    f"{name} op {op['index']} without weights: not a model exported by cae-edge"
                )
            if details[w_idx]["dtype"] != np.float32:
                raise BundleError(
                    f"{name} weights are {np.dtype(details[w_idx]['dtype']).name}: give the float model "
                    "(encoder_float.tflite / decoder_float.tflite), not the int8 one"
                )
            d = depth.get(data, 0)
            weights = [np.array(it.get_tensor(w_idx))]
            if b_idx >= 0:
                weights.append(np.array(it.get_tensor(b_idx)))
            out.append(WeightOp(name, d, weights, str(details[w_idx]["name"]), int(op["outputs"][0])))
            d += 1
        else:
            d = max((depth.get(i, 0) for i in ins if i >= 0), default=0)
        for o in op["outputs"]:
            depth[int(o)] = d
    return out


def keras_weight_layers(model) -> list[tuple[Any, int]]:
    """The weight-carrying layers of a functional Keras model, each with its depth as in
    :func:`tflite_weights` (weight layers between the model input and the layer's input)."""
    memo: dict[int, int] = {}  # id(node) -> weight layers up to and including the node's layer

    def after(node) -> int:
        key = id(node)
        if key not in memo:
            before = max((after(p) for p in node.parent_nodes), default=0)
            memo[key] = before + (1 if node.operation.weights else 0)
        return memo[key]

    depths: dict[int, int] = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.operation.weights:
                depths[id(node.operation)] = max((after(p) for p in node.parent_nodes), default=0)
    return [(layer, depths[id(layer)]) for layer in model.layers if layer.weights]


def to_keras_layout(op: str, weights: np.ndarray) -> np.ndarray:
    """One op's weight tensor from TFLite layout to the Keras layer's kernel layout."""
    if op == "CONV_2D":
        return weights.transpose(1, 2, 3, 0)
    if op == "TRANSPOSE_CONV":
        return weights.transpose(1, 2, 0, 3)
    if op == "FULLY_CONNECTED":
        return weights.T
    raise ValueError(f"op {op!r} carries no Keras weights")


def _keras_weights(op: WeightOp) -> list[np.ndarray]:
    return [to_keras_layout(op.op, op.weights[0]), *op.weights[1:]]


def match_layers(
    model, ops: list[WeightOp], what: str = "model", instead: str = ""
) -> list[tuple[Any, WeightOp]]:
    """Pair each weight-carrying layer of ``model`` with its TFLite op: same op, same depth in the data flow,
    and (where several ops share both, as the two dense layers reading a decoder's latent do) same shapes.

    Raises:
        BundleError: a layer with no op or several, or an op left over; the message names ``what`` (the
            file), the layer, and ``instead`` (what to start from instead).
    """
    fix = f"; {instead}" if instead else ""
    free = list(ops)
    pairs = []
    for layer, depth in keras_weight_layers(model):
        kind = KERAS_OPS.get(type(layer).__name__)
        shapes = [tuple(v.shape) for v in layer.weights]
        cands = [o for o in free if o.op == kind and o.depth == depth]
        if len(cands) > 1:
            cands = [o for o in cands if [w.shape for w in _keras_weights(o)] == shapes]
        if len(cands) != 1:
            found = "no" if not cands else f"{len(cands)} equally shaped"
            raise BundleError(
                f"{what}: layer {layer.name} ({type(layer).__name__} {shapes}, {depth} weight layers from "
                f"the input) has {found} {kind} op{'' if not cands else 's'} at that place in the TFLite "
                f"file, so its weights cannot be told{fix}"
            )
        free.remove(cands[0])
        pairs.append((layer, cands[0]))
    if free:
        raise BundleError(
            f"{what}: {len(free)} weight ops of the TFLite file ({', '.join(o.tensor for o in free)}) have "
            f"no layer in the Keras model of the manifest's model config{fix}"
        )
    return pairs


def load_tflite_weights(model, tflite: str | Path | bytes, what: str = "model", instead: str = "") -> int:
    """Copy a float TFLite model's weights into the Keras ``model`` built for the same architecture.

    Returns:
        The number of layers set.

    Raises:
        BundleError: a layer without its op (see :func:`match_layers`), or a shape that does not match (the
            manifest's model config is not the architecture of the file).
    """
    fix = f"; {instead}" if instead else ""
    pairs = match_layers(model, tflite_weights(tflite), what, instead)
    for layer, op in pairs:
        weights = _keras_weights(op)
        shapes = [tuple(v.shape) for v in layer.weights]
        if shapes != [w.shape for w in weights]:
            raise BundleError(
                f"{what}: layer {layer.name} has weights {shapes}, the TFLite {op.op} ({op.tensor}) has "
                f"{[w.shape for w in weights]}{fix}"
            )
        layer.set_weights(weights)
    return len(pairs)


def models_from_bundle(
    start: StartPoint, batch_size: int | None = None, images: np.ndarray | None = None
) -> tuple[Any, Any]:
    """Rebuild a bundle's float encoder and decoder as Keras models (imports Keras), checked on ``images``
    or the bundle's self-test images (see :func:`load_start`).

    Raises:
        BundleError: the float files are missing or do not fit the manifest's model config.
    """
    from .model import build_decoder, build_encoder

    if start.kind != "bundle":
        raise ConfigError(f"{start.path}: a {start.kind}, not a bundle")
    encoder = build_encoder(start.model, batch_size)
    decoder = build_decoder(start.model, batch_size)
    load_start(start, encoder, decoder, images)
    return encoder, decoder


def load_start(start: StartPoint, encoder, decoder, images: np.ndarray | None = None) -> dict:
    """Copy the start's weights into freshly built ``encoder`` and ``decoder`` (same architecture).

    A run directory gives its Keras models; a bundle its float TFLite files, and the rebuilt pair is then
    checked against them (:func:`check_against_tflite`) on ``images`` ((N, 28, 28) uint8: a few of the
    run's own frames), or on the bundle's self-test images when none are given.

    Returns:
        What the run records of its start: ``kind``, ``name``, ``notes``.

    Raises:
        ConfigError: the run cannot be loaded or its architecture differs.
        BundleError: the bundle's float files are missing or do not fit, or the rebuilt pair does not
            compute what they compute.
    """
    if start.kind == "run":
        from ..rundir import load_run

        try:
            old_enc, old_dec, config = load_run(start.path)
        except ConfigError as e:
            raise ConfigError(f"--init-from {start.name}: cannot load the run ({e})") from None
        if config.model != start.model:  # pragma: no cover - read from the same config.json
            raise ConfigError(f"--init-from {start.name}: model changed while reading")
        encoder.set_weights(old_enc.get_weights())
        decoder.set_weights(old_dec.get_weights())
    else:
        instead = start.instead()
        for model, file in ((encoder, "encoder_float.tflite"), (decoder, "decoder_float.tflite")):
            path = start.path / file
            if not path.is_file():
                raise BundleError(f"{path}: missing; --init-from needs the bundle's float models")
            load_tflite_weights(model, path, f"--init-from {start.name}: {path}", instead)
        check_against_tflite(start, encoder, decoder, images)
    return {"kind": start.kind, "name": start.name, "notes": list(start.notes)}


def selftest_images(start: StartPoint) -> np.ndarray:
    """The bundle's self-test images ((N, 28, 28) uint8 real test images of its dataset).

    Raises:
        BundleError: the bundle has no readable ``selftest.npz``.
    """
    path = start.path / "selftest.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            images = np.asarray(z["images"])
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"{path}: no readable self-test images ({e}); reinstall the bundle") from None
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28) or not len(images):
        raise BundleError(f"{path}: images {images.shape} {images.dtype}, expected (N, 28, 28) uint8")
    return images


def _run_keras(model, x: np.ndarray, outputs: list) -> list[np.ndarray]:
    """The tensors ``outputs`` of ``model`` on ``x``, whatever batch size the model was built for."""
    import keras

    probe = keras.Model(model.input, outputs)
    batch = model.inputs[0].shape[0] or len(x)
    n = len(x)
    x = np.resize(x, (-(-n // batch) * batch, *x.shape[1:]))  # repeated up to whole batches
    parts = [probe(x[i : i + batch], training=False) for i in range(0, len(x), batch)]
    return [
        np.concatenate([keras.ops.convert_to_numpy(p[k]) for p in parts])[:n] for k in range(len(outputs))
    ]


def _run_tflite(path: Path, x: np.ndarray, outputs: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The float TFLite model at ``path`` on ``x`` one item at a time: its output and the tensors
    ``outputs``."""
    from ..device.litert import make_interpreter

    it = make_interpreter(path, preserve_all_tensors=True)
    i_in, i_out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    ys, inner = [], []
    for item in x:
        it.set_tensor(i_in, item[None].astype(np.float32))
        it.invoke()
        ys.append(np.array(it.get_tensor(i_out))[0])
        inner.append([np.array(it.get_tensor(o))[0] for o in outputs])
    return np.stack(ys), [np.stack(t) for t in zip(*inner, strict=True)]


def compare_to_tflite(model, path: Path, x: np.ndarray) -> tuple[float, str]:
    """How far the Keras ``model`` is from the float TFLite file at ``path`` on inputs ``x``.

    Returns:
        The largest output difference relative to the largest output value, and the first weight layer
        (in data-flow order) whose own output already differs by more than :data:`MAX_DIFF` ("" when none
        does; a layer with its activation built in, such as a sigmoid output layer, is judged by the
        model output alone).
    """
    import keras

    pairs = sorted(match_layers(model, tflite_weights(path)), key=lambda p: p[1].depth)
    plain = [(la, op) for la, op in pairs if la.activation is keras.activations.linear]
    y_lite, inner_lite = _run_tflite(path, x, [op.output for _, op in plain])
    y_keras, *inner_keras = _run_keras(model, x, [model.output, *(la.output for la, _ in plain)])
    diff = float(np.abs(y_keras - y_lite).max() / max(float(np.abs(y_lite).max()), 1e-6))
    for (layer, _), a, b in zip(plain, inner_keras, inner_lite, strict=True):
        if np.abs(a.reshape(b.shape) - b).max() > MAX_DIFF * max(float(np.abs(b).max()), 1e-6):
            return diff, layer.name
    return diff, (pairs[-1][0].name if diff > MAX_DIFF and pairs else "")


def check_against_tflite(start: StartPoint, encoder, decoder, images: np.ndarray | None = None) -> dict:
    """Check that the Keras pair rebuilt from a bundle computes what its float TFLite pair computes.

    The encoder runs on ``images`` ((N, 28, 28) uint8; default: the bundle's self-test images, real test
    images of its dataset), the decoder on the latents the TFLite encoder made of them.

    Returns:
        ``{"encoder": diff, "decoder": diff}``: the largest output differences, relative to the largest
        output value.

    Raises:
        BundleError: a difference above :data:`MAX_DIFF`, naming the bundle, the first layer that differs
            and what to start from instead; no images given and no ``selftest.npz`` in the bundle.
    """
    images = selftest_images(start) if images is None or not len(images) else images
    x = (images.astype(np.float32) / 255.0)[..., None]
    y_enc, _ = _run_tflite(start.path / "encoder_float.tflite", x, [])
    found = {}
    for role, model, inputs in (("encoder", encoder, x), ("decoder", decoder, y_enc)):
        file = f"{role}_float.tflite"
        diff, layer = compare_to_tflite(model, start.path / file, inputs)
        if diff > MAX_DIFF or layer:
            raise BundleError(
                f"--init-from {start.name}: the Keras {role} rebuilt from {start.path / file} differs "
                f"from it by {diff:.3g} (relative) on {len(images)} real images, first at layer {layer}: "
                f"its weights were mis-mapped; {start.instead()}"
            )
        found[role] = diff
    return found
