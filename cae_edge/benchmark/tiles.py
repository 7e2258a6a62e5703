"""``cae-edge benchmark --tiles N``: bundles on (28N)x(28N) frames sent as NxN tiles, against WebP and JPEG XL
on the same frames, with how visible the tile seams are. No TensorFlow.

::

    held-out scenes photographs ─► random 4:3 windows ─► node preprocessing to 28N x 28N (scenes.make_frames)
       ├─ each bundle: TiledEncoder (N*N tiles, one packet) ─► wire.pack ─► wire.unpack ─► decode_tiled
       ├─ WebP over a quality sweep, JPEG XL over a distance sweep: the whole frame as one file
       └─ per row: bytes, PSNR, SSIM, and PSNR along the seams (2 px either side of an inner tile border)
          vs inside the tiles (cae_edge.tiles.seam_psnr); the codecs' split is the reference (no tile grid)

The rows are ordinary ``rd`` rows of the benchmark JSON (dataset ``scenes-112x112`` for N = 4) with
``psnr_seam``/``psnr_interior`` set, and the bundle family gets its BD-rate against WebP and JPEG XL on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import scenes, tiles, wire
from ..errors import ConfigError, DataNotFoundError
from ..payload import payload_kind
from . import bdrate, codecs
from .curves import CAE_INT8, JPEGXL, WEBP, RDPoint, run_codec, score
from .report import BenchmarkReport, bd_note, bd_text

Progress = Callable[[str, int, int], None]

FRAMES = 300
"""Default number of frames (cut from the 11 held-out photographs in turn)."""
WEBP_QUALITIES = (1, 5, 10, 25, 50, 75)
"""WebP sweep for tiled frames."""
JPEGXL_DISTANCES = (4.0, 6.0, 8.0, 12.0, 15.0, 25.0)
"""JPEG XL sweep for tiled frames."""


@dataclass
class TilesOptions:
    """What ``cae-edge benchmark --tiles`` measures."""

    bundles: list[str] = field(default_factory=lambda: ["scenes-small", "scenes-hq", "scenes-xl"])
    """Bundles to send tiles with (scenes-style: plain-resize preprocessing)."""
    tiles: int = 4
    """N: frames are NxN tiles of 28x28 (4: 112x112)."""
    frames: int = FRAMES
    """Frames cut from the held-out photographs."""
    seed: int = scenes.SEED
    """Seed of the windows."""
    baselines: bool = True
    """Code the same frames with WebP and JPEG XL."""
    webp_qualities: list[int] = field(default_factory=lambda: list(WEBP_QUALITIES))
    """WebP qualities."""
    jpegxl_distances: list[float] = field(default_factory=lambda: list(JPEGXL_DISTANCES))
    """JPEG XL distances (left out with a note when ``imagecodecs`` has no JPEG XL)."""
    command: str = ""
    """How the run was invoked, recorded in the report."""

    def validate(self) -> TilesOptions:
        """Check values; return self.

        Raises:
            ConfigError: quoting the bad value.
        """
        if not self.bundles:
            raise ConfigError("no bundle given: pass --bundle scenes-small (or another scenes bundle)")
        if not 2 <= self.tiles <= tiles.MAX_NODE_TILES:
            raise ConfigError(f"tiles {self.tiles}: use 2 .. {tiles.MAX_NODE_TILES} (an NxN grid)")
        if self.frames < 1:
            raise ConfigError(f"frames {self.frames}: must be >= 1")
        return self

    @property
    def dataset(self) -> str:
        """The rows' dataset name, e.g. ``scenes-112x112``."""
        side = tiles.TILE * self.tiles
        return f"scenes-{side}x{side}"


def tiled_frames(count: int, n: int, seed: int = scenes.SEED) -> np.ndarray:
    """``count`` frames of 28n x 28n from the held-out scenes photographs, as the node makes them.

    Raises:
        DataNotFoundError: scikit-image or matplotlib (which ship the photographs) is missing.
    """
    try:
        photos = [scenes.read_photo(scenes.photo_path(p)) for p in scenes.TEST_PHOTOS]
    except (FileNotFoundError, ValueError) as e:
        raise DataNotFoundError(f"held-out scenes photographs: {e}; {scenes.how_to_get()}") from None
    x, _ = scenes.make_frames(photos, count, seed, 1, size=tiles.TILE * n)
    return x


def _seams(row: RDPoint, original: np.ndarray, recon: np.ndarray) -> RDPoint:
    row.psnr_seam, row.psnr_interior = tiles.seam_psnr(original, recon)
    return row


def bundle_row(bundle, name: str, frames: np.ndarray, n: int, dataset: str) -> RDPoint:
    """One bundle's row: each frame as NxN tiles in one packet, through the wire format and back."""
    from ..device.sender import tiled_parts

    kind = payload_kind(bundle.coding)
    _, enc = tiled_parts(bundle, dict(bundle.preprocess), bundle.encoder(), kind, n)
    dec = bundle.decoder()
    fixed = int(bundle.latent_dim) if kind == wire.PayloadKind.INT8 else None
    prefix, sid = wire.pair_prefix(bundle.pair_id), wire.sender_id("bench")
    recon = np.empty_like(frames)
    payload_bytes = packet_bytes = 0
    t0 = time.perf_counter()
    for i, img in enumerate(frames):
        payload = enc.encode(img)
        packet = wire.pack(wire.Packet(prefix, sid, i, 0, payload, kind, tiled=True))
        recon[i] = tiles.decode_tiled(dec, wire.unpack(packet).payload, fixed=fixed)
        payload_bytes += len(payload)
        packet_bytes += len(packet)
    seconds = time.perf_counter() - t0
    count = max(len(frames), 1)
    compact = wire.compact_overhead(frames=max(count, 100))
    note = (
        f"{n}x{n} tiles of 28x28 per frame, each coded with the bundle ({bundle.coding.get('kind')}); "
        f"payload = grid + tile lengths + tiles; packet = + {wire.OVERHEAD_BYTES} B; "
        f"{seconds / count * 1e3:.1f} ms per frame (encode, pack, unpack, decode)"
    )
    row = score(
        dataset, CAE_INT8, name, frames, recon, payload_bytes / count, packet_bytes / count,
        bundle=name, seconds=seconds, note=note, bytes_compact=payload_bytes / count + compact,
    )  # fmt: skip
    return _seams(row, frames, recon)


def codec_rows(
    frames: np.ndarray,
    dataset: str,
    webp_qualities: Sequence[int],
    jpegxl_distances: Sequence[float],
    progress: Progress | None = None,
) -> list[RDPoint]:
    """WebP and JPEG XL rows on the same frames, each frame one whole file."""
    step = progress or (lambda what, done, total: None)
    jobs = [(WEBP, f"q={q}", lambda im, q=q: codecs.webp(im, q)) for q in webp_qualities]
    jobs += [(JPEGXL, f"d={d:g}", lambda im, d=d: codecs.jpegxl(im, d)) for d in jpegxl_distances]
    rows = []
    for j, (codec, setting, fn) in enumerate(jobs):
        step(f"{dataset}: {codec} {setting}", j, len(jobs))
        t0 = time.perf_counter()
        recon, payload, total = run_codec(fn, frames)
        row = score(
            dataset, codec, setting, frames, recon, payload, total,
            seconds=time.perf_counter() - t0, note="the whole frame as one file",
        )  # fmt: skip
        rows.append(_seams(row, frames, recon))
    return rows


def run_tiles(opts: TilesOptions, progress: Progress | None = None) -> BenchmarkReport:
    """Measure every bundle of ``opts`` on tiled frames and, unless disabled, WebP and JPEG XL on them.

    Returns:
        A :class:`~cae_edge.benchmark.report.BenchmarkReport` with ``rd`` and ``bd`` rows (no latency).

    Raises:
        ConfigError: bad options, or a bundle whose preprocessing does not allow tiles.
        BundleError: a bundle is missing or corrupt.
        DataNotFoundError: the held-out photographs are not installed.
    """
    from ..device.bundle import load_bundle

    opts.validate()
    step = progress or (lambda what, done, total: None)
    t_start = time.perf_counter()
    report = BenchmarkReport.begin(opts.command, asdict(opts))
    loaded = [(spec, load_bundle(spec)) for spec in opts.bundles]
    step(f"cutting {opts.frames} frames of {opts.dataset}", 0, len(loaded) + 1)
    frames = tiled_frames(opts.frames, opts.tiles, opts.seed)
    for i, (spec, b) in enumerate(loaded):
        step(f"{spec}: {opts.tiles}x{opts.tiles} tiles", i, len(loaded) + 1)
        report.rd.append(bundle_row(b, spec, frames, opts.tiles, opts.dataset))
    if opts.baselines:
        distances = opts.jpegxl_distances
        if distances:
            try:
                codecs.jpegxl_codec()
            except ConfigError as e:
                report.notes.append(f"JPEG XL rows left out: {e}")
                distances = []
        report.rd.extend(codec_rows(frames, opts.dataset, opts.webp_qualities, distances))
    report.bd = bdrate.family_deltas(report.rd)
    report.notes.append(
        f"{len(frames)} frames of {opts.dataset} from the held-out scenes photographs (never seen in "
        f"training); seam = pixels within {tiles.SEAM_WIDTH} px of an inner tile border, interior = the rest"
    )
    step("done", len(loaded) + 1, len(loaded) + 1)
    return report.end(t_start)


def _sorted(rd: list[dict]) -> list[dict]:
    return sorted(rd, key=lambda r: (r["codec"] != CAE_INT8, r["codec"], r["bytes_payload"]))


def _seam_cells(r: dict) -> tuple[str, str, str]:
    s, i = r.get("psnr_seam"), r.get("psnr_interior")
    if s is None or i is None:
        return "-", "-", "-"
    return f"{s:.2f}", f"{i:.2f}", f"{s - i:+.2f}"


def table(report: BenchmarkReport):
    """The rich table of the rows, seam and interior PSNR included."""
    from rich.table import Table

    d = report.to_dict()
    ds = d["rd"][0]["dataset"] if d["rd"] else "-"
    t = Table(
        title=f"Tiled frames ({ds}): bytes per frame and PSNR, seams vs tile interiors", title_justify="left"
    )
    cols = ("codec", "setting", "frames", "bytes payload", "bytes total", "PSNR dB", "seam dB", "interior dB")
    for col in (*cols, "seam - interior", "SSIM"):
        t.add_column(col, justify="left" if col in ("codec", "setting") else "right")
    for r in _sorted(d["rd"]):
        t.add_row(
            r["codec"], r["setting"], str(r["images"]), f"{r['bytes_payload']:.1f}",
            f"{r['bytes_total']:.1f}", f"{r['psnr']:.2f}", *_seam_cells(r), f"{r['ssim']:.3f}",
            style="bold green" if r["codec"] == CAE_INT8 else "",
        )  # fmt: skip
    return t


def markdown(report: dict) -> str:
    """README-ready tables of a tiles report (the JSON dict form)."""
    s = report["system"]
    rows = _sorted(report["rd"])
    ds = rows[0]["dataset"] if rows else "-"
    n = max((r["images"] for r in rows), default=0)
    lines = [
        f"Measured with `{report['command'] or 'cae-edge benchmark --tiles'}` on {s['cpu_model']} "
        f"({s['cores']} cores), load average {s['load_average']}, {report['created']}.",
        "",
        f"**{ds}** ({n} frames from the held-out photographs): bytes per frame (payload = tiles with their "
        "grid and lengths, or header-stripped file; total = wire packet or whole file); seam = PSNR within "
        f"{tiles.SEAM_WIDTH} px of an inner tile border, interior = the rest",
        "",
        "| codec | setting | bytes payload | bytes total | PSNR dB | seam dB | interior dB | seam - interior "
        "| SSIM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bold = "**" if r["codec"] == CAE_INT8 else ""
        seam, interior, delta = _seam_cells(r)
        lines.append(
            f"| {bold}{r['codec']}{bold} | {r['setting']} | {r['bytes_payload']:.1f} "
            f"| {r['bytes_total']:.1f} | {bold}{r['psnr']:.2f}{bold} | {seam} | {interior} | {delta} "
            f"| {r['ssim']:.3f} |"
        )
    bd = report.get("bd", [])
    if bd:
        lines += [
            "",
            f"Bjøntegaard delta of the tiled {bd[0]['curve']} family ({', '.join(bd[0]['family'])}; "
            f"{bd[0]['method']}, no extrapolation):",
            "",
            "| vs | bytes | BD-rate | BD-PSNR | PSNR range | note |",
            "|---|---|---|---|---|---|",
        ]
        for d in bd:
            rng = "-" if d["psnr_range"] is None else f"{d['psnr_range'][0]:.2f}-{d['psnr_range'][1]:.2f} dB"
            lines.append(
                f"| {d['anchor']} | {d['bytes_counted']} | **{bd_text(d['bd_rate'], '%')}** "
                f"| {bd_text(d['bd_psnr'], 'dB')} | {rng} | {bd_note(d['psnr_range'], d['reason'])} |"
            )
    return "\n".join(lines) + "\n"
