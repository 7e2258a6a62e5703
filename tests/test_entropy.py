"""The static entropy model and the byte-trimmed range coder (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cae_edge import entropy
from cae_edge.errors import BundleError, ConfigError, EntropyError, PacketError


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
    coder = entropy.EntropyCoder(model)
    payloads = [coder.encode(q) for q in test]
    for q, p in zip(test, payloads, strict=True):
        out = coder.decode(p)
        assert out.dtype == np.int8
        np.testing.assert_array_equal(out, model.clamp(q))
    mean_bytes = np.mean([len(p) for p in payloads])
    ideal_bytes = model.bits(test).mean() / 8
    assert ideal_bytes <= mean_bytes <= ideal_bytes + 1.0  # trimmed stream: within a byte of the model
    assert mean_bytes < test.shape[1]  # cheaper than the raw int8 latent


def test_out_of_alphabet_values_are_clamped(fitted):
    model, test = fitted
    coder = entropy.EntropyCoder(model)
    q = test[0].copy()
    q[5], q[6] = 127, -128
    out = coder.decode(coder.encode(q))
    assert out[5] == model.hi and out[6] == model.lo
    np.testing.assert_array_equal(np.delete(out, [5, 6]), np.delete(q, [5, 6]))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_round_trip_property(fitted, data):
    model, _ = fitted
    coder = entropy.EntropyCoder(model)
    values = data.draw(
        st.lists(st.integers(model.lo, model.hi), min_size=model.latent_dim, max_size=model.latent_dim)
    )
    q = np.array(values, dtype=np.int8)
    payload = coder.encode(q)
    np.testing.assert_array_equal(coder.decode(payload), q)
    assert not payload.endswith(b"\0")  # canonical: trailing zero bytes are never sent


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=40))
def test_garbage_raises_entropy_error_or_decodes_canonically(fitted, blob):
    model, _ = fitted
    coder = entropy.EntropyCoder(model)
    try:
        q = coder.decode(blob)
    except EntropyError as e:
        assert isinstance(e, PacketError) and e.reason == "entropy"
    else:  # the few streams that decode are exactly what the encoder would send for that latent
        assert coder.encode(q) == blob


def test_tampered_payloads_are_rejected(fitted):
    model, test = fitted
    coder = entropy.EntropyCoder(model)
    payload = coder.encode(test[1])
    with pytest.raises(EntropyError):
        coder.decode(payload + b"\0")  # padded
    with pytest.raises(EntropyError):
        coder.decode(payload + b"\x01\x02\x03")  # trailing junk


def test_zero_byte_payload_when_everything_is_certain():
    model = entropy.fit(np.zeros((50, 8), dtype=np.int8), margin=0, alpha=1e-6)
    coder = entropy.EntropyCoder(model)
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
    assert entropy.EntropyCoder(again).encode(test[2]) == entropy.EntropyCoder(model).encode(test[2])
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
    coder = entropy.EntropyCoder(model)
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
