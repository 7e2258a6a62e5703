"""Real photographs installed on this machine, and a demo video made from them.

No TensorFlow, no network. The photographs are the ones scikit-image ships inside its wheel
(``skimage/data/``, read directly as files: nothing is downloaded), each with its photographer and licence:

==================  ================================================  =====================
file                what                                              licence
==================  ================================================  =====================
``astronaut.png``   astronaut Eileen Collins (NASA Great Images)      public domain
``camera.png``      a man with a camera (Lav Varshney)                CC0
``chelsea.png``     Chelsea the cat (Stefan van der Walt)             CC0
``coffee.png``      a coffee cup (Rachel Michetti, Pikolo Espresso)   CC0
``rocket.jpg``      DSCOVR launch on Falcon 9 (SpaceX)                public domain
==================  ================================================  =====================

:func:`write_pan_video` turns them into a real video file (OpenCV ``VideoWriter``): a virtual camera pans and
zooms slowly across each photograph in turn, the way a fixed camera sees a scene with small motion. It is the
demo source of ``cae-edge data record`` and what the tests record from, instead of noise.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataNotFoundError, SourceError


@dataclass(frozen=True)
class Photo:
    """One installed photograph."""

    file: str
    """File name inside scikit-image's data directory."""
    what: str
    """What it shows and who took it."""
    licence: str
    """Its licence."""


PHOTOS = (
    Photo("astronaut.png", "astronaut Eileen Collins (NASA Great Images)", "public domain"),
    Photo("camera.png", "a man with a camera (Lav Varshney)", "CC0"),
    Photo("chelsea.png", "Chelsea the cat (Stefan van der Walt)", "CC0"),
    Photo("coffee.png", "a coffee cup (Rachel Michetti, Pikolo Espresso Bar)", "CC0"),
    Photo("rocket.jpg", "DSCOVR launch on Falcon 9 (SpaceX)", "public domain"),
)
"""The photographs used, in video order."""

HOW_TO_GET = (
    "install scikit-image (`pip install scikit-image`, part of the [bench] extra): its wheel ships them"
)


def photo_dir() -> Path:
    """scikit-image's data directory (found without importing scikit-image).

    Raises:
        DataNotFoundError: scikit-image is not installed.
    """
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"no real photographs: scikit-image is not installed; {HOW_TO_GET}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def photo_paths(names: list[str] | None = None) -> list[Path]:
    """Paths of the installed photographs (all of :data:`PHOTOS`, or those named).

    Raises:
        DataNotFoundError: scikit-image is missing, or a photograph is not in its data directory.
        ConfigError: a name that is not one of :data:`PHOTOS`.
    """
    from .errors import ConfigError

    known = {p.file: p for p in PHOTOS} | {p.file.split(".")[0]: p for p in PHOTOS}
    chosen = list(PHOTOS) if not names else []
    for n in names or []:
        if n not in known:
            raise ConfigError(f"photo {n!r}: use one of {', '.join(p.file.split('.')[0] for p in PHOTOS)}")
        chosen.append(known[n])
    root = photo_dir()
    paths = [root / p.file for p in chosen]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataNotFoundError(f"{root}: missing {', '.join(missing)}; {HOW_TO_GET}")
    return paths


def load_photo(path: str | Path) -> np.ndarray:
    """Read one photograph as a BGR (or gray) uint8 array.

    Raises:
        SourceError: OpenCV cannot read it.
    """
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SourceError(f"{path}: not an image OpenCV can read")
    return img


def pan_frames(photo: np.ndarray, count: int, size: tuple[int, int]) -> np.ndarray:
    """``count`` frames of a virtual camera panning and zooming across ``photo``.

    The view is a window with the output's aspect ratio, 65-85 % of the photo's short side, that drifts
    once across the photo (left to right, with a slight rise and fall) and zooms in and back out on the
    way: neighbouring frames differ by a few pixels, as in a fixed camera's stream of a slowly moving scene.

    Args:
        photo: HxW or HxWx3 uint8.
        count: frames to render (>= 1).
        size: (width, height) of the frames.

    Returns:
        (count, height, width[, 3]) uint8.
    """
    import cv2

    out_w, out_h = size
    h, w = photo.shape[:2]
    aspect = out_w / out_h
    frames = np.empty((count, out_h, out_w, *photo.shape[2:]), np.uint8)
    for i in range(count):
        s = i / max(count - 1, 1)
        ease = 0.5 - 0.5 * math.cos(math.pi * s)  # 0 -> 1, slow at both ends
        zoom = 0.85 - 0.2 * math.sin(math.pi * s)
        win_h = min(h, int(min(h, w / aspect) * zoom))
        win_w = min(w, int(win_h * aspect))
        cx = (w - win_w) * (0.2 + 0.6 * ease)
        cy = (h - win_h) * (0.5 - 0.3 * math.sin(math.pi * s))
        x0, y0 = int(round(cx)), int(round(cy))
        crop = photo[y0 : y0 + win_h, x0 : x0 + win_w]
        frames[i] = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return frames


def write_pan_video(
    path: str | Path,
    *,
    seconds: float = 60.0,
    fps: float = 10.0,
    size: tuple[int, int] = (320, 240),
    photos: list[str] | None = None,
) -> dict:
    """Write a video of a virtual camera panning across the installed photographs, one after another.

    The container follows the suffix: ``.avi`` (Motion-JPEG) or ``.mp4`` (MPEG-4 part 2), both written by
    the OpenCV that the node's extra installs.

    Args:
        path: the video file to write.
        seconds: length of the video (each photograph gets an equal share).
        fps: frame rate written into the file.
        size: (width, height) of the frames.
        photos: names from :data:`PHOTOS` (default all).

    Returns:
        A description: ``frames``, ``fps``, ``size``, ``photos`` (file, what, licence).

    Raises:
        ConfigError: bad length, rate, size or suffix.
        DataNotFoundError: no photographs installed.
        SourceError: OpenCV cannot write the file.
    """
    import cv2

    from .errors import ConfigError

    path = Path(path)
    fourcc = {".avi": "MJPG", ".mp4": "mp4v"}.get(path.suffix.lower())
    if fourcc is None:
        raise ConfigError(f"demo video {str(path)!r}: use a .avi or .mp4 file name")
    total = int(round(seconds * fps))
    if not (fps > 0 and total >= 1):
        raise ConfigError(f"demo video: {seconds} s at {fps} fps is no frame; give seconds > 0 and fps > 0")
    if min(size) < 28:
        raise ConfigError(f"demo video size {size}: both sides must be >= 28 pixels")
    paths = photo_paths(photos)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), tuple(size))
    if not writer.isOpened():
        raise SourceError(f"{path}: OpenCV cannot write a {fourcc} video here")
    try:
        shares = np.diff(np.linspace(0, total, len(paths) + 1).round().astype(int))
        for p, n in zip(paths, shares, strict=True):
            for frame in pan_frames(load_photo(p), int(n), size):
                writer.write(frame)
    finally:
        writer.release()
    by_file = {p.file: p for p in PHOTOS}
    return {
        "path": str(path),
        "frames": total,
        "fps": float(fps),
        "size": list(size),
        "photos": [
            {"file": p.name, "what": by_file[p.name].what, "licence": by_file[p.name].licence} for p in paths
        ],
    }
