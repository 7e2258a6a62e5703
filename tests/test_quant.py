"""Pure quantization functions: no model files, no TensorFlow."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cae_edge.errors import ConfigError
from cae_edge.metrics import to_uint8
from cae_edge.quant import (
    PIXEL_SCALE,
    PIXEL_ZERO_POINT,
    QuantParams,
    dequantize,
    int8_to_pixels,
    output_to_pixel_lut,
    pixels_to_int8,
    quantize,
)

ALL_PIXELS = np.arange(256, dtype=np.uint8)


def test_pixels_to_int8_is_minus_128_for_every_byte():
    q = pixels_to_int8(ALL_PIXELS)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q.astype(np.int16), ALL_PIXELS.astype(np.int16) - 128)


def test_pixels_to_int8_equals_quantizing_the_float_pixel():
    qp = QuantParams(float(PIXEL_SCALE), PIXEL_ZERO_POINT)
    np.testing.assert_array_equal(pixels_to_int8(ALL_PIXELS), quantize(ALL_PIXELS / 255.0, qp))


def test_pixels_to_int8_writes_into_out_without_allocating():
    img = np.arange(784, dtype=np.int64).reshape(28, 28).astype(np.uint8)
    out = np.empty((28, 28), np.int8)
    res = pixels_to_int8(img, out=out)
    assert res is out
    np.testing.assert_array_equal(int8_to_pixels(out), img)


def test_pixels_to_int8_rejects_non_uint8():
    with pytest.raises(ConfigError, match="float32"):
        pixels_to_int8(np.zeros((28, 28), np.float32))


@settings(max_examples=100, deadline=None)
@given(
    scale=st.floats(1e-4, 10.0),
    zp=st.integers(-128, 127),
    values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=50),
)
def test_quantize_dequantize_error_at_most_half_a_step_inside_range(scale, zp, values):
    qp = QuantParams(scale, zp)
    lo, hi = qp.real_range
    x = np.clip(np.array(values), lo, hi)
    err = np.abs(dequantize(quantize(x, qp), qp) - x)
    assert np.all(err <= 0.5 * np.float32(scale) * (1 + 1e-5) + 1e-6)


@settings(max_examples=100, deadline=None)
@given(scale=st.floats(1e-3, 10.0), zp=st.integers(-128, 127))
def test_dequantize_then_quantize_is_identity_on_every_int8(scale, zp):
    qp = QuantParams(scale, zp)
    q = np.arange(-128, 128, dtype=np.int8)
    np.testing.assert_array_equal(quantize(dequantize(q, qp), qp), q)


def test_quantize_saturates_and_rounds_half_away_from_zero():
    qp = QuantParams(1.0, 0)
    np.testing.assert_array_equal(quantize([1e9, -1e9, 0.5, -0.5, 1.5, 2.49], qp), [127, -128, 1, -1, 2, 2])
    qpu = QuantParams(0.5, 10, "uint8")
    np.testing.assert_array_equal(quantize([-100.0, 0.0, 1.0], qpu), [0, 10, 12])
    assert quantize([0.0], qpu).dtype == np.uint8


def test_output_lut_matches_float_rounding_of_the_sigmoid_output():
    qp = QuantParams(1 / 256, -128)  # what TFLite fixes for an int8 LOGISTIC output
    lut = output_to_pixel_lut(qp)
    q = np.arange(-128, 128, dtype=np.int8)
    np.testing.assert_array_equal(lut[q.view(np.uint8)], to_uint8(dequantize(q, qp)))
    assert lut[np.int8(-128).view(np.uint8)] == 0 and lut[np.int8(127).view(np.uint8)] == 254


def test_output_lut_uint8_output():
    lut = output_to_pixel_lut(QuantParams(1 / 255, 0, "uint8"))
    np.testing.assert_array_equal(lut, ALL_PIXELS)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scale": 0.0, "zero_point": 0}, "scale"),
        ({"scale": float("nan"), "zero_point": 0}, "scale"),
        ({"scale": 1.0, "zero_point": 200}, "zero point 200"),
        ({"scale": 1.0, "zero_point": -1, "dtype": "uint8"}, "zero point -1"),
        ({"scale": 1.0, "zero_point": 0, "dtype": "int16"}, "int16"),
    ],
)
def test_bad_params_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantParams(**kwargs).validate()


def test_from_dict_and_same_as():
    a = QuantParams.from_dict({"scale": 0.1, "zero_point": -3})
    assert a.same_as(QuantParams(float(np.float32(0.1)), -3))
    assert not a.same_as(QuantParams(0.1, -2))
    with pytest.raises(ConfigError, match="zero_point"):
        QuantParams.from_dict({"scale": 0.1})
