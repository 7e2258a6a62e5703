"""The one place that imports a TFLite interpreter: ``ai_edge_litert`` first, then ``tflite_runtime``.

A Raspberry Pi gets either with pip (``pip install ai-edge-litert`` or the older ``tflite-runtime``); neither
needs TensorFlow. Everything else in cae-edge calls :func:`make_interpreter`. Neither package publishes a
wheel for 32-bit ARM with a current Python, so a 32-bit Raspberry Pi OS gets an error that says a 64-bit OS
is required.

Three kernel families run the same int8 model, each deterministic but not bit-identical to the others (their
int8 requantization rounds differently, most of all in LEAKY_RELU)::

    "xnnpack"  LiteRT with its default XNNPACK delegate (the default: fastest on x86 and ARM)
    "builtin"  LiteRT's builtin kernels (the TFLite int8 reference arithmetic)
    "micro"    tflite-micro's reference kernels (``pip install tflite-micro``; what a microcontroller runs)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, RuntimeMissingError

TFLITE_IDENTIFIER = b"TFL3"
"""FlatBuffer file identifier of a .tflite model, at bytes 4..8."""
MIN_MODEL_BYTES = 32

KERNELS = ("xnnpack", "builtin", "micro")
"""Kernel families :func:`make_interpreter` can run a model with."""

_BACKEND: tuple[str, Any] | None = None
PACKAGES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}
"""Interpreter modules, in the order they are tried, and the pip package that provides each."""


def is_32bit_arm(machine: str | None = None, pointer_bits: int | None = None) -> bool:
    """True on a 32-bit ARM userland (``armv7l``/``armv6l``, or a 64-bit kernel under a 32-bit OS).

    Args:
        machine: ``platform.machine()`` (default: this machine's).
        pointer_bits: The interpreter's pointer size in bits (default: this Python's).
    """
    machine = (machine if machine is not None else platform.machine()).lower()
    bits = pointer_bits if pointer_bits is not None else (64 if sys.maxsize > 2**32 else 32)
    return machine.startswith("arm") or (machine in ("aarch64", "arm64") and bits == 32)


def installed_packages() -> list[tuple[str, str, str]]:
    """The interpreter packages present, found without importing them (an import may crash).

    Returns:
        ``(module, pip package, version)`` for each of :data:`PACKAGES` that is installed, in search order;
        the version is ``"?"`` when the module has no package metadata (a copied or shimmed module).
    """
    found = []
    for module, package in PACKAGES.items():
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        found.append((module, package, version))
    return found


def missing_runtime_message(errors: list[str]) -> str:
    """The error for "no interpreter could be imported": what failed and what to install on this machine."""
    why = "; ".join(errors)
    if is_32bit_arm():
        return (
            f"no TFLite interpreter installed ({why}): this is a 32-bit ARM system ({platform.machine()}, "
            f"Python {platform.python_version()}) and ai-edge-litert publishes no wheel for it; a 64-bit OS "
            "is required: install Raspberry Pi OS (64-bit), then `pip install 'cae-edge[node]'`"
        )
    return (
        f"no TFLite interpreter installed ({why}); run `pip install ai-edge-litert` "
        "(or `pip install 'cae-edge[node]'`)"
    )


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
                raise RuntimeMissingError(missing_runtime_message(errors)) from None
    return _BACKEND


def backend_name() -> str:
    """Name of the interpreter module in use (``ai_edge_litert`` or ``tflite_runtime``)."""
    return _load_backend()[0]


def backend_package() -> tuple[str, str]:
    """The pip package in use and its version, e.g. ``("ai-edge-litert", "2.3.0")`` (``"?"`` if unknown)."""
    package = PACKAGES[backend_name()]
    try:
        return package, importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return package, "?"


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


class MicroInterpreter:
    """tflite-micro's interpreter behind the part of LiteRT's ``Interpreter`` API that cae-edge uses.

    For single-input, single-output models: both the input and the output have index 0; ``set_tensor``
    writes the input and ``get_tensor`` reads the output. Quantization is reported as LiteRT does,
    ``(scale, zero_point)``.
    """

    def __init__(self, data: bytes, name: str) -> None:
        try:
            from tflite_micro.python.tflite_micro import runtime
        except ImportError as e:
            raise RuntimeMissingError(
                f"kernels 'micro' need tflite-micro ({e}); run `pip install tflite-micro` "
                "(wheels for x86_64 Linux)"
            ) from None
        try:
            self._it = runtime.Interpreter.from_bytes(data)
            self._in, self._out = self._it.get_input_details(0), self._it.get_output_details(0)
        except (ValueError, RuntimeError) as e:
            raise BundleError(f"{name}: tflite-micro rejected the model ({e})") from None

    @staticmethod
    def _detail(d: dict) -> dict:
        q = d.get("quantization_parameters") or {}
        scales, zps = list(q.get("scales", [])), list(q.get("zero_points", []))
        quant = (float(scales[0]), int(zps[0])) if len(scales) == 1 else (0.0, 0)
        return {"index": 0, "shape": np.asarray(d["shape"]), "dtype": d["dtype"], "quantization": quant}

    def get_input_details(self) -> list[dict]:
        return [self._detail(self._in)]

    def get_output_details(self) -> list[dict]:
        return [self._detail(self._out)]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self._it.set_input(value, index)

    def invoke(self) -> None:
        self._it.invoke()

    def get_tensor(self, index: int) -> np.ndarray:
        return self._it.get_output(index)


def make_interpreter(
    model: str | Path | bytes,
    num_threads: int = 1,
    *,
    xnnpack: bool = True,
    name: str | None = None,
    preserve_all_tensors: bool = False,
    kernels: str | None = None,
) -> Any:
    """Create and allocate an interpreter for a .tflite model.

    Args:
        model: A file path or the model's bytes (bytes are checked with :func:`check_model_bytes`).
        num_threads: CPU threads for the kernels (>= 1).
        xnnpack: Use the default XNNPACK delegate (fast on ARM/x86). ``False`` runs TFLite's builtin kernels.
        name: What to call the model in error messages (default: the path, or "model bytes").
        preserve_all_tensors: Keep every intermediate tensor readable after ``invoke`` (for calibration
            tools; implies the builtin kernels, as no delegate may own intermediate tensors).
        kernels: One of :data:`KERNELS`; overrides ``xnnpack`` when given. ``"micro"`` returns a
            :class:`MicroInterpreter` (single-threaded).

    Returns:
        An allocated ``Interpreter`` (ai_edge_litert or tflite_runtime).

    Raises:
        RuntimeMissingError: no interpreter package installed (or no tflite-micro for ``"micro"``).
        BundleError: the model cannot be read or the interpreter rejects it; unknown ``kernels``.
    """
    if int(num_threads) < 1:
        raise BundleError(f"num_threads {num_threads!r}: must be >= 1")
    if kernels is not None and kernels not in KERNELS:
        raise BundleError(f"kernels {kernels!r}: must be one of {', '.join(KERNELS)}")
    if kernels is not None and kernels != "micro":
        xnnpack = kernels == "xnnpack"
    if isinstance(model, (bytes, bytearray, memoryview)):
        data, name = bytes(model), name or "model bytes"
    else:
        name = name or str(model)
        try:
            data = Path(model).read_bytes()
        except OSError as e:
            raise BundleError(f"{name}: cannot read model ({e.strerror or e})") from None
    check_model_bytes(data, name)
    if kernels == "micro":
        return MicroInterpreter(data, name)
    backend, interpreter_cls = _load_backend()
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
