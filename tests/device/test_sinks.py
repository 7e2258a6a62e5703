"""Frame sinks: PNG files and videos per sender read back exactly; a missing folder or GUI: clear error."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from cae_edge import datasets
from cae_edge.device.capture import VideoCaptureSource
from cae_edge.device.sinks import MosaicSink, PngSink, VideoSink
from cae_edge.errors import ConfigError


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return datasets.load("mnist").x_test[:40]


def test_sinks(tmp_path, digits) -> None:
    png = PngSink(tmp_path / "png")
    vid = VideoSink(tmp_path / "v.mkv", scale=1)
    for seq, d in enumerate(digits[:5]):
        for sink in (png, vid):
            sink.write("cam", seq, d)
            sink.write("other", seq, d)
    png.close()
    vid.close()
    np.testing.assert_array_equal(
        cv2.imread(str(tmp_path / "png/cam/00000003.png"), cv2.IMREAD_GRAYSCALE), digits[3]
    )
    for path in (tmp_path / "v.mkv", tmp_path / "v-other.mkv"):
        with VideoCaptureSource(str(path), live=False) as src:
            got = [f[:, :, 0] for f in src]
        assert len(got) == 5
        np.testing.assert_array_equal(got[4], digits[4])  # FFV1 is lossless
    with pytest.raises(ConfigError, match="does not exist"):
        VideoSink(tmp_path / "missing" / "v.mkv")
    if os.environ.get("DISPLAY") is None:  # headless OpenCV or no display: a clear error, not a crash
        with pytest.raises(ConfigError, match="--show"):
            MosaicSink()
