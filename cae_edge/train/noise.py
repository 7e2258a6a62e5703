"""Input corruption for denoising training: noisy input, clean target. Pure numpy, no TensorFlow.

Images are float arrays in [0, 1] of any shape; the result has the same shape, dtype float32, and stays
in [0, 1].
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from ..errors import ConfigError


class NoiseKind(str, Enum):
    """How training inputs are corrupted."""

    NONE = "none"
    GAUSSIAN = "gaussian"
    SALT_PEPPER = "salt-pepper"


DEFAULT_AMOUNT = {NoiseKind.NONE: 0.0, NoiseKind.GAUSSIAN: 0.2, NoiseKind.SALT_PEPPER: 0.05}
"""Amount used when none is given: sigma 0.2 (on the 0-1 scale) or 5 % of pixels flipped."""


def noise_kind(value: str | NoiseKind) -> NoiseKind:
    """Parse a noise kind (``none``, ``gaussian``, ``salt-pepper``; ``salt_pepper``/``sp`` accepted).

    Raises:
        ConfigError: for an unknown kind.
    """
    if isinstance(value, NoiseKind):
        return value
    key = str(value).strip().lower().replace("_", "-")
    key = {
        "sp": "salt-pepper",
        "s&p": "salt-pepper",
        "salt-and-pepper": "salt-pepper",
        "gauss": "gaussian",
    }.get(key, key)
    try:
        return NoiseKind(key)
    except ValueError:
        choices = ", ".join(k.value for k in NoiseKind)
        raise ConfigError(f"unknown noise {value!r}: use one of {choices}") from None


def check_amount(kind: NoiseKind, amount: float) -> float:
    """Return ``amount`` as float after checking it makes sense for ``kind``.

    Raises:
        ConfigError: gaussian sigma outside (0, 1], salt-and-pepper fraction outside (0, 1).
    """
    amount = float(amount)
    if kind is NoiseKind.GAUSSIAN and not 0.0 < amount <= 1.0:
        raise ConfigError(f"gaussian noise sigma {amount}: must be in (0, 1] (pixels are on a 0-1 scale)")
    if kind is NoiseKind.SALT_PEPPER and not 0.0 < amount < 1.0:
        raise ConfigError(
            f"salt-and-pepper fraction {amount}: must be in (0, 1), e.g. 0.05 for 5 % of pixels"
        )
    return amount


def gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add zero-mean gaussian noise of standard deviation ``sigma`` and clip to [0, 1]."""
    x = np.asarray(x, dtype=np.float32)
    noisy = x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0, out=noisy)


def salt_pepper_noise(x: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Set a random ``fraction`` of pixels to 0 or 1 (half each on average); the rest are untouched."""
    x = np.array(x, dtype=np.float32, copy=True)
    u = rng.random(x.shape)
    x[u < fraction / 2] = 0.0
    x[(u >= fraction / 2) & (u < fraction)] = 1.0
    return x


def add_noise(x: np.ndarray, kind: str | NoiseKind, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Corrupt images ``x`` (floats in [0, 1]) with noise of ``kind`` and ``amount``.

    Args:
        x: images in [0, 1], any shape.
        kind: ``none``, ``gaussian`` (amount = sigma) or ``salt-pepper`` (amount = fraction of pixels).
        amount: noise strength, see ``kind``.
        rng: numpy random generator (seeded by the caller for reproducible runs).

    Returns:
        float32 array of the same shape, in [0, 1]. For ``none``, ``x`` as float32 (no copy if possible).

    Raises:
        ConfigError: unknown kind or an amount out of range.
    """
    kind = noise_kind(kind)
    if kind is NoiseKind.NONE:
        return np.asarray(x, dtype=np.float32)
    amount = check_amount(kind, amount)
    if kind is NoiseKind.GAUSSIAN:
        return gaussian_noise(x, amount, rng)
    return salt_pepper_noise(x, amount, rng)
