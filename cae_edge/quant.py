"""Affine int8 quantization as pure functions, shared by export and the device runtime. No TensorFlow.

TFLite's affine scheme: ``real = scale * (q - zero_point)``, ``q = clip(round(real / scale) + zero_point)``.

Pixels go into the encoder without float maths: the encoder's int8 input has scale 1/255 and zero point
-128, so a raw uint8 pixel byte ``p`` (real value ``p / 255``) is the int8 ``p - 128``, which is the same bit
pattern as ``p XOR 0x80``. The decoder's int8 output (sigmoid: scale 1/256, zero point -128) goes back to
uint8 pixels through a 256-entry lookup table built once from its quantization parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError

PIXEL_SCALE = np.float32(1.0 / 255.0)
"""Scale of the encoder's int8 input: one pixel step is 1/255 of the [0, 1] float range."""
PIXEL_ZERO_POINT = -128
"""Zero point of the encoder's int8 input: pixel 0 is int8 -128, pixel 255 is int8 127."""

_DTYPE_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization parameters of one tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    """Step between adjacent integer values, in real units. Must be > 0 and finite."""
    zero_point: int
    """Integer that represents real 0.0. Must lie in the dtype's range."""
    dtype: str = "int8"
    """Integer type: ``int8`` or ``uint8``."""

    def validate(self) -> QuantParams:
        """Check the parameters; return self.

        Raises:
            ConfigError: scale not positive/finite, unknown dtype, zero point out of range.
        """
        if self.dtype not in _DTYPE_RANGE:
            raise ConfigError(f"quantized dtype {self.dtype!r}: must be int8 or uint8")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"quantization scale {self.scale!r}: must be a finite number > 0")
        lo, hi = _DTYPE_RANGE[self.dtype]
        if int(self.zero_point) != self.zero_point or not lo <= self.zero_point <= hi:
            raise ConfigError(
                f"zero point {self.zero_point!r}: must be an integer in [{lo}, {hi}] for {self.dtype}"
            )
        return self

    @property
    def qmin(self) -> int:
        """Smallest representable integer."""
        return _DTYPE_RANGE[self.dtype][0]

    @property
    def qmax(self) -> int:
        """Largest representable integer."""
        return _DTYPE_RANGE[self.dtype][1]

    @property
    def real_range(self) -> tuple[float, float]:
        """Real values of ``qmin`` and ``qmax`` (the representable range)."""
        return (
            float(self.scale * (self.qmin - self.zero_point)),
            float(self.scale * (self.qmax - self.zero_point)),
        )

    def same_as(self, other: QuantParams) -> bool:
        """True when both have the same float32 scale, zero point and dtype (as TFLite stores them)."""
        return (
            np.float32(self.scale) == np.float32(other.scale)
            and int(self.zero_point) == int(other.zero_point)
            and self.dtype == other.dtype
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantParams:
        try:
            return cls(float(d["scale"]), int(d["zero_point"]), str(d.get("dtype", "int8"))).validate()
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(
                f"quantization {d!r}: need numeric 'scale' and integer 'zero_point' ({e})"
            ) from None


def quantize(real: np.ndarray, qp: QuantParams) -> np.ndarray:
    """Real values → integers of ``qp.dtype``: round half away from zero (as TFLite), then saturate.

    Args:
        real: Any float array.
        qp: The tensor's quantization parameters.

    Returns:
        Array of the same shape, dtype int8 or uint8.
    """
    qp.validate()
    x = np.asarray(real, dtype=np.float64) / np.float64(np.float32(qp.scale))
    q = np.sign(x) * np.floor(np.abs(x) + 0.5) + qp.zero_point
    return np.clip(q, qp.qmin, qp.qmax).astype(qp.dtype)


def dequantize(q: np.ndarray, qp: QuantParams) -> np.ndarray:
    """Integers → real values as float32: ``scale * (q - zero_point)``.

    Args:
        q: Integer array (int8/uint8; any integer dtype is accepted).
        qp: The tensor's quantization parameters.

    Returns:
        float32 array of the same shape.
    """
    qp.validate()
    return (np.float32(qp.scale) * (np.asarray(q, dtype=np.int32) - qp.zero_point)).astype(np.float32)


def pixels_to_int8(image_u8: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 pixel bytes → the encoder's int8 input (scale 1/255, zero point -128), without float maths.

    ``p - 128`` as int8 is the bit pattern ``p XOR 0x80``, so this is one XOR per byte.

    Args:
        image_u8: uint8 array of any shape.
        out: Optional preallocated int8 array of the same shape to write into (no allocation).

    Returns:
        The int8 array (``out`` when given).

    Raises:
        ConfigError: ``image_u8`` is not uint8.
    """
    a = np.asarray(image_u8)
    if a.dtype != np.uint8:
        raise ConfigError(f"image dtype {a.dtype}: expected uint8 pixels (0-255)")
    return np.bitwise_xor(a.view(np.int8), np.int8(-128), out=out)


def int8_to_pixels(q: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pixels_to_int8`: int8 ``q`` → uint8 ``q + 128``."""
    a = np.asarray(q)
    if a.dtype != np.int8:
        raise ConfigError(f"dtype {a.dtype}: expected int8")
    return np.bitwise_xor(a, np.int8(-128)).view(np.uint8)


def output_to_pixel_lut(qp: QuantParams) -> np.ndarray:
    """A 256-entry table mapping the decoder's output byte to a uint8 pixel.

    Index the table with the output tensor viewed as uint8 (``lut[out.view(np.uint8)]``); each entry is
    ``round(255 * dequantize(q))`` clipped to 0..255 — the same rounding as :func:`cae_edge.metrics.to_uint8`
    applies to a float model's output.

    Args:
        qp: Quantization of the decoder's output (int8 or uint8; values represent [0, 1] images).

    Returns:
        uint8 array of shape (256,).
    """
    qp.validate()
    raw = np.arange(256, dtype=np.uint8)
    q = raw.view(np.int8) if qp.dtype == "int8" else raw
    real = dequantize(q, qp).astype(np.float64)
    return np.clip(np.rint(real * 255.0), 0, 255).astype(np.uint8)
