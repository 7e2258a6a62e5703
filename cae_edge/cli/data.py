"""`cae-edge data`: obtain, cache and describe the datasets; record your own frames; make the demo video."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .. import datasets
from ..errors import CaeEdgeError
from .common import fail, print_json, progress_bar, stop_on_signals
from .stream import EXIT_SOURCE_FAILED

app = typer.Typer(
    help="Obtain, cache and describe MNIST, Fashion-MNIST and real scenes; record your own frames; "
    "make the demo video.",
    no_args_is_help=True,
)
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Directory with the IDX .gz files, tried first.", file_okay=False),
]


@app.command()
def fetch(
    name: Annotated[str, typer.Argument(help="mnist, fashion or scenes")],
    data_dir: DataDir = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never try the Keras download.")] = False,
) -> None:
    """Get a dataset from the first source that works and cache it as one compact file."""
    try:
        with progress_bar(f"fetching {name}") as progress:
            ds, path = datasets.fetch(name, data_dir, download=not offline, progress=progress)
    except CaeEdgeError as e:
        raise fail(e) from None
    typer.echo(f"{ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test from {ds.source}")
    typer.echo(f"split: {ds.split}")
    typer.echo(f"cached at {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def info(
    name: Annotated[str | None, typer.Argument(help="mnist, fashion or scenes; all when omitted")] = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show where each dataset would be loaded from, with its size and split."""
    try:
        names = [datasets.canonical_name(name)] if name else list(datasets.DATASETS)
    except CaeEdgeError as e:
        raise fail(e) from None
    rows = []
    failed = False
    for n in names:
        try:
            rows.append(datasets.load(n, data_dir).summary())
        except CaeEdgeError as e:
            failed = True
            rows.append({"name": n, "error": str(e)})
    if as_json:
        print_json(rows)
    else:
        table = Table("dataset", "train", "test", "split", "source")
        for r in rows:
            if "error" in r:
                table.add_row(r["name"], "-", "-", "-", f"[red]{r['error']}[/red]")
            else:
                table.add_row(r["name"], str(r["train"]), str(r["test"]), r["split"], r["source"])
        Console().print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def record(
    source: Annotated[
        str,
        typer.Option(
            "--source",
            "-s",
            help="Camera index, /dev/videoN, picamera2, URL, video file or image folder (as `stream send`).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Recording directory to write.")],
    bundle: Annotated[
        str | None,
        typer.Option(
            "--bundle",
            "-b",
            help="Preprocess frames as this bundle does (shipped name or directory). Default: a scene as "
            "the camera sees it (centre square, gray, 28x28; no inversion, no digit normalisation).",
        ),
    ] = None,
    seconds: Annotated[
        float | None,
        typer.Option("--seconds", help="Stop after this long (a camera: wall clock; a video: its own time)."),
    ] = None,
    frames: Annotated[int | None, typer.Option("--frames", help="Stop after this many frames.")] = None,
    fps: Annotated[
        float | None, typer.Option("--fps", help="Keep at most this many frames per second (default: all).")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an existing recording (removed at the first frame)."),
    ] = False,
) -> None:
    """Record frames after the bundle's preprocessing, with capture times: a dataset for `train --dataset`.

    Writes OUT/frames.npy (uint8 N x 28 x 28), OUT/timestamps.npy (seconds) and OUT/meta.json as the frames
    come, flushed every 100 frames or 5 s (a killed recorder loses at most those). A camera records until
    --seconds / --frames or Ctrl-C / SIGTERM; a video file or folder until its end (or a limit). Exit codes:
    0 recorded, 1 could not start, 3 the camera failed mid-record (the frames before it are kept).
    """
    from ..device.record import RecordOptions
    from ..device.record import record as do_record

    try:
        preprocess = None
        if bundle is not None:
            from ..device.bundle import resolve_bundle
            from ..manifest import Manifest

            preprocess = dict(Manifest.read(resolve_bundle(bundle)).preprocess)
        opts = RecordOptions(
            out_dir=out,
            preprocess=preprocess,
            bundle=bundle,
            seconds=seconds,
            frames=frames,
            fps=fps,
            overwrite=overwrite,
        )
        stop = stop_on_signals()
        with progress_bar("recording", total=frames) as step:
            result = do_record(
                opts, source, progress=lambda n, t: step(f"recording {t:.1f} s", n, frames), stop=stop
            )
    except CaeEdgeError as e:
        raise fail(e) from None
    except OSError as e:  # disk full, folder gone: what was flushed before stays readable
        what = e.strerror or e
        raise fail(f"{out}: cannot write the recording ({what}); free space or use another --out") from None
    note = " (stopped by Ctrl-C / SIGTERM)" if result.interrupted else ""
    typer.echo(
        f"recorded {result.frames} frames over {result.seconds:.1f} s ({result.clock} clock) "
        f"from {result.source}{note}"
    )
    typer.echo(f"recording: {result.path}")
    if result.error is not None:
        fail(
            f"{result.error} -- the recording keeps the {result.frames} frames before it; check the camera, "
            "then record again (another --out, or --overwrite)"
        )
        raise typer.Exit(EXIT_SOURCE_FAILED)


@app.command("demo-video")
def demo_video(
    out: Annotated[Path, typer.Option("--out", "-o", help="Video file to write (.avi or .mp4).")],
    seconds: Annotated[float, typer.Option("--seconds", help="Length of the video.")] = 60.0,
    fps: Annotated[float, typer.Option("--fps", help="Frame rate of the video.")] = 10.0,
    width: Annotated[int, typer.Option("--width", help="Frame width in pixels.")] = 320,
    height: Annotated[int, typer.Option("--height", help="Frame height in pixels.")] = 240,
) -> None:
    """Write a demo video: a virtual camera panning across real photographs (CC0 / public domain).

    A stand-in for a camera when there is none: `cae-edge data record --source VIDEO` records it like one.
    """
    from ..photos import write_pan_video

    try:
        info = write_pan_video(out, seconds=seconds, fps=fps, size=(width, height))
    except CaeEdgeError as e:
        raise fail(e) from None
    typer.echo(f"wrote {info['path']}: {info['frames']} frames at {info['fps']:g} fps, {width}x{height}")
    for p in info["photos"]:
        typer.echo(f"  {p['file']}: {p['what']} ({p['licence']})")
