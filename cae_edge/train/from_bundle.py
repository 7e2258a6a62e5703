"""Keras models back from a bundle's float TFLite files: where ``train --init-from BUNDLE`` starts.

A shipped bundle has no run directory, only its four ``.tflite`` files and the manifest. The manifest's
``train.model`` block is the architecture (:class:`~cae_edge.rundir.ModelConfig`); the float pair
(``encoder_float.tflite`` / ``decoder_float.tflite``) holds the float weights exactly, one TFLite op per
Keras layer with weights, in the same order::

    encoder_float.tflite: CONV_2D x5 ─ FULLY_CONNECTED         ─► Conv2D x5, Dense      (build_encoder)
    decoder_float.tflite: FULLY_CONNECTED ─ TRANSPOSE_CONV x4   ─► Dense, Conv2DTranspose x4 (build_decoder)

    TFLite layout                    Keras layout
    CONV_2D          (O, H, W, I)  ─► Conv2D          (H, W, I, O)
    TRANSPOSE_CONV   (O, H, W, I)  ─► Conv2DTranspose (H, W, O, I)
    FULLY_CONNECTED  (O, I)        ─► Dense           (I, O)

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
"""TFLite ops that carry a Keras layer's kernel and bias."""


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


def tflite_weights(model: str | Path | bytes) -> list[tuple[str, list[np.ndarray]]]:
    """The weight-carrying ops of a float TFLite model, in graph order: ``(op name, [weights, bias])``.

    Weights are in TFLite layout (see the module docstring).

    Raises:
        BundleError: the file is not a float model of this family (quantized weights, or an op with no
            bias).
    """
    from ..device.litert import make_interpreter

    it = make_interpreter(model, xnnpack=False)
    details = {t["index"]: t for t in it.get_tensor_details()}
    out = []
    for op in it._get_ops_details():
        name = op["op_name"]
        if name not in WEIGHT_OPS:
            continue
        ins = [int(i) for i in op["inputs"]]
        w_idx, b_idx = (
            (ins[1], ins[3] if len(ins) > 3 else -1) if name == "TRANSPOSE_CONV" else (ins[1], ins[2])
        )
        if w_idx < 0 or b_idx < 0:
            raise BundleError(f"{name} without weights or bias: not a model exported by cae-edge")
        if details[w_idx]["dtype"] != np.float32:
            raise BundleError(
                f"{name} weights are {np.dtype(details[w_idx]['dtype']).name}: give the float model "
                "(encoder_float.tflite / decoder_float.tflite), not the int8 one"
            )
        out.append((name, [np.array(it.get_tensor(w_idx)), np.array(it.get_tensor(b_idx))]))
    return out


def to_keras_layout(op: str, weights: np.ndarray) -> np.ndarray:
    """One op's weight tensor from TFLite layout to the Keras layer's kernel layout."""
    if op == "CONV_2D":
        return weights.transpose(1, 2, 3, 0)
    if op == "TRANSPOSE_CONV":
        return weights.transpose(1, 2, 0, 3)
    if op == "FULLY_CONNECTED":
        return weights.T
    raise ValueError(f"op {op!r} carries no Keras weights")


def load_tflite_weights(model, tflite: str | Path | bytes, what: str = "model") -> int:
    """Copy a float TFLite model's weights into the Keras ``model`` built for the same architecture.

    Returns:
        The number of layers set.

    Raises:
        BundleError: the layer count or a shape does not match (the manifest's model config is not the
            architecture of the file).
    """
    ops = tflite_weights(tflite)
    layers = [layer for layer in model.layers if layer.weights]
    if len(ops) != len(layers):
        raise BundleError(
            f"{what}: {len(ops)} weight layers in the TFLite file, {len(layers)} in the Keras model of the "
            "manifest's model config"
        )
    for (op, (w, b)), layer in zip(ops, layers, strict=True):
        kernel = to_keras_layout(op, w)
        shapes = [tuple(v.shape) for v in layer.weights]
        if shapes != [kernel.shape, b.shape]:
            raise BundleError(
                f"{what}: layer {layer.name} has weights {shapes}, the TFLite {op} has "
                f"{[kernel.shape, b.shape]}"
            )
        layer.set_weights([kernel, b])
    return len(layers)


def models_from_bundle(start: StartPoint, batch_size: int | None = None) -> tuple[Any, Any]:
    """Rebuild a bundle's float encoder and decoder as Keras models (imports Keras).

    Raises:
        BundleError: the float files are missing or do not fit the manifest's model config.
    """
    from .model import build_decoder, build_encoder

    if start.kind != "bundle":
        raise ConfigError(f"{start.path}: a {start.kind}, not a bundle")
    encoder = build_encoder(start.model, batch_size)
    decoder = build_decoder(start.model, batch_size)
    load_start(start, encoder, decoder)
    return encoder, decoder


def load_start(start: StartPoint, encoder, decoder) -> dict:
    """Copy the start's weights into freshly built ``encoder`` and ``decoder`` (same architecture).

    A run directory gives its Keras models; a bundle its float TFLite files.

    Returns:
        What the run records of its start: ``kind``, ``name``, ``notes``.

    Raises:
        ConfigError: the run cannot be loaded or its architecture differs.
        BundleError: the bundle's float files are missing or do not fit.
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
        for model, file in ((encoder, "encoder_float.tflite"), (decoder, "decoder_float.tflite")):
            path = start.path / file
            if not path.is_file():
                raise BundleError(f"{path}: missing; --init-from needs the bundle's float models")
            load_tflite_weights(model, path, str(path))
    return {"kind": start.kind, "name": start.name, "notes": list(start.notes)}
