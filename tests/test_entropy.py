"""The static entropy model and the byte-trimmed range coder (no TensorFlow).

``constriction`` (a dev dependency) is the reference: the pure-Python coder must produce its bytes and
read its streams. Every coder here is the pure-Python one (``impl="python"``); tests/test_entropy_jit.py
holds the compiled path to it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import constriction
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cae_edge import entropy
from cae_edge.errors import BundleError, ConfigError, EntropyError, PacketError

GOLDEN = Path(__file__).parent / "golden"
BUNDLES = Path(entropy.__file__).parent / "bundles"
FAMILY = constriction.stream.model.Categorical(perfect=False)
Coder = functools.partial(entropy.EntropyCoder, impl="python")
"""The pure-Python coder, whether or not numba is installed."""


# ---------------------------------------------------------------- the reference: constriction


Seq = list[tuple[np.ndarray, int]]
"""A stream as (probabilities, symbol) pairs."""


def reference_symbols(model: entropy.EntropyModel, q: np.ndarray, escapes: bool) -> Seq:
    """The stream's symbol sequence, as (probabilities, symbol), per the format in cae_edge.entropy."""
    lo, hi = model.lo, model.hi
    q = [int(v) for v in q]
    seq = [(row, min(max(v, lo), hi) - lo) for row, v in zip(model.probabilities, q, strict=True)]
    if escapes:
        flag = np.array([1 - entropy.ESCAPE_PROBABILITY, entropy.ESCAPE_PROBABILITY])
        for v in q:
            if lo > -128 and v <= lo:
                seq.append((flag, int(v < lo)))
                if v < lo and lo + 128 >= 2:
                    seq.append((np.ones(lo + 128), lo - 1 - v))
            elif hi < 127 and v >= hi:
                seq.append((flag, int(v > hi)))
                if v > hi and 127 - hi >= 2:
                    seq.append((np.ones(127 - hi), v - hi - 1))
    return seq


def reference_switched_symbols(model: entropy.SwitchedModel, q: np.ndarray, c: int) -> Seq:
    """The stream of a :class:`entropy.SwitchedModel`: class ``c``, then the latent with set ``c``."""
    return [(model.class_probabilities, c), *reference_symbols(model.tables[c], q, escapes=True)]


def reference_encode(seq: Seq) -> bytes:
    """constriction's range coder, then the byte trimming of the legacy cae-edge coder."""
    enc = constriction.stream.queue.RangeEncoder()
    for probs, s in seq:
        enc.encode(np.array([s], dtype=np.int32), FAMILY, np.asarray(probs, dtype=np.float64)[None, :])
    n_words, (lower, width) = enc.pos()
    head = np.asarray(enc.get_compressed(), dtype=np.uint32)[:n_words].astype(">u4").tobytes()
    top = min(lower + width, 1 << 64)
    for keep in range(9):
        unit = 1 << (64 - 8 * keep)
        value = -(-lower // unit) * unit
        if value < top:
            return (head + (value >> (64 - 8 * keep)).to_bytes(keep, "big")).rstrip(b"\0")
    raise AssertionError("unreachable")


def reference_decode(payload: bytes, seq: Seq) -> list[int]:
    """constriction decoding ``payload`` with the models of ``seq`` (zero-padded, as the receiver does)."""
    words = max(2, (len(payload) + 3) // 4)
    padded = payload + b"\0" * (4 * words - len(payload))
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(padded, dtype=">u4").astype(np.uint32))
    return [int(dec.decode(FAMILY, np.asarray(probs, dtype=np.float64)[None, :])[0]) for probs, _ in seq]


@st.composite
def models(draw, max_dim: int = 40) -> entropy.EntropyModel:
    """Random models: any alphabet inside int8 (from 2 symbols to all 256), frequencies from 1 to 2**20."""
    k = draw(st.sampled_from([2, 3, 5, 13, 40, 114, 219, 256]) | st.integers(2, 256))
    lo = draw(st.integers(-128, 128 - k))
    d = draw(st.integers(1, max_dim))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = 2 ** rng.integers(1, 21, size=(d, 1))
    return entropy.EntropyModel(lo, rng.integers(1, top + 1, size=(d, k)).astype(np.uint32))


def latents(model: entropy.EntropyModel, rng: np.random.Generator, inside: bool) -> np.ndarray:
    """A latent drawn from the model (``inside``) or mixed with arbitrary int8 values and the edges."""
    p = model.probabilities
    q = np.array([rng.choice(model.alphabet_size, p=row) for row in p]) + model.lo
    if not inside:
        pick = rng.random(model.latent_dim)
        q = np.where(pick < 0.3, rng.integers(-128, 128, model.latent_dim), q)
        q = np.where((pick >= 0.3) & (pick < 0.4), model.lo, q)
        q = np.where((pick >= 0.4) & (pick < 0.5), model.hi, q)
    return q.astype(np.int8)


def _laplace_latents(rng: np.random.Generator, n: int, scales: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rng.laplace(0.0, scales, size=(n, len(scales)))), -128, 127).astype(np.int8)


@pytest.fixture(scope="module")
def fitted() -> tuple[entropy.EntropyModel, np.ndarray]:
    rng = np.random.default_rng(0)
    scales = np.concatenate([np.full(4, 0.01), np.linspace(0.3, 6.0, 20)])  # 4 collapsed dims, 20 busy ones
    train = _laplace_latents(rng, 4000, scales)
    test = _laplace_latents(rng, 300, scales)
    return entropy.fit(train), test


def test_fit_table_shape_alphabet_and_normalisation(fitted):
    model, _ = fitted
    assert model.latent_dim == 24
    assert model.lo <= -2 and model.hi >= 2  # observed range plus the margin
    assert model.freqs.dtype == np.uint32 and model.freqs.min() >= 1
    np.testing.assert_allclose(model.probabilities.sum(axis=1), 1.0)
    # collapsed dimensions put nearly all mass on 0: they cost almost nothing
    zero = -model.lo
    assert (model.probabilities[:4, zero] > 0.99).all()


def test_round_trip_is_lossless_and_near_the_information_content(fitted):
    model, test = fitted
    coder = Coder(model)
    payloads = [coder.encode(q) for q in test]
    for q, p in zip(test, payloads, strict=True):
        out = coder.decode(p)
        assert out.dtype == np.int8
        np.testing.assert_array_equal(out, q)  # exact, also beyond the alphabet
    mean_bytes = np.mean([len(p) for p in payloads])
    ideal_bytes = model.bits(test).mean() / 8
    assert ideal_bytes <= mean_bytes <= ideal_bytes + 1.0  # trimmed stream: within a byte of the model
    assert mean_bytes < test.shape[1]  # cheaper than the raw int8 latent


def test_out_of_alphabet_values_escape_exactly_and_are_counted(fitted):
    model, test = fitted
    coder = Coder(model)
    q = test[0].copy()
    q[5], q[6], q[7], q[8] = 127, -128, model.hi, model.lo  # beyond both edges, and on them
    payload = coder.encode(q)
    assert coder.escaped_encoded == 2
    np.testing.assert_array_equal(coder.decode(payload), q)
    assert coder.escaped_decoded == 2
    # an escape costs its edge symbol, 12 bits for the flag and log2(values beyond the edge) (<= 8 bits)
    assert len(payload) * 8 <= model.bits(q) + 2 * (12 + 8) + 8 + 1


def test_legacy_format_clamps_and_counts(fitted):
    model, test = fitted
    coder = Coder(model, entropy.CODER_CLAMP)
    q = test[0].copy()
    q[5], q[6] = 127, -128
    out = coder.decode(coder.encode(q))
    assert coder.escaped_encoded == 2 and coder.escaped_decoded == 0
    assert out[5] == model.hi and out[6] == model.lo
    np.testing.assert_array_equal(np.delete(out, [5, 6]), np.delete(q, [5, 6]))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_round_trip_property(fitted, data):
    model, _ = fitted
    coder = Coder(model)
    values = data.draw(
        st.lists(st.integers(model.lo, model.hi), min_size=model.latent_dim, max_size=model.latent_dim)
    )
    q = np.array(values, dtype=np.int8)
    payload = coder.encode(q)
    np.testing.assert_array_equal(coder.decode(payload), q)
    assert not payload.endswith(b"\0")  # canonical: trailing zero bytes are never sent


@pytest.mark.parametrize("coder_name", entropy.CODERS)
@settings(max_examples=150, deadline=None)
@given(blob=st.binary(max_size=40))
def test_garbage_raises_entropy_error_or_decodes_canonically(fitted, coder_name, blob):
    model, _ = fitted
    coder = Coder(model, coder_name)
    try:
        q = coder.decode(blob)
    except EntropyError as e:
        assert isinstance(e, PacketError) and e.reason == "entropy"
    else:  # the few streams that decode are exactly what the encoder would send for that latent
        assert coder.encode(q) == blob


def test_tampered_payloads_are_rejected(fitted):
    model, test = fitted
    coder = Coder(model)
    payload = coder.encode(test[1])
    with pytest.raises(EntropyError):
        coder.decode(payload + b"\0")  # padded
    with pytest.raises(EntropyError):
        coder.decode(payload + b"\x01\x02\x03")  # trailing junk
    with pytest.raises(EntropyError):
        coder.decode(b"\xff" * 64)  # a quantile outside the model


def test_zero_byte_payload_when_everything_is_certain():
    model = entropy.fit(np.zeros((50, 8), dtype=np.int8), margin=0, alpha=1e-6)
    coder = Coder(model)
    assert model.alphabet_size == 2  # widened: a distribution needs two symbols
    payload = coder.encode(np.zeros(8, dtype=np.int8))
    assert payload == b""
    np.testing.assert_array_equal(coder.decode(payload), np.zeros(8, dtype=np.int8))


def test_save_load_round_trip_and_hash(tmp_path, fitted):
    model, test = fitted
    path = tmp_path / entropy.ENTROPY_FILE
    digest = model.save(path)
    assert digest == entropy.sha256_file(path)
    again = entropy.load(path)
    np.testing.assert_array_equal(again.freqs, model.freqs)
    assert again.lo == model.lo
    # the node and the receiver derive the same bitstream from the file
    assert Coder(again).encode(test[2]) == Coder(model).encode(test[2])
    assert model.to_bytes() == again.to_bytes()


def test_load_rejects_missing_and_corrupt_files(tmp_path, fitted):
    model, _ = fitted
    with pytest.raises(BundleError, match="missing"):
        entropy.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(model.to_bytes()[:50])
    with pytest.raises(BundleError, match="bad.npz"):
        entropy.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, format=np.array("something-else"), lo=np.array(0), freqs=np.ones((2, 2), np.uint32))
    with pytest.raises(BundleError, match="format"):
        entropy.load(other)


def test_bad_inputs_raise_config_error(fitted):
    model, _ = fitted
    coder = Coder(model)
    with pytest.raises(ConfigError, match="shape"):
        coder.encode(np.zeros(3, dtype=np.int8))
    with pytest.raises(ConfigError, match="dtype"):
        coder.encode(np.zeros(model.latent_dim, dtype=np.float32))
    with pytest.raises(ConfigError):
        entropy.fit(np.zeros((0, 4), dtype=np.int8))
    with pytest.raises(ConfigError, match="integers"):
        entropy.fit(np.full((3, 4), 0.5))
    with pytest.raises(ConfigError):
        entropy.EntropyModel(lo=120, freqs=np.ones((2, 20), dtype=np.uint32))


def test_describe_declares_the_coding(fitted):
    model, _ = fitted
    d = model.describe()
    assert d["kind"] == "entropy" and d["latent_dim"] == 24 and d["alphabet"] == [model.lo, model.hi]


# ---------------------------------------------------------------- interoperability with constriction


@settings(max_examples=200, deadline=None)
@given(model=models(), seed=st.integers(0, 2**32 - 1))
def test_legacy_stream_is_constrictions_both_ways(model, seed):
    q = latents(model, np.random.default_rng(seed), inside=True)
    seq = reference_symbols(model, q, escapes=False)
    ours = Coder(model, entropy.CODER_CLAMP)
    payload = ours.encode(q)
    assert payload == reference_encode(seq)
    assert reference_decode(payload, seq) == [s for _, s in seq]  # constriction reads our stream
    np.testing.assert_array_equal(ours.decode(reference_encode(seq)), q)  # and we read its stream
    if not ((q == model.lo) | (q == model.hi)).any():  # away from the edges both formats are one stream
        assert Coder(model).encode(q) == payload


@settings(max_examples=200, deadline=None)
@given(model=models(), seed=st.integers(0, 2**32 - 1))
def test_escape_stream_is_constrictions_both_ways_and_exact(model, seed):
    q = latents(model, np.random.default_rng(seed), inside=False)
    seq = reference_symbols(model, q, escapes=True)
    ours = Coder(model)
    payload = ours.encode(q)
    assert payload == reference_encode(seq)
    assert reference_decode(payload, seq) == [s for _, s in seq]
    receiver = Coder(model)
    np.testing.assert_array_equal(receiver.decode(payload), q)  # every int8 value, exactly
    assert receiver.escaped_decoded == ours.escaped_encoded == model.outside(q)


@pytest.mark.parametrize("name", sorted(p.parent.name for p in BUNDLES.glob("*/entropy.npz")))
def test_shipped_bundles_code_their_golden_latents_like_constriction(name):
    coding = json.loads((BUNDLES / name / "manifest.json").read_text())["coding"]
    model = entropy.load(BUNDLES / name / coding["file"])
    coder = entropy.make_coder(model, coding["coder"], impl="python")
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    for hexq in golden["xnnpack"]["latents_hex"] + golden["builtin"]["latents_hex"]:
        q = np.frombuffer(bytes.fromhex(hexq), np.int8)
        if isinstance(model, entropy.SwitchedModel):
            seq = reference_switched_symbols(model, q, coder.choose(q.tobytes()))
        else:
            seq = reference_symbols(model, q, escapes=coding["coder"] == entropy.CODER)
        payload = coder.encode(q)
        assert payload == reference_encode(seq)
        np.testing.assert_array_equal(coder.decode(payload), q)


def test_leaky_cdf_rules():
    cdf = entropy.leaky_cdf([0.0, 1.0, 0.0])
    assert cdf[0] == 0 and cdf[-1] == 1 << entropy.PRECISION
    assert all(b - a >= 1 for a, b in zip(cdf, cdf[1:], strict=False))  # impossible symbols stay codable
    for bad in ([1.0], [0.5, -0.1], [0.0, 0.0], [float("nan"), 1.0]):
        with pytest.raises(ConfigError):
            entropy.leaky_cdf(bad)


def test_from_bytes_and_unknown_coder(fitted):
    model, _ = fitted
    again = entropy.from_bytes(model.to_bytes(), "x.npz")
    np.testing.assert_array_equal(again.freqs, model.freqs)
    with pytest.raises(BundleError, match="x.npz"):
        entropy.from_bytes(b"not a zip", "x.npz")
    with pytest.raises(ConfigError, match="upgrade"):
        Coder(model, "range-coder-9")


# ---------------------------------------------------------------- the decoder's bucket table (fast path)


@functools.cache
def _crowded_model() -> entropy.EntropyModel:
    """All 256 symbols; three of them hold nearly all the mass, so the ~250 others (about 5 quantile units
    each) crowd into one or two buckets, and symbol 255 (whose bucket byte is the fallback marker) is a
    likely one."""
    freqs = np.ones((3, 256), dtype=np.uint32)
    freqs[:, [0, 100, 255]] = 1 << 20
    freqs[1, 100] = 1  # second row: the mass on the two ends, the tiny symbols in between
    freqs[2, 255] = 3  # third row: symbol 255 tiny too, at the very end of the range
    return entropy.EntropyModel(-128, freqs)


@functools.cache
def _edge_model() -> entropy.EntropyModel:
    """Two-symbol rows whose CDF boundary lies exactly on a bucket edge, one unit after it, one before it."""
    bucket = 1 << (entropy.PRECISION - entropy._BUCKET_BITS)
    total = 999_983  # prime: the boundaries take every residue modulo the bucket width
    rows = []
    for want in (0, 1, bucket - 1):
        for a in range(1, total):
            probs = np.array([a, total - a], dtype=np.float64) / total
            if entropy.leaky_cdf(probs)[1] % bucket == want:
                rows.append([a, total - a])
                break
    assert len(rows) == 3
    return entropy.EntropyModel(-1, np.array(rows, dtype=np.uint32))


def _bisect_only(coder: entropy.EntropyCoder) -> entropy.EntropyCoder:
    """The same coder with every bucket marked "bisect decides": the plain bisect decoder."""
    no_symbol = bytes([entropy._NO_SYMBOL]) * (1 << entropy._BUCKET_BITS)
    coder._dec = [(no_symbol, entries, fallback) for _, entries, fallback in coder._decoder()]
    return coder


def _check_bucket_table(model: entropy.EntropyModel) -> None:
    """Every bucket byte other than the marker names the symbol that owns the whole bucket, the marker is
    used exactly where a CDF boundary lies inside the bucket (or its one symbol is 255), and the entry per
    symbol is the bisect table's."""
    shift = entropy.PRECISION - entropy._BUCKET_BITS
    n = 1 << entropy._BUCKET_BITS
    starts = np.arange(n, dtype=np.int64) << shift
    for buckets, entries, (cdf, table) in Coder(model)._decoder():
        assert len(buckets) == n and len(entries) == 256
        sym = np.frombuffer(buckets, dtype=np.uint8).astype(np.int64)
        at_start = np.searchsorted(cdf, starts, side="right") - 1
        at_end = np.searchsorted(cdf, starts + (1 << shift) - 1, side="right") - 1
        whole = (at_start == at_end) & (at_start != entropy._NO_SYMBOL)
        np.testing.assert_array_equal(sym[whole], at_start[whole])
        assert (sym[~whole] == entropy._NO_SYMBOL).all()
        for s in range(min(model.alphabet_size, entropy._NO_SYMBOL)):
            assert entries[s] is table[s + 1]
        assert all(e is None for e in entries[model.alphabet_size :]) and entries[entropy._NO_SYMBOL] is None


@settings(max_examples=60, deadline=None)
@given(model=models())
def test_bucket_table_names_the_owner_of_every_pure_bucket(model):
    _check_bucket_table(model)


def test_bucket_table_on_crowded_and_edge_boundaries(fitted):
    for model in (_crowded_model(), _edge_model(), fitted[0]):
        _check_bucket_table(model)
    bucket = 1 << (entropy.PRECISION - entropy._BUCKET_BITS)
    edges = [entropy.leaky_cdf(row)[1] % bucket for row in _edge_model().probabilities]
    assert edges == [0, 1, bucket - 1]


@pytest.mark.parametrize("make", [_crowded_model, _edge_model])
def test_crowded_and_edge_models_code_like_constriction(make):
    """Latents on the crowded symbols and on both sides of the edge boundaries: the bucket lookup and its
    bisect fallback must give constriction's stream back, both ways."""
    model = make()
    rng = np.random.default_rng(7)
    coder = Coder(model)
    shift = entropy.PRECISION - entropy._BUCKET_BITS
    only_bisect = [  # symbols whose every quantile lies in a bucket marked "bisect decides"
        {
            s
            for s in range(model.alphabet_size)
            if b[c[s] >> shift] == b[(c[s + 1] - 1) >> shift] == entropy._NO_SYMBOL
        }
        for b, _, (c, _) in coder._decoder()
    ]
    fallbacks = 0
    for _ in range(300):
        if model.alphabet_size == 256:
            q = rng.choice(np.r_[0:40, 95:106, 250:256], size=model.latent_dim) - 128
        else:
            q = rng.integers(model.lo, model.hi + 1, size=model.latent_dim)
        q = q.astype(np.int8)
        seq = reference_symbols(model, q, escapes=True)
        payload = reference_encode(seq)
        assert coder.encode(q) == payload
        np.testing.assert_array_equal(coder.decode(payload), q)
        assert reference_decode(payload, seq) == [s for _, s in seq]
        fallbacks += sum(s in only for (_, s), only in zip(seq, only_bisect, strict=False))
    assert model.alphabet_size == 2 or fallbacks > 300  # the bisect fallback was exercised


@pytest.mark.parametrize("make", [_crowded_model, _edge_model])
@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=24))
@example(blob=b"\xff" * 8)  # the first quantile is beyond 2**24: outside the model
@example(blob=b"\xff\xff\xff\xfe\xff")
def test_fast_decoder_agrees_with_bisect_on_any_payload(make, blob):
    """Garbage included: the same latent, or the same error, as the plain bisect decoder."""
    model = make()
    fast, plain = Coder(model), _bisect_only(Coder(model))
    outcomes = []
    for coder in (fast, plain):
        try:
            outcomes.append(coder.decode(blob).tolist())
        except EntropyError as e:
            outcomes.append(str(e))
    assert outcomes[0] == outcomes[1]
    if blob == b"\xff" * 8:
        assert "outside the model" in outcomes[0]


def test_decoder_tables_are_built_only_for_decoding(fitted):
    model, test = fitted
    node = Coder(model)
    payloads = [node.encode(q) for q in test[:20]]
    assert node._dec is None  # a node that only encodes never holds the decoder's tables
    receiver = Coder(model)
    receiver.prepare_decode()
    tables = receiver._dec
    assert tables is not None and len(tables) == model.latent_dim
    receiver.prepare_decode()
    assert receiver._dec is tables  # built once
    for q, p in zip(test[:20], payloads, strict=True):
        np.testing.assert_array_equal(receiver.decode(p), q)
        np.testing.assert_array_equal(node.decode(p), q)  # or on the first decode
