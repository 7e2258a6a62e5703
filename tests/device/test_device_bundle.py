"""Device runtime on the shipped bundles: TensorFlow-free loading, encode/decode, errors, golden latents."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cae_edge import datasets
from cae_edge.device.bundle import available_bundles, load_bundle, resolve_bundle
from cae_edge.errors import BundleError, ConfigError, PacketError, PairMismatchError
from cae_edge.metrics import psnr_per_image
from cae_edge.payload import CODECS, Int8Codec, register_codec

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
SHIPPED = ("mnist", "fashion")

BLOCK_TF = textwrap.dedent(
    """
    import sys

    class _BlockTF:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError(f"{name} is blocked: the device side must not import it")
            return None

    sys.meta_path.insert(0, _BlockTF())
    """
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request):
    return load_bundle(request.param)


@pytest.fixture(scope="module")
def mnist_bundle():
    return load_bundle("mnist")


def test_entropy_coded_bundles_work_without_constriction():
    """A node without ``constriction`` (no wheel for aarch64) encodes and decodes the entropy-coded presets,
    bit-identical to what a node with it sends (the golden latents' payloads, computed here with it)."""
    from cae_edge.payload import make_codec  # noqa: F401 - imported before blocking, as a node would

    names = [n for n in ("mnist-tiny", "mnist-small", "mnist-hq") if n in available_bundles()]
    assert names, "no entropy-coded preset is shipped"
    expected = {}
    for name in names:
        b = load_bundle(name)
        assert b.coding["kind"] == "entropy"
        golden = json.loads((GOLDEN / f"{name}.json").read_text())
        latents = [np.frombuffer(bytes.fromhex(h), np.int8) for h in golden["xnnpack"]["latents_hex"]]
        expected[name] = [(q.tobytes().hex(), _constriction_payload(b, q).hex()) for q in latents]
    code = textwrap.dedent(
        f"""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "constriction":
                    raise ImportError(f"{{name}} is blocked: nodes must not need it")
                return None
        sys.meta_path.insert(0, _Block())
        import numpy as np
        from cae_edge.device.bundle import load_bundle
        for name, pairs in {expected!r}.items():
            codec = load_bundle(name).codec()
            for latent_hex, payload_hex in pairs:
                q = np.frombuffer(bytes.fromhex(latent_hex), np.int8)
                assert codec.encode(q).hex() == payload_hex, (name, latent_hex)
                assert (codec.decode(bytes.fromhex(payload_hex)) == q).all(), (name, latent_hex)
        assert not [m for m in sys.modules if m.startswith("constriction")]
        print("OK")
        """
    )
    r = run_python(code)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr


def _constriction_payload(bundle, q: np.ndarray) -> bytes:
    """The stream of ``q`` as ``constriction`` codes it (the reference the shipped bundles use): with switched
    tables the class the codec chooses first, then the latent with that class's tables."""
    from cae_edge import entropy
    from tests.test_entropy import reference_encode, reference_switched_symbols, reference_symbols

    codec = bundle.codec()
    if isinstance(codec.model, entropy.SwitchedModel):
        return reference_encode(reference_switched_symbols(codec.model, q, codec.choose(q.tobytes())))
    return reference_encode(reference_symbols(codec.model, q, escapes=codec.coder == entropy.CODER))


def test_shipped_bundles_are_listed_by_directory():
    names = available_bundles()
    assert set(SHIPPED) <= set(names)
    for name, path in names.items():
        assert (path / "manifest.json").is_file() and path.name == name
        assert resolve_bundle(name) == path


def test_device_side_loads_and_runs_with_tensorflow_unimportable():
    code = BLOCK_TF + textwrap.dedent(
        """
        import numpy as np
        try:
            import tensorflow  # noqa: F401
            raise SystemExit("blocker failed")
        except ImportError:
            pass
        from cae_edge.device.bundle import load_bundle
        for name in ("mnist", "fashion"):
            b = load_bundle(name)
            enc, dec = b.encoder(), b.decoder()
            img = (np.arange(784) % 256).astype(np.uint8).reshape(28, 28)
            payload = enc.encode(img)
            assert isinstance(payload, bytes) and len(payload) == b.bytes_per_image == b.latent_dim
            q = enc.encode_latent(img)
            assert q.dtype == np.int8 and q.shape == (b.latent_dim,)
            out = dec.decode(payload)
            assert out.dtype == np.uint8 and out.shape == (28, 28)
            assert (dec.decode_latent(q) == out).all()
        from typer.testing import CliRunner
        from cae_edge.cli.main import app
        r = CliRunner().invoke(app, ["bundle", "info", "mnist"])
        assert r.exit_code == 0, r.output
        assert "pair id" in r.output
        bad = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
        assert not bad, bad
        print("OK")
        """
    )
    r = run_python(code)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr


def test_no_interpreter_installed_is_a_clear_error():
    code = textwrap.dedent(
        """
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("ai_edge_litert", "tflite_runtime"):
                    raise ImportError(f"no module named {name}")
        sys.meta_path.insert(0, _Block())
        from cae_edge.device.bundle import load_bundle
        from cae_edge.errors import RuntimeMissingError
        try:
            load_bundle("mnist")
        except RuntimeMissingError as e:
            print("ERR", e)
        """
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert "ERR no TFLite interpreter installed" in r.stdout and "pip install ai-edge-litert" in r.stdout


def test_encode_decode_real_test_images(shipped):
    ds = datasets.load(shipped.manifest.dataset["name"])
    x = ds.x_test[:: max(1, len(ds.x_test) // 100)][:100]
    enc, dec = shipped.encoder(), shipped.decoder()
    out = np.stack([dec.decode(enc.encode(img)) for img in x])
    psnr = psnr_per_image(x, out).mean()
    # the same pipeline the export verified, on a subset: close to the manifest's int8 figure
    assert psnr > 14.0
    assert abs(psnr - shipped.manifest.quality["tflite_int8"]["psnr"]) < 2.0


def test_manifest_records_quality_and_preprocessing(shipped):
    m = shipped.manifest
    q = m.quality
    assert q["n_images"] == len(datasets.load(m.dataset["name"]).x_test) and q["split"] == "test"
    assert q["keras_float"]["psnr"] - q["tflite_int8"]["psnr"] <= q["margin_db"]
    assert m.preprocess["size"] == 28 and m.preprocess["grayscale"] is True
    assert m.coding["kind"] == "int8" and m.bytes_per_image == m.latent_dim
    assert m.models["encoder"].input.dtype == "int8" and m.models["encoder"].input.zero_point == -128
    assert m.command


GOLDEN_NAMES = sorted(p.stem for p in GOLDEN.glob("*.json"))


def test_the_default_bundles_have_golden_files():
    assert set(SHIPPED) <= set(GOLDEN_NAMES), "run `python tests/golden/regenerate.py`"


@pytest.mark.parametrize("kernels", ["xnnpack", "builtin", "micro"])
@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_latents_are_reproduced_bit_exactly(name, kernels):
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    b = load_bundle(name)
    assert golden["pair_id"] == b.pair_id, (
        f"shipped bundle {name} changed (pair id {b.pair_id}, golden {golden['pair_id']}): "
        "run `python tests/golden/regenerate.py` and commit tests/golden/"
    )
    x = datasets.load(golden["dataset"]).x_test
    enc, dec = b.encoder(kernels=kernels), b.decoder(kernels=kernels)
    want = golden[kernels]
    for i, hexq, img_sha in zip(golden["indices"], want["latents_hex"], want["decoded_sha256"], strict=True):
        q = enc.encode_latent(x[i])
        assert q.tobytes().hex() == hexq, (
            f"test image {i}: int8 latent differs from the golden bytes ({kernels})"
        )
        img = np.ascontiguousarray(dec.decode_latent(q))
        assert hashlib.sha256(img.tobytes()).hexdigest() == img_sha, f"test image {i}: decoded image differs"


def test_latents_are_copies_and_deterministic(mnist_bundle):
    x = datasets.load("mnist").x_test
    enc = mnist_bundle.encoder()
    a = enc.encode_latent(x[0])
    a_copy = a.copy()
    b = enc.encode_latent(x[1])
    np.testing.assert_array_equal(a, a_copy)  # a later call does not overwrite an earlier result
    assert not np.array_equal(a, b)
    assert enc.encode(x[0]) == a_copy.tobytes() == mnist_bundle.encoder(num_threads=2).encode(x[0])
    # a non-contiguous view of the same pixels encodes the same
    big = np.zeros((56, 56), np.uint8)
    big[::2, ::2] = x[0]
    assert enc.encode(big[::2, ::2]) == a_copy.tobytes()


def test_float_models_run_through_the_same_runtime(mnist_bundle):
    x = datasets.load("mnist").x_test[:20]
    fe, fd = mnist_bundle.encoder(precision="float"), mnist_bundle.decoder(precision="float")
    z = fe.encode_latent(x[0])
    assert z.dtype == np.float32 and z.shape == (mnist_bundle.latent_dim,)
    assert fd.decode_latent(z).dtype == np.uint8
    with pytest.raises(ConfigError, match="float encoder has no wire payload"):
        fe.encode(x[0])
    with pytest.raises(ConfigError, match="precision 'fp16'"):
        mnist_bundle.encoder(precision="fp16")


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((28, 28), np.float32), "dtype float32"),
        (np.zeros((28, 29), np.uint8), r"shape \(28, 29\)"),
        (np.zeros((28, 28, 3), np.uint8), r"shape \(28, 28, 3\)"),
    ],
)
def test_encoder_rejects_bad_images(mnist_bundle, image, match):
    with pytest.raises(ConfigError, match=match):
        mnist_bundle.encoder().encode(image)


def test_decoder_rejects_bad_payloads_and_latents(mnist_bundle):
    dec = mnist_bundle.decoder()
    n = mnist_bundle.latent_dim
    with pytest.raises(PacketError, match=f"payload of {n - 1} bytes") as info:
        dec.decode(bytes(n - 1))
    assert info.value.reason == "payload"
    with pytest.raises(ConfigError, match="dtype uint8"):
        dec.decode_latent(np.zeros(n, np.uint8))
    with pytest.raises(ConfigError, match="shape"):
        dec.decode_latent(np.zeros(n + 1, np.int8))


def test_check_pair(mnist_bundle):
    mnist_bundle.check_pair(mnist_bundle.pair_id)
    with pytest.raises(PairMismatchError, match="same bundle"):
        mnist_bundle.check_pair(load_bundle("fashion").pair_id)


def test_bad_names_and_threads(tmp_path):
    with pytest.raises(BundleError, match="not a shipped bundle name"):
        load_bundle("no-such-bundle")
    with pytest.raises(BundleError, match="manifest not found"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="num_threads 0"):
        load_bundle("mnist").encoder(num_threads=0)


def _copy_with_coding(tmp_path: Path, coding: dict) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(resolve_bundle("mnist"), dst)
    d = json.loads((dst / "manifest.json").read_text())
    d["coding"] = coding
    (dst / "manifest.json").write_text(json.dumps(d))
    return dst


def test_unknown_coding_kind_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="unknown coding kind 'zip'"):
        load_bundle(_copy_with_coding(tmp_path, {"kind": "zip"}))


def test_registered_codec_is_used_by_encode_and_decode(tmp_path):
    class Reversed(Int8Codec):
        kind = "reversed"

        def encode(self, q):
            return q.tobytes()[::-1]

        def decode(self, payload):
            return super().decode(payload[::-1])

    register_codec("reversed", lambda bundle: Reversed(bundle.latent_dim))
    try:
        b = load_bundle(_copy_with_coding(tmp_path, {"kind": "reversed"}))
        img = datasets.load("mnist").x_test[3]
        enc, dec = b.encoder(), b.decoder()
        q = enc.encode_latent(img)
        assert enc.encode(img) == q.tobytes()[::-1]
        np.testing.assert_array_equal(dec.decode(enc.encode(img)), dec.decode_latent(q))
    finally:
        CODECS.pop("reversed", None)


def test_verify_false_skips_hashes_but_not_structure(tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(resolve_bundle("mnist"), dst)
    f = dst / "encoder_float.tflite"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # last byte of the file: not read by the verifier or the kernels
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="tampered"):
        load_bundle(dst)
    load_bundle(dst, verify=False)
    f.write_bytes(b"XXXX" * (len(data) // 4) + b"X" * (len(data) % 4))
    with pytest.raises(BundleError, match="not a TFLite flatbuffer"):
        load_bundle(dst, verify=False)


def test_encoder_input_that_is_not_raw_pixels_is_refused(tmp_path):
    from cae_edge.export.convert import set_io_quant
    from cae_edge.manifest import file_entry, pair_id
    from cae_edge.quant import QuantParams

    dst = tmp_path / "b"
    shutil.copytree(resolve_bundle("mnist"), dst)
    f = dst / "encoder.tflite"
    f.write_bytes(set_io_quant(f.read_bytes(), "input", QuantParams(1 / 255, -127)))
    d = json.loads((dst / "manifest.json").read_text())
    e = file_entry(f)
    d["files"]["encoder.tflite"] = {"sha256": e.sha256, "bytes": e.bytes}
    d["pair_id"] = pair_id(e.sha256, d["files"]["decoder.tflite"]["sha256"])
    d["models"]["encoder"]["input"]["zero_point"] = -127
    (dst / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match=r"encoder\.tflite: input quantization .* is not raw pixels"):
        load_bundle(dst)
