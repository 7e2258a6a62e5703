"""Real-scene 28x28 frames cut from photographs that ship in packages, as the node itself would see them.

No TensorFlow (the benchmark loads the test split on a node). OpenCV is imported by the functions that
decode photographs, as on the device side.

Where the photographs come from (two separate sources, so the test split shows scenes training never saw)::

    train  36 photographs from Debian's desktop-background packages (plasma-workspace-wallpapers,
           lomiri-wallpapers-16.04/-20.04, mate-backgrounds): landscapes, plants, animals, rooms, objects
    test   11 photographs bundled with Python packages: scikit-image's sample data (astronaut, camera,
           chelsea, coffee, coins, rocket, brick, grass, gravel, clock) and matplotlib's grace_hopper.jpg

:data:`TRAIN_PHOTOS` and :data:`TEST_PHOTOS` name each file, its package, author and licence; the list goes
into the cache and into an exported bundle's manifest (``dataset.photographs``).

How one frame is made (:func:`scene_frame`)::

    photograph (BGR, reduced by exact halvings to a short side <= MAX_SIDE)
      │ random 4:3 window: short side log-uniform in [max(MIN_FRACTION x short side, 28 px), short side],
      │                    position uniform, mirrored with probability 1/2
      │ the node's Preprocessor, spec SCENE_PREPROCESS: BGR -> gray, centre square crop, halvings,
      │                    INTER_AREA to 28x28 (no inversion, no MNIST normalisation)
      ▼
    (28, 28) uint8

Frame ``i`` of a split comes from photograph ``i % n_photos`` with its own generator seeded by
``(seed, split, i)``: the same files give the same frames on every machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SCENE_PREPROCESS = {
    "size": 28,
    "grayscale": True,
    "invert": False,
    "crop": "center",
    "mnist_normalize": False,
}
"""The ``preprocess`` block of a scenes bundle: a plain grayscale view of the whole (centre-cropped) frame."""
TRAIN_FRAMES = 60_000
TEST_FRAMES = 2_000
SEED = 0
MAX_SIDE = 2048
"""Photographs are halved (2x2 block means) while their short side exceeds this, to bound memory."""
MIN_FRACTION = 1 / 16
"""Smallest window, as a fraction of the photograph's short side (a close-up); the largest is all of it."""
ASPECT = 4 / 3
"""Windows are landscape camera frames (640x480-like), centre-cropped to a square by the preprocessing."""
DEBIAN_PACKAGES = ("plasma-workspace-wallpapers", "lomiri-wallpapers", "mate-backgrounds")
"""What ``apt-get install`` brings the training photographs (lomiri-wallpapers pulls in -16.04 and -20.04)."""
PYTHON_PACKAGES = ("scikit-image", "matplotlib")
"""Where the test photographs come from (both in ``cae-edge[bench]``)."""
SPLIT = (
    "train: 36 Debian desktop-background photographs; test: 11 photographs bundled with scikit-image and "
    "matplotlib (separate pictures); 4:3 windows at random scale, node preprocessing to 28x28"
)

SOURCE = "photographs of Debian desktop-background packages, scikit-image and matplotlib"
"""The dataset's source as manifests record it."""

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Photo:
    """One photograph and its provenance."""

    file: str
    """Path: under ``/usr/share`` (Debian) or inside the Python package (``package:relative/path``)."""
    package: str
    """Debian or Python package that ships it."""
    author: str
    licence: str

    def to_dict(self) -> dict:
        return asdict(self)


def _plasma(name: str, author: str) -> Photo:
    return Photo(
        f"wallpapers/{name}/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", author, "LGPL-3.0"
    )


def _lomiri(name: str, author: str, licence: str, series: str = "16.04") -> Photo:
    return Photo(
        f"backgrounds/{name}_by_{author.replace(' ', '_')}.jpg",
        f"lomiri-wallpapers-{series}",
        author,
        licence,
    )


def _mate(name: str, author: str) -> Photo:
    return Photo(f"backgrounds/mate/nature/{name}.jpg", "mate-backgrounds", author, "GPL-2.0-or-later")


TRAIN_PHOTOS: tuple[Photo, ...] = (
    _plasma("BytheWater", "Maciej Wiklo"),
    _plasma("ColdRipple", "Risto Saukonpää"),
    _plasma("EveningGlow", "Ian Hex"),
    _plasma("FallenLeaf", "Martin Klapetek"),
    _plasma("Grey", "Sigi Sagi"),
    _plasma("Kite", "Risto Saukonpää"),
    _plasma("OneStandsOut", "Risto Saukonpää"),
    _plasma("Path", "Risto Saukonpää"),
    _plasma("summer_1am", "Risto Saukonpää"),
    _lomiri("aitzgorri", "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("analogpattern", "Peter Nerlich", "CC-BY-SA-4.0"),
    _lomiri("Bridge", "Sander Klootwijk", "CC-BY-SA-4.0"),
    _lomiri("Dragonfly", "Bolly", "CC-BY-SA-4.0"),
    _lomiri("free", "Peter Nerlich", "CC-BY-SA-4.0"),
    _lomiri("friends", "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("greentock", "Peter Nerlich", "CC-BY-SA-4.0"),
    _lomiri("life", "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("picosdeeuropa", "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("Picture_0B", "freespace", "CC-BY-4.0"),
    _lomiri("Picture_1A", "freespace", "CC-BY-4.0"),
    _lomiri("seeding", "Clements Engelhardt", "CC0-1.0"),
    _lomiri("sunset", "Aitzol Berasategi", "CC-BY-4.0"),
    _lomiri("Wine", "Jakkub Mede", "CC-BY-4.0"),
    _lomiri("Kleiber", "Lukas Baubkus", "CC-BY-SA-3.0", "20.04"),
    _mate("Aqua", "Charles Barbin"),
    _mate("Blinds", "Lennart Poettering, Andrea Cimitan"),
    _mate("Dune", "Marco Cogoni, Hylke Bons"),
    _mate("FreshFlower", "Jens Ansorg"),
    _mate("Garden", "Charles Barbin"),
    _mate("GreenMeadow", "Timothy Schellhase, Lapo Calamandrei"),
    _mate("LadyBird", "Charles Barbin"),
    _mate("RainDrops", "blackcombwhistler07"),
    _mate("Storm", "Sergey Nazarov"),
    _mate("TwoWings", "Charles Barbin, Hylke Bons"),
    _mate("Wood", "Jean-François Fortin Tam"),
    _mate("YellowFlower", "Charles Barbin"),
)
"""Training photographs (Debian packages; authors and licences from each package's copyright file or, for
Plasma, the wallpaper's metadata.json). Illustrations and renders in the same packages are left out."""

TEST_PHOTOS: tuple[Photo, ...] = (
    Photo("skimage:data/astronaut.png", "scikit-image", "NASA", "public domain"),
    Photo("skimage:data/camera.png", "scikit-image", "Lav Varshney", "CC0-1.0"),
    Photo("skimage:data/chelsea.png", "scikit-image", "Stefan van der Walt", "CC0-1.0"),
    Photo("skimage:data/coffee.png", "scikit-image", "Rachel Michetti", "CC0-1.0"),
    Photo("skimage:data/coins.png", "scikit-image", "Brooklyn Museum", "no known copyright restrictions"),
    Photo("skimage:data/rocket.jpg", "scikit-image", "SpaceX", "public domain"),
    Photo("skimage:data/brick.png", "scikit-image", "CC0Textures", "CC0-1.0"),
    Photo("skimage:data/grass.png", "scikit-image", "CC0Textures", "CC0-1.0"),
    Photo("skimage:data/gravel.png", "scikit-image", "CC0Textures", "CC0-1.0"),
    Photo("skimage:data/clock_motion.png", "scikit-image", "Stefan van der Walt", "public domain"),
    Photo("matplotlib:mpl-data/sample_data/grace_hopper.jpg", "matplotlib", "U.S. Navy", "public domain"),
)
"""Held-out photographs (licences as the packages state them)."""


def debian_root() -> Path:
    """Where Debian's photographs are looked for: ``$CAE_EDGE_SCENES_ROOT``, else /usr/share."""
    return Path(os.environ.get("CAE_EDGE_SCENES_ROOT") or "/usr/share")


def photo_path(photo: Photo, root: Path | None = None) -> Path:
    """The file of ``photo`` on this machine (it may not exist).

    Raises:
        FileNotFoundError: a Python package that is not installed.
    """
    if ":" not in photo.file:
        return (root or debian_root()) / photo.file
    module, rel = photo.file.split(":", 1)
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Python package {photo.package} is not installed (pip install 'cae-edge[bench]')"
        )
    return Path(next(iter(spec.submodule_search_locations))) / rel


def read_photo(path: Path) -> np.ndarray:
    """Decode a photograph as BGR and halve it (2x2 block means) while its short side exceeds MAX_SIDE.

    Raises:
        FileNotFoundError: missing file.
        ValueError: a file OpenCV cannot decode.
    """
    import cv2  # noqa: PLC0415

    from .device.preprocess import halve  # noqa: PLC0415

    if not path.is_file():
        raise FileNotFoundError(f"{path} missing")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: OpenCV cannot decode it")
    while min(img.shape[:2]) > MAX_SIDE:
        h, w = img.shape[:2]
        img = np.stack(
            [halve(np.ascontiguousarray(img[: h - h % 2, : w - w % 2, c])) for c in range(3)], axis=-1
        )
    return img


def scene_frame(
    photo: np.ndarray,
    rng: np.random.Generator,
    preprocess: Callable[[np.ndarray], np.ndarray],
    min_side: int = 28,
):
    """One random 4:3 window of ``photo`` (BGR), through ``preprocess`` (the node's Preprocessor); the
    window's short side is at least ``min_side`` pixels (the output size: windows are never enlarged)."""
    h, w = photo.shape[:2]
    short = min(h, w / ASPECT)
    lo = min(max(MIN_FRACTION * short, float(min_side)), short)
    sh = int(round(np.exp(rng.uniform(np.log(lo), np.log(short)))))
    sw = min(int(round(sh * ASPECT)), w)
    sh = min(sh, h)
    y = int(rng.integers(0, h - sh + 1))
    x = int(rng.integers(0, w - sw + 1))
    window = photo[y : y + sh, x : x + sw]
    if rng.random() < 0.5:
        window = window[:, ::-1]
    return preprocess(np.ascontiguousarray(window))


def make_frames(
    photos: list[np.ndarray],
    count: int,
    seed: int,
    split: int,
    progress: Progress | None = None,
    what: str = "",
    size: int = 28,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` frames, frame ``i`` from ``photos[i % len(photos)]``; labels are the photograph indices.

    ``size``: the frames' side (28; 112 for the 4x4 tiled frames of ``cae-edge benchmark --tiles 4``);
    windows are at least ``size`` pixels high (the same windows as for 28 where they are).

    Raises:
        ValueError: no photographs, or a negative count.
    """
    from .device.preprocess import Preprocessor  # noqa: PLC0415

    if not photos or count < 0:
        raise ValueError(f"make_frames: {len(photos)} photographs, count {count}: need >= 1 and >= 0")
    x = np.empty((count, size, size), np.uint8)
    y = (np.arange(count) % len(photos)).astype(np.uint8)
    spec = dict(SCENE_PREPROCESS, size=size)
    for i in range(count):
        rng = np.random.default_rng([seed, split, i])
        x[i] = scene_frame(photos[y[i]], rng, Preprocessor(spec), size)  # one plan per window shape
        if progress and (i + 1) % 5000 == 0:
            progress(what, i + 1, count)
    return x, y


def _read_all(photos: tuple[Photo, ...], root: Path | None) -> Iterator[np.ndarray]:
    for p in photos:
        yield read_photo(photo_path(p, root))


def load_scenes(
    root: str | os.PathLike | None = None,
    *,
    train_frames: int = TRAIN_FRAMES,
    test_frames: int = TEST_FRAMES,
    seed: int = SEED,
    progress: Progress | None = None,
) -> tuple[np.ndarray, ...]:
    """Cut the train and test frames from the packaged photographs: x_train, y_train, x_test, y_test.

    Args:
        root: Directory holding the Debian files (default :func:`debian_root`).
        train_frames: Frames cut from the training photographs.
        test_frames: Frames cut from the held-out photographs.
        seed: Seed of every window's generator.
        progress: Optional callback ``(what, done, total)``.

    Raises:
        FileNotFoundError: a photograph is missing (the message names the package that ships it).
        ValueError: a photograph cannot be decoded.
    """
    root = Path(root) if root else None
    out = []
    for split, (photos, count) in enumerate(((TRAIN_PHOTOS, train_frames), (TEST_PHOTOS, test_frames))):
        try:
            images = list(_read_all(photos, root))
        except FileNotFoundError as e:
            missing = sorted({p.package for p in photos if not _exists(p, root)})
            raise FileNotFoundError(f"{e}; install {', '.join(missing)}") from None
        out.extend(make_frames(images, count, seed, split, progress, "train" if split == 0 else "test"))
    return tuple(out)


def _exists(photo: Photo, root: Path | None) -> bool:
    try:
        return photo_path(photo, root).is_file()
    except FileNotFoundError:
        return False


def credits() -> dict:
    """Every photograph with package, author and licence, by split (for the cache and the manifest)."""
    return {"train": [p.to_dict() for p in TRAIN_PHOTOS], "test": [p.to_dict() for p in TEST_PHOTOS]}


def how_to_get() -> str:
    """One line on how to make the photographs available."""
    return (
        f"run `apt-get install {' '.join(DEBIAN_PACKAGES)}` (training photographs) and "
        "`pip install 'cae-edge[bench]'` (scikit-image and matplotlib ship the test photographs), "
        "then `cae-edge data fetch scenes`"
    )
