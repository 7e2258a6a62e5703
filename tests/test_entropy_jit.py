"""The compiled (numba) range coder against the pure-Python one, which stays the reference.

Same bytes for every latent, each decodes the other's streams, and every payload (garbage included) gets the
same latent or the same error. numba is in the ``receiver`` and ``dev`` extras, so CI has it: these tests
import it and are never skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cae_edge import entropy
from cae_edge.errors import ConfigError, EntropyError

GOLDEN = Path(__file__).parent / "golden"
BUNDLES = Path(entropy.__file__).parent / "bundles"
NUMBA = f"numba {numba.__version__}"


@st.composite
def models(draw, max_dim: int = 64) -> entropy.EntropyModel:
    """Random models: any alphabet inside int8 (2 to 256 symbols, at either end of int8 or inside),
    frequencies from 1 to 2**20 (very skewed rows included)."""
    k = draw(st.sampled_from([2, 3, 5, 13, 40, 114, 219, 255, 256]) | st.integers(2, 256))
    lo = draw(st.sampled_from([-128, 128 - k]) | st.integers(-128, 128 - k))
    d = draw(st.integers(1, max_dim))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = 2 ** rng.integers(1, 21, size=(d, 1))
    return entropy.EntropyModel(lo, rng.integers(1, top + 1, size=(d, k)).astype(np.uint32))


def draw_latent(model: entropy.EntropyModel, rng: np.random.Generator, edges: bool) -> np.ndarray:
    """A latent drawn from the model; with ``edges`` also arbitrary int8 values and the alphabet's edges."""
    cdf = np.cumsum(model.probabilities, axis=1)
    u = rng.random((model.latent_dim, 1))
    q = np.minimum((u > cdf).sum(axis=1), model.alphabet_size - 1) + model.lo
    if edges:
        pick = rng.random(model.latent_dim)
        q = np.where(pick < 0.1, rng.integers(-128, 128, model.latent_dim), q)
        q = np.where((pick >= 0.1) & (pick < 0.15), model.lo, q)
        q = np.where((pick >= 0.15) & (pick < 0.2), model.hi, q)
    return q.astype(np.int8)


def coders(model: entropy.EntropyModel, coder: str = entropy.CODER):
    return entropy.EntropyCoder(model, coder, impl="python"), entropy.EntropyCoder(model, coder, impl="numba")


def outcome(coder: entropy.EntropyCoder, payload: bytes):
    """The decoded latent as a list, or the error message."""
    try:
        return coder.decode(payload).tolist()
    except EntropyError as e:
        return str(e)


def carry_ripples(model: entropy.EntropyModel, q: np.ndarray) -> list[int]:
    """For each carry out of the 64-bit state while coding ``q``'s main symbols: how many bytes already
    written it changed (1: the last byte only; 2 and more: it ran through 0xFF bytes). Big integers, as the
    pure coder computes."""
    low, rng, out, ripples = 0, (1 << 64) - 1, bytearray(), []
    for cdf, v in zip((entropy.leaky_cdf(p) for p in model.probabilities), q.tolist(), strict=True):
        s = min(max(v, model.lo), model.hi) - model.lo
        scale = rng >> 24
        low += scale * cdf[s]
        rng = scale * (cdf[s + 1] - cdf[s])
        if low >> 64:
            low -= 1 << 64
            i = len(out) - 1
            while out[i] == 0xFF:
                out[i] = 0
                i -= 1
            out[i] += 1
            ripples.append(len(out) - i)
        if rng < 1 << 32:
            rng <<= 32
            out += (low >> 32).to_bytes(4, "big")
            low = (low & 0xFFFFFFFF) << 32
    return ripples


# ---------------------------------------------------------------- which implementation


def test_numba_is_used_by_default_and_reported(monkeypatch):
    monkeypatch.delenv(entropy.PURE_ENV, raising=False)
    model = entropy.fit(np.arange(-3, 4, dtype=np.int8).reshape(7, 1).repeat(5, axis=1))
    assert entropy.EntropyCoder(model).impl == NUMBA
    assert entropy.EntropyCoder(model, impl="python").impl == "python"
    assert entropy.jit_status() == NUMBA


@pytest.mark.parametrize("value,impl", [("1", "python"), ("yes", "python"), ("0", NUMBA), ("", NUMBA)])
def test_env_var_forces_the_pure_coder(monkeypatch, value, impl):
    monkeypatch.setenv(entropy.PURE_ENV, value)
    model = entropy.fit(np.arange(-3, 4, dtype=np.int8).reshape(7, 1).repeat(5, axis=1))
    coder = entropy.EntropyCoder(model)
    assert coder.impl == impl
    assert (coder._jit is None) == (impl == "python")
    assert entropy.jit_status().startswith(impl)
    if impl == "python":
        assert f"{entropy.PURE_ENV}={value}" in entropy.jit_status()
    assert entropy.EntropyCoder(model, impl="numba").impl == NUMBA  # asked for by name: still numba


def test_without_numba_the_pure_coder_runs_and_says_why(monkeypatch):
    monkeypatch.delenv(entropy.PURE_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    monkeypatch.delitem(sys.modules, "cae_edge.entropy_jit", raising=False)
    monkeypatch.delattr(sys.modules["cae_edge"], "entropy_jit", raising=False)  # `from . import` looks here
    model = entropy.fit(np.arange(-3, 4, dtype=np.int8).reshape(7, 1).repeat(5, axis=1))
    coder = entropy.EntropyCoder(model)
    assert coder.impl == "python" and coder._jit is None
    q = np.array([1, -2, 0, 3, -3], dtype=np.int8)
    np.testing.assert_array_equal(coder.decode(coder.encode(q)), q)
    status = entropy.jit_status()
    assert status.startswith("python (no compiled coder: import of numba halted")
    assert "cae-edge[fast]" in status
    with pytest.raises(ConfigError, match=r"needs numba .*pip install 'cae-edge\[fast\]'"):
        entropy.EntropyCoder(model, impl="numba")


def test_bad_impl_is_a_config_error():
    model = entropy.fit(np.zeros((3, 2), dtype=np.int8))
    with pytest.raises(ConfigError, match=r"implementation 'cuda': choose one of"):
        entropy.EntropyCoder(model, impl="cuda")


def test_entropy_module_does_not_import_numba():
    code = (
        "import sys; import cae_edge.entropy, cae_edge.payload, cae_edge.cli.main\n"
        "assert 'numba' not in sys.modules, 'numba imported without a coder'\n"
        "import numpy as np; m = cae_edge.entropy.fit(np.zeros((3, 2), dtype=np.int8))\n"
        "assert cae_edge.entropy.EntropyCoder(m, impl='python') and 'numba' not in sys.modules\n"
        "cae_edge.entropy.EntropyCoder(m); assert 'numba' in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


# ---------------------------------------------------------------- same streams


@settings(max_examples=300, deadline=None)
@given(model=models(), seed=st.integers(0, 2**32 - 1), coder_name=st.sampled_from(entropy.CODERS))
def test_same_bytes_and_each_decodes_the_others_streams(model, seed, coder_name):
    rng = np.random.default_rng(seed)
    pure, fast = coders(model, coder_name)
    for i in range(12):
        q = draw_latent(model, rng, edges=i % 3 == 2)
        payload = pure.encode(q)
        assert fast.encode(q) == payload
        expect = q if coder_name == entropy.CODER else model.clamp(q).astype(np.int8)
        np.testing.assert_array_equal(fast.decode(payload), expect)
        np.testing.assert_array_equal(pure.decode(payload), expect)
    assert fast.escaped_encoded == pure.escaped_encoded
    assert fast.escaped_decoded == pure.escaped_decoded


def _carry_case(seed: int) -> tuple[entropy.EntropyModel, np.ndarray]:
    """A random model (3 to 256 symbols, 64 to 256 dimensions) and a latent off its alphabet's edges."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 257))
    lo = -128 if k == 256 else -1 if k < 128 else -127
    d = int(rng.integers(64, 257))
    model = entropy.EntropyModel(lo, rng.integers(1, 2**20, size=(d, k)).astype(np.uint32))
    inner = (1, k) if k == 256 else (1, k - 1)  # no edge symbol: no escapes, the compiled loop codes it
    return model, (rng.integers(*inner, size=d) + lo).astype(np.int8)


def test_carries_run_back_through_written_bytes():
    """Carries out of the 64-bit state give the same bytes, also where they run through a 0xFF byte already
    written (rare: seeds 104, 275 and 317 were found to hold one; the assertion below keeps them)."""
    ripples = []
    for seed in (104, 275, 317, *range(30)):
        model, q = _carry_case(seed)
        ripples += carry_ripples(model, q)
        pure, fast = coders(model)
        payload = pure.encode(q)
        assert fast._jit.encode(q.tobytes()) == payload  # the compiled loop itself, no fallback
        np.testing.assert_array_equal(fast._jit.decode(payload), q)
    assert len(ripples) > 30 and max(ripples) >= 2, (len(ripples), max(ripples, default=0))


@pytest.mark.parametrize("name", sorted(p.parent.name for p in BUNDLES.glob("*/entropy.npz")))
def test_shipped_bundles_golden_latents(name):
    """The real int8 latents of every shipped entropy bundle (both kernel families), in its own format."""
    coding = json.loads((BUNDLES / name / "manifest.json").read_text())["coding"]
    model = entropy.load(BUNDLES / name / coding["file"])
    pure, fast = (entropy.make_coder(model, coding["coder"], impl) for impl in ("python", "numba"))
    assert fast.impl == NUMBA
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    hexes = golden["xnnpack"]["latents_hex"] + golden["builtin"]["latents_hex"]
    assert hexes
    for hexq in hexes:
        q = np.frombuffer(bytes.fromhex(hexq), np.int8)
        payload = pure.encode(q)
        assert fast.encode(q) == payload
        np.testing.assert_array_equal(fast.decode(payload), q)


def test_escape_frames_fall_back_to_the_pure_coder():
    """A latent beyond the alphabet: the compiled loop hands the frame over, the escapes round-trip."""
    rng = np.random.default_rng(3)
    model = entropy.EntropyModel(-4, rng.integers(1, 1000, size=(32, 9)).astype(np.uint32))
    pure, fast = coders(model)
    q = draw_latent(model, rng, edges=False)
    q[[0, 7, 31]] = [-128, 127, -4]  # below, above, on the edge
    payload = fast.encode(q)
    assert payload == pure.encode(q)
    np.testing.assert_array_equal(fast.decode(payload), q)
    assert fast.escaped_encoded == fast.escaped_decoded == 2
    inside = np.clip(q, -3, 3).astype(np.int8)
    assert fast._jit.encode(inside.tobytes()) == pure.encode(inside)  # no edge: the compiled loop codes it
    assert fast._jit.encode(q.tobytes()) is None and fast._jit.decode(payload) is None


def test_compiled_decoder_leaves_the_pure_tables_to_the_first_fallback():
    """With the compiled decoder, ``prepare_decode`` builds nothing: the pure tables serve only frames it
    hands back, and the first such frame builds them (and still gets the exact error)."""
    pure, fast = coders(_fixed_model())
    fast.prepare_decode()
    m = fast.model
    q = np.clip(draw_latent(m, np.random.default_rng(9), edges=False), m.lo + 1, m.hi - 1).astype(np.int8)
    np.testing.assert_array_equal(fast.decode(pure.encode(q)), q)  # no edge: the compiled decoder alone
    assert fast._dec is None
    assert outcome(fast, b"\xff" * 8) == outcome(pure, b"\xff" * 8)
    assert fast._dec is not None
    pure.prepare_decode()
    assert pure._dec is not None


# ---------------------------------------------------------------- same accept/reject


def _fixed_model() -> entropy.EntropyModel:
    rng = np.random.default_rng(5)
    return entropy.EntropyModel(-20, rng.integers(1, 2**16, size=(48, 41)).astype(np.uint32))


@settings(max_examples=400, deadline=None)
@given(blob=st.binary(max_size=80))
@example(blob=b"")
@example(blob=b"\xff" * 8)  # the first quantile is beyond 2**24: outside the model
@example(blob=b"\x00")
@example(blob=b"\x80\x00\x00\x00\x00\x00\x00\x00\x00")
def test_garbage_gets_the_same_latent_or_the_same_error(blob):
    pure, fast = coders(_fixed_model())
    assert outcome(fast, blob) == outcome(pure, blob)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    edit=st.sampled_from(["truncate", "append", "append-zero", "flip", "zero-pad"]),
    coder_name=st.sampled_from(entropy.CODERS),
)
def test_tampered_payloads_get_the_same_outcome(seed, edit, coder_name):
    model = _fixed_model()
    pure, fast = coders(model, coder_name)
    rng = np.random.default_rng(seed)
    payload = pure.encode(draw_latent(model, rng, edges=bool(seed % 2)))
    i = int(rng.integers(0, max(1, len(payload))))
    if edit == "truncate":
        bad = payload[:i]
    elif edit == "append":
        bad = payload + bytes([int(rng.integers(1, 256))])
    elif edit == "append-zero":
        bad = payload + b"\0"
    elif edit == "zero-pad":
        bad = payload + b"\0" * 4 + b"\x01"
    else:
        bad = bytearray(payload or b"\0")
        bad[i] ^= 1 << int(rng.integers(0, 8))
        bad = bytes(bad)
    result = outcome(fast, bad)
    assert result == outcome(pure, bad)
    if edit in ("append-zero", "zero-pad"):  # never canonical: a canonical stream has no trailing zero byte
        assert isinstance(result, str) and "not a stream of this bundle's model" in result
    if not isinstance(result, str):
        # accepted only as the canonical stream of another latent: an appended or flipped byte can, rarely,
        # make one (seed 4038, append: a 31-byte stream of a different latent); it re-encodes to itself
        assert pure.encode(np.asarray(result, dtype=np.int8)) == bad


def test_wrong_shape_and_dtype_are_the_same_config_errors():
    pure, fast = coders(_fixed_model())
    for bad in (np.zeros(47, np.int8), np.full(48, 0.5), np.full(48, 300)):
        messages = []
        for coder in (pure, fast):
            with pytest.raises(ConfigError) as e:
                coder.encode(bad)
            messages.append(str(e.value))
        assert messages[0] == messages[1]
