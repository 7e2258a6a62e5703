"""The codecs a user would use instead of cae-edge: JPEG, WebP, PNG (Pillow), JPEG XL (imagecodecs) and PCA,
on 28x28 gray images.

Every codec reports two byte counts per image:

``bytes_total``
    The whole self-contained file as Pillow writes it (``len()`` of the encoded buffer).
``bytes_payload``
    The header-stripped size: only the bytes a receiver that already knows the codec settings and the image
    size could *not* reconstruct. The parts removed are either identical for every 28x28 image at a given
    setting or derivable from the payload length (which the transport already delivers):

    * **JPEG** (baseline, standard Huffman tables, i.e. Pillow ``optimize=False``): the entropy-coded scan
      only, from the first byte after the SOS segment to the byte before the EOI marker. Everything before it
      (SOI, APP0/JFIF, DQT, SOF0, DHT, SOS header) depends only on the quality and the image size, and EOI is
      constant. (With ``optimize=True`` the Huffman tables would be image-specific and could not be stripped;
      that is why the tables are standard.)
    * **WebP** (lossy VP8, ``method=6``): the ``VP8 `` chunk's data minus its 7 constant bytes (start code
      ``9d 01 2a`` and the 14-bit width/height fields); kept are the 3-byte frame tag (key frame flag,
      version, first-partition size) and both partitions. Removed: the 12-byte RIFF/WEBP header, the 8-byte
      chunk header and the pad byte of odd-sized chunks (sizes follow from the payload length).
    * **JPEG XL** (libjxl through ``imagecodecs``, lossy VarDCT, a bare codestream: the ``.jxl`` file libjxl
      writes when there are no metadata boxes; the ISO BMFF container would add 40 bytes): the codestream
      minus its image header: the 2-byte signature ``ff 0a``, the SizeHeader and the ImageMetadata (bit
      depth, colour encoding, transform data) up to the byte boundary before the first frame (8 bytes for a
      28x28 8-bit gray image). :func:`jpegxl_header_bytes` parses it bit by bit. Kept are the frame header
      and its table of contents (about 4 bytes): libjxl picks coding tools per image, so they are not the
      same for every image at a setting (on MNIST about 1 image in 200 gets a different frame header).
    * **PNG** (lossless, ``optimize=True``): the IDAT chunk data (the zlib stream). Removed: the signature,
      IHDR (constant for 28x28 8-bit gray), chunk headers/CRCs and IEND.
    * **PCA**: ``k`` int8 coefficients, one byte each (no container), like the int8 latent.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

JPEG_QUALITIES = (5, 10, 20, 30, 50, 75, 90)
"""Default JPEG quality sweep (Pillow scale 1-95)."""
WEBP_QUALITIES = (1, 5, 10, 25, 50, 75, 90)
"""Default WebP quality sweep (libwebp scale 0-100)."""
JPEGXL_DISTANCES = (4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0)
"""Default JPEG XL distance sweep (libjxl butteraugli distance 0.1-25; 25, the coarsest, is ~130 B)."""
JPEGXL_EFFORT = 7
"""libjxl encoder effort (1-10; 7 is libjxl's default)."""
PCA_DIMS = (4, 8, 16, 32, 64, 128)
"""Default PCA sizes (bytes/image); the latent sizes of the benchmarked bundles are added."""

_PCA_CHUNK = 5000
_WEBP_CONST_VP8_BYTES = 7  # start code (3) + width (2) + height (2) of a VP8 key frame header


@dataclass(frozen=True)
class Encoded:
    """One image through one codec setting."""

    data: bytes
    """The whole encoded file."""
    payload_bytes: int
    """Header-stripped size (see the module docstring for what is stripped)."""
    decoded: np.ndarray
    """The decoded image, (H, W) uint8."""


# ---------------------------------------------------------------- header stripping


def jpeg_scan_bytes(data: bytes) -> int:
    """Length of the entropy-coded scan of a baseline JPEG: bytes after the SOS segment, before EOI.

    Raises:
        ValueError: not a single-scan JPEG ending in EOI.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError(f"not a JPEG: starts with {data[:2].hex()}")
    if data[-2:] != b"\xff\xd9":
        raise ValueError("JPEG does not end with EOI (ff d9)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {pos}, found {data[pos]:#04x}")
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker == 0xDA:  # SOS: the scan follows its header
            start = pos + 2 + length
            scan = data[start:-2]
            if b"\xff\xda" in scan:
                raise ValueError("progressive / multi-scan JPEG: only baseline single-scan is supported")
            return len(scan)
        pos += 2 + length
    raise ValueError("JPEG without an SOS segment")


def riff_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """``(fourcc, data offset, data size)`` of each chunk of a RIFF/WEBP file.

    Raises:
        ValueError: not a RIFF WEBP file or a chunk overruns the file.
    """
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError(f"not a WebP file: starts with {data[:12]!r}")
    out, pos = [], 12
    while pos + 8 <= len(data):
        fourcc = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if pos + 8 + size > len(data):
            raise ValueError(f"WebP chunk {fourcc!r} of {size} bytes overruns the {len(data)}-byte file")
        out.append((fourcc, pos + 8, size))
        pos += 8 + size + (size & 1)
    return out


def webp_payload_bytes(data: bytes) -> int:
    """Header-stripped size of a lossy WebP: the VP8 chunk minus its 7 constant bytes.

    Raises:
        ValueError: not a lossy (``VP8 ``) WebP, or extra chunks (alpha, metadata) that cannot be stripped.
    """
    chunks = riff_chunks(data)
    kinds = [c[0] for c in chunks]
    if kinds != [b"VP8 "]:
        raise ValueError(f"WebP chunks {kinds}: expected a single lossy 'VP8 ' chunk")
    _, off, size = chunks[0]
    if data[off + 3 : off + 6] != b"\x9d\x01\x2a":
        raise ValueError("VP8 chunk without a key frame start code")
    return size - _WEBP_CONST_VP8_BYTES


class _Bits:
    """Reads a JPEG XL codestream's bit fields, least significant bit first (ISO/IEC 18181-1)."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos  # pos in bits

    def u(self, n: int) -> int:
        if self.pos + n > 8 * len(self.data):
            raise ValueError(f"JPEG XL header runs past the end of the {len(self.data)}-byte codestream")
        v = 0
        for i in range(n):
            bit = (self.data[(self.pos + i) >> 3] >> ((self.pos + i) & 7)) & 1
            v |= bit << i
        self.pos += n
        return v

    def u32(self, *dist: tuple[int, int]) -> int:
        """``U32``: a 2-bit selector picks ``(bits, offset)``; ``bits`` 0 means the constant ``offset``."""
        bits, offset = dist[self.u(2)]
        return offset + (self.u(bits) if bits else 0)

    def u64(self) -> int:
        sel = self.u(2)
        if sel == 0:
            return 0
        if sel == 1:
            return 1 + self.u(4)
        if sel == 2:
            return 17 + self.u(8)
        v, shift = self.u(12), 12
        while self.u(1):
            if shift == 60:
                return v | self.u(4) << shift
            v |= self.u(8) << shift
            shift += 8
        return v

    def enum(self) -> int:
        return self.u32((0, 0), (0, 1), (4, 2), (6, 18))

    def size(self, small: bool) -> int:
        return 8 * (self.u(5) + 1) if small else self.u32((9, 1), (13, 1), (18, 1), (30, 1))


_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def jpegxl_header_bytes(data: bytes) -> tuple[int, tuple[int, int]]:
    """Length of a bare JPEG XL codestream's image header, and the image size it declares.

    The image header is the signature ``ff 0a``, the SizeHeader, the ImageMetadata and the transform data,
    zero-padded to a byte (ISO/IEC 18181-1, section "Headers"); the first frame starts after it. Parsed for
    what libjxl writes for plain images: no extra fields (orientation, preview, animation), no extra channels,
    an enumerated colour encoding (no ICC profile, no custom white point or primaries), default transform
    data, no extensions. Anything else is refused rather than guessed.

    Returns:
        ``(header bytes, (height, width))``.

    Raises:
        ValueError: not a bare codestream, or a header field this parser does not handle.
    """
    if data[:2] != b"\xff\x0a":
        raise ValueError(f"not a bare JPEG XL codestream: starts with {data[:2].hex()} (expected ff0a)")
    r = _Bits(data, 16)
    small = bool(r.u(1))
    height = r.size(small)
    ratio = r.u(3)
    if ratio:
        num, den = _JXL_RATIOS[ratio]
        width = height * num // den
    else:
        width = r.size(small)
    if not r.u(1):  # ImageMetadata.all_default is false
        if r.u(1):
            raise ValueError("JPEG XL extra fields (orientation, preview, animation): unsupported")
        if r.u(1):  # float samples
            r.u32((0, 32), (0, 16), (0, 24), (6, 1))
            r.u(4)
        else:
            r.u32((0, 8), (0, 10), (0, 12), (6, 1))
        r.u(1)  # modular_16_bit_buffer_sufficient
        extra = r.u32((0, 0), (0, 1), (4, 2), (12, 1))
        if extra:
            raise ValueError(f"JPEG XL image with {extra} extra channel(s): unsupported")
        xyb = bool(r.u(1))
        if not r.u(1):  # ColorEncoding.all_default is false
            if r.u(1):
                raise ValueError("JPEG XL image with an ICC profile: unsupported")
            space = r.enum()  # 0 RGB, 1 gray, 2 XYB, 3 unknown
            if space != 2:
                if r.enum() == 2:  # white point: 1 D65, 2 custom, 10 E, 11 DCI
                    raise ValueError("JPEG XL colour encoding with a custom white point: unsupported")
                if space != 1 and r.enum() == 2:  # primaries: 2 custom
                    raise ValueError("JPEG XL colour encoding with custom primaries: unsupported")
                if r.u(1):  # have_gamma
                    r.u(24)
                else:
                    r.enum()  # transfer function
            r.enum()  # rendering intent
        if r.u64():
            raise ValueError("JPEG XL ImageMetadata with extensions: unsupported")
        del xyb  # only the opsin matrix of non-default transform data depends on it
    if not r.u(1):  # CustomTransformData.all_default
        raise ValueError("JPEG XL header with custom transform data (opsin matrix, upsampling): unsupported")
    pad = -r.pos % 8
    if r.u(pad):
        raise ValueError("JPEG XL image header not zero-padded to a byte")
    return r.pos // 8, (height, width)


def png_idat_bytes(data: bytes) -> int:
    """Total IDAT data (the zlib stream) of a PNG file.

    Raises:
        ValueError: not a PNG.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"not a PNG: starts with {data[:8]!r}")
    pos, total = 8, 0
    while pos + 8 <= len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            total += size
        pos += 12 + size
    return total


# ---------------------------------------------------------------- codecs


def _check_image(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 2:
        raise ConfigError(
            f"image of shape {getattr(img, 'shape', None)} and dtype "
            f"{getattr(img, 'dtype', type(img).__name__)}: expected (H, W) uint8"
        )
    return img


def _save(img: np.ndarray, fmt: str, **kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_check_image(img), mode="L").save(buf, fmt, **kwargs)
    return buf.getvalue()


def _load_gray(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def jpeg(img: np.ndarray, quality: int) -> Encoded:
    """Baseline JPEG at ``quality`` (1-95) with the standard Huffman tables (so headers are strippable)."""
    if not 1 <= int(quality) <= 100:
        raise ConfigError(f"JPEG quality {quality}: must be 1-100")
    data = _save(img, "JPEG", quality=int(quality), optimize=False, progressive=False)
    return Encoded(data, jpeg_scan_bytes(data), _load_gray(data))


def webp(img: np.ndarray, quality: int) -> Encoded:
    """Lossy WebP at ``quality`` (0-100), ``method=6`` (slowest, smallest). Decoded back to gray (luma)."""
    if not 0 <= int(quality) <= 100:
        raise ConfigError(f"WebP quality {quality}: must be 0-100")
    data = _save(img, "WEBP", quality=int(quality), method=6, lossless=False)
    return Encoded(data, webp_payload_bytes(data), _load_gray(data))


def jpegxl(img: np.ndarray, distance: float, effort: int = JPEGXL_EFFORT) -> Encoded:
    """Lossy JPEG XL (libjxl VarDCT via ``imagecodecs``) at butteraugli ``distance`` (0.1-25): a codestream.

    Raises:
        ConfigError: a setting out of range, or ``imagecodecs`` (the ``bench`` extra) without JPEG XL.
    """
    if not 0.1 <= float(distance) <= 25:
        raise ConfigError(f"JPEG XL distance {distance}: must be 0.1-25 (libjxl's range for lossy coding)")
    if not 1 <= int(effort) <= 10:
        raise ConfigError(f"JPEG XL effort {effort}: must be 1-10")
    ic = jpegxl_codec()
    data = bytes(ic.jpegxl_encode(_check_image(img), distance=float(distance), effort=int(effort)))
    head, size = jpegxl_header_bytes(data)
    if size != img.shape:
        raise ValueError(f"JPEG XL header says {size}, the image is {img.shape}")
    decoded = np.asarray(ic.jpegxl_decode(data))
    return Encoded(data, len(data) - head, decoded.reshape(img.shape).astype(np.uint8, copy=False))


def jpegxl_codec():
    """The ``imagecodecs`` module, checked for JPEG XL support.

    Raises:
        ConfigError: not installed, or built without libjxl.
    """
    try:
        import imagecodecs
    except ImportError:
        raise ConfigError(
            "JPEG XL needs the imagecodecs package: pip install 'cae-edge[bench]' (or imagecodecs)"
        ) from None
    if not imagecodecs.JPEGXL.available:
        raise ConfigError(f"imagecodecs {imagecodecs.__version__} was built without JPEG XL (libjxl)")
    return imagecodecs


def png(img: np.ndarray) -> Encoded:
    """Lossless PNG (``optimize=True``)."""
    data = _save(img, "PNG", optimize=True)
    return Encoded(data, png_idat_bytes(data), _load_gray(data))


# ---------------------------------------------------------------- PCA


@dataclass
class PCA:
    """PCA of flattened images (0-255 scale) with per-component int8 quantization of the coefficients.

    The receiver knows the mean, the components and the per-component scales (they are the "model", like the
    decoder's weights); only the ``k`` int8 coefficients are sent.
    """

    mean: np.ndarray
    """(D,) mean image."""
    components: np.ndarray
    """(K_max, D) orthonormal principal directions, by decreasing variance."""
    scales: np.ndarray
    """(K_max,) int8 step of each coefficient: 99.9th percentile of |coefficient| on the fit set / 127."""
    shape: tuple[int, int]
    """Image shape."""

    @classmethod
    def fit(cls, images: np.ndarray, max_dim: int) -> PCA:
        """Fit on (N, H, W) uint8 images (the train split) keeping ``max_dim`` components.

        Raises:
            ConfigError: ``max_dim`` outside 1..H*W.
        """
        n, h, w = images.shape
        if not 1 <= max_dim <= h * w:
            raise ConfigError(f"PCA dims {max_dim}: must be 1..{h * w}")
        flat = images.reshape(n, -1)
        chunks = range(0, n, _PCA_CHUNK)  # float64 copies of 60,000 images would take ~0.4 GB each
        mean = flat.sum(axis=0, dtype=np.float64) / n
        cov = np.zeros((h * w, h * w))
        for i in chunks:
            xc = flat[i : i + _PCA_CHUNK].astype(np.float64) - mean
            cov += xc.T @ xc
        vals, vecs = np.linalg.eigh(cov / max(n - 1, 1))
        comps = vecs[:, np.argsort(vals)[::-1][:max_dim]].T
        coef = np.concatenate(
            [(flat[i : i + _PCA_CHUNK].astype(np.float64) - mean) @ comps.T for i in chunks]
        )
        scales = np.maximum(np.percentile(np.abs(coef), 99.9, axis=0) / 127.0, 1e-6)
        return cls(mean, comps, scales, (h, w))

    def _coef(self, images: np.ndarray, k: int) -> np.ndarray:
        if not 1 <= k <= len(self.components):
            raise ConfigError(f"PCA dims {k}: this PCA has 1..{len(self.components)}")
        return (images.reshape(len(images), -1).astype(np.float64) - self.mean) @ self.components[:k].T

    def _image(self, coef: np.ndarray, k: int) -> np.ndarray:
        x = coef @ self.components[:k] + self.mean
        return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(len(coef), *self.shape)

    def quantize(self, images: np.ndarray, k: int) -> np.ndarray:
        """(N, H, W) uint8 → (N, k) int8 coefficients (what would be sent: ``k`` bytes per image)."""
        return np.clip(np.rint(self._coef(images, k) / self.scales[:k]), -127, 127).astype(np.int8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """(N, k) int8 coefficients → (N, H, W) uint8 images."""
        k = q.shape[1]
        return self._image(q.astype(np.float64) * self.scales[:k], k)

    def roundtrip_int8(self, images: np.ndarray, k: int) -> np.ndarray:
        """Images through ``k`` int8 coefficients and back."""
        return self.dequantize(self.quantize(images, k))

    def roundtrip_float(self, images: np.ndarray, k: int) -> np.ndarray:
        """Images through ``k`` unquantized coefficients (float32 on the wire: 4k bytes) and back."""
        return self._image(self._coef(images, k).astype(np.float32).astype(np.float64), k)
