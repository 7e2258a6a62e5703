"""The one place that imports a TFLite interpreter: ``ai_edge_litert`` first, then ``tflite_runtime``.

A Raspberry Pi gets either with pip (``pip install ai-edge-litert`` or the older ``tflite-runtime``); neither
needs TensorFlow. Everything else in cae-edge calls :func:`make_interpreter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BundleError, RuntimeMissingError

TFLITE_IDENTIFIER = b"TFL3"
"""FlatBuffer file identifier of a .tflite model, at bytes 4..8."""
MIN_MODEL_BYTES = 32

_BACKEND: tuple[str, Any] | None = None


def _load_backend() -> tuple[str, Any]:
    global _BACKEND
    if _BACKEND is None:
        errors = []
        try:
            from ai_edge_litert.interpreter import Interpreter

            _BACKEND = ("ai_edge_litert", Interpreter)
        except ImportError as e:
            errors.append(f"ai_edge_litert: {e}")
            try:
                from tflite_runtime.interpreter import Interpreter

                _BACKEND = ("tflite_runtime", Interpreter)
            except ImportError as e2:
                errors.append(f"tflite_runtime: {e2}")
                raise RuntimeMissingError(
                    "no TFLite interpreter installed (" + "; ".join(errors) + "); "
                    "run `pip install ai-edge-litert` (or `pip install 'cae-edge[device]'`)"
                ) from None
    return _BACKEND


def backend_name() -> str:
    """Name of the interpreter package in use (``ai_edge_litert`` or ``tflite_runtime``)."""
    return _load_backend()[0]


def check_model_bytes(data: bytes, name: str = "model") -> None:
    """Cheap sanity checks before bytes reach the interpreter (which may crash on garbage).

    Args:
        data: The .tflite file content.
        name: File name for the error message.

    Raises:
        BundleError: too small to be a model, or no ``TFL3`` identifier at bytes 4..8.
    """
    if len(data) < MIN_MODEL_BYTES:
        raise BundleError(
            f"{name}: {len(data)} bytes is too small to be a TFLite model (truncated or empty?)"
        )
    if data[4:8] != TFLITE_IDENTIFIER:
        raise BundleError(
            f"{name}: not a TFLite flatbuffer "
            f"(bytes 4..8 are {bytes(data[4:8])!r}, expected {TFLITE_IDENTIFIER!r})"
        )
    root = int.from_bytes(data[0:4], "little")
    if root < 8 or root >= len(data):
        raise BundleError(
            f"{name}: flatbuffer root offset {root} outside the {len(data)}-byte file (corrupt)"
        )


def make_interpreter(
    model: str | Path | bytes,
    num_threads: int = 1,
    *,
    xnnpack: bool = True,
    name: str | None = None,
    preserve_all_tensors: bool = False,
) -> Any:
    """Create and allocate an interpreter for a .tflite model.

    Args:
        model: A file path or the model's bytes (bytes are checked with :func:`check_model_bytes`).
        num_threads: CPU threads for the kernels (>= 1).
        xnnpack: Use the default XNNPACK delegate (fast on ARM/x86). ``False`` runs TFLite's builtin kernels.
        name: What to call the model in error messages (default: the path, or "model bytes").
        preserve_all_tensors: Keep every intermediate tensor readable after ``invoke`` (for calibration
            tools; implies the builtin kernels, as no delegate may own intermediate tensors).

    Returns:
        An allocated ``Interpreter`` (ai_edge_litert or tflite_runtime).

    Raises:
        RuntimeMissingError: no interpreter package installed.
        BundleError: the model cannot be read or the interpreter rejects it.
    """
    if int(num_threads) < 1:
        raise BundleError(f"num_threads {num_threads!r}: must be >= 1")
    backend, interpreter_cls = _load_backend()
    if isinstance(model, (bytes, bytearray, memoryview)):
        data, name = bytes(model), name or "model bytes"
    else:
        name = name or str(model)
        try:
            data = Path(model).read_bytes()
        except OSError as e:
            raise BundleError(f"{name}: cannot read model ({e.strerror or e})") from None
    check_model_bytes(data, name)
    kwargs: dict[str, Any] = {"model_content": data, "num_threads": int(num_threads)}
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
        xnnpack = False
    if not xnnpack:
        mod = __import__(interpreter_cls.__module__, fromlist=["OpResolverType"])
        kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = interpreter_cls(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        if xnnpack and "XNNPACK" in str(e):
            # XNNPACK refuses some quantization parameters (e.g. extreme requantization scales) that the
            # builtin kernels accept: run those models without the delegate rather than not at all.
            return make_interpreter(data, num_threads, xnnpack=False, name=name)
        raise BundleError(f"{name}: {backend} rejected the model ({e})") from None
    return interpreter
