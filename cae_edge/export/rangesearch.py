"""Activation-range search: each int8 tensor's range where the int8 model's output comes out best.

Percentile calibration (:func:`~cae_edge.export.convert.percentile_ranges`) gives every intermediate tensor
the same rule, [P(0.01), P(99.99)] of its values. That rule does not know what a tensor's rounding costs in
the output: a LeakyReLU output with a few wide values keeps a coarse step for all the others. This search
keeps the rule as its start and then, one tensor at a time, scales the range (``[lo, hi] × f``, 0 kept
inside) by each factor of a small grid, quantizes the model exactly as the export does, runs it with
LiteRT's int8 kernels on the calibration images and keeps the factor with the least error; two passes over
the tensors with the grid, a third moving each end of each range on its own (coordinate descent)::

    calibrated float model (min/max per tensor) ─┬─ scale tensor t's range by f ─ quantize ─ run ─ error
                                                 └─ keep the best f for t, next tensor; 3 passes

The decoder's error is how far its images are from the calibration images (:func:`decode_error`: minus the
mean per-image PSNR, the figure the benchmark reports); the encoder's, how far its latents are from the
float encoder's before rounding (:func:`latent_error`). Only quantization parameters move: the weights,
the float model and the op graph are the ones calibration made. The search sees the calibration images only
(training split); the export then verifies on the test split as always.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

FACTORS = (0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.25)
"""Range scale factors tried per tensor (1.0, the percentile range, is the start)."""
SWEEPS = 2
"""Passes over the tensors with :data:`FACTORS` (both ends of the range scaled alike)."""
FINE = (0.85, 0.93, 1.07, 1.15)
"""Then one pass moving each end of each range on its own by these steps."""
MIN_GAIN = 1e-4
"""Improvement (in the objective's units: dB for the decoder's, latent steps squared for the encoder's) a
factor must bring to replace the current one."""
DECODER_OBJECTIVE = "mean over calibration images of 10 log10(MSE) of the int8 decoder's image (dB)"
"""What :func:`decode_error` measures (minus the mean per-image PSNR, up to a constant)."""
ENCODER_OBJECTIVE = "MSE of the int8 encoder's latent vs the float encoder's before rounding"
"""What :func:`latent_error` measures."""
MSE_FLOOR = 1e-2
"""Per-image MSE floor of the objective (an exact image would otherwise weigh infinitely)."""


@dataclass
class RangeSearch:
    """What :func:`search_ranges` found."""

    factors: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Tensor name → the factors kept for its min and max (only tensors whose range moved)."""
    objective: str = ""
    """What was minimized on the calibration images (:func:`decode_error`, :func:`latent_error`)."""
    before: float = 0.0
    """Its value with the percentile ranges."""
    after: float = 0.0
    """Its value with the searched ranges."""
    evaluations: int = 0
    """Quantize-and-decode runs the search made."""

    def to_dict(self) -> dict:
        return {
            "factors": {k: [round(v, 3) for v in f] for k, f in self.factors.items()},
            "objective": self.objective,
            "before": round(self.before, 5),
            "after": round(self.after, 5),
            "evaluations": self.evaluations,
        }


def range_tensors(calibrated: bytes) -> list[int]:
    """Indices of the intermediate tensors of a calibrate-only model that carry one min/max (graph input and
    output excluded: their quantization is fixed by the bundle's format)."""
    from .convert import _schema

    s = _schema()
    sg = s.Model.GetRootAs(calibrated, 0).Subgraphs(0)
    io = {sg.Inputs(0), sg.Outputs(0)}
    out = []
    for t in range(sg.TensorsLength()):
        q = sg.Tensors(t).Quantization()
        if t not in io and q is not None and q.MinLength() == 1 and q.MaxLength() == 1:
            out.append(t)
    return out


def scaled(
    calibrated: bytes, base: dict[int, tuple[float, float]], factors: dict[int, tuple[float, float]]
) -> bytes:
    """``calibrated`` with tensor ``t``'s min and max set to ``base[t]`` times ``factors[t]`` (a factor for
    each end; 1 where absent)."""
    from .convert import _schema

    s = _schema()
    buf = bytearray(calibrated)
    sg = s.Model.GetRootAs(buf, 0).Subgraphs(0)
    for t, (lo, hi) in base.items():
        f_lo, f_hi = factors.get(t, (1.0, 1.0))
        q = sg.Tensors(t).Quantization()
        q.MinAsNumpy()[0], q.MaxAsNumpy()[0] = lo * f_lo, hi * f_hi
    return bytes(buf)


def decode_error(tflite: bytes, latents_q: np.ndarray, targets_u8: np.ndarray) -> float:
    """:func:`image_error` of an int8 decoder's images for ``latents_q`` (its int8 input values), run with
    LiteRT's default (XNNPACK) kernels."""
    from ..device.litert import make_interpreter
    from ..quant import QuantParams, dequantize

    it = make_interpreter(tflite, name="decoder under range search")
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    oq = QuantParams(float(o["quantization"][0]), int(o["quantization"][1]))
    out = np.empty((len(latents_q), int(np.prod(o["shape"]))), np.int8)
    shape = tuple(i["shape"])
    for n, z in enumerate(latents_q):
        it.set_tensor(i["index"], z.reshape(shape))
        it.invoke()
        out[n] = it.get_tensor(o["index"]).ravel()
    return image_error(dequantize(out, oq), targets_u8)


def image_error(images: np.ndarray, targets_u8: np.ndarray) -> float:
    """Mean over images of ``10 log10(MSE)`` between decoded ``images`` (N, ...) in [0, 1] and
    ``targets_u8`` (N, 28, 28): minus the mean per-image PSNR (up to a constant), the figure the benchmark
    and the export's verification report."""
    pixels = np.rint(np.clip(np.asarray(images, np.float32).reshape(len(targets_u8), -1) * 255.0, 0.0, 255.0))
    ref = np.asarray(targets_u8, np.float32).reshape(len(targets_u8), -1)
    mse = np.maximum(np.mean((pixels - ref) ** 2, axis=1), MSE_FLOOR)
    return float(np.mean(10.0 * np.log10(mse)))


def latent_error(tflite: bytes, images_u8: np.ndarray, target: np.ndarray) -> float:
    """Mean squared difference (latent units) between an int8 encoder's latents for ``images_u8`` and the
    float encoder's ``target`` (N, D) before its rounding: the rounding noise (1/12 for integer latents)
    plus what the int8 encoder adds, so each latent it rounds to another integer than the float encoder's
    counts by how far off it is. (Scoring the latents by the float decoder's images instead fitted the
    training digits: 0.07 dB better on them, 0.01 dB worse on the test digits, mnist-xxl.)"""
    from ..quant import dequantize
    from .convert import io_quant, run_int8_encoder

    q = dequantize(run_int8_encoder(tflite, images_u8), io_quant(tflite, "output")).astype(np.float64)
    return float(np.mean((q - np.asarray(target, np.float64)) ** 2))


def refiner(
    finish: Callable[[bytes], bytes],
    error: Callable[[bytes], float],
    report: RangeSearch | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    what: str = "int8 model",
) -> Callable[[bytes, Callable[[bytes], bytes]], bytes]:
    """:func:`search_ranges` as :func:`~cae_edge.export.convert.convert_int8`'s ``refine`` hook: given the
    calibrated model and the converter's quantize step, search with ``finish`` applied after quantizing."""

    def refine(calibrated: bytes, quantize: Callable[[bytes], bytes]) -> bytes:
        return search_ranges(
            calibrated, lambda c: finish(quantize(c)), error, report=report, progress=progress, what=what
        )

    return refine


def search_ranges(
    calibrated: bytes,
    finish: Callable[[bytes], bytes],
    error: Callable[[bytes], float],
    factors: tuple[float, ...] = FACTORS,
    sweeps: int = SWEEPS,
    report: RangeSearch | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    what: str = "int8 model",
) -> bytes:
    """Coordinate descent over the intermediate tensors' range factors (module docstring).

    Args:
        calibrated: A calibrate-only model (tensors carry min/max), percentile-narrowed already.
        finish: calibrated bytes → the int8 model as the export ships it (quantize, input and output
            quantization, and for a decoder the sigmoid-input tightening, for an encoder the bias correction).
        error: int8 model bytes → what to minimize on the calibration images (:func:`decode_error`,
            :func:`latent_error`).
        factors: Scale factors to try per tensor.
        sweeps: Passes over the tensors.
        report: Filled in with what the search found (factors, the objective before and after).
        progress: Optional callback ``(what, done, total)``.
        what: The model's name in progress messages.

    Returns:
        The calibrated bytes with the kept ranges.
    """
    from .convert import _schema

    s = _schema()
    sg = s.Model.GetRootAs(calibrated, 0).Subgraphs(0)
    base = {}
    names = {}
    for t in range_tensors(calibrated):
        q = sg.Tensors(t).Quantization()
        base[t] = (float(q.MinAsNumpy()[0]), float(q.MaxAsNumpy()[0]))
        names[t] = sg.Tensors(t).Name().decode("utf-8", "replace")
    kept: dict[int, tuple[float, float]] = {}
    seen: dict[bytes, float] = {}  # model sha256 -> error
    report = report if report is not None else RangeSearch()

    def score(fs: dict[int, tuple[float, float]]) -> float:
        model = finish(scaled(calibrated, base, fs))
        key = hashlib.sha256(model).digest()
        if key not in seen:  # ranges a later step overrides (a RESHAPE's output) give the same model
            seen[key] = error(model)
            report.evaluations += 1
        return seen[key]

    best = report.before = score(kept)
    for sweep in range(sweeps + 1):
        for k, t in enumerate(base):
            if progress:
                progress(f"{what} range search: tensor {k + 1}/{len(base)}, pass {sweep + 1}", 0, 1)
            current = kept.get(t, (1.0, 1.0))
            if sweep < sweeps:
                trials = [(f, f) for f in (1.0, *factors)]
            else:
                lo, hi = current
                trials = [(lo * f, hi) for f in FINE] + [(lo, hi * f) for f in FINE]
            for f in trials:
                if f == current:
                    continue
                err = score({**kept, t: f})
                if err < best - MIN_GAIN:
                    best, current = err, f
            kept[t] = current
    report.after = best
    report.factors = {names[t]: f for t, f in kept.items() if f != (1.0, 1.0)}
    return scaled(calibrated, base, kept)
