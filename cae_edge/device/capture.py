"""Where frames come from: a small :class:`FrameSource` protocol and the sources a camera node uses.

Sources return frames as uint8 arrays (HxW gray, HxWx3 BGR or HxWx4 BGRA) and ``None`` at the end of a finite
stream; the :class:`~cae_edge.device.preprocess.Preprocessor` turns any of them into the model's 28x28 input.
Nothing here encodes or sends: the sender loop (``cae_edge.device.sender``) pulls from a source, so tests
inject frames with :class:`ArraySource` and no camera.

``open_source(spec)`` understands::

    "0", "1", ...                 camera index (OpenCV VideoCapture, V4L2 on Linux)
    "/dev/video0"                 a V4L2 device path
    "rtsp://...", "http://..."    a network stream (anything with "://")
    "clip.mp4"                    a video file
    "frames/"                     a folder of images (sorted by name)
    "photo.png"                   one image
    "picamera2[:WxH]"             a Raspberry Pi CSI camera via picamera2 (low-res Y plane, default 320x240)
    "synthetic[:mnist|fashion]"   real test-set images moving across a canvas (demos and tests)

Every failure to open or to keep reading raises :class:`~cae_edge.errors.SourceError` with the spec and a fix.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import CaeEdgeError, SourceError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp")
"""Files a folder source reads."""


@runtime_checkable
class FrameSource(Protocol):
    """Anything that yields frames: ``read()`` until it returns ``None``, then ``close()``."""

    description: str
    """Human-readable origin, for logs and errors."""

    def read(self) -> np.ndarray | None:
        """The next frame (uint8, HxW, HxWx3 BGR or HxWx4 BGRA), or ``None`` at the end of a finite source.

        Raises:
            SourceError: the source failed (camera unplugged, stream dropped, unreadable image).
        """
        ...

    def close(self) -> None:
        """Release the device or file. Safe to call twice."""
        ...


class _Source:
    """Context manager and iteration for the sources below."""

    description = "source"

    def read(self) -> np.ndarray | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        while (frame := self.read()) is not None:
            yield frame

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


class ArraySource(_Source):
    """Frames from memory: an array (N, H, W[, C]) or a list of frames.

    Args:
        frames: the frames, uint8.
        loop: start again at the end instead of returning ``None``.
        limit: stop after this many frames (useful with ``loop``).
    """

    def __init__(
        self, frames: np.ndarray | list[np.ndarray], *, loop: bool = False, limit: int | None = None
    ):
        if len(frames) == 0:
            raise SourceError("in-memory source: no frames given")
        self._frames = frames
        self._loop = loop
        self._limit = limit
        self._i = 0
        self.description = f"{len(frames)} in-memory frames" + (" (looped)" if loop else "")

    def read(self) -> np.ndarray | None:
        if self._limit is not None and self._i >= self._limit:
            return None
        n = len(self._frames)
        if self._i >= n and not self._loop:
            return None
        frame = self._frames[self._i % n]
        self._i += 1
        return frame


@contextlib.contextmanager
def _quiet_opencv():
    """OpenCV logs a warning per failed open; we raise a clear error instead."""
    import cv2

    logging = cv2.utils.logging
    old = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging.setLogLevel(old)


class VideoCaptureSource(_Source):
    """OpenCV ``VideoCapture``: camera index, ``/dev/videoN``, video file or network URL.

    The first frame is read at open, so a file that is not a video or a camera that gives nothing fails here,
    not later. A finite file ends with ``None``; a live source (camera, URL) that stops delivering raises
    :class:`SourceError` after ``max_failures`` reads in a row fail.

    Args:
        target: camera index, device path, file path or URL.
        live: a camera or stream (failing reads are an error) rather than a file (failing read = end).
        max_failures: consecutive failed reads of a live source before giving up.
        width, height: ask a camera for this capture size (ignored by files).
    """

    def __init__(
        self,
        target: int | str,
        *,
        live: bool,
        max_failures: int = 5,
        width: int | None = None,
        height: int | None = None,
    ):
        import cv2

        self.description = f"camera index {target}" if isinstance(target, int) else str(target)
        self._live = live
        self.live = live
        """A camera or stream (frames come in real time) rather than a file."""
        self._max_failures = max_failures
        with _quiet_opencv():
            cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.description}: {_open_hint(target)}")
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._cap = cap
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            self._cap = None
            what = "gave no frame" if live else "has no readable frame (not a video OpenCV can decode?)"
            raise SourceError(f"{self.description}: opened but {what}")
        self._first: np.ndarray | None = frame
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        """Frame rate the device or file reports (0 when unknown)."""

    def read(self) -> np.ndarray | None:
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        if self._cap is None:
            raise SourceError(f"{self.description}: read after close")
        for _ in range(self._max_failures if self._live else 1):
            ok, frame = self._cap.read()
            if ok and frame is not None:
                return frame
        if not self._live:
            return None
        raise SourceError(
            f"{self.description}: stopped delivering frames ({self._max_failures} reads failed in a row); "
            "check the cable / network and restart the sender"
        )

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _open_hint(target: int | str) -> str:
    if isinstance(target, int):
        return (
            f"no camera at index {target} (/dev/video{target} cannot be opened); "
            "list cameras with `v4l2-ctl --list-devices` or `ls /dev/video*`"
        )
    if "://" in str(target):
        return "cannot open the stream; check the URL, the network and that the server is up"
    if str(target).startswith("/dev/"):
        return "cannot open the device; is it a camera, and do you have access (group `video`)?"
    return "cannot open it as a video (unsupported or corrupt file)"


def _read_image(path: Path) -> np.ndarray:
    import cv2

    if not os.access(path, os.R_OK):
        raise SourceError(f"{path}: cannot read this image (permission denied or gone)")
    frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise SourceError(f"{path}: not an image OpenCV can read (corrupt or unsupported format)")
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise SourceError(f"{path}: {frame.dtype} pixels; use 8- or 16-bit images")
    return frame


class ImageFolderSource(_Source):
    """Images in a folder (sorted by file name), or a single image file.

    Args:
        path: a folder or one image file.
        loop: start again after the last image.
    """

    def __init__(self, path: str | Path, *, loop: bool = False):
        path = Path(path)
        if path.is_dir():
            try:
                files = sorted(
                    p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                )
            except OSError as e:
                raise SourceError(
                    f"{path}/: cannot list this folder ({e.strerror or e}); check its permissions "
                    f"(`ls -ld {path}`)"
                ) from None
            if not files:
                raise SourceError(f"{path}/: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        elif path.is_file():
            files = [path]
        else:
            raise SourceError(f"{path}: no such folder or image")
        self._files = files
        self._loop = loop
        self._i = 0
        self.description = f"{path} ({len(files)} images)"
        _read_image(files[0])  # fail at open, not at the first frame

    def read(self) -> np.ndarray | None:
        if self._i >= len(self._files):
            if not self._loop:
                return None
            self._i = 0
        path = self._files[self._i]
        self._i += 1
        return _read_image(path)


class Picamera2Source(_Source):
    """A Raspberry Pi CSI camera through picamera2, reading the Y (luma) plane of the low-resolution stream.

    The luma plane is the grayscale image, so there is no colour conversion on the node.

    Args:
        size: (width, height) of the low-resolution stream.
    """

    def __init__(self, size: tuple[int, int] = (320, 240)):
        try:
            from picamera2 import Picamera2  # Raspberry Pi OS: apt install python3-picamera2
        except ImportError as e:
            raise SourceError(
                f"picamera2: the picamera2 module is not available ({e}); on Raspberry Pi OS run "
                "`sudo apt install python3-picamera2` (and create the venv with --system-site-packages)"
            ) from None
        w, h = size
        self.description = f"picamera2 {w}x{h} Y plane"
        self._size = (w, h)
        try:
            cam = Picamera2()
            config = cam.create_video_configuration(
                main={"size": (max(w, 640), max(h, 480))}, lores={"size": (w, h), "format": "YUV420"}
            )
            cam.configure(config)
            cam.start()
        except Exception as e:  # the library raises many types (RuntimeError, IndexError when no camera)
            raise SourceError(f"picamera2: cannot start the camera ({type(e).__name__}: {e})") from None
        self._cam = cam

    def read(self) -> np.ndarray | None:
        if self._cam is None:
            raise SourceError(f"{self.description}: read after close")
        try:
            yuv = self._cam.capture_array("lores")
        except Exception as e:
            raise SourceError(f"{self.description}: capture failed ({type(e).__name__}: {e})") from None
        w, h = self._size
        return yuv[:h, :w]

    def close(self) -> None:
        if self._cam is not None:
            with contextlib.suppress(Exception):
                self._cam.stop()
                self._cam.close()
            self._cam = None


class SyntheticSource(_Source):
    """Real test-set images moving across a dark canvas, one after another: a camera with no camera.

    Each image is scaled up, slides from the left edge of the canvas to the right edge with a vertical bob
    (partly leaving the centre square a camera node crops to), and the next test image follows.
    Deterministic for a given seed. White-on-black like MNIST, or with ``paper`` dark ink on a light
    background, like a camera looking at paper (for bundles whose preprocessing inverts).

    Args:
        dataset: ``mnist`` or ``fashion`` (``cae_edge.datasets.load``).
        canvas: (height, width) of the frames.
        scale: how much the 28x28 image is enlarged.
        steps: frames each image takes to cross the canvas.
        seed: picks the order of test images.
        limit: stop after this many frames (``None`` = endless).
        images: use these images (N, 28, 28) instead of loading ``dataset``.
        paper: dark on light (255 - the MNIST rendering).
    """

    def __init__(
        self,
        dataset: str = "mnist",
        *,
        canvas: tuple[int, int] = (120, 160),
        scale: int = 2,
        steps: int = 12,
        seed: int = 0,
        limit: int | None = None,
        images: np.ndarray | None = None,
        paper: bool = False,
    ):
        import cv2

        if images is None:
            from .. import datasets

            try:
                images = datasets.load(dataset).x_test
            except CaeEdgeError as e:
                raise SourceError(f"synthetic:{dataset}: {e}") from None
        h, w = canvas
        size = 28 * scale
        if size > h or size > w or steps < 1:
            raise SourceError(f"synthetic: canvas {h}x{w} too small for {size}x{size} images (or steps < 1)")
        self._order = np.random.default_rng(seed).permutation(len(images))
        self._images = images
        self._big: dict[int, np.ndarray] = {}
        self._resize = lambda im: cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR)
        self._canvas = (h, w)
        self._size = size
        self._steps = steps
        self._limit = limit
        self._paper = paper
        self._i = 0
        self.description = f"synthetic {dataset} {h}x{w}" + (" (paper)" if paper else "")

    def index_at(self, frame_no: int) -> int:
        """Index into the image array of the image shown in frame ``frame_no``."""
        return int(self._order[(frame_no // self._steps) % len(self._order)])

    def frame(self, frame_no: int) -> np.ndarray:
        """Render frame ``frame_no`` (pure function of the number)."""
        h, w = self._canvas
        size, steps = self._size, self._steps
        idx = self.index_at(frame_no)
        big = self._big.get(idx)
        if big is None:
            if len(self._big) > 64:
                self._big.clear()
            big = self._big[idx] = self._resize(self._images[idx])
        step = frame_no % steps
        x = round((w - size) * step / max(steps - 1, 1))
        y = (h - size) // 2 + round((h - size) / 2 * np.sin(2 * np.pi * step / steps))
        out = np.zeros((h, w), np.uint8)
        x0, x1 = max(x, 0), min(x + size, w)
        if x1 > x0:
            out[y : y + size, x0:x1] = big[:, x0 - x : x1 - x]
        return 255 - out if self._paper else out

    def read(self) -> np.ndarray | None:
        if self._limit is not None and self._i >= self._limit:
            return None
        frame = self.frame(self._i)
        self._i += 1
        return frame


_PICAM_RE = re.compile(r"picamera2(?::(\d+)x(\d+))?")
_SYNTH_RE = re.compile(r"synthetic(?::([\w-]+))?")


def open_source(
    spec: str, *, loop: bool = False, limit: int | None = None, paper: bool = False
) -> FrameSource:
    """Open a frame source from a command-line string (see the module docstring for the forms).

    Args:
        spec: what to open.
        loop: replay files and folders endlessly.
        limit: for the synthetic source, stop after this many frames.
        paper: for the synthetic source, draw dark ink on light paper (match a bundle that inverts).

    Raises:
        SourceError: the source does not exist or cannot be read; the message says what to check.
    """
    spec = spec.strip()
    if not spec:
        raise SourceError(
            "empty source: give a camera index, a device, a file, a folder, a URL or `synthetic`"
        )
    if m := _SYNTH_RE.fullmatch(spec):
        return SyntheticSource(m.group(1) or "mnist", limit=limit, paper=paper)
    if m := _PICAM_RE.fullmatch(spec):
        size = (int(m.group(1)), int(m.group(2))) if m.group(1) else (320, 240)
        return Picamera2Source(size)
    if spec.isdigit():
        return VideoCaptureSource(int(spec), live=True)
    if "://" in spec:
        return VideoCaptureSource(spec, live=True)
    path = Path(spec)
    if spec.startswith("/dev/"):
        if not path.exists():
            raise SourceError(f"{spec}: no such device; list cameras with `ls /dev/video*`")
        return VideoCaptureSource(spec, live=True)
    if path.is_dir():
        return ImageFolderSource(path, loop=loop)
    if not path.exists():
        kind = "folder" if spec.endswith("/") else "file"
        raise SourceError(
            f"{spec}: no such {kind} (sources: camera index, /dev/videoN, URL, file, folder, synthetic)"
        )
    if not path.is_file():
        raise SourceError(f"{spec}: not a regular file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise SourceError(f"{spec}: cannot read ({e.strerror})") from None
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolderSource(path, loop=loop)
    if loop:
        return _LoopingVideo(spec)
    return VideoCaptureSource(spec, live=False)


class _LoopingVideo(_Source):
    """A video file replayed endlessly."""

    def __init__(self, path: str):
        self._path = path
        self._src = VideoCaptureSource(path, live=False)
        self.description = f"{path} (looped)"

    def read(self) -> np.ndarray | None:
        frame = self._src.read()
        if frame is None:
            self._src.close()
            self._src = VideoCaptureSource(self._path, live=False)
            frame = self._src.read()
        return frame

    def close(self) -> None:
        self._src.close()
