"""Switched entropy tables (:class:`cae_edge.entropy.SwitchedModel`): fitting, the stream against
``constriction``, the compiled path against the pure one, files, bundles and ``cae-edge bundle recode``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cae_edge import entropy, payload
from cae_edge.errors import BundleError, ConfigError, EntropyError, PairMismatchError
from cae_edge.manifest import Manifest, pair_id
from tests.test_entropy import reference_decode, reference_encode, reference_switched_symbols


def _two_kinds(rng: np.random.Generator, n: int, d: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Latents of two kinds of image: busy in the first half of the dimensions, or in the second."""
    kind = rng.integers(0, 2, n)
    scales = np.where(
        kind[:, None] == 0,
        np.r_[np.full(d // 2, 6.0), np.full(d // 2, 0.4)],
        np.r_[np.full(d // 2, 0.4), np.full(d // 2, 6.0)],
    )
    return np.clip(np.rint(rng.laplace(0.0, scales)), -128, 127).astype(np.int8), kind


@pytest.fixture(scope="module")
def switched() -> tuple[entropy.SwitchedModel, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    train, _ = _two_kinds(rng, 4000)
    test, kind = _two_kinds(rng, 400)
    model = entropy.fit_switched(train, 2)
    assert isinstance(model, entropy.SwitchedModel)
    return model, test, kind


def test_fitting_finds_the_kinds_and_codes_them_shorter(switched):
    model, test, kind = switched
    pooled = entropy.fit(test)  # even fitted on the test latents themselves
    coder = entropy.make_coder(model, impl="python")
    classes = np.array([coder.choose(q.tobytes()) for q in test])
    purity = max(np.mean(classes == kind), np.mean(classes != kind))
    assert purity > 0.97
    sizes = [len(coder.encode(q)) for q in test]
    assert np.mean(sizes) < 0.94 * entropy.EntropyCoder(pooled).mean_bytes(test)  # measured 0.90
    assert np.mean(sizes) < model.bits(test).mean() / 8 + 1.5  # real bytes near the information content


def test_the_choice_is_the_cheapest_set(switched):
    model, test, _ = switched
    coder = entropy.make_coder(model, impl="python")
    cost = model.class_bits(test)
    chosen = np.array([coder.choose(q.tobytes()) for q in test])
    clear = np.abs(cost[:, 0] - cost[:, 1]) > 0.01  # the integer costs may tie-break a near tie otherwise
    np.testing.assert_array_equal(chosen[clear], cost[clear].argmin(axis=1))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), edges=st.booleans())
def test_stream_is_constrictions_both_ways(switched, seed, edges):
    """Class symbol, then the set's stream (escapes included): constriction writes the same bytes and reads
    ours; the compiled coder gives the pure coder's bytes and latents."""
    model, test, _ = switched
    rng = np.random.default_rng(seed)
    q = test[rng.integers(len(test))].copy()
    if edges:
        pick = rng.random(len(q))
        q = np.where(pick < 0.2, rng.integers(-128, 128, len(q)), q).astype(np.int8)
        q[rng.integers(len(q))] = model.lo
    pure = entropy.make_coder(model, impl="python")
    fast = entropy.make_coder(model, impl="numba")
    c = pure.choose(q.tobytes())
    assert fast.choose(q.tobytes()) == c
    seq = reference_switched_symbols(model, q, c)
    data = pure.encode(q)
    assert data == reference_encode(seq) == fast.encode(q)
    assert reference_decode(data, seq) == [s for _, s in seq]
    np.testing.assert_array_equal(pure.decode(data), q)
    np.testing.assert_array_equal(fast.decode(data), q)


@settings(max_examples=150, deadline=None)
@given(blob=st.binary(max_size=40))
def test_garbage_is_an_entropy_error_or_a_canonical_stream(switched, blob):
    model, _, _ = switched
    pure = entropy.make_coder(model, impl="python")
    fast = entropy.make_coder(model, impl="numba")
    outcomes = []
    for coder in (pure, fast):
        try:
            q = coder.decode(blob)
        except EntropyError as e:
            outcomes.append(str(e))
        else:
            assert pure.encode(q) == blob  # accepted only if it is exactly what the encoder sends
            outcomes.append(q.tolist())
    assert outcomes[0] == outcomes[1]


def test_file_round_trip_and_wrong_pairings(switched, tmp_path):
    model, test, _ = switched
    digest = model.save(tmp_path / "e.npz")
    again = entropy.load(tmp_path / "e.npz")
    assert isinstance(again, entropy.SwitchedModel) and again.classes == 2
    assert entropy.sha256_file(tmp_path / "e.npz") == digest and again.to_bytes() == model.to_bytes()
    assert entropy.make_coder(again).encode(test[0]) == entropy.make_coder(model).encode(test[0])
    desc = model.describe()
    assert desc["coder"] == entropy.CODER_SWITCHED and desc["classes"] == 2
    with pytest.raises(ConfigError, match="table sets"):
        entropy.make_coder(entropy.fit(test), entropy.CODER_SWITCHED)
    with pytest.raises(ConfigError, match=entropy.CODER_SWITCHED):
        entropy.SwitchedCoder(model, entropy.CODER)
    with pytest.raises(ConfigError, match="alphabets"):
        entropy.SwitchedModel(np.array([1, 1]), (model.tables[0], entropy.fit(test[:, :3])))
    with pytest.raises(ConfigError, match="class table"):
        entropy.SwitchedModel(np.array([1]), model.tables[:1])


def test_one_set_is_the_pooled_fit_and_auto_keeps_it_without_kinds():
    rng = np.random.default_rng(1)
    iid = np.clip(np.rint(rng.laplace(0.0, 3.0, size=(3000, 16))), -128, 127).astype(np.int8)
    one = entropy.fit_switched(iid, 1)
    np.testing.assert_array_equal(one.freqs, entropy.fit(iid).freqs)
    model, scores = entropy.fit_auto(iid)
    assert isinstance(model, entropy.EntropyModel) and set(scores) == {1, 2, 4, 8}
    kinds, _ = _two_kinds(rng, 3000)
    model, scores = entropy.fit_auto(kinds)
    assert isinstance(model, entropy.SwitchedModel) and scores[model.classes] < 0.9 * scores[1]


def _leaky_cdf_spelled_out(probs: list[float]) -> list[int]:
    """constriction's "leaky fast" rule, one symbol at a time (float64 sums left to right)."""
    k, total = len(probs), 0.0
    for p in probs:
        total += p
    scale = float((1 << 24) - k) / total
    cdf, acc = [0], 0.0
    for s in range(1, k):
        acc += probs[s - 1]
        cdf.append(int(acc * scale) + s)
    return [*cdf, 1 << 24]


def test_leaky_cdfs_is_the_rule_row_by_row():
    rng = np.random.default_rng(2)
    for _ in range(50):
        k = int(rng.integers(2, 257))
        p = rng.random((3, k)) ** rng.integers(1, 20)
        p[:, rng.integers(k)] = 0.0
        expected = [_leaky_cdf_spelled_out(row) for row in p.tolist()]
        assert entropy.leaky_cdfs(p).tolist() == expected
        assert [entropy.leaky_cdf(row) for row in p.tolist()] == expected
    with pytest.raises(ConfigError):
        entropy.leaky_cdfs(np.zeros((2, 4)))


# ---------------------------------------------------------------- bundles


def _switched_bundle(tmp_path, name: str = "mnist-small"):
    """A copy of a shipped bundle with two table sets fitted on its golden latents (no dataset needed)."""
    from cae_edge.device.bundle import BUNDLES_DIR
    from cae_edge.manifest import coding_tables_sha256, file_entry

    dst = tmp_path / name
    shutil.copytree(BUNDLES_DIR / name, dst)
    golden = json.loads((BUNDLES_DIR.parent.parent / "tests" / "golden" / f"{name}.json").read_text())
    q = np.stack([np.frombuffer(bytes.fromhex(h), np.int8) for h in golden["xnnpack"]["latents_hex"]])
    coding, _ = entropy.write_bundle_coding(dst, np.concatenate([q] * 20), q, classes=2)
    m = Manifest.read(dst)
    m.files[entropy.ENTROPY_FILE] = file_entry(dst / entropy.ENTROPY_FILE)
    m.coding = coding
    m.pair_id = pair_id(
        m.files["encoder.tflite"].sha256,
        m.files["decoder.tflite"].sha256,
        coding_tables_sha256(coding, m.files),
    )
    m.write(dst)
    return dst, q


def test_a_switched_bundle_loads_codes_and_its_pair_id_covers_the_tables(tmp_path):
    from cae_edge.device.bundle import load_bundle

    dst, q = _switched_bundle(tmp_path)
    b = load_bundle(dst)
    codec = b.codec()
    assert isinstance(codec, entropy.SwitchedCoder)
    for row in q:
        np.testing.assert_array_equal(codec.decode(codec.encode(row)), row)
    shipped = load_bundle("mnist-small")
    assert b.pair_id != shipped.pair_id  # same models, other tables: not the same pair
    # a manifest whose pair id leaves the tables out is refused
    d = json.loads((dst / "manifest.json").read_text())
    d["pair_id"] = pair_id(d["files"]["encoder.tflite"]["sha256"], d["files"]["decoder.tflite"]["sha256"])
    (dst / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(PairMismatchError):
        load_bundle(dst)


def test_a_manifest_format_that_does_not_fit_the_file_is_a_bundle_error(tmp_path):
    from cae_edge.device.bundle import load_bundle

    dst, _ = _switched_bundle(tmp_path)
    b = load_bundle(dst)
    b.manifest.coding["coder"] = entropy.CODER
    with pytest.raises(BundleError, match="does not fit"):
        payload.make_codec(b)


def test_recode_refits_a_shipped_bundle_with_the_same_latents(tmp_path):
    """`cae-edge bundle recode`: tables from the bundle's own int8 training latents, images unchanged."""
    from typer.testing import CliRunner

    from cae_edge.cli.main import app
    from cae_edge.device.bundle import load_bundle

    out = tmp_path / "mnist-small-2"
    res = CliRunner().invoke(
        app, ["bundle", "recode", "mnist-small", "--out", str(out), "--classes", "2", "--json"]
    )
    assert res.exit_code == 0, res.output
    r = json.loads(res.output[res.output.index("{") :])
    new, old = load_bundle(out), load_bundle("mnist-small")
    assert new.manifest.coding["classes"] == 2 and new.manifest.coding["refit"]["command"].startswith(
        "cae-edge"
    )
    assert new.pair_id != old.pair_id and new.manifest.models == old.manifest.models
    assert r["bytes_after"] == pytest.approx(new.manifest.coding["bytes_mean"])
    enc = old.encoder()
    img = np.zeros((28, 28), np.uint8)
    img[8:20, 12:16] = 255
    q = enc.encode_latent(img)
    np.testing.assert_array_equal(new.codec().decode(new.codec().encode(q)), q)
    again = CliRunner().invoke(app, ["bundle", "recode", "mnist-small", "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output
    plain = CliRunner().invoke(app, ["bundle", "recode", "mnist", "--out", str(tmp_path / "m")])
    assert plain.exit_code == 1 and "only entropy-coded bundles" in plain.output
