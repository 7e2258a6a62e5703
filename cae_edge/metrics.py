"""Image quality metrics shared by training, export verification and the benchmark. No TensorFlow.

Images are compared as uint8 (or floats on the 0-255 scale). PSNR is computed per image and then averaged
(the convention of the issues' figures); identical images would have infinite PSNR, which is capped at
:data:`PSNR_CAP` so means stay finite and comparable.
"""

from __future__ import annotations

import numpy as np

PSNR_CAP = 100.0
"""PSNR reported for a perfect reconstruction (MSE 0), in dB."""


def _as_batch(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"images of shape {a.shape}: expected (H, W), (N, H, W) or (N, H, W, 1)")
    return a.astype(np.float64)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] → uint8 in [0, 255], rounding to nearest."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def mse_per_image(original: np.ndarray, reconstructed: np.ndarray) -> np.ndarray:
    """Mean squared error of each image, on the 0-255 scale."""
    a, b = _as_batch(original), _as_batch(reconstructed)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)


def psnr_per_image(original: np.ndarray, reconstructed: np.ndarray, cap: float = PSNR_CAP) -> np.ndarray:
    """PSNR of each image in dB (peak 255), capped at ``cap`` for identical images."""
    mse = mse_per_image(original, reconstructed)
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(psnr, cap)


def ssim_per_image(original: np.ndarray, reconstructed: np.ndarray) -> np.ndarray:
    """SSIM of each image (scikit-image, Gaussian-free 7x7 window, data range 255)."""
    from skimage.metrics import structural_similarity

    a, b = _as_batch(original), _as_batch(reconstructed)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return np.array([structural_similarity(x, y, data_range=255.0) for x, y in zip(a, b, strict=True)])


def quality(original: np.ndarray, reconstructed: np.ndarray) -> dict[str, float]:
    """Mean PSNR (dB), SSIM and MSE (0-255 scale) over a batch, as a JSON-friendly dict."""
    return {
        "psnr": float(psnr_per_image(original, reconstructed).mean()),
        "ssim": float(ssim_per_image(original, reconstructed).mean()),
        "mse": float(mse_per_image(original, reconstructed).mean()),
    }
