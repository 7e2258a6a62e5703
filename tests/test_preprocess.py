"""Preprocessing steps on real digits: each step alone, then the whole Preprocessor."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cae_edge import datasets
from cae_edge.device import preprocess as pp
from cae_edge.device.preprocess import Preprocessor, PreprocessSpec
from cae_edge.errors import ConfigError


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return datasets.load("mnist").x_test[:16]


def _canvas(img: np.ndarray, shape: tuple[int, int], scale: int) -> np.ndarray:
    """``img`` enlarged by pixel repetition and centred on a black canvas."""
    big = np.kron(img, np.ones((scale, scale), np.uint8))
    out = np.zeros(shape, np.uint8)
    y, x = (shape[0] - big.shape[0]) // 2, (shape[1] - big.shape[1]) // 2
    out[y : y + big.shape[0], x : x + big.shape[1]] = big
    return out


def test_to_gray_bgr_bgra_and_gray(digits) -> None:
    g = digits[0]
    assert pp.to_gray(g) is g
    np.testing.assert_array_equal(pp.to_gray(np.dstack([g, g, g])), g)  # equal channels: luma is exact
    np.testing.assert_array_equal(pp.to_gray(np.dstack([g, g, g, np.full_like(g, 255)])), g)
    np.testing.assert_array_equal(pp.to_gray(g[:, :, None]), g)
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 2] = 255  # pure red in BGR
    assert int(pp.to_gray(colour)[0, 0]) == 76  # 0.299 * 255
    for bad in (g.astype(np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros(4, np.uint8), [[1, 2]]):
        with pytest.raises(ConfigError, match="frame"):
            pp.to_gray(bad)


def test_center_crop_and_letterbox(digits) -> None:
    frame = _canvas(digits[1], (84, 140), 3)
    sq = pp.center_crop(frame)
    assert sq.shape == (84, 84)
    np.testing.assert_array_equal(sq, np.kron(digits[1], np.ones((3, 3), np.uint8)))
    box = pp.letterbox(frame, background=7)
    assert box.shape == (140, 140)
    assert (box[:28] == 7).all() and (box[-28:] == 7).all()
    np.testing.assert_array_equal(box[28:112], frame)
    assert pp.letterbox(sq) is sq
    # rounded to a multiple of 28 so that the resize is an exact 4x4 block average
    frame = _canvas(digits[1], (120, 160), 4)
    sq = pp.center_crop(frame, 28)
    assert sq.shape == (112, 112)
    np.testing.assert_array_equal(pp.resize_area(sq, 28), digits[1])
    assert pp.letterbox(frame, 0, 28).shape == (168, 168)


def test_resize_area_is_exact_on_block_images(digits) -> None:
    for d in digits:
        np.testing.assert_array_equal(pp.resize_area(np.kron(d, np.ones((4, 4), np.uint8)), 28), d)
    d = digits[0]
    assert pp.resize_area(d, 28) is d


def test_invert(digits) -> None:
    np.testing.assert_array_equal(pp.invert(digits[2]), 255 - digits[2])
    np.testing.assert_array_equal(pp.invert(pp.invert(digits[2])), digits[2])


def _centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    m = cv2.moments(img)
    return m["m01"] / m["m00"], m["m10"] / m["m00"]


def test_mnist_normalize_recovers_a_shifted_scaled_digit(digits) -> None:
    errors = []
    for d in digits:
        # MNIST digits are already normalised; move one off-centre and enlarge it 5x on a big canvas.
        frame = np.zeros((200, 200), np.uint8)
        big = cv2.resize(d, (140, 140), interpolation=cv2.INTER_LINEAR)
        frame[10:150, 50:190] = big
        out = pp.mnist_normalize(frame)
        assert out.shape == (28, 28) and out.dtype == np.uint8
        ys, xs = np.nonzero(out)
        assert np.ptp(ys) + 1 <= 20 and np.ptp(xs) + 1 <= 20  # fits the 20x20 box
        cy, cx = _centre_of_mass(out)
        assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5  # where MNIST has it
        # and it looks like the original digit again
        errors.append(np.abs(out.astype(int) - d.astype(int)).mean())
        assert errors[-1] < 25
        assert np.corrcoef(out.ravel(), d.ravel())[0, 1] > 0.8
    assert np.mean(errors) < 12
    assert not pp.mnist_normalize(np.full((50, 50), 90, np.uint8)).any()
    # a two-level frame on a gray background: the box is the object, not the whole frame
    frame = np.full((100, 100), 50, np.uint8)
    frame[40:60, 45:50] = 200
    out = pp.mnist_normalize(frame)
    ys, xs = np.nonzero(out)
    assert np.ptp(ys) + 1 == 20 and np.ptp(xs) + 1 == 5
    assert out.max() == 150  # background level subtracted


def test_preprocessor_default_is_identity_on_28x28(digits) -> None:
    p = Preprocessor(
        {"size": 28, "grayscale": True, "invert": False, "crop": "center", "mnist_normalize": False}
    )
    for d in digits:
        np.testing.assert_array_equal(p(d), d)


def test_preprocessor_camera_like_frames(digits) -> None:
    center = Preprocessor({"crop": "center"})
    boxed = Preprocessor({"crop": "letterbox"})
    paper = Preprocessor({"crop": "center", "invert": True})
    for d in digits:
        frame = _canvas(d, (84, 140), 3)
        bgr = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        np.testing.assert_array_equal(center(bgr), d)
        np.testing.assert_array_equal(paper(255 - bgr), d)  # dark ink on white paper -> MNIST convention
        lb = boxed(frame)
        assert lb.shape == (28, 28)
        np.testing.assert_array_equal(lb, pp.resize_area(pp.letterbox(frame), 28))
        # inverted letterbox pads with white so the padding turns black after inversion
        np.testing.assert_array_equal(Preprocessor({"crop": "letterbox", "invert": True})(255 - frame), lb)


def test_preprocessor_with_normalisation(digits) -> None:
    p = Preprocessor({"crop": "center", "invert": True, "mnist_normalize": True})
    frame = np.full((240, 320), 255, np.uint8)  # white paper, dark digit, off-centre
    frame[40:180, 100:240] = 255 - cv2.resize(digits[3], (140, 140))
    out = p(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    assert np.corrcoef(out.ravel(), digits[3].ravel())[0, 1] > 0.8
    cy, cx = _centre_of_mass(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"crop": "zoom"}, "crop"),
        ({"grayscale": False}, "grayscale"),
        ({"size": "28"}, "size"),
        ({"size": 2}, "size"),
        ({"invert": "yes"}, "invert"),
    ],
)
def test_bad_specs(spec, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Preprocessor(spec)


def test_spec_round_trip_and_unknown_keys() -> None:
    spec = PreprocessSpec.from_dict({"size": 32, "crop": "letterbox", "future_key": 1})
    assert spec.size == 32 and spec.crop == "letterbox"
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert Preprocessor(None).spec == PreprocessSpec()
    assert Preprocessor(spec)(np.zeros((50, 70, 3), np.uint8)).shape == (32, 32)
