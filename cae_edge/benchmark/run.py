"""One benchmark run: bundles × (size, latency, per-frame paths, RD) + baselines per dataset. No TensorFlow
unless Keras rows are asked for and TensorFlow is installed.

::

    for each --bundle:  load_bundle ─► sizes ─► invoke latency (each model × each thread count)
                                    ─► sender paths (BGR frame | picamera2-like Y plane → preprocess
                                                     → encode → entropy code → pack)
                                    ─► receiver path (unpack → decode)
                                    ─► [--litert-tool] LiteRT benchmark tool + CompiledModel cross-check
                                    ─► RD rows: int8 through the wire format, float TFLite, [Keras float]
    for each dataset:   JPEG / WebP / JPEG XL sweeps, PNG, PCA (fit on train) on the same test images
    then:               BD-rate / BD-PSNR of each dataset's bundle family against WebP and JPEG XL
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import datasets, wire
from ..errors import ConfigError, RunDirError
from ..rundir import MODEL_FILES, RunConfig, read_config
from . import bdrate, codecs, curves, latency, sysinfo
from .report import BenchmarkReport, BundleResult

Progress = Callable[[str, int, int], None]


@dataclass
class BenchmarkOptions:
    """What ``cae-edge benchmark`` measures."""

    bundles: list[str] = field(default_factory=lambda: ["mnist"])
    """Shipped bundle names (``mnist``, ``fashion``, presets) or bundle directories; each is an RD point."""
    dataset: str | None = None
    """Evaluate every bundle on this dataset instead of the one in its manifest."""
    threads: list[int] | None = None
    """Interpreter thread counts to time; default ``[1, all cores]``."""
    runs: int = 1000
    """Timed invokes per model and thread count (and per-frame path calls)."""
    warmup: int = 100
    """Untimed invokes after the first, before timing."""
    limit: int | None = None
    """Use the first N test images for RD (default: the whole test split)."""
    baselines: bool = True
    """Measure JPEG, WebP, PNG and PCA on the same images."""
    jpeg_qualities: list[int] = field(default_factory=lambda: list(codecs.JPEG_QUALITIES))
    """JPEG quality sweep."""
    webp_qualities: list[int] = field(default_factory=lambda: list(codecs.WEBP_QUALITIES))
    """WebP quality sweep."""
    jpegxl_distances: list[float] = field(default_factory=lambda: list(codecs.JPEGXL_DISTANCES))
    """JPEG XL distance sweep (needs ``imagecodecs`` with JPEG XL, else the rows are left out with a note)."""
    pca_dims: list[int] = field(default_factory=lambda: list(codecs.PCA_DIMS))
    """PCA sizes (int8 coefficients); each bundle's latent size is added."""
    keras_run: str | None = None
    """Training run directory (``encoder.keras``/``decoder.keras``) for Keras float rows; needs TensorFlow."""
    litert_tool: bool = False
    """Cross-check each p50 with LiteRT's ``benchmark_litert_model`` and an in-process CompiledModel."""
    frame_shape: tuple[int, int] = (480, 640)
    """Camera frame (H, W), BGR, fed to the sender path's preprocessing."""
    data_dir: str | None = None
    """Directory with IDX .gz files, tried first when loading datasets."""
    command: str = ""
    """How the run was invoked, recorded in the report."""

    def validate(self) -> BenchmarkOptions:
        """Check values; return self.

        Raises:
            ConfigError: quoting the bad value.
        """
        if not self.bundles:
            raise ConfigError(
                "no bundle given: pass --bundle mnist, fashion, a preset name or a bundle directory"
            )
        if self.runs < 1:
            raise ConfigError(f"runs {self.runs}: must be >= 1")
        if self.warmup < 0:
            raise ConfigError(f"warmup {self.warmup}: must be >= 0")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit {self.limit}: must be >= 1 (or omitted for the whole test split)")
        bad = [d for d in self.jpegxl_distances if not 0.1 <= d <= 25]
        if bad:
            raise ConfigError(f"JPEG XL distances {bad}: each must be 0.1-25")
        if self.threads is not None and (not self.threads or any(t < 1 for t in self.threads)):
            raise ConfigError(f"threads {self.threads}: each must be >= 1")
        if self.dataset is not None:
            self.dataset = datasets.canonical_name(self.dataset)
        if len(self.frame_shape) != 2 or min(self.frame_shape) < 28:
            raise ConfigError(f"frame shape {self.frame_shape}: need (H, W) with both >= 28")
        return self

    def thread_counts(self) -> list[int]:
        """The thread counts to time, deduplicated, in order."""
        return list(dict.fromkeys(self.threads or [1, sysinfo.cores()]))


def keras_available() -> bool:
    """Whether Keras rows are possible (TensorFlow + Keras importable), without importing them."""
    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "keras"))


def _camera_frame(img: np.ndarray, shape: tuple[int, int], invert: bool) -> np.ndarray:
    """A BGR camera-like frame showing ``img`` (dark on light when the bundle inverts) in the middle."""
    import cv2

    h, w = shape
    side = min(h, w)
    obj = cv2.resize(img, (side, side), interpolation=cv2.INTER_LINEAR)
    if invert:
        obj = 255 - obj
    frame = np.full((h, w), 255 if invert else 0, dtype=np.uint8)
    y, x = (h - side) // 2, (w - side) // 2
    frame[y : y + side, x : x + side] = obj
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)


def _y_plane(bgr: np.ndarray) -> np.ndarray:
    """The luma of a BGR frame laid out as picamera2 hands over a YUV420 frame: the first H rows of an
    (H * 3/2, stride) buffer, stride a multiple of 64 (a 2-D uint8 view, as ``Picamera2Source`` returns)."""
    import cv2

    h, w = bgr.shape[:2]
    buf = np.full((h * 3 // 2, -(-w // 64) * 64), 128, dtype=np.uint8)
    buf[:h, :w] = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return buf[:h, :w]


def _model_samples(bundle, image: np.ndarray) -> dict[str, np.ndarray]:
    """A real input tensor for every model of the bundle (a test image, or its latent for decoders)."""
    from ..quant import pixels_to_int8

    samples = {}
    for key, spec in bundle.manifest.models.items():
        dtype = np.dtype(spec.input.dtype)
        if key.startswith("encoder"):
            if dtype == np.int8:
                samples[key] = pixels_to_int8(image)
            elif dtype == np.uint8:
                samples[key] = image.copy()
            else:
                samples[key] = image.astype(np.float32) / 255.0
        else:
            precision = "float" if dtype == np.float32 else "int8"
            samples[key] = np.asarray(bundle.encoder(precision=precision).encode_latent(image)).astype(dtype)
    return samples


def _paths(bundle, test: np.ndarray, threads: int, opts: BenchmarkOptions) -> list[latency.PathLatency]:
    from ..device.receiver import receive_pipeline
    from ..device.sender import send_pipeline

    tx = send_pipeline(bundle, threads=threads)
    enc, pre, kind = tx.encoder, tx.preprocess, tx.kind
    dec = receive_pipeline(bundle, threads=threads).decoder
    images = test[: min(len(test), 64)]
    frames = [_camera_frame(img, opts.frame_shape, tx.paper) for img in images]
    planes = [_y_plane(f) for f in frames]
    prefix, sid = wire.pair_prefix(bundle.pair_id), wire.sender_id("bench")
    n = len(images)
    pack, unpack, packet_cls, mask = wire.pack, wire.unpack, wire.Packet, wire.MASK32

    def sender(i: int) -> bytes:
        payload = enc.encode(pre(frames[i % n]))
        return pack(packet_cls(prefix, sid, i & mask, (time.time_ns() // 1000) & mask, payload, kind))

    def sender_y(i: int) -> bytes:
        payload = enc.encode(pre(planes[i % n]))
        return pack(packet_cls(prefix, sid, i & mask, (time.time_ns() // 1000) & mask, payload, kind))

    def sender_28(i: int) -> bytes:
        payload = enc.encode(images[i % n])
        return pack(packet_cls(prefix, sid, i & mask, (time.time_ns() // 1000) & mask, payload, kind))

    packets = [sender_28(i) for i in range(n)]

    def receiver(i: int) -> np.ndarray:
        return dec.decode(unpack(packets[i % n]).payload)

    h, w = opts.frame_shape
    runs = min(opts.runs, 2000)
    return [
        latency.PathLatency(
            "sender",
            f"preprocess({h}x{w} BGR) -> encode -> pack",
            threads,
            latency.time_callable(sender, runs, opts.warmup),
        ),
        latency.PathLatency(
            "sender",
            f"preprocess({h}x{w} Y plane) -> encode -> pack",
            threads,
            latency.time_callable(sender_y, runs, opts.warmup),
        ),
        latency.PathLatency(
            "sender",
            "encode(28x28 uint8) -> pack",
            threads,
            latency.time_callable(sender_28, runs, opts.warmup),
        ),
        latency.PathLatency(
            "receiver",
            "unpack -> decode -> 28x28 uint8",
            threads,
            latency.time_callable(receiver, runs, opts.warmup),
        ),
    ]


def _coding_paths(bundle, test: np.ndarray, opts: BenchmarkOptions) -> tuple[list[latency.PathLatency], int]:
    """The payload codec alone, on the int8 latents of the test images: per-frame encode (sender) and decode
    (receiver) rows, and how many latent values lay outside the entropy model's alphabet (escaped, or
    clamped by a legacy-format bundle). Entropy-coded bundles only.

    The rows name the coder's implementation; where the bundle's coder is the compiled one (numba), the
    pure-Python coder gets rows too: what a node without numba spends."""
    codec = bundle.codec()
    if getattr(codec, "kind", "") != "entropy":
        return [], 0
    enc = bundle.encoder(1)
    latents = [np.array(enc.encode_latent(img)) for img in test[:2000]]
    payloads = [codec.encode(q) for q in latents]
    escaped = sum(codec.model.outside(q) for q in latents)
    n = len(latents)
    runs = min(opts.runs, 2000)
    over = f"{n} test latents, {escaped} values escaped"
    coders = [codec]
    if codec.impl != "python":
        from ..entropy import make_coder

        coders.append(make_coder(codec.model, codec.coder, impl="python"))
    rows = []
    for coder in coders:
        coder.prepare_decode()
        rows += [
            latency.PathLatency(
                "sender",
                f"entropy encode, {coder.impl}: int8 latent -> payload ({over})",
                1,
                latency.time_callable(lambda i, c=coder: c.encode(latents[i % n]), runs, opts.warmup),
            ),
            latency.PathLatency(
                "receiver",
                f"entropy decode, {coder.impl}: payload -> int8 latent ({over})",
                1,
                latency.time_callable(lambda i, c=coder: c.decode(payloads[i % n]), runs, opts.warmup),
            ),
        ]
    return rows, int(escaped)


def _keras_run_dir(bundle, opts: BenchmarkOptions) -> Path | None:
    """``--run``, else the training run the manifest names, if it is still there and still the same run
    (its ``config.json`` reads as the run config recorded in the manifest; a retrained directory is not
    used)."""
    if opts.keras_run:
        return Path(opts.keras_run)
    out = (bundle.manifest.train.get("train") or {}).get("out_dir")
    if not out or not all((Path(out) / f).is_file() for f in MODEL_FILES):
        return None
    try:
        same = read_config(out).to_dict() == RunConfig.from_dict(bundle.manifest.train).to_dict()
    except RunDirError:
        return None
    return Path(out) if same else None


def run_benchmark(opts: BenchmarkOptions, progress: Progress | None = None) -> BenchmarkReport:
    """Measure every bundle of ``opts`` and, unless disabled, the baselines on the same test images.

    Args:
        opts: What to measure.
        progress: Callback ``(what, done, total)`` (the CLI draws a progress bar with it).

    Returns:
        The :class:`~cae_edge.benchmark.report.BenchmarkReport`.

    Raises:
        ConfigError: bad options.
        BundleError: a bundle is missing or corrupt.
        DataNotFoundError: the evaluation dataset is not available.
    """
    from ..device.bundle import load_bundle

    opts.validate()
    step = progress or (lambda what, done, total: None)
    t_start = time.perf_counter()
    threads = opts.thread_counts()
    report = BenchmarkReport.begin(opts.command, asdict(opts) | {"threads": threads})
    system = report.system
    loaded: dict[str, datasets.Dataset] = {}

    def dataset(name: str) -> datasets.Dataset:
        if name not in loaded:
            loaded[name] = datasets.load(name, opts.data_dir)
        return loaded[name]

    bundles = []
    for spec in opts.bundles:
        step(f"loading bundle {spec}", 0, 1)
        b = load_bundle(spec)
        ds_name = opts.dataset or datasets.canonical_name(str(b.manifest.dataset.get("name", "mnist")))
        bundles.append((spec, b, ds_name))

    n_stages = len(bundles) * 4 + (len({d for _, _, d in bundles}) if opts.baselines else 0)
    stage = 0
    for spec, b, ds_name in bundles:
        ds = dataset(ds_name)
        test = ds.x_test if opts.limit is None else ds.x_test[: opts.limit]
        res = BundleResult(
            name=spec,
            path=str(b.path),
            pair_id=b.pair_id,
            dataset=ds_name,
            latent_dim=b.latent_dim,
            coding=dict(b.coding),
            bytes_per_image=int(b.bytes_per_image),
            manifest_quality=dict(b.manifest.quality),
        )
        models = b.manifest.models
        res.sizes = [latency.model_size(b.model_bytes(k), k, s.file) for k, s in models.items()]
        samples = _model_samples(b, test[0])
        step(f"{spec}: timing models", stage, n_stages)
        for key, s in models.items():
            for t in threads:
                res.latency.append(
                    latency.time_model(
                        b.model_bytes(key),
                        samples[key],
                        name=key,
                        file=s.file,
                        threads=t,
                        runs=opts.runs,
                        warmup=opts.warmup,
                    )
                )
        stage += 1
        step(f"{spec}: per-frame paths", stage, n_stages)
        for t in threads:
            res.paths.extend(_paths(b, test, t, opts))
        coding_rows, res.escaped_values = _coding_paths(b, test, opts)
        res.paths.extend(coding_rows)
        stage += 1
        if opts.litert_tool:
            step(f"{spec}: LiteRT benchmark tool", stage, n_stages)
            for m in res.latency:
                res.litert_tool.append(
                    latency.compare_with_tool(
                        b.path / m.file, m.model, m.threads, samples[m.model], opts.runs, opts.warmup
                    )
                )
        stage += 1
        step(f"{spec}: quality on {len(test)} {ds_name} test images", stage, n_stages)
        report.rd.extend(curves.bundle_points(b, spec, ds_name, test))
        run_dir = _keras_run_dir(b, opts)
        if run_dir is not None and keras_available():
            report.rd.append(curves.keras_point(run_dir, spec, ds_name, test, b.latent_dim))
        elif opts.keras_run and not keras_available():
            report.notes.append(f"{spec}: Keras float row left out: TensorFlow/Keras not installed")
        elif run_dir is None:
            report.notes.append(
                f"{spec}: Keras float row left out (no training run directory; pass --run RUN); "
                f"export-time Keras quality is in bundles[].manifest_quality"
            )
        stage += 1
        report.bundles.append(res)

    jpegxl_distances = opts.jpegxl_distances
    if opts.baselines and jpegxl_distances:
        try:
            codecs.jpegxl_codec()
        except ConfigError as e:
            report.notes.append(f"JPEG XL rows left out: {e}")
            jpegxl_distances = []
    if opts.baselines:
        for ds_name in sorted({d for _, _, d in bundles}):
            ds = dataset(ds_name)
            test = ds.x_test if opts.limit is None else ds.x_test[: opts.limit]
            latents = sorted({b.latent_dim for _, b, d in bundles if d == ds_name})
            base = stage

            def sub(what: str, done: int, total: int, base: int = base) -> None:
                step(f"{what} ({done}/{total})", base, n_stages)

            report.rd.extend(
                curves.codec_points(
                    ds_name,
                    test,
                    ds.x_train,
                    jpeg_qualities=opts.jpeg_qualities,
                    webp_qualities=opts.webp_qualities,
                    jpegxl_distances=jpegxl_distances,
                    pca_dims=sorted({*opts.pca_dims, *latents}),
                    pca_float_dims=latents,
                    progress=sub,
                )
            )
            stage += 1
    report.bd = bdrate.family_deltas(report.rd)
    report.end(t_start)
    if system.load_average and system.load_average[0] > system.cores:
        report.notes.append(
            f"load average {system.load_average[0]} on {system.cores} cores at the start: other processes "
            "were competing for the CPU, latencies are inflated"
        )
    step("done", n_stages, n_stages)
    return report
