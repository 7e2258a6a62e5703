"""Where the receiver puts decoded frames: PNG files, a video per sender, a live mosaic, memory (tests).

A sink takes ``write(sender, seq, image)`` for each decoded uint8 frame (28x28, or 28N x 28N for a sender
sending tiles) and ``close()`` at the end; anything with those two methods works (see :class:`FrameSink`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import CaeEdgeError, ConfigError


class FrameSink(Protocol):
    """Where decoded frames go."""

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        """Take one decoded 28x28 uint8 frame of ``sender`` with wire sequence number ``seq``."""
        ...

    def close(self) -> None: ...


MAX_SENDERS = 1024
"""Senders a file sink makes folders or videos for; frames of further senders are refused (an error the
receiver counts), so a flood of made-up sender names cannot fill the disk with folders or open files."""


class SinkError(CaeEdgeError):
    """A sink could not take one frame (disk full, a name taken by a file, too many senders)."""


class PngSink:
    """Each frame as ``DIR/<sender>/<seq>.png`` (8-digit wire sequence number; a restarted sender overwrites).

    Sender names (``[A-Za-z0-9][A-Za-z0-9._-]*``: no ``/``, no leading dot) cannot leave ``DIR``; keep the
    receiver's own files (``--status``, ``--json``, ``--video``) outside it, or a sender of the same name
    would collide with them (the CLI refuses that layout). A write that fails raises :class:`SinkError`.

    Raises:
        ConfigError: the folder cannot be created.
    """

    def __init__(self, directory: str | Path, max_senders: int = MAX_SENDERS) -> None:
        import cv2

        self.dir = Path(directory)
        self._imwrite = cv2.imwrite
        self._made: set[str] = set()
        self.max_senders = max_senders
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{self.dir}: cannot create the output folder ({e.strerror})") from None

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        folder = self.dir / sender
        if sender not in self._made:
            if len(self._made) >= self.max_senders:
                raise SinkError(f"{folder}: already {self.max_senders} sender folders in {self.dir}")
            try:
                folder.mkdir(exist_ok=True)
            except OSError as e:
                raise SinkError(f"{folder}: cannot create the sender's folder ({e.strerror or e})") from None
            self._made.add(sender)
        path = folder / f"{seq:08d}.png"
        if not self._imwrite(str(path), image):
            raise SinkError(f"{path}: OpenCV could not write the PNG (disk full, or the folder is gone?)")

    def close(self) -> None:
        pass


class VideoSink:
    """One video per sender: ``path`` for the first sender, ``<stem>-<sender><suffix>`` for the others
    (or put ``{sender}`` in the path). Frames are enlarged ``scale`` times (nearest neighbour).

    Codec by suffix: ``.avi`` MJPG, ``.mkv`` FFV1 (lossless), ``.mp4`` mp4v. The suffix and OpenCV's
    ability to write it are checked when the sink is made (a short probe file is written and removed), not at
    the first frame; a video that cannot be opened later raises :class:`SinkError`.

    Raises:
        ConfigError: the folder is missing, the suffix is not one of the above, ``{...}`` fields other than
            ``{sender}``, or this OpenCV cannot write the codec.
    """

    CODECS = {".avi": "MJPG", ".mkv": "FFV1", ".mp4": "mp4v"}

    def __init__(
        self, path: str | Path, fps: float = 30.0, scale: int = 4, max_senders: int = MAX_SENDERS
    ) -> None:
        self.path = Path(path)
        self.fps = fps
        self.scale = max(1, int(scale))
        self.max_senders = max_senders
        self._writers: dict[str, Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        if not self.path.parent.is_dir():
            raise ConfigError(f"{self.path}: folder {self.path.parent} does not exist")
        codec = self.CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise ConfigError(
                f"{self.path}: unknown video type {self.path.suffix or '(no suffix)'!r}: use .avi (MJPG), "
                ".mkv (FFV1, lossless) or .mp4 (mp4v)"
            )
        try:
            self._path_for("probe")
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"{self.path}: the only field allowed in a video path is {{sender}}") from None
        self._probe(codec)

    def _probe(self, codec: str) -> None:
        import cv2

        probe = self.path.with_name(f".{self.path.stem}.probe{self.path.suffix}")
        size = 28 * self.scale
        writer = cv2.VideoWriter(str(probe), cv2.VideoWriter_fourcc(*codec), self.fps, (size, size), False)
        ok = writer.isOpened()
        writer.release()
        probe.unlink(missing_ok=True)
        if not ok:
            raise ConfigError(
                f"{self.path}: this OpenCV cannot write {self.path.suffix} video (codec {codec}); "
                "try .avi or .mkv"
            )

    def _path_for(self, sender: str) -> Path:
        if "{" in str(self.path):
            return Path(str(self.path).format(sender=sender))
        if not self._writers:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{sender}{self.path.suffix}")

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        import cv2

        writer = self._writers.get(sender)
        if writer is None:
            if len(self._writers) >= self.max_senders:
                raise SinkError(f"{self.path}: already {self.max_senders} sender videos open")
            path = self._path_for(sender)
            codec = self.CODECS[path.suffix.lower()]
            size = (image.shape[1] * self.scale, image.shape[0] * self.scale)  # the first frame's (tiles)
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), self.fps, size, False)
            if not writer.isOpened():
                raise SinkError(f"{path}: OpenCV cannot open this video for writing (codec {codec})")
            self._writers[sender] = writer
            self._shapes[sender] = image.shape
        elif image.shape != self._shapes[sender]:
            raise SinkError(
                f"{self.path}: a {image.shape[0]}x{image.shape[1]} frame of {sender} in its video of "
                f"{self._shapes[sender][0]}x{self._shapes[sender][1]} frames (the sender changed --tiles?)"
            )
        if self.scale > 1:
            image = cv2.resize(image, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_NEAREST)
        writer.write(image)

    def close(self) -> None:
        for w in self._writers.values():
            w.release()
        self._writers.clear()
        self._shapes.clear()


class MosaicSink:
    """A live window (``cv2.imshow``) with the latest frame of every sender side by side.

    Raises:
        ConfigError: OpenCV has no GUI here (``opencv-python-headless``, or no display).
    """

    def __init__(self, title: str = "cae-edge", scale: int = 6, refresh_s: float = 1 / 30) -> None:
        import cv2

        self._cv2 = cv2
        self.title = title
        self.scale = scale
        self.refresh_s = refresh_s
        self._latest: dict[str, np.ndarray] = {}
        self._next = 0.0
        try:
            cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
        except cv2.error:
            raise ConfigError(
                "--show needs OpenCV with a GUI and a display: `pip install opencv-python` (this one is "
                "headless or $DISPLAY is unset); use --out or --video instead"
            ) from None

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        self._latest[sender] = image
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.refresh_s
        frames = [self._latest[k] for k in sorted(self._latest)]
        h = max(f.shape[0] for f in frames)  # tiled frames are taller: pad the others below
        row = np.hstack([np.pad(f, ((0, h - f.shape[0]), (0, 0))) for f in frames])
        big = self._cv2.resize(row, None, fx=self.scale, fy=self.scale, interpolation=self._cv2.INTER_NEAREST)
        self._cv2.imshow(self.title, big)
        self._cv2.waitKey(1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._cv2.destroyWindow(self.title)


class MemorySink:
    """Keeps the last ``limit`` frames in memory: ``frames[(sender, seq)] = image`` (tests, benchmarks)."""

    def __init__(self, limit: int | None = None) -> None:
        self.frames: dict[tuple[str, int], np.ndarray] = {}
        self.limit = limit

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        if self.limit is not None and len(self.frames) >= self.limit:
            self.frames.pop(next(iter(self.frames)))
        self.frames[(sender, seq)] = image

    def close(self) -> None:
        pass


class GuardedSink:
    """Wraps a sink so that one frame it cannot take is counted and reported, never raised: a full disk, a
    sender folder taken by a file, or a broken video writer must not stop the receiver or its other senders.

    Args:
        sink: the sink to protect.
        on_error: called with ``("sink", message)`` for each failure (the receiver rate-limits its log).
    """

    def __init__(self, sink: FrameSink, on_error: Callable[[str, str], None] | None = None) -> None:
        self.sink = sink
        self.errors = 0
        """Frames (and closes) this sink failed."""
        self._on_error = on_error

    def _failed(self, what: str, e: BaseException) -> None:
        self.errors += 1
        if self._on_error is not None:
            self._on_error("sink", f"{type(self.sink).__name__} {what}: {e} (counted in sink_errors)")

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        try:
            self.sink.write(sender, seq, image)
        except Exception as e:  # any failure of one frame stays with that frame
            self._failed(f"could not write frame {seq} of {sender}", e)

    def close(self) -> None:
        try:
            self.sink.close()
        except Exception as e:
            self._failed("could not close", e)
