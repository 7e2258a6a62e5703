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
* :data:`CODER_SWITCHED` (``range-switched-escape-1``, a :class:`SwitchedModel`: C table sets): the class
  symbol (the set the node found cheapest for this latent, probability from the class table), then
  :data:`CODER`'s stream with that set, continuing the same coder. The class symbol never renormalises, so
  the receiver reads it off the first 64 bits of the stream. The sets are fitted at export by a k-means
  whose distance is the code length (:func:`fit_switched`, the number of sets chosen on held-out training
  latents by :func:`fit_auto`); ``cae-edge bundle recode`` refits a bundle's tables. Measured on the
  shipped rate-distortion bundles: 0.7-13 % fewer bytes for the same latents (Fashion-MNIST's kinds of
  garment differ most). The tables' sha256 is part of such a bundle's pair id.

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
"""Stream formats of one table set (:class:`EntropyCoder`)."""
FORMAT_SWITCHED = "cae-edge-entropy-switched-1"
"""Format tag of a file holding a :class:`SwitchedModel` (several table sets and the class table)."""
CODER_SWITCHED = "range-switched-escape-1"
"""Stream format of a :class:`SwitchedModel`: the class symbol, then :data:`CODER`'s stream with that class's
tables, from the coder state the class symbol left."""
READABLE = (CODER_SWITCHED, *CODERS)
"""Every stream format this module codes (``manifest["coding"]["coder"]``)."""
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
    """Integer CDF of one categorical distribution: :func:`leaky_cdfs` of one row, as K + 1 ints."""
    return leaky_cdfs(np.asarray(probabilities, dtype=np.float64)[None, :])[0].tolist()


def leaky_cdfs(probabilities: np.ndarray) -> np.ndarray:
    """Integer CDFs of categorical distributions, exactly as ``constriction`` quantizes float probabilities.

    This is ``LazyContiguousCategoricalEntropyModel::from_floating_point_probabilities_fast`` with 24-bit
    precision (what ``constriction.stream.model.Categorical(perfect=False)`` uses when the probabilities are
    given per symbol at encode time), per row: with ``F(s)`` the left-to-right float64 sum of the first ``s``
    probabilities (``np.cumsum`` adds left to right, like Rust's ``Iterator::sum``; numpy's ``sum`` would add
    pairwise) and ``scale = (2**24 - K) / F(K)``, ``cdf[s] = floor(F(s) * scale) + s`` and
    ``cdf[K] = 2**24``. Symbol ``s`` owns ``[cdf[s], cdf[s + 1])``, at least one unit.

    Args:
        probabilities: (D, K >= 2) non-negative float64 values (rows need not sum to 1).

    Returns:
        (D, K + 1) int64, each row increasing from 0 to ``2**24``.

    Raises:
        ConfigError: fewer than two symbols, a negative value, or a row sum that is not a positive number.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or p.shape[1] >= _ONE - 1:
        raise ConfigError(f"probabilities of shape {p.shape}: a categorical model needs 2 .. {_ONE - 2}")
    if p.size and p.min() < 0:
        raise ConfigError(f"negative probability {p.min()}: probabilities must be >= 0")
    acc = np.cumsum(p, axis=1)
    total = acc[:, -1]
    if not np.all((total > 2.2250738585072014e-308) & (total != np.inf)):
        raise ConfigError("probabilities sum to 0 or infinity in a row: need a positive, finite sum")
    k = p.shape[1]
    scale = float(_ONE - k) / total
    cdf = np.empty((p.shape[0], k + 1), dtype=np.int64)
    cdf[:, 0] = 0
    cdf[:, 1:k] = (acc[:, : k - 1] * scale[:, None]).astype(np.int64) + np.arange(1, k)
    cdf[:, k] = _ONE
    return cdf


def _clamp_symbols(lo: int, hi: int) -> np.ndarray:
    """Symbol index (clamped to ``lo .. hi``) of each latent byte 0..255 (int8 as a byte)."""
    return np.array([min(max((b ^ 0x80) - 0x80, lo), hi) - lo for b in range(256)])


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
        return _npz(
            {"format": np.array(FORMAT), "lo": np.array(self.lo, dtype=np.int32), "freqs": self.freqs}
        )

    def save(self, path: str | os.PathLike) -> str:
        """Write the model to ``path``; returns the file's sha256 (hex) for the manifest."""
        return _write(path, self.to_bytes())

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


@dataclass(frozen=True, eq=False)
class SwitchedModel:
    """C table sets over one alphabet and a class table: each latent is coded with the set that codes it in
    the fewest bits, the class first (``log2 C`` bits or less).

    The sets are fitted by alternating, over the training latents, the assignment of each latent to its
    cheapest set and the refit of each set's histograms (:func:`fit_switched`): a k-means whose distance is
    the code length. The classes it finds are kinds of image (on Fashion-MNIST: footwear, bags, light and
    dark garments) whose latents are cheaper under their own statistics than under the pooled ones.
    """

    class_freqs: np.ndarray
    """uint32 (C >= 2,), every entry >= 1: how often each set was chosen in training."""
    tables: tuple[EntropyModel, ...]
    """The C table sets, one alphabet (the same ``lo`` and K)."""

    def __post_init__(self) -> None:
        cf = np.asarray(self.class_freqs)
        tables = tuple(self.tables)
        if cf.ndim != 1 or len(cf) < 2 or len(cf) != len(tables):
            raise ConfigError(
                f"class table of shape {cf.shape} for {len(tables)} table sets: need C >= 2 of each"
            )
        if not np.issubdtype(cf.dtype, np.integer) or cf.min() < 1 or len(cf) > 256:
            raise ConfigError("class table must hold 2 .. 256 integers >= 1")
        shapes = {(t.lo, t.freqs.shape) for t in tables}
        if len(shapes) != 1:
            raise ConfigError(f"table sets of different alphabets or sizes {sorted(shapes)}: refit the model")
        cf = np.ascontiguousarray(cf, dtype=np.uint32)
        cf.setflags(write=False)
        object.__setattr__(self, "class_freqs", cf)
        object.__setattr__(self, "tables", tables)

    @property
    def classes(self) -> int:
        return len(self.tables)

    @property
    def lo(self) -> int:
        return self.tables[0].lo

    @property
    def hi(self) -> int:
        return self.tables[0].hi

    @property
    def latent_dim(self) -> int:
        return self.tables[0].latent_dim

    @property
    def alphabet_size(self) -> int:
        return self.tables[0].alphabet_size

    @property
    def class_probabilities(self) -> np.ndarray:
        return self.class_freqs / self.class_freqs.sum(dtype=np.float64)

    def clamp(self, q: np.ndarray) -> np.ndarray:
        return self.tables[0].clamp(q)

    def outside(self, q: np.ndarray) -> int:
        return self.tables[0].outside(q)

    def class_bits(self, q: np.ndarray) -> np.ndarray:
        """Ideal code length (bits) of each latent row of ``q`` under each set, class included: (N, C)."""
        q = np.atleast_2d(q)
        lead = -np.log2(self.class_probabilities)
        return np.stack([t.bits(q) for t in self.tables], axis=1) + lead[None, :]

    def bits(self, q: np.ndarray) -> np.ndarray:
        """Ideal code length in bits of each latent row of ``q`` (D,) or (N, D) with its cheapest set."""
        out = self.class_bits(q).min(axis=1)
        return out[0] if np.ndim(q) == 1 else out

    def to_bytes(self) -> bytes:
        """The ``.npz`` file content (deterministic, as :meth:`EntropyModel.to_bytes`)."""
        freqs = np.stack([t.freqs for t in self.tables])
        return _npz(
            {
                "format": np.array(FORMAT_SWITCHED),
                "lo": np.array(self.lo, dtype=np.int32),
                "class_freqs": self.class_freqs,
                "freqs": freqs,
            }
        )

    def save(self, path: str | os.PathLike) -> str:
        """Write the model to ``path``; returns the file's sha256 (hex) for the manifest."""
        return _write(path, self.to_bytes())

    def describe(self) -> dict:
        return {
            "kind": KIND,
            "coder": CODER_SWITCHED,
            "format": FORMAT_SWITCHED,
            "latent_dim": self.latent_dim,
            "alphabet": [self.lo, self.hi],
            "classes": self.classes,
        }


def fit_switched(
    latents: np.ndarray,
    classes: int,
    *,
    iters: int = 40,
    shrink: float = 50.0,
    margin: int = 2,
    alpha: float = 1.0,
) -> EntropyModel | SwitchedModel:
    """Fit ``classes`` table sets by alternating assignment (cheapest set per latent) and refit.

    Each set's histograms are shrunk toward the pooled model of :func:`fit` by ``shrink`` pseudo-images
    (a symbol a class never showed keeps the pooled probability). The start assigns the latents by their code
    length under the pooled model (C equal slices, cheapest first); deterministic.

    Returns:
        The pooled :class:`EntropyModel` for ``classes`` 1, else a :class:`SwitchedModel`.
    """
    pooled = fit(latents, margin=margin, alpha=alpha)
    if classes == 1:
        return pooled
    if not 2 <= classes <= 256:
        raise ConfigError(f"{classes} table sets: choose 1 .. 256")
    z = pooled.clamp(np.asarray(latents)) - pooled.lo
    n, d = z.shape
    k = pooled.alphabet_size
    pg = pooled.probabilities
    bits = pooled.bits(np.asarray(latents))
    assign = np.minimum(
        np.argsort(np.argsort(bits, kind="stable"), kind="stable") * classes // n, classes - 1
    )
    flat = np.arange(d)[None, :] * k + z  # (n, d): index into a (d, k) table
    cost = np.empty((n, classes))
    for _ in range(iters):
        probs = np.empty((classes, d, k))
        for c in range(classes):
            mask = assign == c
            counts = np.bincount(flat[mask].ravel(), minlength=d * k).reshape(d, k).astype(np.float64)
            probs[c] = (counts + shrink * pg) / (mask.sum() + shrink)
        prior = np.maximum(np.bincount(assign, minlength=classes), 1) / n
        for c in range(classes):
            cost[:, c] = -np.log2(probs[c]).ravel()[flat].sum(axis=1) - np.log2(prior[c])
        new = np.argmin(cost, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
    tables = tuple(
        EntropyModel(pooled.lo, np.maximum(1, np.rint(probs[c] * TABLE_TOTAL)).astype(np.uint32))
        for c in range(classes)
    )
    return SwitchedModel(np.bincount(assign, minlength=classes).astype(np.uint32) + 1, tables)


def fit_auto(
    latents: np.ndarray, candidates: Sequence[int] = (1, 2, 4, 8), *, min_gain: float = 0.005, **kw
) -> tuple[EntropyModel | SwitchedModel, dict[int, float]]:
    """Choose the number of table sets on held-out latents, then fit on all of them.

    Every fifth latent is held out; each candidate is fitted on the rest and scored by the held-out mean
    code length (bits). The best score wins if it beats one set by ``min_gain`` (relative), else one set.

    Returns:
        ``(model, {classes: held-out mean bits})``.
    """
    z = np.asarray(latents)
    held = np.arange(len(z)) % 5 == 4
    scores = {}
    for c in candidates:
        if c == 1 or held.sum() >= 20 * c:
            scores[c] = float(fit_switched(z[~held], c, **kw).bits(z[held]).mean())
    chosen = min(scores, key=lambda c: (scores[c], c))
    if scores.get(1, np.inf) <= scores[chosen] * (1 + min_gain):
        chosen = 1
    return fit_switched(z, chosen, **kw), scores


def _write(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path``; its sha256 (hex)."""
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """Deflated ``.npz`` bytes with fixed timestamps (equal arrays give equal bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def from_bytes(data: bytes, name: str = ENTROPY_FILE) -> EntropyModel | SwitchedModel:
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
            if fmt == FORMAT_SWITCHED:
                lo, freqs = int(z["lo"]), np.asarray(z["freqs"])
                if freqs.ndim != 3:
                    raise ConfigError(
                        f"table sets of shape {freqs.shape}: need (classes, latent_dim, alphabet)"
                    )
                return SwitchedModel(np.asarray(z["class_freqs"]), tuple(EntropyModel(lo, f) for f in freqs))
            if fmt != FORMAT:
                raise BundleError(
                    f"{name}: entropy model format {fmt!r}, expected {FORMAT!r} or {FORMAT_SWITCHED!r}"
                )
            return EntropyModel(int(z["lo"]), np.asarray(z["freqs"]))
    except BundleError:
        raise
    except (OSError, ValueError, KeyError, ConfigError, EOFError, zipfile.BadZipFile) as e:
        raise BundleError(f"{name}: not a valid entropy model ({e}); re-export the bundle") from e


def load(path: str | os.PathLike) -> EntropyModel | SwitchedModel:
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
        # Integers up to 2**24 in uint32: half the memory a frame walks through (and a switched bundle holds
        # one of each table per set).
        self._cdf_arr = cdf_arr = leaky_cdfs(model.probabilities).astype(np.uint32)  # (D, K + 1)
        # Encoder: per dimension, (cum, freq) by the latent's byte (int8 as 0..255), clamped to the alphabet.
        cums, ends = cdf_arr[:, _clamp_symbols(lo, hi)], cdf_arr[:, _clamp_symbols(lo, hi) + 1]
        self.widths = ends - cums
        """(D, 256) uint32: width of each latent byte's interval (clamped to the alphabet) out of 2**24."""
        self._cums_flat, self._widths_flat = cums.ravel(), self.widths.ravel()  # the pure encoder's tables
        self._rows = np.arange(model.latent_dim) * 256
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
        self._jit = None if jit is None else jit.JitCoder(cums, self.widths, cdf_arr, lo, self._edge_table)
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
        return self.encode_bytes(self._latent_bytes(q))

    def encode_bytes(self, raw: bytes, start: tuple[int, int] = (0, _STATE_MAX)) -> bytes:
        """:meth:`encode` of the latent's bytes (int8 as bytes, checked by the caller), from the coder state
        ``start = (low, range)``: ``(0, 2**64 - 1)`` for a stream of its own, or the state after a leading
        symbol (:class:`SwitchedCoder`'s class, which needs no renormalisation: ``range`` >= 2**40)."""
        if self._jit is not None:
            out = self._jit.encode(raw, *start)
            if out is not None:
                return out
        # The hot loop spells its constants out (2**64 - 1, 2**32): literals are faster than globals.
        # ``low`` stays below 2**65 (short integers are faster): a renormalisation moves its top word into
        # ``head``, the n words written so far, with its carry (bit 32) running into the words before it.
        # The frame's (cum, freq) pairs come from two numpy gathers: no per-dimension Python tables to hold.
        cell = self._rows + np.frombuffer(raw, dtype=np.uint8)
        (low, rng), head, n = start, 0, 0
        for cum, freq in zip(self._cums_flat[cell].tolist(), self._widths_flat[cell].tolist(), strict=True):
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
        return self.decode_bytes(bytes(payload))

    def decode_bytes(self, payload: bytes, start: tuple[int, int] = (0, _STATE_MAX)) -> np.ndarray:
        """:meth:`decode` from the coder state ``start = (low, range)`` the encoder started from
        (:meth:`encode_bytes`)."""
        if self._jit is not None:
            q = self._jit.decode(payload, *start)
            if q is not None:
                return q
        size = len(payload)
        buf = payload + bytes(-size % 4 + 8)
        words = list(unpack(f">{len(buf) // 4}I", buf))
        words += self._zeros
        it = iter(words)
        nxt = it.__next__
        diff = ((nxt() << 32) | nxt()) - start[0]  # the stream's 64-bit window minus the coder's lower bound
        rng = start[1]
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
        cdf_arr = self._cdf_arr.astype(np.int64)
        cdfs = cdf_arr.tolist()
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


class SwitchedCoder:
    """Encode int8 latents with a :class:`SwitchedModel` (:data:`CODER_SWITCHED`) and back.

    The node picks the set with the fewest bits (integer code lengths, ``2**-16`` bit units, exact sums:
    the same choice on every machine; compiled where numba is), codes the class symbol, then the latent
    with that set's :class:`EntropyCoder` from the state the class symbol left. The class symbol never
    renormalises (its range keeps >= 2**40), so the receiver reads the class off the stream's first 64
    bits and hands the rest to that set's decoder. One :class:`EntropyCoder` per set, built on first use.
    Same interface as :class:`EntropyCoder`.
    """

    kind = KIND

    def __init__(self, model: SwitchedModel, coder: str = CODER_SWITCHED, impl: str | None = None) -> None:
        if coder != CODER_SWITCHED:
            raise ConfigError(
                f"entropy coder {coder!r} for {model.classes} table sets: expected {CODER_SWITCHED!r}"
            )
        if impl not in IMPLS:
            raise ConfigError(f"entropy coder implementation {impl!r}: choose one of {IMPLS}")
        self.model = model
        self.coder = coder
        self.escapes = True
        self._impl = impl
        self._coders: list[EntropyCoder | None] = [None] * model.classes
        first = self._coder(0)
        self.impl = first.impl
        self._latent_bytes = first._latent_bytes
        lead = leaky_cdfs(model.class_probabilities[None, :])[0]
        scale = _STATE_MAX >> PRECISION
        self._lead = lead.tolist()
        self._starts = [
            (scale * int(lead[c]), scale * int(lead[c + 1] - lead[c])) for c in range(model.classes)
        ]
        self._lead_cost = _bit_cost(np.diff(lead)).astype(np.int64)
        self._cost: np.ndarray | None = None  # (D, 256, C) int32 code lengths, built for the first encode
        jit = _jit_module(impl)
        self._cheapest = None if jit is None else jit.cheapest_class

    def _coder(self, c: int) -> EntropyCoder:
        coder = self._coders[c]
        if coder is None:
            coder = self._coders[c] = EntropyCoder(self.model.tables[c], CODER, self._impl)
        return coder

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    @property
    def escaped_encoded(self) -> int:
        return sum(c.escaped_encoded for c in self._coders if c is not None)

    @property
    def escaped_decoded(self) -> int:
        return sum(c.escaped_decoded for c in self._coders if c is not None)

    def choose(self, raw: bytes) -> int:
        """The class whose set codes the latent bytes ``raw`` in the fewest bits (class symbol included)."""
        if self._cost is None:
            # (D, 256, C): the C costs of one (dimension, byte) side by side
            self._cost = np.ascontiguousarray(
                np.stack([_bit_cost(self._coder(c).widths) for c in range(self.model.classes)], axis=-1)
            )
        if self._cheapest is not None:
            return int(self._cheapest(np.frombuffer(raw, dtype=np.uint8), self._cost, self._lead_cost))
        index = self._coder(0)._rows + np.frombuffer(raw, dtype=np.uint8)
        totals = (
            self._cost.reshape(-1, self.model.classes)[index].sum(axis=0, dtype=np.int64) + self._lead_cost
        )
        return int(np.argmin(totals))

    def encode(self, q: np.ndarray) -> bytes:
        """Entropy-code one int8 latent (D,): class symbol, then the latent with that class's set.

        Raises:
            ConfigError: wrong shape, a non-integer dtype or values outside int8.
        """
        raw = self._latent_bytes(q)
        c = self.choose(raw)
        return self._coder(c).encode_bytes(raw, self._starts[c])

    def decode(self, payload: bytes) -> np.ndarray:
        """Decode one payload back to the int8 latent (D,).

        Raises:
            EntropyError: the payload is not a stream this model produces.
        """
        payload = bytes(payload)
        window = int.from_bytes(payload[:8].ljust(8, b"\0"), "big")
        quantile = window // (_STATE_MAX >> PRECISION)
        if quantile >= _ONE:
            raise self._coder(0)._error(len(payload), "a class outside the model")
        c = bisect_right(self._lead, quantile) - 1
        return self._coder(c).decode_bytes(payload, self._starts[c])

    def prepare_decode(self) -> None:
        for c in range(self.model.classes):
            self._coder(c).prepare_decode()

    def encode_batch(self, q: np.ndarray) -> list[bytes]:
        return [self.encode(row) for row in np.asarray(q)]

    def mean_bytes(self, q: np.ndarray) -> float:
        return float(np.mean([len(p) for p in self.encode_batch(q)]))


def _bit_cost(widths: np.ndarray) -> np.ndarray:
    """Code length of an interval of ``widths`` units out of 2**24, in 2**-16 bits, int32."""
    return np.rint((PRECISION - np.log2(np.asarray(widths, dtype=np.float64))) * 65536).astype(np.int32)


def make_coder(
    model: EntropyModel | SwitchedModel, coder: str | None = None, impl: str | None = None
) -> EntropyCoder | SwitchedCoder:
    """The coder of ``model``: a :class:`SwitchedCoder` for table sets, else an :class:`EntropyCoder`
    (``coder``: the manifest's stream format; default the one current exports write)."""
    if isinstance(model, SwitchedModel):
        return SwitchedCoder(model, coder or CODER_SWITCHED, impl)
    if coder == CODER_SWITCHED:
        raise ConfigError(
            f"stream format {CODER_SWITCHED!r} needs a model of table sets; the file holds one set"
        )
    return EntropyCoder(model, coder or CODER, impl)


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
    bundle_dir: str | os.PathLike,
    train_latents: np.ndarray,
    test_latents: np.ndarray | None = None,
    classes: int | None = None,
) -> tuple[dict, float]:
    """Fit the model on the int8 encoder's training latents, write it into a bundle, describe it.

    Args:
        bundle_dir: the bundle directory being written.
        train_latents: int8 latents (N, D) of the training split from the bundle's own int8 encoder.
        test_latents: int8 latents of the test split; measures real bytes per image and checks that every
            one of them round-trips exactly (defaults to the training latents).
        classes: number of table sets; None chooses 1, 2, 4 or 8 on held-out training latents
            (:func:`fit_auto`, its scores go into the manifest).

    Returns:
        ``(coding, bytes_per_image)``: the ``manifest["coding"]`` object (kind, file, sha256, coder,
        alphabet, measured bytes, images with a value beyond the alphabet) and the mean real payload bytes
        per image.

    Raises:
        ConfigError: the entropy coder does not reproduce a latent (a bug, never expected).
    """
    model, scores = fit_auto(train_latents) if classes is None else (fit_switched(train_latents, classes), {})
    digest = model.save(Path(bundle_dir) / ENTROPY_FILE)
    coder = make_coder(model)
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
    if scores:
        coding["classes_held_out_bits"] = {str(c): round(v, 2) for c, v in scores.items()}
    return coding, float(sizes_arr.mean())
