"""Benchmark results: dataclasses → JSON with a stable schema, rich tables, and the RD/latency plot.

The JSON schema is :data:`SCHEMA` (field → accepted types, per record kind), documented field by field in
``docs/benchmark-schema.md``; :func:`validate` checks a parsed report against it. Bump
:data:`SCHEMA_VERSION` on any incompatible change (renamed/removed field or changed meaning); adding fields
is compatible.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from . import sysinfo
from .bdrate import BDelta
from .curves import CAE_FLOAT, CAE_INT8, CAE_KERAS, RDPoint
from .latency import ModelLatency, ModelSize, PathLatency, ToolComparison
from .sysinfo import SystemInfo

SCHEMA_VERSION = 1

NUM = (int, float)
OPT_NUM = (int, float, type(None))
STATS = {
    "runs": (int,),
    "mean_us": NUM,
    "std_us": NUM,
    "min_us": NUM,
    "p50_us": NUM,
    "p95_us": NUM,
    "p99_us": NUM,
    "max_us": NUM,
}
SCHEMA: dict[str, dict[str, tuple]] = {
    "report": {
        "schema_version": (int,),
        "tool": (str,),
        "cae_edge_version": (str,),
        "created": (str,),
        "command": (str,),
        "options": (dict,),
        "system": (dict,),
        "bundles": (list,),
        "rd": (list,),
        "bd": (list,),
        "peak_rss_bytes": (int,),
        "wall_s": NUM,
        "notes": (list,),
    },
    "system": {
        "cpu_model": (str,),
        "cpu_flags": (list,),
        "cores": (int,),
        "machine": (str,),
        "os": (str,),
        "python": (str,),
        "numpy": (str,),
        "litert": (str,),
        "tensorflow": (str, type(None)),
        "load_average": (list,),
    },
    "bundle": {
        "name": (str,),
        "path": (str,),
        "pair_id": (str,),
        "dataset": (str,),
        "latent_dim": (int,),
        "coding": (dict,),
        "bytes_per_image": (int,),
        "manifest_quality": (dict,),
        "sizes": (list,),
        "latency": (list,),
        "paths": (list,),
        "litert_tool": (list,),
    },
    "size": {
        "model": (str,),
        "file": (str,),
        "bytes": (int,),
        "params": (int, type(None)),
        "weight_bytes": (int, type(None)),
        "tensor_bytes": (int,),
        "ops": (list,),
        "input": (dict,),
        "output": (dict,),
    },
    "latency": {
        "model": (str,),
        "file": (str,),
        "precision": (str,),
        "threads": (int,),
        "init_us": NUM,
        "first_us": NUM,
        "warmup": (int,),
        "stats": (dict,),
        "xnnpack": (bool,),
    },
    "path": {"path": (str,), "steps": (str,), "threads": (int,), "stats": (dict,)},
    "tool": {
        "model": (str,),
        "threads": (int,),
        "ours_p50_us": NUM,
        "compiled_model_p50_us": OPT_NUM,
        "tool_median_us": OPT_NUM,
        "tool_mean_us": OPT_NUM,
        "tool_runs": (int,),
        "ratio": OPT_NUM,
        "error": (str,),
        "repeats": (int,),
    },
    "stats": STATS,
    "rd": {
        "dataset": (str,),
        "codec": (str,),
        "setting": (str,),
        "images": (int,),
        "bytes_payload": NUM,
        "bytes_total": NUM,
        "bytes_compact": OPT_NUM,
        "psnr": NUM,
        "ssim": NUM,
        "mse": NUM,
        "capped": (int,),
        "bundle": (str, type(None)),
        "seconds": NUM,
        "note": (str,),
        "psnr_seam": OPT_NUM,
        "psnr_interior": OPT_NUM,
    },
    "bd": {
        "dataset": (str,),
        "curve": (str,),
        "family": (list,),
        "anchor": (str,),
        "bytes_counted": (str,),
        "method": (str,),
        "bd_rate": OPT_NUM,
        "bd_psnr": OPT_NUM,
        "psnr_range": (list, type(None)),
        "bytes_range": (list, type(None)),
        "points": (int,),
        "anchor_points": (int,),
        "dropped": (list,),
        "reason": (str,),
    },
}
"""Every field of the JSON report by record kind, with the Python types its value may have."""


@dataclass
class BundleResult:
    """Everything measured about one bundle (rate–distortion rows are in :attr:`BenchmarkReport.rd`)."""

    name: str
    """What ``--bundle`` said (shipped name or path)."""
    path: str
    """Resolved bundle directory."""
    pair_id: str
    """The bundle's pair id."""
    dataset: str
    """Dataset the bundle was evaluated on."""
    latent_dim: int
    """Latent length."""
    coding: dict
    """The manifest's ``coding`` block."""
    bytes_per_image: int
    """The manifest's nominal payload bytes per image."""
    manifest_quality: dict
    """Quality recorded at export (manifest ``quality``), for comparison with this run."""
    sizes: list[ModelSize] = field(default_factory=list)
    """One entry per model file."""
    latency: list[ModelLatency] = field(default_factory=list)
    """One entry per model and thread count."""
    paths: list[PathLatency] = field(default_factory=list)
    """Sender and receiver per-frame paths (for entropy-coded bundles also the entropy coder alone)."""
    escaped_values: int = 0
    """Latent values of the test images outside the entropy model's alphabet (escaped exactly, or clamped by
    a legacy-format bundle); 0 for raw int8 coding."""
    litert_tool: list[ToolComparison] = field(default_factory=list)
    """Cross-checks against LiteRT's benchmark tool (``--litert-tool``), else empty."""


@dataclass
class BenchmarkReport:
    """The whole output of one ``cae-edge benchmark`` run."""

    cae_edge_version: str
    """Version of cae-edge that measured."""
    created: str
    """UTC time of the run, ISO 8601."""
    command: str
    """The command line (or API call) that produced the report."""
    options: dict
    """The :class:`~cae_edge.benchmark.run.BenchmarkOptions` used."""
    system: SystemInfo
    """The machine."""
    bundles: list[BundleResult] = field(default_factory=list)
    """Per-bundle sizes and latencies."""
    rd: list[RDPoint] = field(default_factory=list)
    """Rate–distortion rows: cae-edge bundles and baselines, per dataset."""
    bd: list[BDelta] = field(default_factory=list)
    """Bjøntegaard deltas of each dataset's bundle family against WebP and JPEG XL (:mod:`.bdrate`)."""
    peak_rss_bytes: int = 0
    """Peak resident memory of the benchmark process (includes datasets and baselines, not only LiteRT)."""
    wall_s: float = 0.0
    """Duration of the run."""
    notes: list[str] = field(default_factory=list)
    """Caveats that apply to the figures (e.g. rows left out and why)."""
    schema_version: int = SCHEMA_VERSION
    """Version of this JSON layout."""
    tool: str = "cae-edge benchmark"
    """Producer."""

    @classmethod
    def begin(cls, command: str, options: dict) -> BenchmarkReport:
        """An empty report of a run starting now on this machine (version, UTC time, system facts)."""
        return cls(
            cae_edge_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command=command,
            options=options,
            system=sysinfo.collect(),
        )

    def end(self, started: float) -> BenchmarkReport:
        """Record the peak memory and the wall time since ``started`` (``time.perf_counter()``)."""
        self.peak_rss_bytes = sysinfo.peak_rss_bytes()
        self.wall_s = time.perf_counter() - started
        return self

    def to_dict(self) -> dict:
        """JSON-friendly dict (floats that are not finite become None)."""
        return _finite(asdict(self))

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise; also write to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------- validation


def _check(record: dict, kind: str, where: str, problems: list[str]) -> None:
    if not isinstance(record, dict):
        problems.append(f"{where}: expected an object, got {type(record).__name__}")
        return
    for key, types in SCHEMA[kind].items():
        if key not in record:
            problems.append(f"{where}.{key}: missing")
        elif not isinstance(record[key], types) or (isinstance(record[key], bool) and bool not in types):
            problems.append(
                f"{where}.{key}: {type(record[key]).__name__} is not {'/'.join(t.__name__ for t in types)}"
            )


def validate(report: dict) -> list[str]:
    """Problems of a parsed JSON report against :data:`SCHEMA` (empty list: valid)."""
    problems: list[str] = []
    _check(report, "report", "report", problems)
    if problems:
        return problems
    if report["schema_version"] != SCHEMA_VERSION:
        problems.append(
            f"report.schema_version: {report['schema_version']} (this code reads {SCHEMA_VERSION})"
        )
    _check(report["system"], "system", "system", problems)
    for i, b in enumerate(report["bundles"]):
        w = f"bundles[{i}]"
        _check(b, "bundle", w, problems)
        for kind, key in (
            ("size", "sizes"),
            ("latency", "latency"),
            ("path", "paths"),
            ("tool", "litert_tool"),
        ):
            for j, rec in enumerate(b.get(key, [])):
                _check(rec, kind, f"{w}.{key}[{j}]", problems)
                if isinstance(rec, dict) and "stats" in SCHEMA[kind] and isinstance(rec.get("stats"), dict):
                    _check(rec["stats"], "stats", f"{w}.{key}[{j}].stats", problems)
    for i, r in enumerate(report["rd"]):
        _check(r, "rd", f"rd[{i}]", problems)
    for i, r in enumerate(report["bd"]):
        _check(r, "bd", f"bd[{i}]", problems)
    return problems


def load(path: str | Path) -> dict:
    """Read a JSON report written by :meth:`BenchmarkReport.to_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- tables


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KB"


def _shape(t: dict) -> str:
    return f"{t.get('dtype')} {'x'.join(str(s) for s in t.get('shape', []))}"


def tables(report: BenchmarkReport) -> list:
    """Rich tables: latency, per-frame paths, sizes, LiteRT cross-check (if any), rate–distortion."""
    from rich.table import Table

    out = []
    lat = Table(title="Model latency (LiteRT Interpreter.invoke, µs)", title_justify="left")
    for col in ("bundle", "model", "threads", "init ms", "first", "mean", "min", "p50", "p95", "p99", "max"):
        lat.add_column(col, justify="left" if col in ("bundle", "model") else "right")
    for b in report.bundles:
        for m in b.latency:
            s = m.stats
            lat.add_row(
                b.name,
                f"{m.model} ({m.precision})",
                str(m.threads),
                f"{m.init_us / 1e3:.1f}",
                f"{m.first_us:.0f}",
                f"{s.mean_us:.1f}",
                f"{s.min_us:.1f}",
                f"[bold]{s.p50_us:.1f}[/bold]",
                f"{s.p95_us:.1f}",
                f"{s.p99_us:.1f}",
                f"{s.max_us:.0f}",
            )
    out.append(lat)
    if any(b.paths for b in report.bundles):
        paths = Table(title="Per-frame paths (µs per frame, Python calls included)", title_justify="left")
        for col in ("bundle", "path", "steps", "threads", "p50", "p95", "p99"):
            paths.add_column(col, justify="right" if col in ("threads", "p50", "p95", "p99") else "left")
        for b in report.bundles:
            for p in b.paths:
                s = p.stats
                paths.add_row(
                    b.name,
                    p.path,
                    p.steps,
                    str(p.threads),
                    f"{s.p50_us:.1f}",
                    f"{s.p95_us:.1f}",
                    f"{s.p99_us:.1f}",
                )
        out.append(paths)
    size = Table(title="Model size", title_justify="left")
    for col in ("bundle", "file", "bytes", "params", "weights", "tensors", "input → output"):
        size.add_column(col, justify="left" if col in ("bundle", "file", "input → output") else "right")
    for b in report.bundles:
        for z in b.sizes:
            i, o = z.input, z.output
            io = f"{_shape(i)} → {_shape(o)}"
            params = "-" if z.params is None else f"{z.params:,}"
            size.add_row(b.name, z.file, _kb(z.bytes), params, _kb(z.weight_bytes), _kb(z.tensor_bytes), io)
    out.append(size)
    if any(b.litert_tool for b in report.bundles):
        tool = Table(
            title="Cross-check with LiteRT's benchmark_litert_model (p50/median, µs)", title_justify="left"
        )
        for col in ("bundle", "model", "threads", "ours", "CompiledModel", "tool", "ours/tool", "note"):
            tool.add_column(col, justify="left" if col in ("bundle", "model", "note") else "right")
        for b in report.bundles:
            for t in b.litert_tool:
                tool.add_row(
                    b.name,
                    t.model,
                    str(t.threads),
                    f"{t.ours_p50_us:.1f}",
                    "-" if t.compiled_model_p50_us is None else f"{t.compiled_model_p50_us:.1f}",
                    "-" if t.tool_median_us is None else f"{t.tool_median_us:.0f}",
                    "-" if t.ratio is None else f"{t.ratio:.2f}",
                    t.error[:60],
                )
        out.append(tool)
    rd = Table(title="Rate–distortion on the test split (means per image)", title_justify="left")
    cols = ("dataset", "codec", "setting", "images", "bytes payload", "bytes total", "on the wire (compact)")
    for col in (*cols, "PSNR dB", "SSIM"):
        rd.add_column(col, justify="left" if col in ("dataset", "codec", "setting") else "right")
    for r in sorted(
        report.rd, key=lambda r: (r.dataset, not r.codec.startswith("cae"), r.codec, r.bytes_payload)
    ):
        style = "bold green" if r.codec == CAE_INT8 else ""
        rd.add_row(
            r.dataset,
            r.codec,
            r.setting,
            str(r.images),
            f"{r.bytes_payload:.1f}",
            f"{r.bytes_total:.1f}",
            "-" if r.bytes_compact is None else f"{r.bytes_compact:.1f}",
            f"{r.psnr:.2f}",
            f"{r.ssim:.3f}",
            style=style,
        )
    out.append(rd)
    if report.bd:
        bd = Table(
            title="Bjøntegaard delta of each bundle family against WebP and JPEG XL "
            f"({report.bd[0].method}, no extrapolation)",
            title_justify="left",
        )
        for col in ("dataset", "family", "vs", "bytes", "BD-rate", "BD-PSNR", "PSNR range", "note"):
            bd.add_column(col, justify="right" if col.startswith("BD") else "left")
        for d in report.bd:
            bd.add_row(
                d.dataset,
                ", ".join(d.family),
                d.anchor,
                d.bytes_counted,
                bd_text(d.bd_rate, "%"),
                bd_text(d.bd_psnr, "dB"),
                _range(d.psnr_range, "dB"),
                bd_note(d.psnr_range, d.reason),
                style="bold" if d.bd_rate is not None and d.bd_rate < 0 else "",
            )
        out.append(bd)
    return out


def bd_text(value: float | None, unit: str) -> str:
    """``-41.3 %`` / ``+0.52 dB``, or ``n/a`` for an undefined delta."""
    if value is None:
        return "n/a"
    return f"{value:+.1f} %" if unit == "%" else f"{value:+.2f} dB"


NARROW_DB = 1.0
"""A BD-rate over a PSNR overlap narrower than this (dB) gets a caveat in tables and markdown."""


def bd_note(psnr_range: list[float] | None, reason: str) -> str:
    """The reason a delta is missing, plus a caveat when the BD-rate's PSNR overlap is narrow."""
    notes = [reason] if reason else []
    if psnr_range and psnr_range[1] - psnr_range[0] < NARROW_DB:
        notes.insert(
            0,
            f"narrow overlap ({psnr_range[1] - psnr_range[0]:.2f} dB): BD-rate is about the byte ratio at "
            "one PSNR, not an average over the curves",
        )
    return "; ".join(notes)


def _range(r: list[float] | None, unit: str) -> str:
    return "-" if r is None else f"{r[0]:.2f}-{r[1]:.2f} {unit}"


# ---------------------------------------------------------------- plot

_STYLE = {
    "jpeg": ("tab:blue", "o"),
    "webp": ("tab:orange", "s"),
    "jpegxl": ("tab:red", "h"),
    "png": ("tab:gray", "D"),
    "pca-int8": ("tab:purple", "^"),
    "pca-float32": ("tab:pink", "v"),
}


_STRIPPED = ("jpeg", "webp", "jpegxl")


def plot(report: BenchmarkReport, path: str | Path) -> Path:
    """RD curves per dataset (bytes/image on a log x axis, PSNR on y; codecs as curves, cae-edge points
    marked with stars, the family's BD-rate against WebP and JPEG XL written in the corner) plus a latency
    bar chart (p50 and p95 per model and thread count). Matplotlib Agg.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r.dataset for r in report.rd})
    ncols = len(datasets) + 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 4.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=False):
        rows = [r for r in report.rd if r.dataset == ds]
        for codec in sorted({r.codec for r in rows if not r.codec.startswith("cae") and r.codec != "png"}):
            pts = sorted((r for r in rows if r.codec == codec), key=lambda r: r.bytes_payload)
            color, marker = _STYLE.get(codec, ("black", "."))
            ax.plot(
                [r.bytes_payload for r in pts],
                [r.psnr for r in pts],
                marker=marker,
                color=color,
                ms=4,
                label=f"{codec} (header-stripped)" if codec in _STRIPPED else codec,
            )
            if codec in _STRIPPED:
                ax.plot(
                    [r.bytes_total for r in pts],
                    [r.psnr for r in pts],
                    ls=":",
                    color=color,
                    alpha=0.6,
                    label=f"{codec} (whole file)",
                )
        for r in (r for r in rows if r.codec == "png"):  # lossless: PSNR is the cap, draw its size only
            ax.axvline(
                r.bytes_payload,
                color="tab:gray",
                ls="-.",
                lw=1,
                label=f"png lossless ({r.bytes_payload:.0f} B)",
            )
        lossy = [r.psnr for r in rows if r.codec != "png" and r.psnr < 99]
        if lossy:
            ax.set_ylim(min(lossy) - 2, max(lossy) + 2)
        cae = [r for r in rows if r.codec.startswith("cae")]
        for codec, marker, color in (
            (CAE_INT8, "*", "tab:green"),
            (CAE_FLOAT, "P", "tab:olive"),
            (CAE_KERAS, "X", "tab:cyan"),
        ):
            pts = sorted((r for r in cae if r.codec == codec), key=lambda r: r.bytes_payload)
            if not pts:
                continue
            ax.plot(
                [r.bytes_payload for r in pts],
                [r.psnr for r in pts],
                ls="--" if len(pts) > 1 else "none",
                marker=marker,
                ms=14 if codec == CAE_INT8 else 9,
                color=color,
                label=codec,
                zorder=5,
            )
            if codec == CAE_INT8:
                for r in pts:
                    ax.annotate(
                        Path(r.setting).name,
                        (r.bytes_payload, r.psnr),
                        textcoords="offset points",
                        xytext=(6, -12),
                        fontsize=8,
                    )
        bd = [d for d in report.bd if d.dataset == ds]
        if bd:
            lines = [f"BD-rate of {CAE_INT8} ({bd[0].method}):"]
            for anchor in dict.fromkeys(d.anchor for d in bd):
                by = {d.bytes_counted: d for d in bd if d.anchor == anchor}
                over = next((d.psnr_range for d in by.values() if d.psnr_range), None)
                span = f" ({over[0]:.1f}-{over[1]:.1f} dB)" if over else ""
                deltas = ", ".join(f"{k} {bd_text(d.bd_rate, '%')}" for k, d in by.items())
                lines.append(f"vs {anchor}{span}: {deltas}")
            ax.text(
                0.98,
                0.03,
                "\n".join(lines),
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=8,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "tab:green"},
            )
        ax.set_xscale("log")
        ax.set_xlabel("bytes per image")
        ax.set_ylabel("PSNR (dB)")
        n = max((r.images for r in rows), default=0)
        ax.set_title(f"{ds}: rate–distortion ({n} test images)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    ax = axes[0][-1]
    labels, p50, p95 = [], [], []
    for b in report.bundles:
        for m in b.latency:
            prefix = f"{b.name}: " if len(report.bundles) > 1 else ""
            labels.append(f"{prefix}{m.model.replace('_float', '')} {m.precision} t{m.threads}")
            p50.append(m.stats.p50_us)
            p95.append(m.stats.p95_us)
    ys = range(len(labels))
    ax.barh([y + 0.2 for y in ys], p50, height=0.4, color="tab:green", label="p50")
    ax.barh([y - 0.2 for y in ys], p95, height=0.4, color="tab:gray", alpha=0.6, label="p95")
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.invert_yaxis()
    if p50:
        ax.set_xlim(0, 3 * max(p50))  # outliers of p95 on a busy machine would hide the p50 bars
    ax.set_xlabel("µs per invoke (p95 bars clipped at 3x the largest p50)")
    ax.set_title("LiteRT latency per model")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    cpu = report.system.cpu_model
    fig.suptitle(
        f"cae-edge benchmark — {cpu}, {report.system.cores} cores, {report.system.litert}", fontsize=10
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- markdown


def markdown(report: dict) -> str:
    """A README-ready summary of a JSON report (the dict form, so saved reports render too).

    Sections: the machine and command, latency p50/p95 per model and thread count with file sizes, the
    per-frame paths, and per dataset the rate–distortion rows sorted by bytes and the bundle family's
    Bjøntegaard deltas.
    """
    s = report["system"]
    lines = [
        f"Measured with `{report['command'] or 'cae-edge benchmark'}` on {s['cpu_model']} "
        f"({s['cores']} cores, {s['machine']}, flags {' '.join(s['cpu_flags']) or '-'}), {s['litert']}, "
        f"Python {s['python']}, load average {s['load_average']}, {report['created']}.",
        "",
        "| bundle | model | precision | threads | p50 µs | p95 µs | file | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in report["bundles"]:
        sizes = {z["model"]: z for z in b["sizes"]}
        for m in b["latency"]:
            z = sizes.get(m["model"], {})
            params = "-" if z.get("params") is None else f"{z['params']:,}"
            lines.append(
                f"| {b['name']} | {m['model']} | {m['precision']} | {m['threads']} "
                f"| {m['stats']['p50_us']:.1f} | {m['stats']['p95_us']:.1f} "
                f"| {z.get('bytes', 0) / 1024:.1f} KB | {params} |"
            )
    if any(b["paths"] for b in report["bundles"]):
        lines += ["", "| bundle | path | steps | threads | p50 µs | p95 µs |", "|---|---|---|---|---|---|"]
        for b in report["bundles"]:
            for p in b["paths"]:
                st = p["stats"]
                lines.append(
                    f"| {b['name']} | {p['path']} | {p['steps']} | {p['threads']} | {st['p50_us']:.1f} "
                    f"| {st['p95_us']:.1f} |"
                )
    for ds in sorted({r["dataset"] for r in report["rd"]}):
        rows = sorted(
            (r for r in report["rd"] if r["dataset"] == ds), key=lambda r: (r["bytes_payload"], r["codec"])
        )
        n = max(r["images"] for r in rows)
        lines += [
            "",
            f"**{ds}** ({n} test images): bytes per image (payload = latent or header-stripped data; "
            "total = wire packet or whole file)",
            "",
            "| codec | setting | bytes payload | bytes total | on the wire (compact) | PSNR dB | SSIM |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            bold = "**" if r["codec"] == CAE_INT8 else ""
            compact = r.get("bytes_compact")  # reports from before compact frames lack it
            lines.append(
                f"| {bold}{r['codec']}{bold} | {Path(r['setting']).name} | {r['bytes_payload']:.1f} "
                f"| {r['bytes_total']:.1f} | {'-' if compact is None else f'{compact:.1f}'} "
                f"| {bold}{r['psnr']:.2f}{bold} | {r['ssim']:.3f} |"
            )
        bd = [d for d in report.get("bd", []) if d["dataset"] == ds]
        if bd:
            lines += [
                "",
                f"Bjøntegaard delta of the {bd[0]['curve']} family ({', '.join(bd[0]['family'])}; "
                f"{bd[0]['method']}, over the PSNR / byte range both curves cover, no extrapolation):",
                "",
                "| vs | bytes | BD-rate | BD-PSNR | PSNR range | note |",
                "|---|---|---|---|---|---|",
            ]
            for d in bd:
                lines.append(
                    f"| {d['anchor']} | {d['bytes_counted']} | **{bd_text(d['bd_rate'], '%')}** "
                    f"| {bd_text(d['bd_psnr'], 'dB')} | {_range(d['psnr_range'], 'dB')} "
                    f"| {bd_note(d['psnr_range'], d['reason'])} |"
                )
    return "\n".join(lines) + "\n"
