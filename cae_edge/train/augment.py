"""Small random shifts and rotations of training images. Pure numpy, vectorised over the batch.

Used by default on the 8,000-image MNIST digit set, where the autoencoder otherwise starts to memorise
the training digits after a few dozen epochs. Input and target get the same transformed image (the
autoencoder learns to reproduce what it sees; augmentation only widens what it sees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentOptions:
    """Strength of the random affine augmentation."""

    max_shift: float = 2.0
    """Largest shift in pixels, per axis (uniform in [-max_shift, max_shift])."""
    max_rotate_deg: float = 10.0
    """Largest rotation in degrees, either direction."""
    probability: float = 0.5
    """Fraction of images transformed; the others pass through unchanged (exactly)."""


def random_affine(
    x: np.ndarray, rng: np.random.Generator, opts: AugmentOptions = AugmentOptions()
) -> np.ndarray:
    """Shift and rotate each image of ``x`` by a random small amount (bilinear, zero fill).

    Args:
        x: images (N, H, W) or (N, H, W, 1), floats in [0, 1].
        rng: numpy random generator.
        opts: augmentation strength.

    Returns:
        float32 array of the same shape as ``x``.
    """
    x = np.asarray(x, dtype=np.float32)
    squeeze = x.ndim == 4
    imgs = x[..., 0] if squeeze else x
    if imgs.ndim != 3:
        raise ValueError(f"images of shape {x.shape}: expected (N, H, W) or (N, H, W, 1)")
    n, h, w = imgs.shape
    active = rng.random(n) < opts.probability
    theta = np.deg2rad(rng.uniform(-opts.max_rotate_deg, opts.max_rotate_deg, n)) * active
    shift = rng.uniform(-opts.max_shift, opts.max_shift, (n, 2)) * active[:, None]

    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rr, cc = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    # Inverse map: output pixel -> source position (rotate back around the centre, undo the shift).
    dy = rr[None] - cy - shift[:, 0, None, None]
    dx = cc[None] - cx - shift[:, 1, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    sy = cos * dy - sin * dx + cy
    sx = sin * dy + cos * dx + cx

    y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
    fy, fx = (sy - y0).astype(np.float32), (sx - x0).astype(np.float32)
    padded = np.pad(imgs, ((0, 0), (1, 2), (1, 2)))  # zero border; indices shift by one
    idx = np.arange(n)[:, None, None]

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return padded[idx, np.clip(yy + 1, 0, h + 2), np.clip(xx + 1, 0, w + 2)]

    out = (
        at(y0, x0) * (1 - fy) * (1 - fx)
        + at(y0, x0 + 1) * (1 - fy) * fx
        + at(y0 + 1, x0) * fy * (1 - fx)
        + at(y0 + 1, x0 + 1) * fy * fx
    ).astype(np.float32)
    return out[..., None] if squeeze else out
