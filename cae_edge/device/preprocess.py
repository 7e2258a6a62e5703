"""Camera frame -> the model's 28x28 uint8 input, as the bundle manifest's ``preprocess`` block says.

Steps, in order (each one a pure function tests call on real images)::

    frame (HxW gray / Y plane | HxWx3 BGR | HxWx4 BGRA, any size)
      │ to_gray           BGR/BGRA -> luma (cv2.cvtColor); a 2-D frame (gray, picamera2's Y plane) as is
      │ crop              "center": a view of the centred square (side min(H, W)); "letterbox": the frame
      │ halve x k         exact 2x2 block averages (INTER_AREA at 2x, SIMD) while the square stays
      │                   >= REDUCE_TO x size: a 480-px square becomes 120 px (16x fewer pixels) before the
      │                   expensive steps; a block average of block averages is the block average
      │ letterbox         pad to a centred square with background, on the reduced image
      │ invert (optional) 255 - x: paper (dark ink on light) -> MNIST convention (light on dark)
      │ resize            cv2.INTER_AREA to size x size (28)       ─┐ one or the other
      │ mnist_normalize   fit the object into 20x20, centre by mass ─┘ (what MNIST itself did)
      ▼
    (28, 28) uint8

Without normalisation the square's side is a multiple of ``size`` (rounded down for a crop, up for a
letterbox), so the area resize covers whole pixels, and inversion runs last (on 784 pixels; the letterbox
background is then 255 so that it becomes 0). With normalisation the side is a multiple of the halving factor
and inversion runs before, on the reduced square, because the object is found as the bright part.

How a frame is cut and reduced depends only on its shape and the spec: :func:`plan` works it out once per
shape (a letterboxed frame keeps the part of it on whole blocks of the padded square, so content does not
shift), and the :class:`Preprocessor` keeps that shape's working arrays (luma of the crop's rows, each
halving, the padded and inverted square) and writes into them frame after frame: nothing is allocated per
frame but the small arrays of the last steps and the output.

The output equals the full-resolution computation up to rounding (the halvings round each 2x2 mean; mean
difference ~0.3 levels on 480x640 frames of real images) and, with normalisation, up to bright specks
more than a block outside the object and the odd one-pixel change of placement when the centre of mass sits
on a rounding edge (~0.2-0.8 levels); tests/device/test_preprocess.py keeps the full-resolution reference and
bounds the difference.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError

CROPS = ("center", "letterbox")
_OTSU_LEVEL_ONLY = cv2.THRESH_BINARY + cv2.THRESH_OTSU + getattr(cv2, "THRESH_DRYRUN", 0)
"""Otsu's level without the thresholded image (OpenCV >= 4.11 can skip writing it)."""
REDUCE_TO = 4
"""Frames are halved while the square stays at least ``REDUCE_TO`` x ``size`` pixels (112 for 28)."""


@dataclass(frozen=True)
class PreprocessSpec:
    """The manifest's ``preprocess`` block."""

    size: int = 28
    """Output side in pixels."""
    grayscale: bool = True
    """Models are single-channel; must be true."""
    invert: bool = False
    """Invert intensities (for dark-on-light scenes feeding an MNIST-style model)."""
    crop: str = "center"
    """``center`` (crop to a square) or ``letterbox`` (pad to a square)."""
    mnist_normalize: bool = False
    """Fit the object into a 20x20 box and centre it by mass in 28x28, as MNIST was made."""

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | None) -> PreprocessSpec:
        """Build from a manifest block; keys this version does not know are ignored.

        Raises:
            ConfigError: for a bad value (quoting it).
        """
        spec = dict(spec or {})
        known = {k: spec[k] for k in ("size", "grayscale", "invert", "crop", "mnist_normalize") if k in spec}
        out = cls(**known)
        if not isinstance(out.size, int) or isinstance(out.size, bool) or out.size < 4:
            raise ConfigError(f"preprocess size {out.size!r}: must be an integer >= 4")
        if out.grayscale is not True:
            raise ConfigError(f"preprocess grayscale {out.grayscale!r}: only grayscale models are supported")
        if out.crop not in CROPS:
            raise ConfigError(f"preprocess crop {out.crop!r}: use one of {', '.join(CROPS)}")
        for name in ("invert", "mnist_normalize"):
            if not isinstance(getattr(out, name), bool):
                raise ConfigError(f"preprocess {name} {getattr(out, name)!r}: must be true or false")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_frame(frame: np.ndarray) -> None:
    """Accept HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA) uint8 arrays.

    Raises:
        ConfigError: for another shape or dtype (quoting it).
    """
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise ConfigError(f"frame must be a uint8 array, got {getattr(frame, 'dtype', type(frame).__name__)}")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 3, 4)):
        if 0 in frame.shape:
            raise ConfigError(f"frame shape {frame.shape}: the frame is empty")
        return
    raise ConfigError(f"frame shape {frame.shape}: expected HxW, HxWx3 (BGR) or HxWx4 (BGRA)")


def to_gray(frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA) uint8 -> HxW uint8 (a 2-D frame is returned as is).

    Args:
        frame: The frame.
        out: An HxW uint8 array to write the luma of a colour frame into (reused between frames).

    Raises:
        ConfigError: for another shape or dtype (quoting it).
    """
    check_frame(frame)
    if frame.ndim == 2:
        return frame
    c = frame.shape[2]
    if c == 1:
        return frame[:, :, 0]
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY if c == 3 else cv2.COLOR_BGRA2GRAY, dst=out)


def center_crop(img: np.ndarray, multiple: int = 1) -> np.ndarray:
    """The largest centred square whose side is a multiple of ``multiple`` (a view, no copy; any channels).

    With ``multiple`` = the output size, the INTER_AREA resize that follows covers whole pixels (an exact
    block average when no halving comes first) for at most ``multiple - 1`` pixels of field of view.
    """
    h, w = img.shape[:2]
    s = min(h, w)
    if s >= multiple:
        s -= s % multiple
    y, x = (h - s) // 2, (w - s) // 2
    return img[y : y + s, x : x + s]


def letterbox(
    gray: np.ndarray, background: int = 0, multiple: int = 1, side: int | None = None
) -> np.ndarray:
    """Pad to a centred square with ``background``: side ``side``, else max(H, W) rounded up to a multiple."""
    h, w = gray.shape
    s = -(-max(h, w) // multiple) * multiple if side is None else max(side, h, w)
    if h == w == s:
        return gray
    y, x = (s - h) // 2, (s - w) // 2
    return cv2.copyMakeBorder(gray, y, s - h - y, x, s - w - x, cv2.BORDER_CONSTANT, value=int(background))


def halvings(side: int, floor: int) -> int:
    """How many times ``side`` can be halved exactly (it stays even) and stay >= ``floor``."""
    k = 0
    while side % 2 == 0 and side // 2 >= floor:
        side //= 2
        k += 1
    return k


def halve(gray: np.ndarray, times: int = 1, out: list[np.ndarray] | None = None) -> np.ndarray:
    """Halve both sides ``times`` times, each pixel the rounded mean of a 2x2 block (INTER_AREA at exactly
    2x: OpenCV's vectorised path, ~3x faster than one INTER_AREA by 4).

    Args:
        gray: The image.
        times: How many halvings.
        out: One array per halving to write into (``times`` of them, each half the previous one's sides;
            the :class:`Preprocessor` reuses them between frames: no allocation, and the source of the next
            halving is still in the cache).

    Raises:
        ConfigError: a side that does not divide by ``2 ** times``.
    """
    h, w = gray.shape[:2]
    if h % (1 << times) or w % (1 << times):
        raise ConfigError(f"halve {h}x{w} {times} times: both sides must divide by {1 << times}")
    for i in range(times):
        h, w = h // 2, w // 2
        gray = cv2.resize(gray, (w, h), dst=None if out is None else out[i], interpolation=cv2.INTER_AREA)
    return gray


def resize_area(gray: np.ndarray, size: int) -> np.ndarray:
    """INTER_AREA resize to size x size (a copy-free pass-through when already that size)."""
    if gray.shape == (size, size):
        return gray
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)


def invert(gray: np.ndarray) -> np.ndarray:
    """255 - x."""
    return cv2.bitwise_not(gray)


def mnist_normalize(
    gray: np.ndarray,
    size: int = 28,
    box: int = 20,
    *,
    full: np.ndarray | None = None,
    factor: int = 1,
    origin: tuple[int, int] = (0, 0),
    full_invert: bool = False,
) -> np.ndarray:
    """Fit the bright object into ``box``x``box`` (aspect kept) and centre it by mass in ``size``x``size``.

    The object is the bounding box of the pixels above the midpoint between the darkest level and Otsu's
    threshold (faint anti-aliased edges belong to it, a gray background does not); the darkest level is
    subtracted so the background is 0 as in MNIST; its gray values are resized with INTER_AREA, like MNIST's
    anti-aliased 20x20 digits, then shifted so the centre of mass lands on (size/2, size/2) — where it is in
    MNIST itself (mean 13.98, 13.97 over the test set). A flat frame (no object) gives an all-zero image.

    With ``full``, ``gray`` is ``full`` reduced ``factor`` times by exact halvings, and only
    the cheap steps look at full resolution: levels, Otsu's threshold and a first box come from ``gray``; the
    box edges are then found to the full-resolution pixel in bands one block either side of each edge
    (:func:`refine_box`), and the object is area-resampled from ``gray`` with that fractional box
    (:func:`area_resample`) -- the full-resolution result up to rounding, at ~1/16 of the pixels. An object
    too small for that (under 2 blocks per output pixel: < 160 px for 4x) is resized from its
    full-resolution pixels, as without ``full`` (at most 160x160 of them).

    Args:
        gray: The square, light object on dark (reduced when ``full`` is given).
        size: Output side.
        box: Side of the box the object is fitted into.
        full: The full-resolution image ``gray`` was reduced from (None: ``gray`` is full resolution).
        factor: How much ``gray`` is reduced from ``full`` (a power of two; 1 = not reduced).
        origin: Where ``full``'s top-left pixel lies in ``gray`` scaled back up (letterbox padding).
        full_invert: ``full`` still has dark objects on light (``gray`` was inverted after reduction).
    """
    lo, hi, _, _ = cv2.minMaxLoc(gray)
    if hi == lo:
        return np.zeros((size, size), np.uint8)
    thr, _ = cv2.threshold(gray, 0, 255, _OTSU_LEVEL_ONLY)
    t = (lo + thr) / 2
    _, mask = cv2.threshold(gray, t, 255, cv2.THRESH_BINARY)
    x, y, ow, oh = cv2.boundingRect(mask)  # the maximum is above the threshold: never empty
    f = 1 if full is None else int(factor)
    if f > 1:
        x, y, ow, oh = refine_box(full, (x, y, ow, oh), f, t, origin=origin, invert=full_invert)
        if max(oh, ow) < 2 * box * f:  # a small object: block means blur it, its own pixels decide
            x, y, ow, oh = small_object_box(
                gray, full, (x, y, ow, oh), f, lo, origin=origin, invert=full_invert
            )
    k = box / max(oh, ow)
    nh, nw = max(1, round(oh * k)), max(1, round(ow * k))
    if f > 1 and max(oh, ow) >= 2 * box * f:  # >= 2 blocks per output pixel: the block means suffice
        oy, ox = origin
        small = area_resample(gray, ((y + oy) / f, (x + ox) / f, oh / f, ow / f), (nh, nw), lo)
    else:
        src = gray if f == 1 else full
        obj = src[y : y + oh, x : x + ow]
        if f > 1 and full_invert:
            obj = invert(obj)
        if lo > 0:  # a gray background (paper under room light) becomes MNIST's black
            obj = cv2.subtract(obj, lo)
        interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
        small = cv2.resize(obj, (nw, nh), interpolation=interp)
    out = np.zeros((size, size), np.uint8)
    m = cv2.moments(small)
    if m["m00"] > 0:
        cy, cx = m["m01"] / m["m00"], m["m10"] / m["m00"]
    else:  # pragma: no cover - a non-empty object resized to >= 1 px keeps some mass
        cy, cx = (nh - 1) / 2, (nw - 1) / 2
    top = min(max(int(round(size / 2 - cy)), 0), size - nh)
    left = min(max(int(round(size / 2 - cx)), 0), size - nw)
    out[top : top + nh, left : left + nw] = small
    return out


def _bright_level(t: float, inverted: bool) -> tuple[float, int]:
    """cv2.threshold's level and type marking the pixels above ``t`` (of ``255 - x`` when ``inverted``)."""
    if inverted:  # 255 - v > t  <=>  v < 255 - t  <=>  v <= ceil(255 - t) - 1 for integer v
        return math.ceil(255 - t) - 1, cv2.THRESH_BINARY_INV
    return t, cv2.THRESH_BINARY


def _rect_above(region: np.ndarray, level: float, kind: int) -> tuple[int, int, int, int]:
    if region.size == 0:
        return 0, 0, 0, 0
    return cv2.boundingRect(cv2.threshold(region, level, 255, kind)[1])


def refine_box(
    full: np.ndarray,
    rect: tuple[int, int, int, int],
    factor: int,
    t: float,
    *,
    origin: tuple[int, int] = (0, 0),
    invert: bool = False,
) -> tuple[int, int, int, int]:
    """A box found on a reduced image -> the full-resolution box of the pixels above ``t``.

    Each edge is looked for in a band from one block outside to one block inside it (a block is
    ``factor`` pixels): a reduced pixel above ``t`` (a rounded mean) has a full-resolution pixel above ``t``
    in its block, so every band holds the edge unless bright pixels lie farther out in blocks whose means
    all stay below ``t`` (isolated specks), which the box then leaves out. Reads 4 thin bands, not the frame.

    Args:
        full: The full-resolution image.
        rect: (x, y, w, h) on the reduced image.
        factor: Reduction factor (block side).
        t: Threshold; pixels above it are the object.
        origin: (y, x) of ``full``'s top-left pixel in the reduced image's grid scaled by ``factor``.
        invert: Compare ``255 - full`` (``full`` has dark objects on light).

    Returns:
        (x, y, w, h) in ``full``'s pixels.
    """
    x, y, w, h = rect
    oy, ox = origin
    hh, ww = full.shape[:2]
    level, kind = _bright_level(t, invert)
    y0, y1 = factor * y - oy, factor * (y + h) - oy  # the reduced box's block edges in full's pixels
    x0, x1 = factor * x - ox, factor * (x + w) - ox
    ya, yb = max(0, y0 - factor), min(hh, y1 + factor)
    xa, xb = max(0, x0 - factor), min(ww, x1 + factor)
    _, by, bw, _ = _rect_above(full[ya : max(ya, y0 + factor), xa:xb], level, kind)
    top = ya + by if bw else max(0, y0)
    yc = max(0, y1 - factor)
    _, by, bw, bh = _rect_above(full[yc:yb, xa:xb], level, kind)
    bottom = yc + by + bh if bw else min(hh, y1)
    bx, _, bw, _ = _rect_above(full[top:bottom, xa : max(xa, x0 + factor)], level, kind)
    left = xa + bx if bw else max(0, x0)
    xc = max(0, x1 - factor)
    bx, _, bw, _ = _rect_above(full[top:bottom, xc:xb], level, kind)
    right = xc + bx + bw if bw else min(ww, x1)
    return left, top, max(1, right - left), max(1, bottom - top)


def otsu(hist: np.ndarray) -> int:
    """Otsu's threshold of a 256-bin histogram (cv2's rule: the first level maximising the between-class
    variance; pixels above it are the bright class)."""
    p = np.asarray(hist, np.float64).ravel()
    q1 = np.cumsum(p)
    m1 = np.cumsum(p * np.arange(256))
    total, mt = q1[-1], m1[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = (m1 * total - mt * q1) ** 2 / (q1 * (total - q1))
    return int(np.argmax(np.nan_to_num(sigma, nan=0.0, posinf=0.0)))


def small_object_box(
    gray: np.ndarray,
    full: np.ndarray,
    rect: tuple[int, int, int, int],
    factor: int,
    lo: float,
    *,
    origin: tuple[int, int] = (0, 0),
    invert: bool = False,
) -> tuple[int, int, int, int]:
    """The box of a small object, thresholded as at full resolution.

    Block means blur a small object, which lowers Otsu's threshold on the reduced image. The histogram is
    rebuilt as the full-resolution one would be: the object's region (its box and a block around it) from
    its full-resolution pixels, every other block's mean counted ``factor**2`` times (exact where blocks are
    uniform, as a plain background is); the box is then that of the region's pixels above the new threshold.

    Args:
        gray: The reduced image (bright object).
        full: The full-resolution image.
        rect: (x, y, w, h) of the object in ``full``'s pixels.
        factor: Reduction factor.
        lo: The darkest level.
        origin: (y, x) of ``full``'s top-left pixel in the reduced grid scaled by ``factor``.
        invert: ``full`` has dark objects on light.

    Returns:
        (x, y, w, h) in ``full``'s pixels (``rect`` when nothing is above the new threshold).
    """
    x, y, w, h = rect
    oy, ox = origin
    hh, ww = full.shape[:2]
    ry0, ry1 = (
        max(oy // factor, (y + oy) // factor - 1),
        min((oy + hh) // factor, -(-(y + h + oy) // factor) + 1),
    )
    rx0, rx1 = (
        max(ox // factor, (x + ox) // factor - 1),
        min((ox + ww) // factor, -(-(x + w + ox) // factor) + 1),
    )
    region = full[ry0 * factor - oy : ry1 * factor - oy, rx0 * factor - ox : rx1 * factor - ox]
    if invert:
        region = cv2.bitwise_not(region)
    bins = ([0], None, [256], [0, 256])
    hist = (cv2.calcHist([gray], *bins) - cv2.calcHist([gray[ry0:ry1, rx0:rx1]], *bins)) * factor**2
    t = (lo + otsu(hist + cv2.calcHist([region], *bins))) / 2
    bx, by, bw, bh = cv2.boundingRect(cv2.threshold(region, t, 255, cv2.THRESH_BINARY)[1])
    if not bw:  # pragma: no cover - the region holds the brightest pixels, above any Otsu threshold
        return rect
    return rx0 * factor - ox + bx, ry0 * factor - oy + by, bw, bh


_STEPS = np.arange(4097, dtype=np.float32)


def area_resample(
    gray: np.ndarray, box: tuple[float, float, float, float], shape: tuple[int, int], lo: float = 0
) -> np.ndarray:
    """INTER_AREA of a fractional box: each output pixel the area-weighted mean of what it covers, minus
    ``lo`` (at most the smallest pixel in the box), rounded and saturated to uint8 (float32: two small matrix
    products).

    A pixel i's coverage up to x is clip(x - i, 0, 1); an output pixel's weights are the differences of
    that at its two edges, divided by its width. Rows and columns share one vectorised pass.

    Args:
        gray: Source image.
        box: (top, left, height, width) in ``gray``'s pixels, fractional, inside the image.
        shape: Output (height, width).
        lo: Level subtracted after averaging.

    Raises:
        ConfigError: a box or output over 4096 pixels.
    """
    top, left, height, width = box
    ny, nx = shape
    sy, sx = height / ny, width / nx
    y0, x0 = max(0, int(top)), max(0, int(left))
    my = min(gray.shape[0], max(y0 + 1, math.ceil(top + height))) - y0
    mx = min(gray.shape[1], max(x0 + 1, math.ceil(left + width))) - x0
    if max(ny, nx, my, mx) >= len(_STEPS):
        raise ConfigError(f"area resample of a {my}x{mx} box to {ny}x{nx}: at most {len(_STEPS) - 1} a side")
    edges = np.empty(ny + nx + 2, np.float32)
    np.multiply(_STEPS[: ny + 1], np.float32(sy), out=edges[: ny + 1])
    np.multiply(_STEPS[: nx + 1], np.float32(sx), out=edges[ny + 1 :])
    edges[: ny + 1] += np.float32(top - y0)
    edges[ny + 1 :] += np.float32(left - x0)
    cover = edges[:, None] - _STEPS[None, : max(my, mx)]
    np.clip(cover, 0, 1, out=cover)
    wy = cover[1 : ny + 1, :my] - cover[:ny, :my]
    wx = cover[ny + 2 :, :mx] - cover[ny + 1 : -1, :mx]
    region = gray[y0 : y0 + my, x0 : x0 + mx].astype(np.float32)
    # |sum / area - lo|, rounded and saturated in one call; the sums are >= area * lo whenever lo is at
    # most the smallest pixel covered (as for the darkest level), so the abs() changes nothing
    # the cheaper order of the two products (the region is about square; the output side may not be)
    sums = (wy @ region) @ wx.T if ny * mx * (my + nx) <= nx * my * (mx + ny) else wy @ (region @ wx.T)
    return cv2.convertScaleAbs(sums, alpha=1 / (sy * sx), beta=-float(lo))


@dataclass(frozen=True)
class Plan:
    """How a frame of one shape is cut and reduced (see :func:`plan`)."""

    crop: tuple[int, int, int, int]
    """(top, bottom, left, right) of the full-resolution region that is read."""
    halvings: int
    """Exact 2x2 halvings of that region."""
    pad: tuple[int, int, int, int] | None
    """(top, bottom, left, right) letterbox padding on the reduced image, or None."""


@functools.lru_cache(maxsize=32)
def plan(height: int, width: int, spec: PreprocessSpec) -> Plan:
    """Where to cut an HxW frame, how often to halve it and how to pad it, for ``spec`` (cached per shape).

    The square is reduced while it stays >= ``REDUCE_TO * size`` (480 -> 120 for 28): without normalisation
    by exact halvings of the size-multiple side (476 -> 238 -> 119, then INTER_AREA 119 -> 28); with
    normalisation the side is first rounded down to a multiple of the largest power of two that keeps it
    there (480 -> 120; 240 -> 120).
    """
    n, floor = spec.size, REDUCE_TO * spec.size
    if spec.crop == "center":
        side = min(height, width)
        if spec.mnist_normalize:
            k = max(0, (side // floor).bit_length() - 1)
            side -= side % (1 << k)
        else:
            side -= side % n if side >= n else 0
            k = halvings(side, floor)
        y, x = (height - side) // 2, (width - side) // 2
        return Plan((y, y + side, x, x + side), k, None)
    # letterbox: the frame sits at ((S - H) // 2, (S - W) // 2) in the full-resolution square of side S; keep
    # the part of it on whole blocks of that square (< 2**k pixels off each edge), halve it, pad with blocks
    big = max(height, width)
    if spec.mnist_normalize:
        k = max(0, (big // floor).bit_length() - 1)
    else:
        big = -(-big // n) * n
        k = halvings(big, floor)
    while True:
        b = 1 << k
        oy, ox = (big - height) // 2, (big - width) // 2
        y0, y1 = -oy % b, height - (oy + height) % b
        x0, x1 = -ox % b, width - (ox + width) % b
        if k == 0 or (y1 > y0 and x1 > x0):
            break
        k -= 1  # a sliver of a frame, thinner than a block
    side, top, left = -(-big // b), (oy + y0) // b, (ox + x0) // b
    pad = (top, side - top - (y1 - y0) // b, left, side - left - (x1 - x0) // b)
    return Plan((y0, y1, x0, x1), k, pad)


class _Scratch:
    """The arrays one frame shape needs, made once and reused for every frame of that shape."""

    def __init__(self, shape: tuple[int, ...], p: Plan, spec: PreprocessSpec) -> None:
        self.plan = p
        y0, y1, x0, x1 = p.crop
        colour = len(shape) == 3 and shape[2] > 1
        self.rows = slice(y0, y1)
        """Only the rows that are read get their luma computed (whole rows: contiguous, so fast)."""
        self.cols = slice(x0, x1)
        self.code = (cv2.COLOR_BGR2GRAY if shape[2] == 3 else cv2.COLOR_BGRA2GRAY) if colour else None
        self.gray = np.empty((y1 - y0, shape[1]), np.uint8) if colour else None
        h, w = y1 - y0, x1 - x0
        self.halves = []
        for _ in range(p.halvings):
            h, w = h // 2, w // 2
            self.halves.append(np.empty((h, w), np.uint8))
        self.padded = None
        if p.pad is not None and any(p.pad):
            top, bottom, left, right = p.pad
            self.padded = np.empty((h + top + bottom, w + left + right), np.uint8)
            h, w = self.padded.shape
        self.inverted = np.empty((h, w), np.uint8) if spec.mnist_normalize and spec.invert else None
        self.origin = (p.pad[0] << p.halvings, p.pad[2] << p.halvings) if p.pad else (0, 0)


class Preprocessor:
    """Callable turning a camera frame into the model input.

    It keeps working arrays per frame shape and reuses them (no allocation per frame, beyond the output):
    one Preprocessor per thread.

    Args:
        spec: the manifest's ``preprocess`` dict (or a :class:`PreprocessSpec`).

    Raises:
        ConfigError: for a bad spec.
    """

    def __init__(self, spec: dict[str, Any] | PreprocessSpec | None = None):
        self.spec = spec if isinstance(spec, PreprocessSpec) else PreprocessSpec.from_dict(spec)
        self._scratch: dict[tuple[int, ...], _Scratch] = {}

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Frame (HxW gray or Y plane, HxWx3 BGR or HxWx4 BGRA uint8) -> (size, size) uint8, a new array.

        A 2-D frame (picamera2's Y plane) skips the colour conversion; a colour frame is converted only
        in the rows of the crop.

        Raises:
            ConfigError: for a frame of another shape or dtype.
        """
        s = self.spec
        check_frame(frame)
        st = self._scratch.get(frame.shape)
        if st is None:
            if len(self._scratch) >= 8:  # a source whose frame size keeps changing: keep memory bounded
                self._scratch.clear()
            p = plan(frame.shape[0], frame.shape[1], s)
            st = self._scratch[frame.shape] = _Scratch(frame.shape, p, s)
        p = st.plan
        if st.code is not None:  # cvtColor of whole rows beats that of a strided crop
            full_res = cv2.cvtColor(frame[st.rows], st.code, dst=st.gray)[:, st.cols]
        else:
            full_res = (frame if frame.ndim == 2 else frame[:, :, 0])[st.rows, st.cols]
        gray = halve(full_res, p.halvings, st.halves)
        if st.padded is not None:
            top, bottom, left, right = p.pad
            value = 255 if s.invert else 0
            gray = cv2.copyMakeBorder(
                gray, top, bottom, left, right, cv2.BORDER_CONSTANT, dst=st.padded, value=value
            )
        if s.mnist_normalize:
            small = cv2.bitwise_not(gray, dst=st.inverted) if s.invert else gray
            return mnist_normalize(
                small, s.size, full=full_res, factor=1 << p.halvings, origin=st.origin, full_invert=s.invert
            )
        out = resize_area(gray, s.size)
        if out is gray:  # already the output size: not the caller's frame, nor a working array
            out = out.copy()
        return cv2.bitwise_not(out, dst=out) if s.invert else out

    def __repr__(self) -> str:
        return f"Preprocessor({self.spec})"
