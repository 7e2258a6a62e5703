"""Frame sources: real video files and image folders made from real digits, and every way opening can fail."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cae_edge import datasets
from cae_edge.device import capture
from cae_edge.device.capture import (
    ArraySource,
    FrameSource,
    ImageFolderSource,
    SyntheticSource,
    VideoCaptureSource,
    open_source,
)
from cae_edge.errors import SourceError


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return datasets.load("mnist").x_test[:12]


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    """Lossless FFV1 video of gray frames (the stream tests use this too)."""
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h), isColor=False)
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def test_array_source(digits) -> None:
    src = ArraySource(digits[:3])
    assert isinstance(src, FrameSource)
    with src:
        got = list(src)
    assert len(got) == 3 and np.array_equal(got[1], digits[1])
    assert src.read() is None
    looped = ArraySource(digits[:2], loop=True, limit=5)
    assert [int(f.sum()) for f in looped] == [int(digits[i % 2].sum()) for i in range(5)]
    with pytest.raises(SourceError, match="no frames"):
        ArraySource([])


def test_video_file_round_trip(tmp_path, digits) -> None:
    path = write_video(tmp_path / "digits.mkv", digits)
    with open_source(str(path)) as src:
        assert isinstance(src, VideoCaptureSource)
        frames = list(src)
    assert len(frames) == len(digits)
    for f, d in zip(frames, digits, strict=True):
        assert f.shape == (28, 28, 3)
        np.testing.assert_array_equal(f[:, :, 0], d)  # FFV1 is lossless


def test_looped_video(tmp_path, digits) -> None:
    path = write_video(tmp_path / "d.mkv", digits[:3])
    with open_source(str(path), loop=True) as src:
        frames = [src.read() for _ in range(7)]
    np.testing.assert_array_equal(frames[6][:, :, 0], digits[0])


def test_live_source_that_stops_is_an_error(tmp_path, digits) -> None:
    # A "live" capture whose frames run out behaves like a camera unplugged mid-stream.
    path = write_video(tmp_path / "cam.mkv", digits[:2])
    with VideoCaptureSource(str(path), live=True, max_failures=3) as src:
        assert src.read() is not None and src.read() is not None
        with pytest.raises(SourceError, match="stopped delivering frames"):
            src.read()


def test_image_folder(tmp_path, digits) -> None:
    for i, d in enumerate(digits[:4]):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), d)
    (tmp_path / "notes.txt").write_text("not an image")
    with open_source(str(tmp_path)) as src:
        assert isinstance(src, ImageFolderSource)
        frames = list(src)
    assert len(frames) == 4
    for f, d in zip(frames, digits, strict=False):
        np.testing.assert_array_equal(f, d)
    with open_source(str(tmp_path / "002.png")) as one:
        np.testing.assert_array_equal(one.read(), digits[2])
        assert one.read() is None


def test_synthetic_source_moves_real_digits() -> None:
    ds = datasets.load("mnist")
    a = SyntheticSource("mnist", limit=30, seed=3)
    b = open_source("synthetic:mnist", limit=30)
    frames = list(a)
    assert len(frames) == 30 and frames[0].shape == (120, 160) and frames[0].dtype == np.uint8
    np.testing.assert_array_equal(SyntheticSource("mnist", seed=3).frame(17), frames[17])
    assert len(list(b)) == 30
    # the pixels shown are the enlarged test image (scale 2), always whole; each step moves it to the right
    for k in (0, 5, 11):
        big = cv2.resize(ds.x_test[a.index_at(k)], (56, 56), interpolation=cv2.INTER_LINEAR)
        assert int(frames[k].sum()) == int(big.sum())
    cols = [np.nonzero(f.sum(0))[0].mean() for f in frames[0:12]]
    assert all(c2 > c1 for c1, c2 in zip(cols, cols[1:], strict=False))
    assert a.index_at(0) != a.index_at(12)  # the next test image follows
    paper = SyntheticSource("mnist", seed=3, paper=True)
    np.testing.assert_array_equal(paper.frame(5), 255 - frames[5])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("missing.mp4", "no such file"),
        ("missing/", "no such folder"),
        ("7", "no camera at index 7"),
        ("/dev/video9", "no such device"),
        ("", "empty source"),
    ],
)
def test_open_errors(spec: str, match: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=match):
        open_source(spec)


def test_unreadable_files(tmp_path) -> None:
    text = tmp_path / "clip.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(SourceError, match="clip.mp4"):
        open_source(str(text))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(SourceError, match="broken.png"):
        open_source(str(bad))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(empty))


def test_picamera2_missing_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # not installed (as anywhere but a Pi)
    with pytest.raises(SourceError, match="python3-picamera2"):
        open_source("picamera2:320x240")


def test_synthetic_unknown_dataset() -> None:
    with pytest.raises(SourceError, match="synthetic:nope"):
        capture.open_source("synthetic:nope")
