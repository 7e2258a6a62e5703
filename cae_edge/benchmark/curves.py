"""Rate–distortion: quality against bytes per image, for cae-edge bundles and the classical codecs.

Every row is a mean over the same test images (``cae_edge.metrics``: per-image PSNR capped at
:data:`~cae_edge.metrics.PSNR_CAP` dB, then averaged; SSIM from scikit-image)::

    test images ─┬─ bundle int8:   Encoder.encode ─► payload ─ wire.pack ─► packet   Decoder.decode(payload)
                 ├─ bundle float:  encoder_float ─► float32 latent ─► decoder_float  (reference, 4 B/value)
                 ├─ Keras float:   the training run's models (only with TensorFlow and a run directory)
                 ├─ JPEG / WebP over a quality sweep, JPEG XL over a distance sweep, PNG (lossless)
                 │                                                        (see codecs.py for byte counting)
                 └─ PCA fitted on the train split: k int8 coefficients (and float32 at the latent sizes)

Bytes: ``bytes_payload`` is what carries the image (latent payload / header-stripped codec data);
``bytes_total`` is the self-contained unit (cae-edge: the wire packet, payload + header; codecs: the file);
``bytes_compact`` (cae-edge int8 only) is the payload plus the mean compact-frame overhead on the wire.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics, wire
from ..payload import payload_kind
from . import codecs

Progress = Callable[[str, int, int], None]

CAE_INT8 = "cae-edge int8"
CAE_FLOAT = "cae-edge tflite-float"
CAE_KERAS = "cae-edge keras-float"
JPEG, WEBP, JPEGXL, PNG = "jpeg", "webp", "jpegxl", "png"
PCA_INT8, PCA_FLOAT = "pca-int8", "pca-float32"


@dataclass
class RDPoint:
    """One codec at one setting over a set of test images (means per image)."""

    dataset: str
    """Dataset the images come from (``mnist`` or ``fashion``)."""
    codec: str
    """``cae-edge int8``, ``cae-edge tflite-float``, ``cae-edge keras-float``, ``jpeg``, ``webp``, ``jpegxl``,
    ``png``, ``pca-int8`` or ``pca-float32``."""
    setting: str
    """The codec setting, e.g. ``q=10``, ``d=8`` (JPEG XL distance), ``k=32``, or the bundle name for cae-edge
    rows."""
    images: int
    """Number of test images."""
    bytes_payload: float
    """Mean bytes per image that carry the image (latent payload; header-stripped codec data)."""
    bytes_total: float
    """Mean bytes per image as a self-contained unit (cae-edge: wire packet; codecs: whole file)."""
    psnr: float
    """Mean per-image PSNR in dB (each capped at ``metrics.PSNR_CAP``)."""
    ssim: float
    """Mean SSIM."""
    mse: float
    """Mean squared error on the 0-255 scale."""
    capped: int
    """Images whose PSNR hit the cap (identical reconstruction)."""
    bytes_compact: float | None = None
    """``cae-edge int8`` rows: mean bytes per image on the wire with compact frames (``--compact``): the
    payload plus the mean overhead of a 30 fps stream over a CURVE link, a full session packet every 100
    frames included (:func:`cae_edge.wire.compact_overhead`); None for the other rows."""
    bundle: str | None = None
    """Bundle name or path for cae-edge rows, else None."""
    seconds: float = 0.0
    """Wall time spent on this row (encode + decode + metrics)."""
    note: str = ""
    """Anything a reader must know about this row."""
    psnr_seam: float | None = None
    """Tiled frames (``--tiles``): mean per-image PSNR over the pixels within 2 px of an inner tile border
    (:func:`cae_edge.tiles.seam_psnr`); None for the other rows."""
    psnr_interior: float | None = None
    """Tiled frames: mean per-image PSNR over the other pixels (inside the tiles); None for the other rows."""


def ssim_batch(
    original: np.ndarray, recon: np.ndarray, win: int = 7, data_range: float = 255.0
) -> np.ndarray:
    """SSIM of each image pair, computed for the whole batch at once.

    The same computation as :func:`cae_edge.metrics.ssim_per_image` (scikit-image's ``structural_similarity``
    defaults: 7x7 uniform window with reflected borders, sample covariance, K1 0.01, K2 0.03, mean over the
    window-valid interior), vectorised over images: ~3x faster on 28x28 images, equal to float precision
    (tested against scikit-image).
    """
    from scipy.ndimage import uniform_filter

    x, y = (np.asarray(a, dtype=np.float64) for a in (original, recon))
    x, y = (a[..., 0] if a.ndim == 4 and a.shape[-1] == 1 else a for a in (x, y))
    x, y = (a[None] if a.ndim == 2 else a for a in (x, y))
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {y.shape}")
    size = (1, win, win)
    ux, uy = uniform_filter(x, size), uniform_filter(y, size)
    uxx, uyy, uxy = uniform_filter(x * x, size), uniform_filter(y * y, size), uniform_filter(x * y, size)
    cov = win * win / (win * win - 1)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    p = (win - 1) // 2
    return s[:, p:-p, p:-p].reshape(len(s), -1).mean(axis=1)


def score(
    dataset: str,
    codec: str,
    setting: str,
    original: np.ndarray,
    recon: np.ndarray,
    bytes_payload: float,
    bytes_total: float,
    *,
    bundle: str | None = None,
    seconds: float = 0.0,
    note: str = "",
    bytes_compact: float | None = None,
) -> RDPoint:
    """Build an :class:`RDPoint` from originals and reconstructions (both (N, H, W) uint8)."""
    psnr = metrics.psnr_per_image(original, recon)
    return RDPoint(
        dataset=dataset,
        codec=codec,
        setting=setting,
        images=int(len(original)),
        bytes_payload=float(bytes_payload),
        bytes_total=float(bytes_total),
        psnr=float(psnr.mean()),
        ssim=float(ssim_batch(original, recon).mean()),
        mse=float(metrics.mse_per_image(original, recon).mean()),
        capped=int(np.count_nonzero(psnr >= metrics.PSNR_CAP)),
        bytes_compact=None if bytes_compact is None else float(bytes_compact),
        bundle=bundle,
        seconds=float(seconds),
        note=note,
    )


# ---------------------------------------------------------------- classical codecs


def run_codec(
    fn: Callable[[np.ndarray], codecs.Encoded], images: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """Code each image with ``fn``: (reconstructions, mean payload bytes, mean whole-file bytes)."""
    recon = np.empty_like(images)
    payload = total = 0
    for i, img in enumerate(images):
        enc = fn(img)
        recon[i] = enc.decoded
        payload += enc.payload_bytes
        total += len(enc.data)
    n = max(len(images), 1)
    return recon, payload / n, total / n


def codec_points(
    dataset: str,
    test: np.ndarray,
    train: np.ndarray,
    *,
    jpeg_qualities: Sequence[int] = codecs.JPEG_QUALITIES,
    webp_qualities: Sequence[int] = codecs.WEBP_QUALITIES,
    jpegxl_distances: Sequence[float] = (),
    pca_dims: Sequence[int] = codecs.PCA_DIMS,
    pca_float_dims: Sequence[int] = (),
    progress: Progress | None = None,
) -> list[RDPoint]:
    """JPEG, WebP and JPEG XL sweeps, PNG, and PCA (fitted on ``train``) over the ``test`` images.

    Args:
        dataset: Dataset name for the rows.
        test: (N, 28, 28) uint8 images to code.
        train: (M, 28, 28) uint8 images to fit PCA on.
        jpeg_qualities: JPEG settings.
        webp_qualities: WebP settings.
        jpegxl_distances: JPEG XL distances (effort :data:`codecs.JPEGXL_EFFORT`); needs ``imagecodecs``.
        pca_dims: PCA sizes with int8 coefficients (k bytes/image).
        pca_float_dims: PCA sizes also reported with float32 coefficients (4k bytes/image).
        progress: Callback ``(what, done, total)``.

    Returns:
        One :class:`RDPoint` per setting.

    Raises:
        ConfigError: JPEG XL distances given and ``imagecodecs`` has no JPEG XL.
    """
    step = progress or (lambda what, done, total: None)
    if jpegxl_distances:
        codecs.jpegxl_codec()  # fail before any work
    jobs: list[tuple[str, str, Callable[[], tuple[np.ndarray, float, float]], str]] = []
    for q in jpeg_qualities:
        jobs.append((JPEG, f"q={q}", lambda q=q: run_codec(lambda im: codecs.jpeg(im, q), test), ""))
    for q in webp_qualities:
        jobs.append((WEBP, f"q={q}", lambda q=q: run_codec(lambda im: codecs.webp(im, q), test), ""))
    for d in jpegxl_distances:
        jobs.append((JPEGXL, f"d={d:g}", lambda d=d: run_codec(lambda im: codecs.jpegxl(im, d), test), ""))
    jobs.append((PNG, "lossless", lambda: run_codec(codecs.png, test), ""))
    dims = sorted({int(k) for k in (*pca_dims, *pca_float_dims)})
    pca: list[codecs.PCA] = []

    def fitted() -> codecs.PCA:
        if not pca:
            pca.append(codecs.PCA.fit(train, max(dims)))
        return pca[0]

    for k in sorted({int(k) for k in pca_dims}):
        jobs.append((PCA_INT8, f"k={k}", lambda k=k: (fitted().roundtrip_int8(test, k), k, k), ""))
    for k in sorted({int(k) for k in pca_float_dims}):
        note = "float32 coefficients (4 bytes each), reference"
        jobs.append(
            (PCA_FLOAT, f"k={k}", lambda k=k: (fitted().roundtrip_float(test, k), 4 * k, 4 * k), note)
        )
    points = []
    for i, (codec, setting, job, note) in enumerate(jobs):
        step(f"{dataset}: {codec} {setting}", i, len(jobs))
        t0 = time.perf_counter()
        recon, payload, total = job()
        points.append(
            score(
                dataset,
                codec,
                setting,
                test,
                recon,
                payload,
                total,
                seconds=time.perf_counter() - t0,
                note=note,
            )
        )
    step(f"{dataset}: codecs done", len(jobs), len(jobs))
    return points


# ---------------------------------------------------------------- cae-edge


def bundle_points(bundle, name: str, dataset: str, test: np.ndarray, threads: int = 1) -> list[RDPoint]:
    """The bundle's int8 pair (through the wire format) and its float TFLite pair over ``test``.

    Args:
        bundle: A loaded :class:`cae_edge.device.bundle.Bundle`.
        name: How to call it in the rows (``mnist``, a preset, a path).
        dataset: Dataset of ``test``.
        test: (N, 28, 28) uint8 images.
        threads: Interpreter threads.
    """
    points = []
    enc, dec = bundle.encoder(threads), bundle.decoder(threads)
    kind = payload_kind(bundle.coding)
    prefix = wire.pair_prefix(bundle.pair_id)
    sid = wire.sender_id("bench")
    t0 = time.perf_counter()
    recon = np.empty_like(test)
    payload_bytes = packet_bytes = 0
    for i, img in enumerate(test):
        payload = enc.encode(img)
        packet = wire.pack(wire.Packet(prefix, sid, i, 0, payload, kind))
        recon[i] = dec.decode(wire.unpack(packet).payload)
        payload_bytes += len(payload)
        packet_bytes += len(packet)
    n = max(len(test), 1)
    compact = wire.compact_overhead(frames=max(n, 100))
    note = (
        f"coding {bundle.coding.get('kind')}; packet = payload + {wire.OVERHEAD_BYTES}-byte wire header/CRC; "
        f"compact frames: + {compact:.2f} B mean (CURVE link, 30 fps, a session packet every 100 frames)"
    )
    points.append(
        score(
            dataset,
            CAE_INT8,
            name,
            test,
            recon,
            payload_bytes / n,
            packet_bytes / n,
            bundle=name,
            seconds=time.perf_counter() - t0,
            note=note,
            bytes_compact=payload_bytes / n + compact,
        )
    )
    if "encoder_float" in bundle.manifest.models and "decoder_float" in bundle.manifest.models:
        fenc, fdec = bundle.encoder(threads, precision="float"), bundle.decoder(threads, precision="float")
        t0 = time.perf_counter()
        for i, img in enumerate(test):
            recon[i] = fdec.decode_latent(fenc.encode_latent(img))
        b = 4.0 * bundle.latent_dim
        points.append(
            score(
                dataset,
                CAE_FLOAT,
                name,
                test,
                recon,
                b,
                b + wire.OVERHEAD_BYTES,
                bundle=name,
                seconds=time.perf_counter() - t0,
                note="float32 latent (4 bytes/value), reference for int8 loss",
            )
        )
    return points


def keras_point(run_dir: str | Path, name: str, dataset: str, test: np.ndarray, latent_dim: int) -> RDPoint:
    """Keras float reconstruction of ``test`` by a training run's models (needs TensorFlow/Keras).

    Raises:
        ImportError: Keras is not installed.
        RunDirError: the run directory lacks ``config.json``, ``encoder.keras`` or ``decoder.keras``, or a
            file is unreadable.
    """
    from ..rundir import load_run  # noqa: PLC0415 - imports Keras, only when TensorFlow is installed

    run = Path(run_dir)
    t0 = time.perf_counter()
    encoder, decoder, _ = load_run(run)
    x = test.astype(np.float32)[..., None] / 255.0
    recon = metrics.to_uint8(
        decoder.predict(encoder.predict(x, batch_size=500, verbose=0), batch_size=500, verbose=0)
    )
    b = 4.0 * latent_dim
    return score(
        dataset,
        CAE_KERAS,
        name,
        test,
        recon.reshape(test.shape),
        b,
        b + wire.OVERHEAD_BYTES,
        bundle=name,
        seconds=time.perf_counter() - t0,
        note=f"Keras float models from {run} (float32 latent)",
    )
