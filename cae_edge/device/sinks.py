"""Where the receiver puts decoded frames: PNG files, a video per sender, a live mosaic, memory (tests).

A sink takes ``write(sender, seq, image)`` for each decoded 28x28 uint8 frame and ``close()`` at the end;
anything with those two methods works (see :class:`FrameSink`).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError


class FrameSink(Protocol):
    """Where decoded frames go."""

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        """Take one decoded 28x28 uint8 frame of ``sender`` with wire sequence number ``seq``."""
        ...

    def close(self) -> None: ...


class PngSink:
    """Each frame as ``DIR/<sender>/<seq>.png`` (8-digit wire sequence number; a restarted sender overwrites).

    Raises:
        ConfigError: the folder cannot be created.
    """

    def __init__(self, directory: str | Path) -> None:
        import cv2

        self.dir = Path(directory)
        self._imwrite = cv2.imwrite
        self._made: set[str] = set()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{self.dir}: cannot create the output folder ({e.strerror})") from None

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        if sender not in self._made:
            (self.dir / sender).mkdir(exist_ok=True)
            self._made.add(sender)
        self._imwrite(str(self.dir / sender / f"{seq:08d}.png"), image)

    def close(self) -> None:
        pass


class VideoSink:
    """One video per sender: ``path`` for the first sender, ``<stem>-<sender><suffix>`` for the others
    (or put ``{sender}`` in the path). Frames are enlarged ``scale`` times (nearest neighbour).

    Codec by suffix: ``.avi`` MJPG, ``.mkv`` FFV1 (lossless), otherwise mp4v.
    """

    def __init__(self, path: str | Path, fps: float = 30.0, scale: int = 4) -> None:
        self.path = Path(path)
        self.fps = fps
        self.scale = max(1, int(scale))
        self._writers: dict[str, Any] = {}
        if not self.path.parent.is_dir():
            raise ConfigError(f"{self.path}: folder {self.path.parent} does not exist")

    def _path_for(self, sender: str) -> Path:
        if "{sender}" in str(self.path):
            return Path(str(self.path).format(sender=sender))
        if not self._writers:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{sender}{self.path.suffix}")

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        import cv2

        writer = self._writers.get(sender)
        if writer is None:
            path = self._path_for(sender)
            codec = {".avi": "MJPG", ".mkv": "FFV1"}.get(path.suffix.lower(), "mp4v")
            size = 28 * self.scale
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), self.fps, (size, size), False)
            if not writer.isOpened():
                raise ConfigError(f"{path}: OpenCV cannot write this video (codec {codec}); try .avi or .mkv")
            self._writers[sender] = writer
        if self.scale > 1:
            image = cv2.resize(image, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_NEAREST)
        writer.write(image)

    def close(self) -> None:
        for w in self._writers.values():
            w.release()
        self._writers.clear()


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
        row = np.hstack([self._latest[k] for k in sorted(self._latest)])
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
