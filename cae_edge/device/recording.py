"""A user's own frames as a dataset: the recording format, and images / videos / recordings split by time.

No TensorFlow: a camera node writes recordings (:mod:`cae_edge.device.record`), training and export read them.

A recording is a directory::

    DIR/frames.npy       uint8 (N, S, S): frames after the preprocessing named in meta.json (S = 28)
    DIR/timestamps.npy   float64 (N,): capture time of each frame in seconds (wall clock for a camera,
                         position in the file for a video, frame number / rate for images)
    DIR/meta.json        {"format": "cae-edge-recording-1", "source", "preprocess", "bundle", "count",
                          "clock", "created", "complete" (false until closed), "ended", ...}

:class:`RecordingWriter` grows one frame by frame, for ``cae-edge data record`` and ``cae-edge stream send
--save-inputs`` alike, readable after every flush: the ``.npy`` headers say how many frames are complete,
and a writer killed mid-chunk leaves a recording that ends at its last flush (``meta.json`` has
``"complete": false`` until it is closed).

``cae-edge train --dataset PATH`` accepts such a directory, a folder of images or a video file
(:func:`load_user_dataset`); images and video frames are preprocessed on the way in, with the preprocessing
of the bundle the run starts from or :data:`DEFAULT_PREPROCESS`. The split is by time, not random
(:func:`time_split`): the last ``test_fraction`` of the frames by time is the test split and ``gap`` frames
just before it are dropped, so a test frame never has a near-copy (its neighbour) in the training split.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataNotFoundError
from .status import write_json_atomic

FORMAT = "cae-edge-recording-1"
FRAMES_FILE = "frames.npy"
TIMESTAMPS_FILE = "timestamps.npy"
META_FILE = "meta.json"

DEFAULT_PREPROCESS = {
    "size": 28,
    "grayscale": True,
    "invert": False,
    "crop": "center",
    "mnist_normalize": False,
}
"""Preprocessing of images and video frames when no bundle names one: a scene as the camera sees it
(centre square, gray, 28x28). The shipped MNIST bundles' ``invert`` / ``mnist_normalize`` suit ink on paper,
not a scene."""

TEST_FRACTION = 0.2
"""Default share of the frames, the latest by time, that forms the test split."""
GAP_FRAMES = 5
"""Default number of frames dropped between the training and the test split."""

KINDS = ("recording", "images", "video")
"""What a user dataset path can be."""

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".h264")
"""Files taken for video by :func:`dataset_kind` (anything else that is a file is tried as a video too)."""


@dataclass
class Recording:
    """Frames and their capture times, as a recording directory holds them."""

    frames: np.ndarray
    """uint8 (N, S, S), already preprocessed."""
    timestamps: np.ndarray
    """float64 (N,), seconds."""
    meta: dict = field(default_factory=dict)
    """The content of ``meta.json``."""

    @property
    def preprocess(self) -> dict:
        """The preprocessing the frames went through (the manifest block of the bundle that recorded)."""
        return dict(self.meta.get("preprocess") or DEFAULT_PREPROCESS)


def check_frames(frames: np.ndarray, timestamps: np.ndarray, where: str) -> None:
    """Check shapes, dtypes and values of a frame array and its timestamps.

    Raises:
        ConfigError: naming ``where`` and what is wrong.
    """
    if frames.dtype != np.uint8 or frames.ndim != 3 or frames.shape[1] != frames.shape[2]:
        raise ConfigError(f"{where}: frames are {frames.dtype} {frames.shape}, expected uint8 (N, S, S)")
    if timestamps.shape != (len(frames),):
        raise ConfigError(
            f"{where}: {timestamps.shape} timestamps for {len(frames)} frames; need one per frame"
        )
    if not np.all(np.isfinite(timestamps)):
        raise ConfigError(f"{where}: timestamps are not all finite numbers")


FLUSH_FRAMES = 100
"""Default :class:`RecordingWriter` chunk: frames between flushes (at most what a killed writer loses)."""
FLUSH_SECONDS = 5.0
"""Default :class:`RecordingWriter` flush period: a slow source's frames reach the disk this often."""
_HEADER_BYTES = 128
"""Fixed length of the ``.npy`` headers :class:`RecordingWriter` rewrites in place (any count fits)."""


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header of exactly :data:`_HEADER_BYTES` bytes, padded with spaces."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape})
    body = text.encode("latin1").ljust(_HEADER_BYTES - 10 - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


class RecordingWriter:
    """Grows a recording directory frame by frame; each flush leaves a recording :func:`read_recording` reads.

    Frames and timestamps are appended to ``frames.npy`` / ``timestamps.npy`` behind fixed-size headers. A
    flush (every ``flush_frames`` frames or ``flush_s`` seconds, and at :meth:`close`) pushes the data to the
    operating system, then rewrites both headers with the new count and ``meta.json`` (atomically). A process
    killed between flushes loses the frames since the last one (at most ``flush_frames``, or ``flush_s``
    seconds' worth); its ``meta.json`` keeps ``"complete": false``. Only :meth:`close` fsyncs (a power cut can
    lose more).

    Args:
        out_dir: the recording directory (created; it must not exist unless ``overwrite``).
        meta: what ``meta.json`` says besides ``format``, ``count``, ``seconds``, ``created`` and
            ``complete`` (source, preprocess, bundle, clock, ...).
        flush_frames: frames between flushes.
        flush_s: seconds between flushes (checked at each frame).
        overwrite: replace an existing directory.

    Raises:
        ConfigError: the directory exists (without ``overwrite``) or cannot be created, or a bad flush period.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        meta: dict | None = None,
        *,
        flush_frames: int = FLUSH_FRAMES,
        flush_s: float = FLUSH_SECONDS,
        overwrite: bool = False,
    ) -> None:
        if flush_frames < 1 or not flush_s > 0:
            raise ConfigError(f"flush every {flush_frames} frames / {flush_s} s: need >= 1 frame and > 0 s")
        out = Path(out_dir)
        if out.exists() and not overwrite:
            raise ConfigError(
                f"recording {str(out)!r} already exists: choose another folder, or remove it to record again"
            )
        try:
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            self._frames = open(out / FRAMES_FILE, "wb")  # noqa: SIM115  (open until close())
            self._stamps = open(out / TIMESTAMPS_FILE, "wb")  # noqa: SIM115
        except OSError as e:
            raise ConfigError(f"recording {str(out)!r}: cannot create it ({e.strerror or e})") from None
        self.path = out
        self.meta = {"format": FORMAT, **(meta or {})}
        self.meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.flush_frames, self.flush_s = int(flush_frames), float(flush_s)
        self.count = 0
        """Frames written (the last ones may wait for the next flush)."""
        self.flushed = 0
        """Frames a reader sees now."""
        self._size: int | None = None
        self._first = self._last = 0.0
        self._next_flush = time.monotonic() + self.flush_s
        self.closed = False
        self.flush()

    def write(self, frame: np.ndarray, t: float) -> None:
        """Append one frame (uint8 (S, S), S fixed by the first frame) captured at ``t`` seconds.

        Raises:
            ConfigError: a frame of another shape or dtype, or a timestamp that is not a finite number.
            OSError: the disk is full or the files are gone.
        """
        if frame.dtype != np.uint8 or frame.ndim != 2 or frame.shape[0] != frame.shape[1]:
            raise ConfigError(f"{self.path}: frame {frame.dtype} {frame.shape}, expected uint8 (S, S)")
        if self._size is None:
            self._size = int(frame.shape[0])
        elif frame.shape[0] != self._size:
            raise ConfigError(
                f"{self.path}: frame {frame.shape}, the recording's frames are {self._size}x{self._size}"
            )
        t = float(t)
        if not np.isfinite(t):
            raise ConfigError(f"{self.path}: timestamp {t!r} is not a finite number")
        self._frames.write(np.ascontiguousarray(frame).tobytes())
        self._stamps.write(np.float64(t).tobytes())
        if self.count == 0:
            self._first = t
        self._last = t
        self.count += 1
        if self.count - self.flushed >= self.flush_frames or time.monotonic() >= self._next_flush:
            self.flush()

    def flush(self, *, complete: bool = False, sync: bool = False) -> None:
        """Make every frame written so far readable: data out, then the headers, then ``meta.json``."""
        n, size = self.count, self._size or 28
        for f in (self._frames, self._stamps):
            f.flush()
            if sync:
                os.fsync(f.fileno())
        # timestamps first: a kill between the two header writes leaves more frames than stamps, which
        # read_recording trims in an incomplete recording
        for f, descr, shape in ((self._stamps, "<f8", (n,)), (self._frames, "|u1", (n, size, size))):
            end = f.seek(0, os.SEEK_END)
            f.seek(0)
            f.write(_npy_header(descr, shape))
            f.flush()
            if sync:
                os.fsync(f.fileno())
            f.seek(max(end, _HEADER_BYTES))
        self.meta.update(count=n, seconds=self._last - self._first if n else 0.0, complete=bool(complete))
        write_json_atomic(self.path / META_FILE, self.meta)
        self.flushed = n
        self._next_flush = time.monotonic() + self.flush_s

    def close(self) -> None:
        """Flush (with fsync) and close; the recording is then marked ``complete``. Safe to call twice."""
        if self.closed:
            return
        try:
            self.flush(complete=True, sync=True)
        finally:
            self.closed = True
            self._frames.close()
            self._stamps.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_recording(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding ``frames.npy``."""
    return (Path(path) / FRAMES_FILE).is_file()


def read_recording(path: str | os.PathLike) -> Recording:
    """Read a recording directory.

    Raises:
        DataNotFoundError: a file is missing.
        ConfigError: a file is unreadable, of another format, or the arrays do not fit together.
    """
    d = Path(path)
    missing = [n for n in (FRAMES_FILE, TIMESTAMPS_FILE, META_FILE) if not (d / n).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{d}: not a recording (missing {', '.join(missing)}); make one with "
            "`cae-edge data record --source SRC --out DIR`"
        )
    try:
        meta = json.loads((d / META_FILE).read_text())
        frames = np.load(d / FRAMES_FILE, allow_pickle=False)
        ts = np.load(d / TIMESTAMPS_FILE, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{d}: unreadable recording ({e}); record it again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ConfigError(f"{d / META_FILE}: format {fmt!r}, expected {FORMAT!r}")
    if meta.get("complete") is False and frames.ndim == 3 and np.ndim(ts) == 1:
        n = min(len(frames), len(ts))  # a writer killed between its two header updates
        frames, ts = frames[:n], ts[:n]
    check_frames(frames, np.asarray(ts), str(d))
    return Recording(frames, np.asarray(ts, np.float64), meta)


# ---------------------------------------------------------------- time split


@dataclass(frozen=True)
class TimeSplit:
    """Which frames train and which test, by time."""

    train: np.ndarray
    """Indices of the training frames, in time order."""
    test: np.ndarray
    """Indices of the test frames (the latest), in time order."""
    gap: int
    """Frames dropped between the two."""

    def describe(self, test_fraction: float) -> str:
        return (
            f"by time: the last {test_fraction:.0%} of the frames are test, "
            f"{self.gap} frames before them dropped ({len(self.train)} train / {len(self.test)} test)"
        )


def time_split(
    timestamps: np.ndarray, test_fraction: float = TEST_FRACTION, gap: int = GAP_FRAMES
) -> TimeSplit:
    """Split frames by capture time: the latest ``test_fraction`` is test, ``gap`` frames before it dropped.

    Ties in time keep their recorded order (a stable sort).

    Raises:
        ConfigError: a fraction outside (0, 0.9], a negative gap, or too few frames for a train and a test
            frame with the gap between them.
    """
    if not 0.0 < float(test_fraction) <= 0.9:
        raise ConfigError(f"test fraction {test_fraction}: must be in (0, 0.9], e.g. {TEST_FRACTION}")
    if int(gap) < 0:
        raise ConfigError(f"gap {gap}: must be >= 0 frames")
    n = len(timestamps)
    n_test = max(1, int(round(n * float(test_fraction))))
    n_train = n - n_test - int(gap)
    if n_train < 1:
        raise ConfigError(
            f"{n} frames: too few for a time split with {n_test} test frames and a {gap}-frame gap; "
            "record more frames"
        )
    order = np.argsort(np.asarray(timestamps), kind="stable")
    return TimeSplit(train=order[:n_train], test=order[n - n_test :], gap=int(gap))


# ---------------------------------------------------------------- user datasets


def dataset_kind(path: str | os.PathLike) -> str:
    """``recording``, ``images`` or ``video`` for an existing path.

    Raises:
        DataNotFoundError: the path does not exist.
        ConfigError: a folder that holds neither a recording nor images.
    """
    from .capture import IMAGE_SUFFIXES

    p = Path(path)
    if not p.exists():
        raise DataNotFoundError(
            f"dataset {str(p)!r}: no such file or folder; give mnist, fashion, a recording directory "
            "(`cae-edge data record`), a folder of images or a video file"
        )
    if p.is_dir():
        if is_recording(p):
            return "recording"
        if any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir()):
            return "images"
        raise ConfigError(f"{p}/: neither a recording (no {FRAMES_FILE}) nor a folder of images")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return "images"
    return "video"


def read_source_frames(
    path: str | os.PathLike, preprocess: dict, kind: str
) -> tuple[np.ndarray, np.ndarray, str]:
    """Preprocess every frame of a folder of images or a video file.

    Timestamps are the frame's position in the video (frame number / the file's rate), or for images the
    position in name order (the order the folder source reads them).

    Returns:
        ``(frames, timestamps, what)``: uint8 (N, S, S), float64 (N,), a description.

    Raises:
        SourceError: the images or the video cannot be read.
        ConfigError: a bad preprocessing spec, or no frame at all.
    """
    from .capture import ImageFolderSource, VideoCaptureSource
    from .preprocess import Preprocessor

    pre = Preprocessor(preprocess)
    if kind == "images":
        src: Any = ImageFolderSource(path)
        rate = 1.0
    else:
        src = VideoCaptureSource(str(path), live=False)
        rate = src.fps if src.fps > 0 else 1.0
    frames = []
    with src:
        while (frame := src.read()) is not None:
            frames.append(pre(frame))
    if not frames:
        raise ConfigError(f"{path}: no frames")
    ts = np.arange(len(frames), dtype=np.float64) / rate
    unit = "times: file order" if kind == "images" else f"times: frame position at {rate:g} fps"
    return np.stack(frames), ts, f"{len(frames)} {'images' if kind == 'images' else 'video frames'} ({unit})"


@dataclass
class UserData:
    """What a run records about a user dataset (``config.json["data"]`` fields), enough to load it again."""

    path: str
    """The recording directory, image folder or video file as given."""
    kind: str
    """``recording``, ``images`` or ``video``."""
    preprocess: dict
    """The preprocessing the frames went through: what the bundle's manifest must say."""
    test_fraction: float = TEST_FRACTION
    """Share of the frames (the latest) in the test split."""
    gap: int = GAP_FRAMES
    """Frames dropped between training and test split."""

    def to_dict(self) -> dict:
        return asdict(self)


def load_user_dataset(
    path: str | os.PathLike,
    *,
    preprocess: dict | None = None,
    test_fraction: float = TEST_FRACTION,
    gap: int = GAP_FRAMES,
):
    """Load a recording, a folder of images or a video file as a :class:`~cae_edge.datasets.Dataset`.

    Args:
        path: the recording directory, image folder or video file.
        preprocess: preprocessing for images and video (default :data:`DEFAULT_PREPROCESS`); a recording
            keeps the preprocessing it was recorded with (a different one given here is an error).
        test_fraction: share of the frames, the latest by time, in the test split.
        gap: frames dropped between the splits.

    Returns:
        The dataset (``name`` = the kind, labels all 0, ``t_train`` / ``t_test`` the capture times,
        ``user`` the :class:`UserData`).

    Raises:
        DataNotFoundError: the path does not exist or is not a complete recording.
        ConfigError: bad frames, a preprocessing conflict or too few frames.
        SourceError: images or video that cannot be read.
    """
    from .. import datasets
    from .preprocess import PreprocessSpec

    kind = dataset_kind(path)
    if kind == "recording":
        rec = read_recording(path)
        spec = PreprocessSpec.from_dict(rec.preprocess).to_dict()
        if preprocess is not None and PreprocessSpec.from_dict(preprocess).to_dict() != spec:
            raise ConfigError(
                f"{path}: recorded with preprocessing {spec}, not {preprocess}; record again with the "
                "bundle you want, or train from the recording as it is"
            )
        frames, ts = rec.frames, rec.timestamps
        what = f"{len(frames)} recorded frames from {Path(str(rec.meta.get('source', '?'))).name}"
    else:
        spec = PreprocessSpec.from_dict(preprocess or DEFAULT_PREPROCESS).to_dict()
        frames, ts, what = read_source_frames(path, spec, kind)
    if frames.shape[1:] != (28, 28):
        raise ConfigError(
            f"{path}: frames are {frames.shape[1]}x{frames.shape[2]}; the models take 28x28 (size 28)"
        )
    split = time_split(ts, test_fraction, gap)
    user = UserData(str(path), kind, spec, float(test_fraction), int(gap))
    return datasets.Dataset(
        name=kind,
        x_train=frames[split.train],
        y_train=np.zeros(len(split.train), np.uint8),
        x_test=frames[split.test],
        y_test=np.zeros(len(split.test), np.uint8),
        source=f"{kind} {Path(path).name}: {what}",
        split=split.describe(test_fraction),
        t_train=ts[split.train],
        t_test=ts[split.test],
        user=user,
    )


def is_user_dataset(name: str) -> bool:
    """True when ``name`` is not a dataset name (``mnist``, ``fashion`` and aliases) but a path."""
    from .. import datasets

    try:
        datasets.canonical_name(name)
    except ConfigError:
        return True
    return False
