"""Variable-length coding of the int8 latent: a static per-dimension probability model and a range coder.

Shared by the node (encode) and the receiver (decode). No TensorFlow: numpy and ``constriction`` only.

Data flow::

    training latents (N, D) int ─► fit() ─► EntropyModel: alphabet [lo, hi], integer frequency table (D, K)
                                              └─► entropy.npz in the bundle (sha256 in manifest["coding"])
    node:     int8 latent (D,) ─► clamp to [lo, hi] ─► range coder (constriction) ─► trimmed stream ─► wire
    receiver: stream ─► zero-pad ─► range decoder ─► int8 latent (D,) ─► canonical re-encode check

The model is a smoothed histogram per latent dimension, fitted at export from the training split's latents
(the rate-distortion training shapes those latents to be cheap under a learned factorized prior; the
histogram is the exact static version of that prior). All dimensions share one alphabet, so encoding is a
single batched ``constriction`` call (tens of µs for 128 dimensions).

Real bytes: ``constriction`` seals its stream with whole 32-bit words. Instead, the encoder takes the range
coder's final state (``lower``, ``range``), sends the emitted words followed by the number in
``[lower, lower + range)`` with the most trailing zero bytes, and drops trailing zero bytes; the decoder pads
with zero bytes. That is the range coder's own decodability condition, so every payload decodes, and it
costs within about a byte of the model's information content (``EntropyModel.bits``) instead of up to 32
bits more. A payload of zero bytes is legal (every dimension certain).

The decoder accepts only canonical streams: it re-encodes what it decoded and compares bytes, so garbage,
truncated or padded payloads raise :class:`~cae_edge.errors.EntropyError` (a :class:`PacketError`).
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BundleError, ConfigError, EntropyError

ENTROPY_FILE = "entropy.npz"
"""File name of the probability model inside a bundle."""
FORMAT = "cae-edge-entropy-1"
"""Format tag stored in the file; :func:`load` refuses others."""
KIND = "entropy"
"""Value of ``manifest["coding"]["kind"]`` for entropy-coded bundles."""
CODER = "constriction-range-trimmed"
"""Name of the bitstream format (range coder of ``constriction``, byte-trimmed, big-endian words)."""
TABLE_TOTAL = 1 << 20
"""Each dimension's frequencies are quantized to integers summing to about this (>= 1 per symbol)."""
INT8_MIN, INT8_MAX = -128, 127


def _constriction():
    import constriction  # noqa: PLC0415 - keep module import cheap; constriction is in the [device] extra

    return constriction


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
        """Clip latents to the model's alphabet (the only lossy step of the coder)."""
        return np.clip(np.asarray(q, dtype=np.int64), self.lo, self.hi)

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


def load(path: str | os.PathLike) -> EntropyModel:
    """Read a model written by :meth:`EntropyModel.save`.

    Raises:
        BundleError: missing, unreadable or malformed file (the message names it).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            fmt = str(z["format"])
            if fmt != FORMAT:
                raise BundleError(f"{path}: entropy model format {fmt!r}, expected {FORMAT!r}")
            return EntropyModel(int(z["lo"]), np.asarray(z["freqs"]))
    except BundleError:
        raise
    except FileNotFoundError as e:
        raise BundleError(f"{path}: entropy model file missing; re-export the bundle") from e
    except (OSError, ValueError, KeyError, ConfigError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path}: not a valid entropy model ({e}); re-export the bundle") from e


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class EntropyCoder:
    """Encode int8 latents to byte strings and back with a fixed :class:`EntropyModel`.

    One instance per process side; it holds the model and a ``constriction`` model family. Thread-safe
    (each call makes its own coder object).
    """

    def __init__(self, model: EntropyModel) -> None:
        self.model = model
        c = _constriction()
        self._queue = c.stream.queue
        self._family = c.stream.model.Categorical(perfect=False)
        self._probs = np.ascontiguousarray(model.probabilities, dtype=np.float64)
        self._shape = (model.latent_dim,)
        self._lo, self._hi = model.lo, model.hi

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    def _symbols(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q)
        if q.shape != self._shape:
            raise ConfigError(f"latent of shape {q.shape}: this entropy model codes ({self.latent_dim},)")
        if q.dtype.kind not in "iu":
            raise ConfigError(f"latent dtype {q.dtype}: expected integers (the int8 latent)")
        sym = q.astype(np.int32)
        np.clip(sym, self._lo, self._hi, out=sym)
        sym -= self._lo
        return sym

    def _decode_words(self, payload: bytes) -> np.ndarray:
        words = max(2, (len(payload) + 3) // 4)
        padded = payload + b"\0" * (4 * words - len(payload))
        decoder = self._queue.RangeDecoder(np.frombuffer(padded, dtype=">u4").astype(np.uint32))
        return np.asarray(decoder.decode(self._family, self._probs), dtype=np.int32)

    def _encode_symbols(self, sym: np.ndarray) -> bytes:
        enc = self._queue.RangeEncoder()
        enc.encode(sym, self._family, self._probs)
        n_words, (lower, width) = enc.pos()
        head = np.asarray(enc.get_compressed(), dtype=np.uint32)[:n_words].astype(">u4").tobytes()
        # The decoder reads the emitted words, then a 64-bit value that must lie in [lower, lower + width);
        # missing bytes read as zero. Send the value in that interval with the most trailing zero bytes.
        top = min(lower + width, 1 << 64)
        for keep in range(9):
            unit = 1 << (64 - 8 * keep)
            value = -(-lower // unit) * unit  # smallest multiple of unit >= lower
            if value < top:
                tail = (value >> (64 - 8 * keep)).to_bytes(keep, "big") if keep else b""
                break
        return (head + tail).rstrip(b"\0")

    def encode(self, q: np.ndarray) -> bytes:
        """Entropy-code one int8 latent (D,) into a byte string (values outside the alphabet are clamped).

        Raises:
            ConfigError: wrong shape or a non-integer dtype.
        """
        return self._encode_symbols(self._symbols(q))

    def decode(self, payload: bytes, *, strict: bool = True) -> np.ndarray:
        """Decode one payload back to the int8 latent (D,).

        Args:
            payload: bytes produced by :meth:`encode`.
            strict: also re-encode and require the identical bytes (rejects garbage, padding and truncation
                that happen to decode; about doubles the cost).

        Raises:
            EntropyError: the payload is not a stream this model produced.
        """
        payload = bytes(payload)
        try:
            sym = self._decode_words(payload)
        except Exception as e:  # constriction's own assertion on impossible streams
            raise EntropyError(
                f"entropy-coded payload of {len(payload)} bytes does not decode with this bundle's model "
                f"({type(e).__name__}: {e}); check that sender and receiver use the same bundle",
                reason="entropy",
            ) from e
        if strict and self._encode_symbols(sym) != payload:
            raise EntropyError(
                f"entropy-coded payload of {len(payload)} bytes is not a stream this model produces "
                "(corrupt, truncated or from another bundle)",
                reason="entropy",
            )
        return (sym + self.model.lo).astype(np.int8)

    def encode_batch(self, q: np.ndarray) -> list[bytes]:
        """Encode each row of ``q`` (N, D)."""
        return [self.encode(row) for row in np.asarray(q)]

    def mean_bytes(self, q: np.ndarray) -> float:
        """Mean real payload bytes over the rows of ``q`` (N, D)."""
        return float(np.mean([len(p) for p in self.encode_batch(q)]))


# ---------------------------------------------------------------- bundle integration


class EntropyCodec(EntropyCoder):
    """The payload codec of bundles whose manifest declares ``coding.kind == "entropy"``."""

    kind = KIND


def write_bundle_coding(
    bundle_dir: str | os.PathLike, train_latents: np.ndarray, test_latents: np.ndarray | None = None
) -> tuple[dict, float]:
    """Fit the model on the int8 encoder's training latents, write it into a bundle, describe it.

    Args:
        bundle_dir: the bundle directory being written.
        train_latents: int8 latents (N, D) of the training split from the bundle's own int8 encoder.
        test_latents: int8 latents of the test split; measures real bytes per image and checks that every
            one of them round-trips (defaults to the training latents).

    Returns:
        ``(coding, bytes_per_image)``: the ``manifest["coding"]`` object (kind, file, sha256, coder,
        alphabet, measured bytes) and the mean real payload bytes per image.

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
        if not np.array_equal(coder.decode(payload), model.clamp(q)):
            raise ConfigError(f"entropy coder round trip failed for latent {q.tolist()}")
        sizes.append(len(payload))
    sizes_arr = np.asarray(sizes, dtype=np.float64)
    clamped = int(np.sum(np.any((check < model.lo) | (check > model.hi), axis=1)))
    coding = {
        **model.describe(),
        "file": ENTROPY_FILE,
        "sha256": digest,
        "fitted_on": f"{len(train_latents)} training-split latents of the int8 encoder",
        "bytes_mean": float(sizes_arr.mean()),
        "bytes_max": int(sizes_arr.max()),
        "bits_ideal_mean": float(model.bits(check).mean()),
        "clamped_images": clamped,
        "measured_on": len(check),
    }
    return coding, float(sizes_arr.mean())


def codec_for_bundle(bundle) -> EntropyCodec:
    """Build the payload codec of a loaded bundle (called by :mod:`cae_edge.device.bundle`).

    Raises:
        BundleError: the model file is missing, altered (sha256) or does not fit the bundle's latent.
    """
    coding = bundle.manifest.coding
    path = Path(bundle.path) / str(coding.get("file", ENTROPY_FILE))
    expected = coding.get("sha256")
    if not path.is_file():
        raise BundleError(f"{path}: entropy model file missing; re-export the bundle")
    if expected and sha256_file(path) != expected:
        raise BundleError(f"{path}: sha256 differs from manifest coding.sha256 (file altered); re-export")
    model = load(path)
    if model.latent_dim != int(bundle.latent_dim):
        raise BundleError(
            f"{path}: entropy model codes {model.latent_dim} dimensions, the bundle's latent has "
            f"{bundle.latent_dim}; re-export the bundle"
        )
    return EntropyCodec(model)


def _register() -> None:
    from .device.bundle import register_codec  # noqa: PLC0415 - device.bundle imports this module lazily

    register_codec(KIND, codec_for_bundle)


_register()
