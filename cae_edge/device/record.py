"""Record what a camera sees, after a bundle's preprocessing, with capture times: a user's own dataset.

::

    FrameSource ─► [keep at --fps] ─► Preprocessor (the bundle's manifest block) ─► 28x28 uint8 ─┐
                    time stamp: wall clock (camera, stream) | position in the file (video, images)│
    ┌──────────────────────────────────────────────────────────────────────────────────────────┘
    └─► RecordingWriter (cae_edge.device.recording): recording directory, flushed every 100 frames / 5 s
    stop at --frames / --seconds / end of the file / Ctrl-C or SIGTERM / the camera gone ─► closed, complete

A camera's frames are paced to ``fps`` in real time; a file is read as fast as it decodes and sampled by its
own time line, so recording a ten-minute video takes seconds and keeps the video's times. The recording grows
on disk as frames come (the same writer as ``stream send --save-inputs``): a recorder killed mid-way leaves
the frames up to its last flush, readable by ``train --dataset``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, SourceError
from .capture import (
    FrameSource,
    Picamera2Source,
    SyntheticSource,
    VideoCaptureSource,
    _LoopingVideo,
    open_source,
)
from .preprocess import Preprocessor
from .recording import DEFAULT_PREPROCESS, FLUSH_FRAMES, FLUSH_SECONDS, RecordingWriter

Progress = Callable[[int, float], None]
"""Progress callback ``(frames recorded, seconds of recording so far)``."""

MEDIA_RATE = 10.0
"""Frames per second assumed for sources without a time line of their own (images, in-memory frames)."""


@dataclass
class RecordOptions:
    """What to record and when to stop (at least one of ``seconds`` / ``frames`` or a finite source)."""

    out_dir: Path
    """Recording directory to write."""
    preprocess: dict | None = None
    """The bundle manifest's ``preprocess`` block (None: ``recording.DEFAULT_PREPROCESS``)."""
    bundle: str | None = None
    """Name of the bundle whose preprocessing is used (recorded in ``meta.json``)."""
    seconds: float | None = None
    """Stop after this much time (wall clock for a camera, file time for a video)."""
    frames: int | None = None
    """Stop after this many frames."""
    fps: float | None = None
    """Keep at most this many frames per second (None: every frame the source gives)."""
    overwrite: bool = False
    """Replace an existing recording directory (it is removed when the first frame arrives)."""
    flush_frames: int = FLUSH_FRAMES
    """Frames between flushes to disk: at most what a killed recorder loses."""
    flush_s: float = FLUSH_SECONDS
    """Seconds between flushes to disk (a slow camera's frames reach the disk this often)."""

    def validate(self) -> RecordOptions:
        """Raises: ConfigError for a bad limit or rate."""
        if self.seconds is not None and not self.seconds > 0:
            raise ConfigError(f"--seconds {self.seconds}: must be > 0")
        if self.frames is not None and self.frames < 1:
            raise ConfigError(f"--frames {self.frames}: must be >= 1")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"--fps {self.fps}: must be > 0")
        Preprocessor(self.preprocess or DEFAULT_PREPROCESS)  # a bad spec fails before the camera opens
        return self


@dataclass
class RecordResult:
    """What :func:`record` wrote."""

    path: str
    """The recording directory."""
    frames: int
    """Frames recorded."""
    seconds: float
    """Time spanned by the timestamps."""
    clock: str
    """``wall`` (a camera: Unix time) or ``media`` (position in the file)."""
    source: str
    """What the frames came from."""
    interrupted: bool = False
    """Stopped by Ctrl-C / SIGTERM (what was recorded until then is kept)."""
    error: str | None = None
    """The source failed mid-record (camera unplugged, stream dropped): why; the frames before are kept."""

    def to_dict(self) -> dict:
        return asdict(self)


def is_live(source: FrameSource) -> bool:
    """A camera or network stream: frames arrive in real time (and are stamped with the wall clock)."""
    return isinstance(source, Picamera2Source) or bool(getattr(source, "live", False))


def media_rate(source: FrameSource) -> float | None:
    """Frame rate of a file source's own time line, None when it has none."""
    inner = source._src if isinstance(source, _LoopingVideo) else source
    if isinstance(inner, VideoCaptureSource) and inner.fps > 0:
        return float(inner.fps)
    return None


def record(
    opts: RecordOptions,
    source: str | FrameSource,
    *,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> RecordResult:
    """Record preprocessed frames with their capture times, growing a recording directory as they come.

    The frames go to disk through :class:`~cae_edge.device.recording.RecordingWriter` (flushed every
    ``opts.flush_frames`` frames or ``opts.flush_s`` seconds): a process killed mid-record leaves a readable
    recording up to its last flush (``meta.json`` says ``"complete": false``). ``stop`` (the CLI sets it on
    Ctrl-C / SIGTERM), a second Ctrl-C (``KeyboardInterrupt``) and a source that fails mid-record end the
    recording like a limit does: the frames so far are kept and the recording is closed (``complete``).

    Args:
        opts: where to write, the preprocessing and when to stop.
        source: a source spec for :func:`~cae_edge.device.capture.open_source` or an open source (the
            caller closes it then).
        progress: optional callback, called after each recorded frame.
        stop: optional event; once set, the recording ends after the current frame.
        clock: wall clock for live sources (tests pass a fake one).
        sleep: pacing for live sources.

    Returns:
        The :class:`RecordResult` (``error`` says why a source that failed mid-record ended it).

    Raises:
        ConfigError: bad options, an existing output, an endless source with no limit, or no frame at all.
        SourceError: the source cannot be opened, or fails before its first frame.
    """
    opts.validate()
    out = Path(opts.out_dir)
    if out.exists() and not opts.overwrite:
        raise ConfigError(f"recording {str(out)!r} already exists: choose another --out or pass --overwrite")
    pre = Preprocessor(dict(opts.preprocess or DEFAULT_PREPROCESS))
    owned = isinstance(source, str)
    src = open_source(source) if isinstance(source, str) else source
    try:
        live = is_live(src)
        endless = live or (isinstance(src, SyntheticSource) and src._limit is None)
        if endless and opts.seconds is None and opts.frames is None:
            what = "a camera" if live else "the synthetic source"
            raise ConfigError(f"{src}: {what} never ends; give --seconds or --frames (Ctrl-C also stops it)")
        meta = {
            "source": getattr(src, "description", str(source)),
            "preprocess": pre.spec.to_dict(),
            "bundle": opts.bundle,
            "clock": "wall" if live else "media",
            "fps": opts.fps,
            "recorded_by": "cae-edge data record",
        }
        sink = _LazyWriter(out, meta, opts)
        try:
            ended = _loop(src, pre, opts, live, sink, progress, stop or threading.Event(), clock, sleep)
        except Exception as e:  # a full disk, a bad frame: say so in meta.json, keep what was written
            sink.ended = f"failed: {type(e).__name__}: {e}"
            raise
        finally:
            sink.close()
    finally:
        if owned:
            src.close()
    if sink.writer is None:
        if isinstance(ended, SourceError):
            raise ended
        if ended == "stopped":
            raise ConfigError(f"{src}: stopped (Ctrl-C / SIGTERM) before the first frame; nothing recorded")
        raise ConfigError(f"{src}: gave no frame to record")
    return RecordResult(
        path=str(sink.writer.path),
        frames=sink.writer.count,
        seconds=float(sink.writer.meta["seconds"]),
        clock=meta["clock"],
        source=meta["source"],
        interrupted=ended == "stopped",
        error=str(ended) if isinstance(ended, SourceError) else None,
    )


class _LazyWriter:
    """A :class:`RecordingWriter` opened at the first frame: a source that gives none leaves no directory."""

    def __init__(self, out: Path, meta: dict, opts: RecordOptions) -> None:
        self.out, self.meta, self.opts = out, meta, opts
        self.writer: RecordingWriter | None = None
        self.ended = "failed"
        """What ``meta.json`` says ended the recording (set by :func:`_loop` and :func:`record`)."""

    def write(self, frame: np.ndarray, t: float) -> None:
        if self.writer is None:
            self.writer = RecordingWriter(
                self.out,
                self.meta,
                flush_frames=self.opts.flush_frames,
                flush_s=self.opts.flush_s,
                overwrite=self.opts.overwrite,
            )
        self.writer.write(frame, t)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.meta["ended"] = self.ended
            self.writer.close()


def _loop(src, pre, opts: RecordOptions, live: bool, sink: _LazyWriter, progress, stop, clock, sleep):
    """Read, sample, preprocess and stamp frames into ``sink`` until a limit, ``stop`` or the source's end.

    Returns:
        ``"finished"`` (a limit or the source's end), ``"stopped"`` (``stop`` or Ctrl-C) or the
        :class:`SourceError` the source failed with; ``sink.ended`` says it for ``meta.json``.
    """
    rate = None if live else (media_rate(src) or opts.fps or MEDIA_RATE)
    period = 1.0 / opts.fps if opts.fps else 0.0
    n = kept = 0  # frames read (media time = n / rate), frames recorded
    t0: float | None = None
    next_keep = 0.0
    ended: str | SourceError = "finished"
    try:
        while opts.frames is None or kept < opts.frames:
            if stop.is_set():
                ended = "stopped"
                break
            if live and period and t0 is not None:
                wait = t0 + next_keep - clock()
                if wait > 0:
                    sleep(wait)
            frame = src.read()
            if frame is None:
                break
            t = clock() if live else n / rate
            n += 1
            if t0 is None:
                t0 = t
            if opts.seconds is not None and t - t0 >= opts.seconds:
                break
            if not live and t - t0 + 1e-9 < next_keep:
                continue  # a file faster than --fps: skip to the next sample time
            next_keep = (t - t0) + period if live else next_keep + period
            sink.write(pre(frame), t)
            kept += 1
            if progress:
                progress(kept, t - t0)
    except KeyboardInterrupt:
        ended = "stopped"
    except SourceError as e:
        ended = e
    sink.ended = f"source error: {ended}" if isinstance(ended, SourceError) else ended
    return ended
