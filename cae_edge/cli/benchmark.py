"""`cae-edge benchmark`: latency, size and rate–distortion against JPEG, WebP, JPEG XL, PNG and PCA. No
TensorFlow import here; Keras float rows need TensorFlow and ``--run``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import CaeEdgeError
from .common import dim, fail, progress_bar, write_json


def benchmark(
    bundle: Annotated[
        list[str] | None,
        typer.Option(
            "--bundle",
            "-b",
            help="Shipped bundle name (mnist, fashion, a preset) or bundle directory. Repeat for several.",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Evaluate on this dataset (mnist|fashion|scenes) instead of each bundle's own."),
    ] = None,
    threads: Annotated[
        list[int] | None,
        typer.Option("--threads", "-t", help="Interpreter threads to time; repeatable. [1, all]"),
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed invokes per model and thread count.")] = 1000,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed invokes before timing.")] = 100,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Use the first N test images for quality (default: all).")
    ] = None,
    no_baselines: Annotated[
        bool, typer.Option("--no-baselines", help="Skip JPEG/WebP/JPEG XL/PNG/PCA.")
    ] = False,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            exists=True,
            file_okay=False,
            help="Training run directory: adds Keras float rows (needs TF).",
        ),
    ] = None,
    litert_tool: Annotated[
        bool,
        typer.Option(
            "--litert-tool",
            help="Cross-check p50 with LiteRT's benchmark_litert_model and CompiledModel (slower).",
        ),
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", dir_okay=False, help="Write every figure as JSON.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", dir_okay=False, help="Write RD curves + latency chart (PNG).")
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", dir_okay=False, help="Write README-ready markdown tables.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", file_okay=False, help="Directory with the IDX .gz files.")
    ] = None,
    kernels: Annotated[
        bool,
        typer.Option(
            "--kernels",
            help="Instead of latency and RD: int8 PSNR per kernel family running the encoder "
            "(--encoder-kernels, --kernel-latents) and the spread between them.",
        ),
    ] = False,
    encoder_kernels: Annotated[
        str,
        typer.Option("--encoder-kernels", help="With --kernels: comma-separated families to run here."),
    ] = "xnnpack,builtin,micro",
    tiles: Annotated[
        int | None,
        typer.Option(
            "--tiles",
            min=2,
            max=16,
            help="Instead of latency and RD: each bundle (default scenes-small, -hq, -xl) on 28N x 28N "
            "frames of the held-out scenes photographs sent as NxN tiles in one packet, against WebP and "
            "JPEG XL on the same frames, with PSNR along the tile seams vs inside the tiles. --limit: "
            "frames (300).",
        ),
    ] = None,
    kernel_latents: Annotated[
        list[str] | None,
        typer.Option(
            "--kernel-latents",
            help="With --kernels: NAME=FILE, test-split int8 latents made elsewhere (e.g. NAME aarch64 from "
            "an emulated build); .npy (N, D) for one bundle or .npz with one array per bundle name. "
            "Repeatable.",
        ),
    ] = None,
) -> None:
    """Measure latency, size and quality-vs-bytes of bundles against JPEG, WebP, JPEG XL, PNG and PCA.

    Latency: LiteRT invoke() timed with perf_counter_ns, per model and thread count (µs percentiles).

    Per frame: sender (preprocess, encode, pack) and receiver (unpack, decode) paths; for entropy-coded
    bundles also the entropy coder alone (encode, decode) and the latent values it had to escape.

    Quality: PSNR/SSIM over the test split at the bytes actually sent, and the Bjontegaard delta (BD-rate,
    BD-PSNR) of each dataset's bundle family against WebP and JPEG XL (JSON: docs/benchmark-schema.md).
    """
    if kernels:
        _kernels(bundle, encoder_kernels, kernel_latents, limit, data_dir, json_out, markdown)
        return
    if tiles is not None:
        _tiles(bundle, tiles, limit, no_baselines, json_out, markdown)
        return
    from ..benchmark.report import markdown as to_markdown
    from ..benchmark.report import plot as draw
    from ..benchmark.report import tables
    from ..benchmark.run import BenchmarkOptions, run_benchmark

    opts = BenchmarkOptions(
        bundles=list(bundle or ["mnist"]),
        dataset=dataset,
        threads=list(threads) if threads else None,
        runs=runs,
        warmup=warmup,
        limit=limit,
        baselines=not no_baselines,
        keras_run=str(run) if run else None,
        litert_tool=litert_tool,
        data_dir=str(data_dir) if data_dir else None,
        command="cae-edge " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    try:
        with progress_bar("benchmark") as progress:
            report = run_benchmark(opts, progress)
    except CaeEdgeError as e:
        raise fail(e) from None
    console = Console(width=None if sys.stdout.isatty() else 160)  # wide tables in logs and files
    s = report.system
    console.print(
        f"[bold]cae-edge benchmark[/bold] on {s.cpu_model} ({s.cores} cores, {s.machine}), {s.os}; "
        f"Python {s.python}, {s.litert}, numpy {s.numpy}; load average {s.load_average}"
    )
    for table in tables(report):
        console.print(table)
    _finish(console, report, json_out, markdown, to_markdown)
    if plot:
        draw(report, plot)
        console.print(f"wrote {plot}")


def _finish(console: Console, report, json_out: Path | None, markdown: Path | None, to_markdown) -> None:
    """The report's notes, its memory and time, and the JSON / Markdown files asked for."""
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"peak RSS {report.peak_rss_bytes / 2**20:.0f} MiB, {report.wall_s:.1f} s")
    if json_out:
        report.to_json(json_out)
        console.print(f"wrote {json_out}")
    if markdown:
        markdown.write_text(to_markdown(report.to_dict()), encoding="utf-8")
        console.print(f"wrote {markdown}")


def _tiles(
    bundle: list[str] | None,
    n: int,
    limit: int | None,
    no_baselines: bool,
    json_out: Path | None,
    markdown: Path | None,
) -> None:
    """``--tiles N``: tiled frames against WebP and JPEG XL, seams vs interiors."""
    from ..benchmark.tiles import FRAMES, TilesOptions, run_tiles, table
    from ..benchmark.tiles import markdown as to_markdown

    opts = TilesOptions(
        tiles=n,
        frames=limit or FRAMES,
        baselines=not no_baselines,
        command="cae-edge " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    if bundle:
        opts.bundles = list(bundle)
    try:
        with progress_bar("benchmark --tiles") as progress:
            report = run_tiles(opts, progress)
    except CaeEdgeError as e:
        raise fail(e) from None
    console = Console(width=None if sys.stdout.isatty() else 160)
    s = report.system
    console.print(
        f"[bold]cae-edge benchmark --tiles {n}[/bold] on {s.cpu_model} ({s.cores} cores), "
        f"load average {s.load_average}"
    )
    console.print(table(report))
    from ..benchmark.report import tables

    bd = [t for t in tables(report) if "Bjøntegaard" in str(t.title)]
    for t in bd:
        console.print(t)
    _finish(console, report, json_out, markdown, to_markdown)


def _kernels(
    bundle: list[str] | None,
    encoder_kernels: str,
    kernel_latents: list[str] | None,
    limit: int | None,
    data_dir: Path | None,
    json_out: Path | None,
    markdown: Path | None,
) -> None:
    """``--kernels``: the per-kernel-family quality table."""
    from rich.table import Table

    from ..benchmark.kernels import KernelsOptions, markdown_table, run_kernels

    latents = {}
    for item in kernel_latents or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise fail(f"--kernel-latents {item!r}: expected NAME=FILE, e.g. aarch64=arm64.npz")
        latents[name] = path
    opts = KernelsOptions(
        bundles=list(bundle or ["mnist"]),
        kernels=tuple(k.strip() for k in encoder_kernels.split(",") if k.strip()),
        latents=latents,
        limit=limit,
        data_dir=str(data_dir) if data_dir else None,
    )
    try:
        results = run_kernels(opts, lambda what, done, total: dim(what))
    except CaeEdgeError as e:
        raise fail(e) from None
    families = list(dict.fromkeys(k for r in results for k in r.psnr))
    table = Table(
        "bundle", "images", *[f"{k} dB" for k in families], "spread dB",
        title="int8 PSNR by the kernels that run the encoder (decoder: XNNPACK)",
    )  # fmt: skip
    for r in results:
        cells = [f"{r.psnr[k]:.2f}" if k in r.psnr else "-" for k in families]
        table.add_row(r.bundle, str(r.n_images), *cells, f"{r.spread_db:.2f}")
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    command = "cae-edge " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if json_out:
        write_json(json_out, {"command": command, "kernels": [r.to_dict() for r in results]})
        typer.echo(f"wrote {json_out}")
    if markdown:
        markdown.write_text(markdown_table(results) + f"\n`{command}`\n", encoding="utf-8")
        typer.echo(f"wrote {markdown}")
