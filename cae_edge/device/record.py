"""Record what a camera sees, after a bundle's preprocessing, with capture times: a user's own dataset.

::

    FrameSource ─► [keep at --fps] ─► Preprocessor (the bundle's manifest block) ─► 28x28 uint8 ─┐
                    time stamp: wall clock (camera, stream) | position in the file (video, images)│
    stop at --frames / --seconds / end of the file / Ctrl-C ─► recording directory (cae_edge.device.recording)

A camera's frames are paced to ``fps`` in real time; a file is read as fast as it decodes and sampled by its
own time line, so recording a ten-minute video takes seconds and keeps the video's times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .capture import (
    FrameSource,
    Picamera2Source,
    SyntheticSource,
    VideoCaptureSource,
    _LoopingVideo,
    open_source,
)
from .preprocess import Preprocessor
from .recording import DEFAULT_PREPROCESS, Recording, write_recording

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
    """Replace an existing recording directory."""

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
    """Stopped by Ctrl-C (what was recorded until then is kept)."""

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
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> RecordResult:
    """Record preprocessed frames with their capture times into a recording directory.

    Ctrl-C (``KeyboardInterrupt``) ends the recording like a limit does: the frames so far are written.

    Args:
        opts: where to write, the preprocessing and when to stop.
        source: a source spec for :func:`~cae_edge.device.capture.open_source` or an open source (the
            caller closes it then).
        progress: optional callback, called after each recorded frame.
        clock: wall clock for live sources (tests pass a fake one).
        sleep: pacing for live sources.

    Returns:
        The :class:`RecordResult`.

    Raises:
        ConfigError: bad options, an existing output, or an endless source with no limit.
        SourceError: the source cannot be opened or stops delivering.
    """
    opts.validate()
    out = Path(opts.out_dir)
    if out.exists() and not opts.overwrite:
        raise ConfigError(f"recording {str(out)!r} already exists: choose another --out or pass --overwrite")
    spec = dict(opts.preprocess or DEFAULT_PREPROCESS)
    pre = Preprocessor(spec)
    owned = isinstance(source, str)
    src = open_source(source) if isinstance(source, str) else source
    try:
        live = is_live(src)
        endless = live or (isinstance(src, SyntheticSource) and src._limit is None)
        if endless and opts.seconds is None and opts.frames is None:
            what = "a camera" if live else "the synthetic source"
            raise ConfigError(f"{src}: {what} never ends; give --seconds or --frames (Ctrl-C also stops it)")
        frames, stamps, interrupted = _loop(src, pre, opts, live, progress, clock, sleep)
    finally:
        if owned:
            src.close()
    if not frames:
        raise ConfigError(f"{src}: gave no frame to record")
    ts = np.asarray(stamps, np.float64)
    meta = {
        "source": getattr(src, "description", str(source)),
        "preprocess": pre.spec.to_dict(),
        "bundle": opts.bundle,
        "clock": "wall" if live else "media",
        "fps": opts.fps,
    }
    path = write_recording(out, Recording(np.stack(frames), ts, meta), overwrite=opts.overwrite)
    return RecordResult(
        path=str(path),
        frames=len(frames),
        seconds=float(ts[-1] - ts[0]),
        clock=meta["clock"],
        source=meta["source"],
        interrupted=interrupted,
    )


def _loop(src, pre, opts: RecordOptions, live: bool, progress, clock, sleep):
    """Read, sample, preprocess and stamp frames until a limit; ``(frames, stamps, interrupted)``."""
    frames: list[np.ndarray] = []
    stamps: list[float] = []
    rate = None if live else (media_rate(src) or opts.fps or MEDIA_RATE)
    period = 1.0 / opts.fps if opts.fps else 0.0
    n = 0  # frames read (media time = n / rate)
    t0: float | None = None
    next_keep = 0.0
    try:
        while opts.frames is None or len(frames) < opts.frames:
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
            frames.append(pre(frame))
            stamps.append(t)
            if progress:
                progress(len(frames), t - t0)
    except KeyboardInterrupt:
        return frames, stamps, True
    return frames, stamps, False
