"""Quality per kernel family: the same int8 encoder run by XNNPACK, LiteRT builtin kernels, tflite-micro
(and latents brought from elsewhere, e.g. an aarch64 build under emulation), one decoder. No TensorFlow.

::

    test images ─ encoder.tflite ─ xnnpack ─► latents ─┐
                                 ─ builtin ─► latents ─┼─ decoder.tflite (XNNPACK, the receiver's default)
                                 ─ micro   ─► latents ─┤    ─► PSNR per family, spread = max - min
    --kernel-latents NAME=FILE  ───────────► latents ─┘

Each family is deterministic, but their int8 requantization rounds differently, so the latents (and the
decoded images) differ between families; the spread says how much quality depends on where the encoder runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..metrics import psnr_per_image

DEFAULT_KERNELS = ("xnnpack", "builtin", "micro")


@dataclass
class KernelQuality:
    """Int8 PSNR of one bundle with its encoder run by each kernel family."""

    bundle: str
    n_images: int
    decoder_kernels: str
    """Kernels that ran the decoder for every row."""
    psnr: dict[str, float] = field(default_factory=dict)
    """Family → mean PSNR (dB) of the decoded test images."""
    changed: dict[str, float] = field(default_factory=dict)
    """Family → fraction of latent values that differ from the first family's (XNNPACK by default)."""
    max_step: dict[str, int] = field(default_factory=dict)
    """Family → largest absolute latent difference from the first family's, in int8 steps."""

    @property
    def spread_db(self) -> float:
        """Highest minus lowest PSNR over the families."""
        v = list(self.psnr.values())
        return float(max(v) - min(v)) if v else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "spread_db": self.spread_db}


def encode_all(bundle, images_u8: np.ndarray, kernels: str) -> np.ndarray:
    """int8 latents (N, D) of ``images_u8`` with the bundle's int8 encoder run by ``kernels``."""
    enc = bundle.encoder(kernels=kernels)
    return np.stack([enc.encode_latent(img) for img in images_u8]).astype(np.int8)


def load_latents(path: str | Path, bundle_name: str, shape: tuple[int, int]) -> np.ndarray:
    """Latents made elsewhere: ``.npy`` (N, D) int8, or ``.npz`` with one such array per bundle name.

    The rows must be the bundle's test images in order; the first ``shape[0]`` are used.

    Raises:
        ConfigError: unreadable file, no array for this bundle, wrong dtype or too few rows / wrong width.
    """
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{path}: cannot read latents ({e}); expected .npy or .npz of int8 arrays"
        ) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if bundle_name not in loaded.files:
                raise ConfigError(f"{path}: no array named {bundle_name!r} (it has {sorted(loaded.files)})")
            q = loaded[bundle_name]
    else:
        q = loaded
    n, d = shape
    if q.dtype != np.int8 or q.ndim != 2 or q.shape[1] != d or len(q) < n:
        raise ConfigError(
            f"{path}: latents {q.dtype} {q.shape} for {bundle_name}: need int8 (>= {n}, {d}), "
            "one row per test image in order"
        )
    return q[:n]


def kernel_quality(
    bundle,
    images_u8: np.ndarray,
    kernels: tuple[str, ...] = DEFAULT_KERNELS,
    extra: dict[str, np.ndarray] | None = None,
    decoder_kernels: str = "xnnpack",
    name: str | None = None,
) -> KernelQuality:
    """Int8 PSNR of a bundle with its encoder run by each kernel family (one decoder for all).

    Args:
        bundle: A loaded :class:`~cae_edge.device.bundle.Bundle`.
        images_u8: Test images (N, 28, 28) uint8.
        kernels: Families to run here (:data:`cae_edge.device.litert.KERNELS`).
        extra: More families as ready-made latents, ``{name: (N, D) int8}`` for the same images.
        decoder_kernels: Kernels that run the decoder.
        name: What to call the bundle (default: its directory name).

    Returns:
        The :class:`KernelQuality`.
    """
    latents = {k: encode_all(bundle, images_u8, k) for k in kernels}
    for family, q in (extra or {}).items():
        if q.shape != (len(images_u8), bundle.latent_dim):
            raise ConfigError(
                f"latents {family!r} of shape {q.shape}: need ({len(images_u8)}, {bundle.latent_dim})"
            )
        latents[family] = np.asarray(q, np.int8)
    dec = bundle.decoder(kernels=decoder_kernels)
    result = KernelQuality(name or str(bundle.path.name), int(len(images_u8)), decoder_kernels)
    first = next(iter(latents.values()), None)
    for family, q in latents.items():
        recon = np.stack([dec.decode_latent(v) for v in q])
        result.psnr[family] = float(psnr_per_image(images_u8, recon).mean())
        diff = np.abs(q.astype(np.int16) - first.astype(np.int16))
        result.changed[family] = float((diff != 0).mean())
        result.max_step[family] = int(diff.max()) if diff.size else 0
    return result


def markdown_table(results: list[KernelQuality]) -> str:
    """README table: bundle x family PSNR and the spread."""
    families = list(dict.fromkeys(k for r in results for k in r.psnr))
    head = "| bundle | images | " + " | ".join(f"{k} dB" for k in families) + " | spread dB |"
    rule = "|---|---:|" + "---:|" * len(families) + "---:|"
    rows = [
        f"| {r.bundle} | {r.n_images} | "
        + " | ".join(f"{r.psnr[k]:.2f}" if k in r.psnr else "-" for k in families)
        + f" | {r.spread_db:.2f} |"
        for r in results
    ]
    return "\n".join([head, rule, *rows]) + "\n"


@dataclass
class KernelsOptions:
    """What ``cae-edge benchmark --kernels`` measures."""

    bundles: list[str] = field(default_factory=lambda: ["mnist"])
    """Shipped bundle names or bundle directories."""
    kernels: tuple[str, ...] = DEFAULT_KERNELS
    """Kernel families to run the encoder with here."""
    latents: dict[str, str] = field(default_factory=dict)
    """More families as files of ready-made test-split latents (:func:`load_latents`): name → path."""
    limit: int | None = None
    """Use the first N test images (default: the whole test split)."""
    decoder_kernels: str = "xnnpack"
    """Kernels that run the decoder."""
    data_dir: str | None = None
    """Directory with IDX .gz files, tried first when loading datasets."""

    def validate(self) -> KernelsOptions:
        from ..device.litert import KERNELS

        if not self.bundles:
            raise ConfigError("no bundle given: pass --bundle mnist-hq (repeatable)")
        bad = [k for k in (*self.kernels, self.decoder_kernels) if k not in KERNELS]
        if bad or not (self.kernels or self.latents):
            raise ConfigError(f"kernels {bad or '(none)'}: each must be one of {', '.join(KERNELS)}")
        clash = set(self.kernels) & set(self.latents)
        if clash:
            raise ConfigError(
                f"latents named {sorted(clash)} clash with a kernel family run here; rename them"
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit {self.limit}: must be >= 1 (or omitted for the whole test split)")
        return self


def run_kernels(opts: KernelsOptions, progress=None) -> list[KernelQuality]:
    """:func:`kernel_quality` of every bundle of ``opts`` on its own dataset's test split.

    Raises:
        ConfigError: bad options or latent files.
        BundleError: a bundle is missing or corrupt.
        DataNotFoundError: the dataset is not available.
    """
    from .. import datasets
    from ..device.bundle import load_bundle

    opts.validate()
    step = progress or (lambda what, done, total: None)
    results = []
    for i, spec in enumerate(opts.bundles):
        step(f"{spec}: encoder on {', '.join(opts.kernels)}", i, len(opts.bundles))
        b = load_bundle(spec)
        ds = datasets.load(str(b.manifest.dataset.get("name", "mnist")), opts.data_dir)
        test = ds.x_test if opts.limit is None else ds.x_test[: opts.limit]
        name = Path(spec).name
        extra = {k: load_latents(p, name, (len(test), b.latent_dim)) for k, p in opts.latents.items()}
        results.append(kernel_quality(b, test, tuple(opts.kernels), extra, opts.decoder_kernels, name=name))
    step("done", len(opts.bundles), len(opts.bundles))
    return results
