"""Bjøntegaard delta rate and PSNR between rate–distortion curves, in pure numpy.

The figure learned-compression papers report: how many percent fewer (negative) or more bytes one curve needs
than an anchor at the same quality, averaged over the quality range both cover (BD-rate), and how many dB more
it gets at the same bytes (BD-PSNR)::

    BD-rate = exp( 1/(D1-D0) ∫[D0,D1] (ln R_test(D) - ln R_anchor(D)) dD ) - 1      (R: bytes, D: PSNR)
    BD-PSNR =      1/(L1-L0) ∫[L0,L1] (D_test(L) - D_anchor(L)) dL                  (L = ln R)

Interpolation (``method``):

* ``"pchip"`` (default): piecewise cubic Hermite interpolation through the points (Fritsch–Carlson
  derivatives, the same curve as SciPy's ``PchipInterpolator``), integrated exactly. It is what the JVET/AOM
  common test conditions and recent learned-compression papers use: it passes through every point and cannot
  overshoot between them, so it stays sane with the 2-4 points a bundle family has. Needs >= 2 points per
  curve (2 points: a straight line in (PSNR, log bytes)).
* ``"cubic"``: the original VCEG-M33 least-squares cubic polynomial. Needs >= 4 points per curve.

No extrapolation: each curve is used only between its own lowest and highest point, and the integral runs
over the overlap of the two ranges ``[max(lows), min(highs)]`` (PSNR for BD-rate, log bytes for BD-PSNR).
When that overlap is empty (or a single value), a curve has too few points, repeats a value, or is not
monotone (more bytes must give more PSNR: pass curves through :func:`pareto` first), the result's ``value``
is None and ``reason`` says why. BD-rate and BD-PSNR have different overlaps, so one can exist without the
other (a family entirely below the anchor's smallest file has a BD-rate where the PSNRs overlap, but no
BD-PSNR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .curves import CAE_INT8, JPEGXL, WEBP, RDPoint

METHODS = {"pchip": 2, "cubic": 4}
"""Interpolation method → fewest points per curve."""
ANCHORS = (WEBP, JPEGXL)
"""Codecs every bundle family is compared with."""
BYTE_COUNTS = ("payload", "total", "wire")
"""``payload``: latent vs header-stripped codec data; ``total``: full wire packet (24-byte header) vs whole
file; ``wire``: the frame on a link that agreed its bundle pair at connect time (compact frames,
``bytes_compact``) vs whole file. ``wire`` rows exist only where every family row has ``bytes_compact``."""


def row_bytes(r: RDPoint, count: str) -> float:
    """Bytes of row ``r`` counted as ``count`` (:data:`BYTE_COUNTS`); codec rows (no ``bytes_compact``)
    count their whole file as ``wire``."""
    if count == "wire":
        return r.bytes_total if r.bytes_compact is None else r.bytes_compact
    return getattr(r, f"bytes_{count}")


@dataclass(frozen=True)
class BDResult:
    """One Bjøntegaard delta, or why there is none."""

    value: float | None
    """BD-rate in percent (negative: fewer bytes than the anchor) or BD-PSNR in dB; None when undefined."""
    lo: float | None = None
    """Start of the overlap integrated over (dB for BD-rate, bytes for BD-PSNR)."""
    hi: float | None = None
    """End of that overlap."""
    reason: str = ""
    """Why ``value`` is None, else empty."""


# ---------------------------------------------------------------- interpolation


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch–Carlson derivatives at the knots (SciPy's ``PchipInterpolator`` rule, ends included)."""
    h = np.diff(x)
    m = np.diff(y) / h
    if len(x) == 2:
        return np.array([m[0], m[0]])
    d = np.zeros_like(y)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same = (np.sign(m[:-1]) * np.sign(m[1:])) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 + w2) / (w1 / m[:-1] + w2 / m[1:])
    d[1:-1] = np.where(same, harmonic, 0.0)

    def edge(h0: float, h1: float, m0: float, m1: float) -> float:
        e = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        if np.sign(e) != np.sign(m0):
            return 0.0
        if np.sign(m0) != np.sign(m1) and abs(e) > abs(3 * m0):
            return 3 * m0
        return e

    d[0] = edge(h[0], h[1], m[0], m[1])
    d[-1] = edge(h[-1], h[-2], m[-1], m[-2])
    return d


def _pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Exact integral over ``[lo, hi]`` (inside ``[x[0], x[-1]]``) of the PCHIP interpolant of ``(x, y)``."""
    d = _pchip_slopes(x, y)
    h = np.diff(x)
    ta = np.clip((lo - x[:-1]) / h, 0.0, 1.0)
    tb = np.clip((hi - x[:-1]) / h, 0.0, 1.0)

    def antiderivative(t: np.ndarray) -> np.ndarray:  # ∫0^t of the Hermite basis, per segment, in x units
        t2, t3, t4 = t * t, t**3, t**4
        return h * (
            y[:-1] * (t4 / 2 - t3 + t)
            + h * d[:-1] * (t4 / 4 - 2 * t3 / 3 + t2 / 2)
            + y[1:] * (-t4 / 2 + t3)
            + h * d[1:] * (t4 / 4 - t3 / 3)
        )

    return float(np.sum(antiderivative(tb) - antiderivative(ta)))


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    if method == "cubic":
        poly = np.polyint(np.polyfit(x, y, 3))
        return float(np.polyval(poly, hi) - np.polyval(poly, lo))
    return _pchip_integral(x, y, lo, hi)


# ---------------------------------------------------------------- BD-rate, BD-PSNR


def _check(name: str, rates: Sequence[float], psnr: Sequence[float], method: str) -> tuple | str:
    """Sorted ``(rates, psnr)`` arrays, or the reason they cannot make a BD curve."""
    if method not in METHODS:
        raise ValueError(f"BD method {method!r}: use one of {', '.join(METHODS)}")
    r, p = np.asarray(rates, dtype=np.float64), np.asarray(psnr, dtype=np.float64)
    if r.shape != p.shape or r.ndim != 1:
        raise ValueError(f"{name}: {r.shape} rates vs {p.shape} PSNRs: need two equal-length 1-D sequences")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(p)) and np.all(r > 0)):
        return f"{name} has a non-finite PSNR or a rate <= 0"
    need = METHODS[method]
    if len(r) < need:
        return f"{name} has {len(r)} point(s): {method} needs >= {need}"
    order = np.argsort(r, kind="stable")
    r, p = r[order], p[order]
    if np.any(np.diff(r) <= 0) or np.any(np.diff(p) <= 0):
        return f"{name} is not strictly increasing (more bytes must give more PSNR; use pareto())"
    return r, p


def _delta(
    anchor: tuple[Sequence[float], Sequence[float]],
    test: tuple[Sequence[float], Sequence[float]],
    method: str,
    over_psnr: bool,
) -> BDResult:
    a = _check("anchor", *anchor, method)
    t = _check("test curve", *test, method)
    for c in (a, t):
        if isinstance(c, str):
            return BDResult(None, reason=c)
    (ra, pa), (rt, pt) = a, t
    if over_psnr:  # ln bytes as a function of PSNR
        (xa, ya), (xt, yt) = (pa, np.log(ra)), (pt, np.log(rt))
    else:  # PSNR as a function of ln bytes
        (xa, ya), (xt, yt) = (np.log(ra), pa), (np.log(rt), pt)
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    if not hi > lo:
        if over_psnr:
            what = (
                f"PSNR ranges do not overlap: anchor {pa[0]:.2f}-{pa[-1]:.2f} dB, "
                f"test {pt[0]:.2f}-{pt[-1]:.2f} dB"
            )
        else:
            what = (
                f"byte ranges do not overlap: anchor {ra[0]:.1f}-{ra[-1]:.1f} B, "
                f"test {rt[0]:.1f}-{rt[-1]:.1f} B"
            )
        return BDResult(None, reason=what + " (no extrapolation)")
    diff = (_integral(xt, yt, lo, hi, method) - _integral(xa, ya, lo, hi, method)) / (hi - lo)
    if over_psnr:
        return BDResult(float(np.expm1(diff) * 100.0), float(lo), float(hi))
    return BDResult(float(diff), float(np.exp(lo)), float(np.exp(hi)))


def bd_rate(
    anchor: tuple[Sequence[float], Sequence[float]],
    test: tuple[Sequence[float], Sequence[float]],
    method: str = "pchip",
) -> BDResult:
    """Bjøntegaard delta rate of ``test`` against ``anchor``, in percent.

    Args:
        anchor: ``(bytes, psnr)`` of the reference curve's points.
        test: ``(bytes, psnr)`` of the curve being compared.
        method: ``"pchip"`` or ``"cubic"`` (see the module docstring).

    Returns:
        :class:`BDResult` with the percent change in bytes at equal PSNR (-50: half the bytes) over the
        overlapping PSNR range ``[lo, hi]`` dB, or None and the reason.

    Raises:
        ValueError: an unknown method or mismatched sequences (a programming error, not a data condition).
    """
    return _delta(anchor, test, method, over_psnr=True)


def bd_psnr(
    anchor: tuple[Sequence[float], Sequence[float]],
    test: tuple[Sequence[float], Sequence[float]],
    method: str = "pchip",
) -> BDResult:
    """Bjøntegaard delta PSNR of ``test`` against ``anchor``, in dB, over the overlapping byte range.

    Same arguments and errors as :func:`bd_rate`; ``lo``/``hi`` of the result are in bytes.
    """
    return _delta(anchor, test, method, over_psnr=False)


def pareto(points: Sequence[RDPoint], count: str) -> tuple[list[RDPoint], list[RDPoint]]:
    """Split points into the RD frontier (sorted by bytes, PSNR strictly rising) and the dominated rest.

    A point is dominated when another point has no more bytes and at least its PSNR (a user would take that
    one instead); lossless rows (PSNR at the cap) are not on a lossy curve and count as dominated.

    Args:
        points: Rows of one codec (or one bundle family) on one dataset.
        count: one of :data:`BYTE_COUNTS`: which byte count orders them.
    """
    from ..metrics import PSNR_CAP

    front, rest, best = [], [], -np.inf
    for r in sorted(points, key=lambda r: (row_bytes(r, count), -r.psnr)):
        if r.psnr > best and r.psnr < PSNR_CAP:
            front.append(r)
            best = r.psnr
        else:
            rest.append(r)
    return front, rest


# ---------------------------------------------------------------- per bundle family


@dataclass
class BDelta:
    """One bundle family's curve against one anchor codec, with one way of counting bytes."""

    dataset: str
    """Dataset of both curves."""
    curve: str
    """The compared rows' codec (``cae-edge int8``)."""
    family: list[str]
    """The bundles on the curve (its RD frontier), by bytes."""
    anchor: str
    """Anchor codec: ``webp`` or ``jpegxl``."""
    bytes_counted: str
    """``payload`` (latent vs header-stripped codec data), ``total`` (full packet vs whole file) or ``wire``
    (compact frame vs whole file), see :data:`BYTE_COUNTS`."""
    method: str
    """Interpolation: ``pchip`` or ``cubic``."""
    bd_rate: float | None
    """Percent bytes against the anchor at equal PSNR (negative: fewer); None when undefined."""
    bd_psnr: float | None
    """dB against the anchor at equal bytes; None when undefined."""
    psnr_range: list[float] | None
    """``[lo, hi]`` dB integrated over for BD-rate (the PSNR overlap), None without a BD-rate."""
    bytes_range: list[float] | None
    """``[lo, hi]`` bytes integrated over for BD-PSNR (the byte overlap), None without a BD-PSNR."""
    points: int
    """Points on the family's curve."""
    anchor_points: int
    """Points on the anchor's curve."""
    dropped: list[str] = field(default_factory=list)
    """Settings left off either curve because another point dominates them (``family: mnist``)."""
    reason: str = ""
    """Why ``bd_rate`` or ``bd_psnr`` is None, else empty."""


def family_deltas(
    rows: Sequence[RDPoint],
    anchors: Sequence[str] = ANCHORS,
    curve: str = CAE_INT8,
    method: str = "pchip",
) -> list[BDelta]:
    """BD-rate and BD-PSNR of each dataset's ``curve`` rows (its bundle family) against each anchor codec,
    counting bytes each way of :data:`BYTE_COUNTS`. Datasets without ``curve`` rows give nothing; an anchor
    without rows on a dataset gives a row with None values and the reason.

    Args:
        rows: Rate–distortion rows of a benchmark run.
        anchors: Codecs to compare with.
        curve: Codec whose rows form the family curve.
        method: Interpolation, see the module docstring.
    """
    out = []
    for ds in sorted({r.dataset for r in rows if r.codec == curve}):
        fam_rows = [r for r in rows if r.dataset == ds and r.codec == curve]
        for anchor in anchors:
            anc_rows = [r for r in rows if r.dataset == ds and r.codec == anchor]
            for count in BYTE_COUNTS:
                if count == "wire" and any(r.bytes_compact is None for r in fam_rows):
                    continue
                fam, fam_out = pareto(fam_rows, count)
                anc, anc_out = pareto(anc_rows, count)
                a = ([row_bytes(r, count) for r in anc], [r.psnr for r in anc])
                t = ([row_bytes(r, count) for r in fam], [r.psnr for r in fam])
                if not anc_rows:
                    rate = dpsnr = BDResult(None, reason=f"no {anchor} rows on {ds}")
                    reasons = [rate.reason]
                else:
                    rate, dpsnr = bd_rate(a, t, method), bd_psnr(a, t, method)
                    reasons = [f"BD-rate: {rate.reason}"] if rate.value is None else []
                    reasons += [f"BD-PSNR: {dpsnr.reason}"] if dpsnr.value is None else []
                out.append(
                    BDelta(
                        dataset=ds,
                        curve=curve,
                        family=[Path(r.setting).name for r in fam],
                        anchor=anchor,
                        bytes_counted=count,
                        method=method,
                        bd_rate=rate.value,
                        bd_psnr=dpsnr.value,
                        psnr_range=None if rate.value is None else [rate.lo, rate.hi],
                        bytes_range=None if dpsnr.value is None else [dpsnr.lo, dpsnr.hi],
                        points=len(fam),
                        anchor_points=len(anc),
                        dropped=[f"{curve}: {Path(r.setting).name}" for r in fam_out]
                        + [f"{anchor}: {r.setting}" for r in anc_out],
                        reason="; ".join(reasons),
                    )
                )
    return out
