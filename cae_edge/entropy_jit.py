"""Compiled main loops of the range coder (numba): the optional fast path of :mod:`cae_edge.entropy`.

Pure Python costs about 0.1 µs (encode) and 0.2 µs (decode) per latent dimension, too slow for the 160- and
256-dimension bundles; these loops take a few ns per dimension. They produce the stream of
:class:`~cae_edge.entropy.EntropyCoder` bit for bit, and only its common case:

    encode: int8 latent bytes ─► D main symbols (64-bit low, carries into the bytes already written)
            ─► tail ─► trimmed bytes                     (or "edge": the latent touches an alphabet edge)
    decode: payload ─► D main symbols (diff / rng / scale, bisect of the CDF row, big-endian words read
            past the end as zeros) ─► canonical checks ─► int8 latent   (or "fall back")

Anything else, i.e. a latent or decoded symbol at an edge of the alphabet (escapes, or the legacy format's
clamping, rare) and every stream the decoder does not accept (garbage, truncated, padded), is left to the
pure-Python coder, which stays the reference: it gives the escapes and the exact error message. A frame
the loops here do finish must give the pure coder's bytes or latent; tests/test_entropy_jit.py holds them
to that over random models, latents and garbage.

This module imports numba, so :mod:`cae_edge.entropy` imports it only when a coder is built (never at CLI
import) and only if numba is installed (the ``receiver``, ``fast`` and ``dev`` extras). The kernels have
explicit signatures, so they compile when this module is imported, not on the first frame, and are cached
on disk (``cache=True``: in ``__pycache__`` next to this file, or numba's user cache directory where that is
not writable, or ``NUMBA_CACHE_DIR``). Measured here: the first process spends about 1.7 s importing numba
and compiling, later ones about 0.7 s importing numba and loading the cache. ``CAE_EDGE_PURE_ENTROPY=1``
makes the coder ignore this module.

All arithmetic is uint64 (numba would turn a mix of signed and unsigned integers into floats), hence the
typed constants below.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, types

VERSION = numba.__version__
"""The numba version compiling the kernels (what ``EntropyCoder.impl`` reports)."""

_U8, _U24, _U32 = np.uint64(8), np.uint64(24), np.uint64(32)
_ONE = np.uint64(1 << 24)
"""``2**PRECISION``: a quantile at or beyond it lies outside the model."""
_WORD = np.uint64(1 << 32)
_LOW32 = np.uint64(0xFFFFFFFF)
_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)
_BYTE = np.uint64(0xFF)
_ZERO, _ONE_U = np.uint64(0), np.uint64(1)

FALLBACK = -1
"""What the kernels return when the pure-Python coder must handle the frame."""

_BYTES = types.Array(types.uint8, 1, "C", readonly=True)
"""A ``bytes`` object seen through ``np.frombuffer`` (read-only)."""
_TABLE = types.Array(types.uint32, 2, "C")
"""CDF starts, widths and CDFs: integers up to 2**24 (uint32 halves the tables a frame touches)."""
_OUT = types.Array(types.uint8, 1, "C")


@njit("UniTuple(uint64, 2)(uint64, uint64)", cache=True, nogil=True)
def _tail(low, rng):  # pragma: no cover - compiled
    """:func:`cae_edge.entropy._tail`: ``(value, keep)`` of the stream's end (``low`` < 2**64)."""
    if low == _ZERO:
        return _ZERO, _ZERO
    # top - 1 with top = min(low + rng, 2**64), without leaving 64 bits
    top_m1 = _MAX if rng > _MAX - low else low + rng - _ONE_U
    x = (low - _ONE_U) ^ top_m1  # != 0: top - 1 >= low > low - 1
    bits = 0
    while x != _ZERO:
        x >>= _ONE_U
        bits += 1
    keep = (72 - bits) >> 3  # 1 .. 8: t below is 56 .. 0, never the undefined shift by 64
    t = np.uint64(64 - 8 * keep)
    return (((low - _ONE_U) >> t) + _ONE_U) << t, np.uint64(keep)


@njit(types.int64(_BYTES, _TABLE, _TABLE, _BYTES, _OUT, types.uint64, types.uint64), cache=True, nogil=True)
def encode_main(raw, cum, freq, edge, out, low0, rng0):  # pragma: no cover - compiled
    """Range-code the latent bytes ``raw`` (D,) into ``out`` (>= 4 D + 8 bytes) from the coder state
    ``(low0, rng0)`` (``(0, 2**64 - 1)``, or the state after a leading class symbol: ``rng0`` >= 2**32);
    return the trimmed length, or :data:`FALLBACK` when a byte is marked in ``edge`` (256 flags: escapes or
    clamping follow).

    ``cum[d, b]`` and ``freq[d, b]`` are the integer CDF start and width of byte ``b`` in dimension ``d``.
    A renormalisation writes the top word of ``low`` as 4 big-endian bytes; a carry out of ``low`` (the
    Python coder's big integer above bit 64) runs back through the bytes written so far.
    """
    low = low0
    rng = rng0
    n = 0  # bytes written
    for d in range(raw.shape[0]):
        b = raw[d]
        if edge[b]:
            return FALLBACK
        scale = rng >> _U24
        add = scale * np.uint64(cum[d, b])  # < 2**64
        low += add
        if low < add:  # carry: the real low is 2**64 more
            i = n - 1
            while i >= 0:
                out[i] += np.uint8(1)
                if out[i] != 0:
                    break
                i -= 1
        rng = scale * np.uint64(freq[d, b])
        if rng < _WORD:
            rng <<= _U32
            word = low >> _U32
            for j in range(4):
                out[n + j] = np.uint8((word >> np.uint64(24 - 8 * j)) & _BYTE)
            n += 4
            low = (low & _LOW32) << _U32
    value, keep = _tail(low, rng)
    for j in range(8):
        out[n + j] = np.uint8((value >> np.uint64(56 - 8 * j)) & _BYTE)
    n += np.int64(keep)
    while n > 0 and out[n - 1] == 0:
        n -= 1
    return n


@njit(types.uint64(_BYTES, types.int64), cache=True, nogil=True)
def _word(payload, i):  # pragma: no cover - compiled
    """Big-endian 32-bit word ``i`` of ``payload``, zero-padded past its end (the receiver's padding)."""
    w = _ZERO
    size = payload.shape[0]
    for j in range(4 * i, 4 * i + 4):
        w <<= _U8
        if j < size:
            w |= np.uint64(payload[j])
    return w


@njit(
    types.int64(_BYTES, _TABLE, types.int64, _BYTES, _OUT, types.uint64, types.uint64), cache=True, nogil=True
)
def decode_main(payload, cdf, lo, edge, out, low0, rng0):  # pragma: no cover - compiled
    """Decode the D main symbols of ``payload`` into the latent bytes ``out`` (D,) and check that the
    stream is canonical; return 0, or :data:`FALLBACK` (a quantile outside the model, a decoded byte marked
    in ``edge``, bytes after the end, a trailing zero byte, not the encoder's tail). ``(low0, rng0)`` is
    the encoder's starting state (``low0`` at most the stream's first 64 bits).

    ``cdf[d]`` is dimension ``d``'s integer CDF (K + 1 entries, 0 .. 2**24); symbol ``s`` is byte
    ``(lo + s) & 0xFF``. Mirrors the Python decoder line by line.
    """
    size = payload.shape[0]
    k = cdf.shape[1] - 1
    diff = ((_word(payload, 0) << _U32) | _word(payload, 1)) - low0
    rng = rng0
    pos = 2  # next word to read
    for d in range(out.shape[0]):
        scale = rng >> _U24
        quantile = diff // scale
        if quantile >= _ONE:
            return FALLBACK  # the pure decoder raises "a quantile outside the model"
        a, z = 0, k  # bisect_right(cdf[d], quantile) - 1: cdf[d, a] <= quantile < cdf[d, z]
        while z - a > 1:
            m = (a + z) >> 1
            if np.uint64(cdf[d, m]) <= quantile:
                a = m
            else:
                z = m
        b = (lo + a) & 0xFF
        if edge[b]:
            return FALLBACK  # escapes may follow
        out[d] = np.uint8(b)
        c = np.uint64(cdf[d, a])
        diff -= scale * c
        rng = scale * (np.uint64(cdf[d, a + 1]) - c)
        if rng < _WORD:
            rng <<= _U32
            diff = (diff << _U32) | _word(payload, pos)
            pos += 1
    n = pos - 2  # words shifted in after the first two
    if size > 4 * n + 8 or (size > 0 and payload[size - 1] == 0):
        return FALLBACK
    window = (_word(payload, n) << _U32) | _word(payload, n + 1)
    if diff > window:
        return FALLBACK
    value, _ = _tail(window - diff, rng)
    if value != window:
        return FALLBACK
    return 0


@njit(
    types.int64(_BYTES, types.Array(types.int32, 3, "C"), types.Array(types.int64, 1, "C")),
    cache=True,
    nogil=True,
)
def cheapest_class(raw, cost, lead):  # pragma: no cover - compiled
    """:meth:`cae_edge.entropy.SwitchedCoder.choose`: the class ``c`` with the least ``lead[c]`` plus the sum
    of ``cost[d, raw[d], c]`` (integer code lengths), the first on a tie. The classes of one (dimension, byte)
    are adjacent: one cache line per dimension."""
    totals = lead.copy()
    n = totals.shape[0]
    for d in range(raw.shape[0]):
        row = cost[d, raw[d]]
        for c in range(n):
            totals[c] += row[c]
    best = 0
    for c in range(1, n):
        if totals[c] < totals[best]:
            best = c
    return best


class JitCoder:
    """The compiled kernels with one model's tables, for :class:`cae_edge.entropy.EntropyCoder`.

    Args:
        cum: (D, 256) CDF start per latent byte (int8 as 0..255), clamped to the alphabet.
        freq: (D, 256) the matching widths.
        cdf: (D, K + 1) integer CDFs.
        lo: the alphabet's smallest value.
        edge: 256 flags, one per byte: the pure coder handles a frame that holds one.
    """

    impl = f"numba {VERSION}"

    def __init__(self, cum: np.ndarray, freq: np.ndarray, cdf: np.ndarray, lo: int, edge: bytes) -> None:
        self._cum = np.ascontiguousarray(cum, dtype=np.uint32)
        self._freq = np.ascontiguousarray(freq, dtype=np.uint32)
        self._cdf = np.ascontiguousarray(cdf, dtype=np.uint32)
        self._lo = int(lo)
        self._edge = np.frombuffer(bytes(edge), dtype=np.uint8)
        self._dim = self._cdf.shape[0]
        self._out_size = 4 * self._dim + 8

    def encode(self, raw: bytes, low: int = 0, rng: int = (1 << 64) - 1) -> bytes | None:
        """The payload of the latent bytes ``raw`` coded from the state ``(low, rng)``, or None when the
        pure coder must encode them."""
        out = np.empty(self._out_size, dtype=np.uint8)
        n = encode_main(
            np.frombuffer(raw, dtype=np.uint8),
            self._cum,
            self._freq,
            self._edge,
            out,
            np.uint64(low),
            np.uint64(rng),
        )
        return None if n < 0 else out[:n].tobytes()

    def decode(self, payload: bytes, low: int = 0, rng: int = (1 << 64) - 1) -> np.ndarray | None:
        """The int8 latent of ``payload`` coded from the state ``(low, rng)``, or None when the pure decoder
        must decide (escapes, or an error it words)."""
        out = np.empty(self._dim, dtype=np.uint8)
        if decode_main(
            np.frombuffer(payload, dtype=np.uint8),
            self._cdf,
            self._lo,
            self._edge,
            out,
            np.uint64(low),
            np.uint64(rng),
        ):
            return None
        return out.view(np.int8)
