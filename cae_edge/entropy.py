"""Variable-length coding of the int8 latent: a static per-dimension probability model and a range coder.

Shared by the node (encode) and the receiver (decode). Pure Python and numpy: no TensorFlow, no compiled
coder needed, so it runs on every node (``constriction``, whose stream this reproduces bit for bit, is only
a test reference). Where numba is installed (the ``receiver`` extra; ``fast`` for a node) the main loops of
the common frames run compiled (:mod:`cae_edge.entropy_jit`, same bytes, same accept/reject); frames that
touch an alphabet edge, and every payload the compiled decoder does not accept, go through the Python code
here, which stays the reference. ``CAE_EDGE_PURE_ENTROPY=1`` forces pure Python; ``EntropyCoder.impl`` says
which one codes.

Data flow::

    training latents (N, D) int ─► fit() ─► EntropyModel: alphabet [lo, hi], integer frequency table (D, K)
                                              └─► entropy.npz in the bundle (sha256 in manifest["coding"])
    load:     frequency table ─► leaky_cdf() once per dimension ─► integer tables (K + 1 ints, sum 2**24)
              └─► first decode: per dimension, a lookup table of the 2**12 quantile buckets (numpy)
    node:     int8 latent (D,) ─► range coder ─► [escapes] ─► trimmed stream ─► wire
    receiver: stream ─► zero-pad ─► range decoder (bucket lookup, bisect where a bucket holds a CDF
              boundary) ─► [escapes] ─► canonical check ─► int8 latent

The model is a smoothed histogram per latent dimension, fitted at export from the training split's latents
(the rate-distortion training shapes those latents to be cheap under a learned factorized prior; the
histogram is the exact static version of that prior).

The stream (both formats below share it):

* Probabilities: each dimension's row ``freqs / freqs.sum()`` (float64) is quantized to an integer CDF of
  total ``2**24`` by the "leaky fast" rule of ``constriction``'s lazy categorical model
  (:func:`leaky_cdf`): every symbol keeps a probability >= ``2**-24``.
* Range coder: 64-bit state, 32-bit words, big-endian, ``constriction.stream.queue.RangeEncoder``
  semantics (carries propagate into words already written).
* Real bytes: the encoder sends the emitted words followed by the number in ``[lower, lower + range)`` with
  the most trailing zero bytes, and drops trailing zero bytes; the decoder pads with zero bytes. That is
  the range coder's own decodability condition, so every payload decodes, and it costs within about a byte
  of the model's information content (``EntropyModel.bits``). A payload of zero bytes is legal.

Formats (``manifest["coding"]["coder"]``):

* :data:`CODER` (``range-trimmed-escape-1``, written by current exports): after the D main symbols, every
  dimension whose symbol is an edge of the alphabet (``lo`` if ``lo > -128``, ``hi`` if ``hi < 127``)
  carries an escape flag (probability ``2**-12``); a set flag is followed by the true value, uniform over
  the int8 values beyond that edge. Any int8 latent round-trips exactly; a stream whose latent touches no
  edge is byte-identical to the legacy format.
* :data:`CODER_CLAMP` (``constriction-range-trimmed``, bundles exported before escapes): no escapes;
  values outside ``[lo, hi]`` are clamped by the sender (and counted there).

The decoder accepts only canonical streams without re-encoding: every quantile must fall inside the model
(garbage usually fails here), the stream must end where the decoder stopped reading, and its tail must be
the number the encoder would have chosen, with no trailing zero byte. Garbage, truncated or padded payloads
raise :class:`~cae_edge.errors.EntropyError` (a :class:`PacketError`); the packet CRC catches corruption.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from struct import unpack

import numpy as np

from .errors import BundleError, ConfigError, EntropyError

ENTROPY_FILE = "entropy.npz"
"""File name of the probability model inside a bundle."""
FORMAT = "cae-edge-entropy-1"
"""Format tag stored in the file; :func:`load` refuses others."""
KIND = "entropy"
"""Value of ``manifest["coding"]["kind"]`` for entropy-coded bundles."""
CODER = "range-trimmed-escape-1"
"""Stream format written by current exports: the range-coded stream plus escapes (exact for any int8)."""
CODER_CLAMP = "constriction-range-trimmed"
"""Legacy stream format (bundles exported before escapes): values outside the alphabet are clamped."""
CODERS = (CODER, CODER_CLAMP)
"""Stream formats this module reads and writes."""
TABLE_TOTAL = 1 << 20
"""Each dimension's frequencies are quantized to integers summing to about this (>= 1 per symbol)."""
PRECISION = 24
"""The range coder's probabilities are integers summing to ``2**PRECISION``."""
ESCAPE_PROBABILITY = 2.0**-12
"""Probability of the escape flag on an edge symbol (what a value beyond the alphabet costs extra, in bits:
about 12 + log2 of the number of values beyond that edge)."""
INT8_MIN, INT8_MAX = -128, 127
PURE_ENV = "CAE_EDGE_PURE_ENTROPY"
"""Environment variable: set to ``1`` to code with pure Python even where numba is installed."""
IMPLS = (None, "python", "numba")
"""``EntropyCoder(impl=...)``: None picks numba when importable (and :data:`PURE_ENV` is unset), else
Python; ``"python"`` and ``"numba"`` force one."""

_ONE = 1 << PRECISION
_BUCKET_BITS = 12
"""The decoder's lookup table splits each dimension's quantile range ``[0, 2**24)`` into ``2**12`` buckets
of ``2**12`` units: a bucket without a CDF boundary inside gives the symbol at once, the others fall back
to bisect (measured: 3 of the 96 symbols per frame of ``mnist-hq``, 5 of the 256 of ``scenes-xl``). The
table is one byte per bucket, 4 KiB per dimension (1 MiB for the 256-dimension ``scenes-xl``; a table of
references instead of bytes measured slower, from cache misses), built by
:meth:`EntropyCoder.prepare_decode` or the first decode, so a node that only encodes never holds it."""
_BUCKET_SHIFT = PRECISION - _BUCKET_BITS
_NO_SYMBOL = 0xFF
"""Bucket byte: a CDF boundary lies inside the bucket (or the symbol is 255), bisect decides."""
_WORD = 1 << 32
_STATE_MAX = (1 << 64) - 1


def leaky_cdf(probabilities: Sequence[float]) -> list[int]:
    """Integer CDF of a categorical distribution, exactly as ``constriction`` quantizes float probabilities.

    This is ``LazyContiguousCategoricalEntropyModel::from_floating_point_probabilities_fast`` with 24-bit
    precision (what ``constriction.stream.model.Categorical(perfect=False)`` uses when the probabilities are
    given per symbol at encode time): with ``F(s)`` the left-to-right float64 sum of the first ``s``
    probabilities and ``scale = (2**24 - K) / F(K)``, ``cdf[s] = floor(F(s) * scale) + s`` and
    ``cdf[K] = 2**24``. Symbol ``s`` owns ``[cdf[s], cdf[s + 1])``, at least one unit.

    Args:
        probabilities: K >= 2 non-negative float64 values (need not sum to 1).

    Returns:
        K + 1 increasing ints from 0 to ``2**24``.

    Raises:
        ConfigError: fewer than two symbols, a negative value, or a sum that is not a positive number.
    """
    probs = [float(p) for p in probabilities]
    k = len(probs)
    if k < 2 or k >= _ONE - 1:
        raise ConfigError(f"{k} probabilities: a categorical model needs 2 .. {_ONE - 2}")
    if min(probs) < 0:
        raise ConfigError(f"negative probability {min(probs)}: probabilities must be >= 0")
    total = 0.0
    for p in probs:  # left to right, like Rust's Iterator::sum (not numpy's pairwise sum)
        total += p
    if not (total > 2.2250738585072014e-308 and total != float("inf")):
        raise ConfigError(f"probabilities sum to {total}: need a positive, finite sum")
    scale = float(_ONE - k) / total
    cdf = [0]
    acc = 0.0
    for s in range(1, k):
        acc += probs[s - 1]
        cdf.append(int(acc * scale) + s)
    cdf.append(_ONE)
    return cdf


@dataclass(frozen=True, eq=False)
class EntropyModel:
    """Static probability model of an integer latent: one categorical distribution per dimension.

    All dimensions share the alphabet ``lo .. lo + K - 1`` (inside int8). Frequencies are integers so that the
    node and the receiver derive bit-identical probabilities from the file.
    """

    lo: int
    """Smallest symbol value (int8)."""
    freqs: np.ndarray
    """Frequency table, uint32 (D, K >= 2), every entry >= 1."""
    _probs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        freqs = np.asarray(self.freqs)
        if freqs.ndim != 2 or freqs.shape[0] < 1 or freqs.shape[1] < 2:
            raise ConfigError(
                f"frequency table of shape {freqs.shape}: need (latent_dim >= 1, alphabet >= 2)"
            )
        if not np.issubdtype(freqs.dtype, np.integer) or freqs.min() < 1:
            raise ConfigError("frequency table must hold integers >= 1")
        lo = int(self.lo)
        if lo < INT8_MIN or lo + freqs.shape[1] - 1 > INT8_MAX:
            raise ConfigError(f"alphabet {lo}..{lo + freqs.shape[1] - 1} leaves int8 range; refit the model")
        freqs = np.ascontiguousarray(freqs, dtype=np.uint32)
        freqs.setflags(write=False)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "freqs", freqs)
        probs = freqs.astype(np.float64) / freqs.sum(axis=1, keepdims=True, dtype=np.float64)
        probs.setflags(write=False)
        object.__setattr__(self, "_probs", probs)

    @property
    def latent_dim(self) -> int:
        """Number of latent dimensions D."""
        return int(self.freqs.shape[0])

    @property
    def alphabet_size(self) -> int:
        """Number of symbols K per dimension."""
        return int(self.freqs.shape[1])

    @property
    def hi(self) -> int:
        """Largest symbol value."""
        return self.lo + self.alphabet_size - 1

    @property
    def probabilities(self) -> np.ndarray:
        """float64 (D, K) probabilities, each row summing to 1 (read-only)."""
        return self._probs

    def clamp(self, q: np.ndarray) -> np.ndarray:
        """Clip latents to the model's alphabet (what the legacy :data:`CODER_CLAMP` format sends)."""
        return np.clip(np.asarray(q, dtype=np.int64), self.lo, self.hi)

    def outside(self, q: np.ndarray) -> int:
        """Number of values of ``q`` outside the alphabet ``[lo, hi]`` (escaped, or clamped by the legacy
        format)."""
        q = np.asarray(q)
        return int(np.count_nonzero((q < self.lo) | (q > self.hi)))

    def bits(self, q: np.ndarray) -> np.ndarray:
        """Ideal code length in bits of each latent row of ``q`` (D,) or (N, D), after clamping."""
        q = self.clamp(q)
        squeeze = q.ndim == 1
        q = np.atleast_2d(q)
        if q.shape[1] != self.latent_dim:
            raise ConfigError(f"latent of length {q.shape[1]}: this entropy model has {self.latent_dim}")
        p = self._probs[np.arange(self.latent_dim)[None, :], q - self.lo]
        out = -np.log2(p).sum(axis=1)
        return out[0] if squeeze else out

    def to_bytes(self) -> bytes:
        """The ``.npz`` file content: deflated, with fixed zip timestamps, so equal models give equal bytes
        (and equal sha256 in the manifest)."""
        buf = io.BytesIO()
        arrays = {"format": np.array(FORMAT), "lo": np.array(self.lo, dtype=np.int32), "freqs": self.freqs}
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, arr in arrays.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, member.getvalue())
        return buf.getvalue()

    def save(self, path: str | os.PathLike) -> str:
        """Write the model to ``path``; returns the file's sha256 (hex) for the manifest."""
        data = self.to_bytes()
        Path(path).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    def describe(self) -> dict:
        """JSON-friendly summary for ``manifest["coding"]`` (without file name and hash)."""
        return {
            "kind": KIND,
            "coder": CODER,
            "format": FORMAT,
            "latent_dim": self.latent_dim,
            "alphabet": [self.lo, self.hi],
        }


def fit(
    latents: np.ndarray, *, margin: int = 2, alpha: float = 1.0, lo: int | None = None, hi: int | None = None
) -> EntropyModel:
    """Fit a smoothed per-dimension histogram to integer latents.

    Args:
        latents: integer latents (N, D), e.g. the int8 encoder outputs over the training split.
        margin: symbols added on each side of the observed range (so slightly unusual images still code
            exactly rather than being clamped).
        alpha: pseudo-count per dimension, spread evenly over its K symbols (a symbol never seen in training
            costs about ``log2(N * K / alpha)`` bits instead of being impossible; a dimension that never
            varies costs about ``alpha / N / ln 2`` bits).
        lo: force the smallest symbol (default: observed minimum - margin, at least -128).
        hi: force the largest symbol (default: observed maximum + margin, at most 127).

    Returns:
        The fitted model.

    Raises:
        ConfigError: empty or non-integer latents, or a bad range.
    """
    z = np.asarray(latents)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ConfigError(f"latents of shape {z.shape}: need (N >= 1, latent_dim >= 1)")
    if not np.issubdtype(z.dtype, np.integer):
        if not np.all(z == np.rint(z)):
            raise ConfigError("latents must be integers (round the quantized encoder output first)")
        z = z.astype(np.int64)
    z = np.clip(z.astype(np.int64), INT8_MIN, INT8_MAX)
    if alpha <= 0:
        raise ConfigError(f"alpha {alpha}: must be > 0")
    lo = max(INT8_MIN, int(z.min()) - margin) if lo is None else int(lo)
    hi = min(INT8_MAX, int(z.max()) + margin) if hi is None else int(hi)
    if not INT8_MIN <= lo <= hi <= INT8_MAX:
        raise ConfigError(f"alphabet {lo}..{hi}: need -128 <= lo <= hi <= 127")
    if hi == lo:  # the range coder needs two symbols per distribution
        hi, lo = (hi + 1, lo) if hi < INT8_MAX else (hi, lo - 1)
    k = hi - lo + 1
    n, d = z.shape
    sym = np.clip(z, lo, hi) - lo
    counts = np.zeros((d, k), dtype=np.float64)
    np.add.at(counts, (np.broadcast_to(np.arange(d), (n, d)), sym), 1.0)
    probs = (counts + alpha / k) / (n + alpha)
    freqs = np.maximum(1, np.rint(probs * TABLE_TOTAL)).astype(np.uint32)
    return EntropyModel(lo, freqs)


def from_bytes(data: bytes, name: str = ENTROPY_FILE) -> EntropyModel:
    """Parse the content of a model file (bytes the bundle loader already read and verified).

    Args:
        data: the ``.npz`` bytes written by :meth:`EntropyModel.to_bytes`.
        name: where they came from, for error messages.

    Raises:
        BundleError: malformed content or another format (the message names ``name``).
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            fmt = str(z["format"])
            if fmt != FORMAT:
                raise BundleError(f"{name}: entropy model format {fmt!r}, expected {FORMAT!r}")
            return EntropyModel(int(z["lo"]), np.asarray(z["freqs"]))
    except BundleError:
        raise
    except (OSError, ValueError, KeyError, ConfigError, EOFError, zipfile.BadZipFile) as e:
        raise BundleError(f"{name}: not a valid entropy model ({e}); re-export the bundle") from e


def load(path: str | os.PathLike) -> EntropyModel:
    """Read a model written by :meth:`EntropyModel.save`.

    Raises:
        BundleError: missing, unreadable or malformed file (the message names it).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise BundleError(f"{path}: entropy model file missing; re-export the bundle") from e
    except OSError as e:
        raise BundleError(f"{path}: cannot read the entropy model ({e})") from e
    return from_bytes(data, str(path))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- the coder

_jit_failure: str | None = None
"""Why the compiled path is unavailable (numba missing or broken), once a coder has looked."""


def _jit_module(impl: str | None):
    """:mod:`cae_edge.entropy_jit` (imported here, so numba loads only when a coder is built), or None for
    the pure-Python coder: ``impl="python"``, or ``impl=None`` with :data:`PURE_ENV` set or without a
    working numba (:func:`jit_status` says why).

    Raises:
        ConfigError: ``impl="numba"`` without a working numba.
    """
    global _jit_failure
    if impl == "python" or (impl is None and os.environ.get(PURE_ENV, "") not in ("", "0")):
        return None
    try:
        from . import entropy_jit
    except Exception as e:  # ImportError, or a numba that cannot compile here: the pure coder still works
        _jit_failure = str(e) if isinstance(e, ImportError) else f"{type(e).__name__}: {e}"
        if impl == "numba":
            raise ConfigError(
                f"the compiled entropy coder needs numba ({_jit_failure}); "
                "install it with pip install 'cae-edge[fast]', or use the pure-Python coder"
            ) from e
        return None
    return entropy_jit


def jit_status() -> str:
    """Which coder ``EntropyCoder(model)`` uses on this machine and why, in one line (``cae-edge doctor``)."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return f"python ({PURE_ENV}={os.environ[PURE_ENV]} forces the pure-Python coder)"
    jit = _jit_module(None)
    if jit is None:
        return f"python (no compiled coder: {_jit_failure}; pip install 'cae-edge[fast]' adds it)"
    return jit.JitCoder.impl


def _tail(low: int, rng: int) -> tuple[int, int]:
    """The stream's end: ``(value, keep)``, the number in ``[low, min(low + rng, 2**64))`` with the most
    trailing zero bytes, of which the ``keep`` leading bytes are sent (``low`` < 2**64, ``rng`` >= 1).

    The smallest multiple of ``2**t`` that is >= ``low`` lies below ``top`` exactly when ``low - 1`` and
    ``top - 1`` differ above bit ``t``, i.e. when ``t`` is below the bit length of their xor: ``keep`` is
    the fewest bytes that leave such a ``t`` (``t = 64 - 8 * keep``)."""
    if not low:
        return 0, 0
    top = min(low + rng, 1 << 64)
    keep = (72 - ((low - 1) ^ (top - 1)).bit_length()) >> 3
    t = 64 - 8 * keep
    return (((low - 1) >> t) + 1) << t, keep


class EntropyCoder:
    """Encode int8 latents to byte strings and back with a fixed :class:`EntropyModel`.

    The encoder's integer tables are built here, the decoder's by :meth:`prepare_decode` or the first
    :meth:`decode` (a few ms; a node that only encodes never holds them);
    ``encode`` and ``decode`` are plain Python integer arithmetic, about 0.1 and 0.2 µs per latent
    dimension on a desktop CPU, or, with numba, compiled main loops of a few µs per frame whatever the
    dimension (``cae-edge benchmark`` reports both per bundle). Thread-safe (calls share only read-only
    tables; the escape counters are approximate under threads).

    Args:
        model: the probability model.
        coder: stream format, :data:`CODER` (escapes, exact) or :data:`CODER_CLAMP` (legacy, clamps).
        impl: None: the compiled main loops where numba is importable and :data:`PURE_ENV` is not set,
            else pure Python; ``"python"`` or ``"numba"`` to choose (``"numba"`` without numba raises
            :class:`ConfigError`). Building the first coder of a process imports numba and loads the
            compiled loops from numba's on-disk cache (about 0.7 s; the very first process compiles them,
            about 1.7 s).
    """

    kind = KIND

    def __init__(self, model: EntropyModel, coder: str = CODER, impl: str | None = None) -> None:
        if coder not in CODERS:
            raise ConfigError(f"entropy coder {coder!r}: this cae-edge reads {', '.join(CODERS)}; upgrade it")
        if impl not in IMPLS:
            raise ConfigError(f"entropy coder implementation {impl!r}: choose one of {IMPLS}")
        self.model = model
        self.coder = coder
        self.escapes = coder == CODER
        """Whether values beyond the alphabet are escaped (else clamped)."""
        self.escaped_encoded = 0
        """Latent values outside the alphabet :meth:`encode` met so far (escaped; legacy format: clamped)."""
        self.escaped_decoded = 0
        """Escaped values :meth:`decode` restored so far (what a receiver reports)."""
        lo, hi = model.lo, model.hi
        self._lo, self._hi, self._dim = lo, hi, model.latent_dim
        self._shape = (model.latent_dim,)
        self._cdfs = cdfs = [leaky_cdf(row) for row in model.probabilities.tolist()]
        # Encoder: per dimension, (cum, freq) by the latent's byte (int8 as 0..255), clamped to the alphabet.
        clamp_sym = np.array([min(max((b ^ 0x80) - 0x80, lo), hi) - lo for b in range(256)])
        cdf_arr = np.asarray(cdfs, dtype=np.int64)
        cums, ends = cdf_arr[:, clamp_sym], cdf_arr[:, clamp_sym + 1]
        self._enc = [
            list(zip(c, f, strict=True)) for c, f in zip(cums.tolist(), (ends - cums).tolist(), strict=True)
        ]
        self._dec: list[tuple[bytes, list, tuple[list[int], list]]] | None = None  # built by _decoder()
        # Reads past the payload: <= 1 word per symbol, D main symbols and <= 2 escape symbols per dimension.
        self._zeros = [0] * (model.latent_dim + 2)
        self._zeros_escapes = [0] * (2 * model.latent_dim)
        # Bytes at or beyond an edge that carries escapes (legacy: strictly beyond, i.e. clamped).
        low_edge = lo if lo > INT8_MIN else INT8_MIN - 1
        high_edge = hi if hi < INT8_MAX else INT8_MAX + 1
        if not self.escapes:
            low_edge, high_edge = lo - 1, hi + 1
        self._edge_table = bytes(
            int(v <= low_edge or v >= high_edge) for v in ((b ^ 0x80) - 0x80 for b in range(256))
        )
        self._flag = leaky_cdf([1.0 - ESCAPE_PROBABILITY, ESCAPE_PROBABILITY])
        n_below, n_above = lo - INT8_MIN, INT8_MAX - hi
        self._below = leaky_cdf([1.0] * n_below) if n_below >= 2 else None
        self._above = leaky_cdf([1.0] * n_above) if n_above >= 2 else None
        jit = _jit_module(impl)
        self._jit = None if jit is None else jit.JitCoder(cums, ends - cums, cdf_arr, lo, self._edge_table)
        self.impl = "python" if jit is None else self._jit.impl
        """The implementation coding the common frames: ``"python"`` or ``"numba <version>"``."""

    @property
    def latent_dim(self) -> int:
        return self._dim

    def _latent_bytes(self, q: np.ndarray) -> bytes:
        if not isinstance(q, np.ndarray) or q.dtype != np.int8:
            q = np.asarray(q)
            if q.dtype.kind not in "iu":
                raise ConfigError(f"latent dtype {q.dtype}: expected integers (the int8 latent)")
            if q.size and (q.min() < INT8_MIN or q.max() > INT8_MAX):
                raise ConfigError(f"latent values {q.min()} .. {q.max()}: the int8 latent is -128 .. 127")
            q = q.astype(np.int8)
        if q.shape != self._shape:
            raise ConfigError(f"latent of shape {q.shape}: this entropy model codes ({self._dim},)")
        return q.tobytes()

    def encode(self, q: np.ndarray) -> bytes:
        """Entropy-code one int8 latent (D,) into a byte string.

        Every value round-trips exactly with :data:`CODER`; the legacy :data:`CODER_CLAMP` format clamps
        values outside the alphabet. Either way :attr:`escaped_encoded` counts them.

        Raises:
            ConfigError: wrong shape, a non-integer dtype or values outside int8.
        """
        raw = self._latent_bytes(q)
        if self._jit is not None:
            out = self._jit.encode(raw)
            if out is not None:
                return out
        # The hot loop spells its constants out (2**64 - 1, 2**32): literals are faster than globals.
        # ``low`` stays below 2**65 (short integers are faster): a renormalisation moves its top word into
        # ``head``, the n words written so far, with its carry (bit 32) running into the words before it.
        low, rng, head, n = 0, 0xFFFFFFFFFFFFFFFF, 0, 0
        for table, b in zip(self._enc, raw, strict=True):
            cum, freq = table[b]
            scale = rng >> 24  # PRECISION
            low += scale * cum
            rng = scale * freq
            if rng < 0x100000000:
                rng <<= 32
                head = (head << 32) + (low >> 32)
                low = (low & 0xFFFFFFFF) << 32
                n += 1
        low += head << 64
        if 1 in raw.translate(self._edge_table):
            low, rng, n = self._encode_escapes(raw, low, rng, n)
        # ``low`` is the exact number sent so far: n words, then the 64-bit state.
        value, keep = _tail(low & _STATE_MAX, rng)
        out = ((low >> 64 << 8 * keep) | (value >> (64 - 8 * keep))).to_bytes(4 * n + keep, "big")
        return out.rstrip(b"\0")

    def _encode_escapes(self, raw: bytes, low: int, rng: int, n: int) -> tuple[int, int, int]:
        lo, hi = self._lo, self._hi
        values = np.frombuffer(raw, dtype=np.int8).tolist()
        if not self.escapes:  # legacy: the main symbols were clamped, nothing more is sent
            self.escaped_encoded += sum(v < lo or v > hi for v in values)
            return low, rng, n
        symbols: list[tuple[list[int], int]] = []
        flag = self._flag
        for v in values:
            if v <= lo and lo > INT8_MIN:
                symbols.append((flag, int(v < lo)))
                if v < lo and self._below is not None:
                    symbols.append((self._below, lo - 1 - v))
            elif v >= hi and hi < INT8_MAX:
                symbols.append((flag, int(v > hi)))
                if v > hi and self._above is not None:
                    symbols.append((self._above, v - hi - 1))
            self.escaped_encoded += v < lo or v > hi
        for cdf, s in symbols:
            scale = rng >> 24
            low += scale * cdf[s]
            rng = scale * (cdf[s + 1] - cdf[s])
            if rng < _WORD:
                rng <<= 32
                low <<= 32
                n += 1
        return low, rng, n

    def decode(self, payload: bytes) -> np.ndarray:
        """Decode one payload back to the int8 latent (D,).

        Raises:
            EntropyError: the payload is not a stream this model produces (garbage, truncated, padded, or
                from another bundle).
        """
        payload = bytes(payload)
        if self._jit is not None:
            q = self._jit.decode(payload)
            if q is not None:
                return q
        size = len(payload)
        buf = payload + bytes(-size % 4 + 8)
        words = list(unpack(f">{len(buf) // 4}I", buf))
        words += self._zeros
        it = iter(words)
        nxt = it.__next__
        diff = (nxt() << 32) | nxt()  # the stream's 64-bit window minus the coder's lower bound
        rng = 0xFFFFFFFFFFFFFFFF
        out = []
        append = out.append
        bisect = bisect_right
        try:
            for buckets, entries, fallback in self._dec or self._decoder():
                scale = rng >> 24
                quantile = diff // scale
                # IndexError if quantile >= 2**24 (outside the model): the bucket index is >= 2**12.
                entry = entries[buckets[quantile >> 12]]  # 12: _BUCKET_SHIFT spelled out, like 24
                if entry is None:  # a CDF boundary inside this bucket
                    cdf, table = fallback
                    entry = table[bisect(cdf, quantile)]
                cum, freq, b = entry
                append(b)
                diff -= scale * cum
                rng = scale * freq
                if rng < 0x100000000:
                    rng <<= 32
                    diff = (diff << 32) | nxt()
            raw = bytes(out)
            if self.escapes and 1 in raw.translate(self._edge_table):
                words += self._zeros_escapes  # the iterator is not exhausted (D + 2 zeros): it reads on
                raw, diff, rng = self._decode_escapes(raw, diff, rng, nxt)
        except IndexError:
            raise self._error(size, "a quantile outside the model") from None
        # Canonical: the stream ends where the decoder stopped reading, with the tail the encoder chooses.
        n = len(words) - it.__length_hint__() - 2  # words shifted in after the first two
        if size > 4 * n + 8:
            raise self._error(size, f"{size - 4 * n - 8} bytes after the end of the stream")
        if size and not payload[-1]:
            raise self._error(size, "a trailing zero byte")
        window = (words[n] << 32) | words[n + 1]
        low = window - diff
        if low < 0 or _tail(low, rng)[0] != window:
            raise self._error(size, "not the tail the encoder sends")
        return np.frombuffer(raw, dtype=np.int8)

    def prepare_decode(self) -> None:
        """Build the decoder's tables now rather than in the first :meth:`decode` (a receiver calls this at
        load, so its first frame is not late by the few ms they take). With the compiled decoder they serve
        only the rare frames it hands back (escapes, bad payloads) and are left to the first of those."""
        if self._dec is None and self._jit is None:
            self._decoder()

    def _decoder(self) -> list[tuple[bytes, list, tuple[list[int], list]]]:
        """The decoder's tables, per dimension ``(buckets, entries, (cdf, table))``, built once (a few ms).

        ``table[i]`` is ``(cum, freq, byte)`` of symbol ``i - 1`` (``bisect_right(cdf, quantile)`` is the
        symbol + 1; ``table[0]`` is None), ``entries[s]`` the same for symbol ``s`` (None at
        :data:`_NO_SYMBOL`), and byte ``j`` of ``buckets`` the one symbol that owns all of the quantiles
        ``[j * 2**12, (j + 1) * 2**12)``, or :data:`_NO_SYMBOL` where a CDF boundary lies inside them.
        """
        lo, k, dim = self._lo, self.model.alphabet_size, self._dim
        cdfs = self._cdfs
        cdf_arr = np.asarray(cdfs, dtype=np.int64)
        byte_of = [(lo + s) & 0xFF for s in range(k)]
        tables = [
            [None, *zip(cdf[:-1], freqs, byte_of, strict=True)]
            for cdf, freqs in zip(cdfs, np.diff(cdf_arr, axis=1).tolist(), strict=True)
        ]
        # Symbol + 1 at the first and at the last quantile of each bucket: the number of CDF entries at or
        # below it. An entry c is at or below j * 2**12 from bucket ceil(c / 2**12) on, and at or below
        # (j + 1) * 2**12 - 1 from bucket floor(c / 2**12) on; counting those starts and cumulating gives
        # both counts for all buckets at once.
        n_buckets = 1 << _BUCKET_BITS
        row_start = np.arange(dim)[:, None] * (n_buckets + 1)

        def symbols_plus_one_at_or_below(start_bucket: np.ndarray) -> np.ndarray:
            starts = np.bincount((row_start + start_bucket).ravel(), minlength=dim * (n_buckets + 1))
            return np.cumsum(starts.reshape(dim, n_buckets + 1)[:, :n_buckets], axis=1, dtype=np.int16)

        first = symbols_plus_one_at_or_below(-(-cdf_arr >> _BUCKET_SHIFT))
        last = symbols_plus_one_at_or_below(cdf_arr >> _BUCKET_SHIFT)
        buckets = np.where(first == last, first - 1, _NO_SYMBOL).astype(np.uint8)
        pad = [None] * (_NO_SYMBOL + 1 - min(k, _NO_SYMBOL))
        dec = [
            (row.tobytes(), table[1 : _NO_SYMBOL + 1] + pad, (cdf, table))
            for row, cdf, table in zip(buckets, cdfs, tables, strict=True)
        ]
        self._dec = dec
        return dec

    def _error(self, size: int, what: str) -> EntropyError:
        return EntropyError(
            f"entropy-coded payload of {size} bytes is not a stream of this bundle's model ({what}): "
            "corrupt, truncated, padded or from another bundle; sender and receiver must use the same bundle",
            reason="entropy",
        )

    def _decode_escapes(self, raw: bytes, diff: int, rng: int, nxt) -> tuple[bytes, int, int]:
        lo, hi = self._lo, self._hi
        values = np.frombuffer(raw, dtype=np.int8).tolist()
        for j, v in enumerate(values):
            if v == lo and lo > INT8_MIN:
                cdf, edge, step = self._below, lo, -1
            elif v == hi and hi < INT8_MAX:
                cdf, edge, step = self._above, hi, 1
            else:
                continue
            flag, diff, rng = _decode_symbol(self._flag, diff, rng, nxt)
            if flag:
                offset = 0
                if cdf is not None:
                    offset, diff, rng = _decode_symbol(cdf, diff, rng, nxt)
                values[j] = edge + step * (offset + 1)
                self.escaped_decoded += 1
        return np.array(values, dtype=np.int8).tobytes(), diff, rng

    def encode_batch(self, q: np.ndarray) -> list[bytes]:
        """Encode each row of ``q`` (N, D)."""
        return [self.encode(row) for row in np.asarray(q)]

    def mean_bytes(self, q: np.ndarray) -> float:
        """Mean real payload bytes over the rows of ``q`` (N, D)."""
        return float(np.mean([len(p) for p in self.encode_batch(q)]))


def _decode_symbol(cdf: list[int], diff: int, rng: int, nxt) -> tuple[int, int, int]:
    """One symbol with the integer CDF ``cdf`` (the decoder's main loop, spelled out)."""
    scale = rng >> 24
    quantile = diff // scale
    if quantile >= _ONE:
        raise IndexError(quantile)
    s = bisect_right(cdf, quantile) - 1
    cum = cdf[s]
    diff -= scale * cum
    rng = scale * (cdf[s + 1] - cum)
    if rng < _WORD:
        rng <<= 32
        diff = (diff << 32) | nxt()
    return s, diff, rng


# ---------------------------------------------------------------- export


def write_bundle_coding(
    bundle_dir: str | os.PathLike, train_latents: np.ndarray, test_latents: np.ndarray | None = None
) -> tuple[dict, float]:
    """Fit the model on the int8 encoder's training latents, write it into a bundle, describe it.

    Args:
        bundle_dir: the bundle directory being written.
        train_latents: int8 latents (N, D) of the training split from the bundle's own int8 encoder.
        test_latents: int8 latents of the test split; measures real bytes per image and checks that every
            one of them round-trips exactly (defaults to the training latents).

    Returns:
        ``(coding, bytes_per_image)``: the ``manifest["coding"]`` object (kind, file, sha256, coder,
        alphabet, measured bytes, images with a value beyond the alphabet) and the mean real payload bytes
        per image.

    Raises:
        ConfigError: the entropy coder does not reproduce a latent (a bug, never expected).
    """
    model = fit(train_latents)
    digest = model.save(Path(bundle_dir) / ENTROPY_FILE)
    coder = EntropyCoder(model)
    check = np.asarray(train_latents if test_latents is None else test_latents)
    sizes = []
    for q in check:
        payload = coder.encode(q)
        if not np.array_equal(coder.decode(payload), q):
            raise ConfigError(f"entropy coder round trip failed for latent {q.tolist()}")
        sizes.append(len(payload))
    sizes_arr = np.asarray(sizes, dtype=np.float64)
    escaped = int(np.sum(np.any((check < model.lo) | (check > model.hi), axis=1)))
    coding = {
        **model.describe(),
        "file": ENTROPY_FILE,
        "sha256": digest,
        "fitted_on": f"{len(train_latents)} training-split latents of the int8 encoder",
        "bytes_mean": float(sizes_arr.mean()),
        "bytes_max": int(sizes_arr.max()),
        "bits_ideal_mean": float(model.bits(check).mean()),
        "escaped_images": escaped,
        "measured_on": len(check),
    }
    return coding, float(sizes_arr.mean())
