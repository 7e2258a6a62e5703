"""A bundle's self-test: a few real test images and the int8 latents the reference interpreter made of them.

``<bundle>/selftest.npz`` ships inside each bundle (tests/golden/regenerate.py writes it), so a node can check
that its own interpreter encodes like the machine that made the bundle (``cae-edge doctor``)::

    selftest.npz: images (N, 28, 28) uint8 ─ this node's encoder ─► latents ─┐ per value: steps apart
                  latents (N, D) int8 (reference, XNNPACK) ──────────────────┴─► decoder ─► PSNR apart (dB)

It passes when every latent value is within ``max_steps`` quantization steps of the reference and the images
decoded from this node's latents are within ``max_db`` of those decoded from the reference latents (the same
decoder on both sides, so only the encoder is compared).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError
from .bundle import IMAGE_SHAPE, Bundle

SELFTEST_NAME = "selftest.npz"
MAX_STEPS = 1
"""Largest per-value difference (latent quantization steps) a healthy interpreter shows."""
MAX_DB = 0.1
"""Largest mean-PSNR difference of the decoded self-test images (the project's run-to-run tolerance)."""


@dataclass
class SelfTestResult:
    """How this machine's encoder compares with the bundle's reference latents."""

    bundle: str
    """The bundle directory."""
    images: int
    """Self-test images encoded."""
    values: int
    """Latent values compared (images x latent_dim)."""
    differing: int
    """Values that differ from the reference at all."""
    max_steps: int
    """Largest difference of one value, in quantization steps."""
    psnr_db: float
    """Mean PSNR of the images decoded from this machine's latents."""
    reference_psnr_db: float
    """Mean PSNR of the images decoded from the reference latents (same decoder)."""
    reference_runtime: str
    """Interpreter package and version that made the reference, e.g. ``ai-edge-litert 2.3.0``."""
    ok: bool
    """Within :data:`MAX_STEPS` per value and :data:`MAX_DB` in PSNR."""

    def to_dict(self) -> dict:
        return asdict(self)


def _psnr(x: np.ndarray, y: np.ndarray) -> float:
    mse = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2, axis=(1, 2))
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def write_selftest(bundle: Bundle, images: np.ndarray) -> Path:
    """Encode ``images`` with this machine's interpreter (XNNPACK) and store them as the bundle's self-test.

    Args:
        bundle: A loaded int8 bundle.
        images: (N, 28, 28) uint8 test images (a handful: the file ships in the package).

    Returns:
        The written ``<bundle>/selftest.npz``.
    """
    from .litert import backend_package

    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or len(images) == 0:
        raise BundleError(f"self-test images of shape {images.shape}: expected (N, 28, 28) uint8, N >= 1")
    enc = bundle.encoder()
    latents = np.stack([enc.encode_latent(img) for img in images]).astype(np.int8)
    path = bundle.path / SELFTEST_NAME
    with open(path, "wb") as f:  # a file object: savez would append ".npz" to a name without it
        np.savez_compressed(
            f,
            images=images,
            latents=latents,
            pair_id=np.array(bundle.pair_id),
            runtime=np.array(" ".join(backend_package())),
            kernels=np.array("xnnpack"),
        )
    return path


def run_selftest(bundle: Bundle, *, max_steps: int = MAX_STEPS, max_db: float = MAX_DB) -> SelfTestResult:
    """Encode the bundle's self-test images here and compare with its reference latents.

    Raises:
        BundleError: no ``selftest.npz`` in the bundle, a malformed one, or one made for another pair id.
    """
    path = bundle.path / SELFTEST_NAME
    if not path.is_file():
        raise BundleError(f"{path}: no self-test file in this bundle (only the shipped bundles have one)")
    try:
        with np.load(path, allow_pickle=False) as z:
            images, ref = z["images"], z["latents"]
            pair_id, runtime = str(z["pair_id"]), str(z["runtime"])
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"{path}: not a readable self-test file ({e}); reinstall the bundle") from None
    n = len(images)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE or ref.shape != (n, bundle.latent_dim):
        raise BundleError(
            f"{path}: images {images.shape} {images.dtype} / latents {ref.shape} do not fit this bundle "
            f"((N, 28, 28) uint8 / (N, {bundle.latent_dim})); reinstall the bundle"
        )
    if pair_id != bundle.pair_id:
        raise BundleError(
            f"{path}: made for pair id {pair_id!r}, this bundle is {bundle.pair_id!r}; the self-test is "
            "stale: regenerate it (tests/golden/regenerate.py) or reinstall the bundle"
        )
    enc, dec = bundle.encoder(), bundle.decoder()
    got = np.stack([enc.encode_latent(img) for img in images])
    steps = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    psnr = _psnr(images, np.stack([dec.decode_latent(q) for q in got]))
    ref_psnr = _psnr(images, np.stack([dec.decode_latent(q.astype(np.int8)) for q in ref]))
    max_diff = int(steps.max())
    return SelfTestResult(
        bundle=str(bundle.path),
        images=n,
        values=int(steps.size),
        differing=int(np.count_nonzero(steps)),
        max_steps=max_diff,
        psnr_db=psnr,
        reference_psnr_db=ref_psnr,
        reference_runtime=runtime,
        ok=max_diff <= max_steps and abs(psnr - ref_psnr) <= max_db,
    )
