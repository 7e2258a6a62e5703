"""Real scenes: frames cut from packaged photographs through the node's preprocessing, and their splits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cae_edge import datasets, scenes
from cae_edge.device.preprocess import Preprocessor
from cae_edge.errors import DataNotFoundError


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    """scikit-image's coffee photograph (BGR), cut to a 4:3 landscape frame."""
    img = scenes.read_photo(scenes.photo_path(scenes.TEST_PHOTOS[3]))
    assert "coffee" in scenes.TEST_PHOTOS[3].file
    h = img.shape[0]
    return np.ascontiguousarray(img[:, : h * 4 // 3])


@pytest.fixture(scope="module")
def test_photos() -> list[np.ndarray]:
    return [scenes.read_photo(scenes.photo_path(p)) for p in scenes.TEST_PHOTOS]


def test_train_and_test_photographs_come_from_separate_sources_with_licences():
    train = {p.file for p in scenes.TRAIN_PHOTOS}
    test = {p.file for p in scenes.TEST_PHOTOS}
    assert len(train) == len(scenes.TRAIN_PHOTOS) == 36 and len(test) == len(scenes.TEST_PHOTOS) == 11
    assert not {p.package for p in scenes.TRAIN_PHOTOS} & {p.package for p in scenes.TEST_PHOTOS}
    credits = scenes.credits()
    for split in ("train", "test"):
        for row in credits[split]:
            assert row["licence"] and row["author"] and row["package"] and row["file"]


def test_a_whole_frame_window_is_exactly_the_node_preprocessing(coffee, monkeypatch):
    monkeypatch.setattr(scenes, "MIN_FRACTION", 1.0)  # the window is the whole 4:3 frame
    prep = Preprocessor(scenes.SCENE_PREPROCESS)
    node = prep(coffee)
    mirrored = prep(np.ascontiguousarray(coffee[:, ::-1]))
    seen = set()
    for i in range(8):
        frame = scenes.scene_frame(coffee, np.random.default_rng(i), prep)
        assert frame.shape == (28, 28) and frame.dtype == np.uint8
        assert np.array_equal(frame, node) or np.array_equal(frame, mirrored)
        seen.add(np.array_equal(frame, node))
    assert seen == {True, False}  # both orientations occur
    gray = cv2.cvtColor(coffee, cv2.COLOR_BGR2GRAY)
    side = gray.shape[0] - gray.shape[0] % 28
    x0 = (gray.shape[1] - side) // 2
    y0 = (gray.shape[0] - side) // 2
    ref = cv2.resize(gray[y0 : y0 + side, x0 : x0 + side], (28, 28), interpolation=cv2.INTER_AREA)
    assert np.abs(node.astype(int) - ref).mean() < 1.0  # no inversion, no MNIST normalisation


def test_windows_vary_in_scale_and_place(coffee):
    prep = Preprocessor(scenes.SCENE_PREPROCESS)
    frames = np.stack([scenes.scene_frame(coffee, np.random.default_rng(i), prep) for i in range(40)])
    assert len({f.tobytes() for f in frames}) == 40
    contrast = frames.reshape(40, -1).std(axis=1)
    assert contrast.max() > 2 * contrast.min()  # close-ups (smooth) and wide views (detailed) both occur


def test_frames_are_deterministic_and_cycle_through_photographs(test_photos):
    a, ya = scenes.make_frames(test_photos, 30, seed=0, split=1)
    b, yb = scenes.make_frames(test_photos, 30, seed=0, split=1)
    c, _ = scenes.make_frames(test_photos, 30, seed=1, split=1)
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert not np.array_equal(a, c)
    assert ya.tolist() == [i % len(test_photos) for i in range(30)]
    with pytest.raises(ValueError, match="0 photographs"):
        scenes.make_frames([], 3, seed=0, split=0)


def test_big_photographs_are_halved_by_block_means(monkeypatch):
    path = scenes.photo_path(scenes.TEST_PHOTOS[0])  # astronaut, 512x512
    full = cv2.imread(str(path))
    monkeypatch.setattr(scenes, "MAX_SIDE", 200)
    img = scenes.read_photo(path)
    assert img.shape == (128, 128, 3)
    ref = cv2.resize(full, (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(img.astype(int) - ref).max() <= 1
    with pytest.raises(FileNotFoundError, match="missing"):
        scenes.read_photo(path.parent / "no-such-photo.png")


def test_missing_photographs_name_the_packages_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CAE_EDGE_SCENES_ROOT", str(tmp_path / "share"))
    with pytest.raises(DataNotFoundError, match="apt-get install plasma-workspace-wallpapers") as e:
        datasets.load("scenes")
    assert "lomiri-wallpapers-16.04" in str(e.value) and "Keras" not in str(e.value)


def test_the_scenes_dataset_holds_unseen_photographs_in_its_test_split():
    ds = datasets.load("photos")  # alias; the cache `cae-edge data fetch scenes` writes
    assert ds.name == "scenes" and ds.split == scenes.SPLIT and ds.source_name == scenes.SOURCE
    assert ds.x_train.shape == (scenes.TRAIN_FRAMES, 28, 28) and ds.x_test.shape == (
        scenes.TEST_FRAMES,
        28,
        28,
    )
    assert set(np.unique(ds.y_train)) == set(range(len(scenes.TRAIN_PHOTOS)))
    assert set(np.unique(ds.y_test)) == set(range(len(scenes.TEST_PHOTOS)))
    assert [p["file"] for p in ds.credits["test"]] == [p.file for p in scenes.TEST_PHOTOS]
    train_bytes = {f.tobytes() for f in ds.x_train}
    assert not any(f.tobytes() in train_bytes for f in ds.x_test)
    # the same generator on the packaged test photographs gives the cached test frames
    again, _ = scenes.make_frames(
        [scenes.read_photo(scenes.photo_path(p)) for p in scenes.TEST_PHOTOS], 50, scenes.SEED, 1
    )
    assert np.array_equal(again, ds.x_test[:50])
