"""`cae-edge export`: a tiny model trained here on real MNIST digits, converted, verified, tampered with.

Tolerance of the int8 round trip: on real test images the int8 pair (LiteRT) reconstructs the Keras float
reconstruction at >= 30 dB PSNR on average (a tiny, barely trained model; the shipped bundles do better),
and the manifest records an int8 loss vs Keras float within the 0.5 dB export margin.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cae_edge import datasets
from cae_edge.cli.main import app
from cae_edge.device.bundle import load_bundle
from cae_edge.errors import BundleError, ExportError, PairMismatchError
from cae_edge.manifest import Manifest, file_entry, sha256_file
from cae_edge.metrics import psnr_per_image, to_uint8
from cae_edge.quant import QuantParams

pytestmark = pytest.mark.slow

VERIFY = 300  # test images used for verification in these tests (the CLI default is the whole split)
ALLOWED_OPS = {"CONV_2D", "LEAKY_RELU", "RESHAPE", "FULLY_CONNECTED", "TRANSPOSE_CONV", "LOGISTIC"}


@pytest.fixture(scope="module")
def mnist():
    return datasets.load("mnist")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mnist):
    """A run directory like `cae-edge train` writes: 3 epochs on 1,600 real training digits.

    Cross-entropy keeps this short run from collapsing to a black image (MSE through the sigmoid can stall).
    """
    import keras

    from cae_edge.train.model import ModelConfig, build_autoencoder

    keras.utils.set_random_seed(0)
    cfg = ModelConfig(latent_dim=32)
    x = mnist.x_train[np.random.default_rng(0).permutation(len(mnist.x_train))[:1600]]
    x = (x.astype(np.float32) / 255.0)[..., None]
    enc, dec, ae = build_autoencoder(cfg)
    ae.compile(keras.optimizers.Adam(2e-3), "binary_crossentropy")
    ae.fit(x, x, epochs=3, batch_size=32, verbose=0)
    run = tmp_path_factory.mktemp("run")
    enc.save(run / "encoder.keras")
    dec.save(run / "decoder.keras")
    config = {"dataset": "mnist", "model": cfg.to_dict(), "train": {"epochs": 3}, "command": "test fixture"}
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    from cae_edge.export.writer import ExportOptions, export

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    steps = []
    result = export(
        ExportOptions(tiny_run, out, calib=200, verify_limit=VERIFY, command="pytest"),
        progress=lambda what, done, total: steps.append(what),
    )
    assert steps, "progress callback never called"
    return result


@pytest.fixture(scope="module")
def bundle(exported):
    return load_bundle(exported.path)


@pytest.fixture
def bundle_copy(exported, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(exported.path, dst)
    return dst


def test_export_writes_a_verified_bundle(exported, bundle):
    path = Path(exported.path)
    assert sorted(p.name for p in path.iterdir()) == [
        "decoder.tflite",
        "decoder_float.tflite",
        "encoder.tflite",
        "encoder_float.tflite",
        "manifest.json",
    ]
    assert not path.with_name(path.name + ".tmp").exists()
    m = bundle.manifest
    for name, entry in m.files.items():
        assert entry.sha256 == sha256_file(path / name)
        assert entry.bytes == (path / name).stat().st_size == exported.sizes[name]
    assert m.pair_id == exported.pair_id == bundle.pair_id
    assert m.latent_dim == 32 and m.bytes_per_image == 32 and m.coding == {"kind": "int8"}
    q = m.quality
    assert q["n_images"] == VERIFY
    for key in ("keras_float", "tflite_float", "tflite_int8"):
        assert 5 < q[key]["psnr"] < 60 and 0 < q[key]["ssim"] <= 1
    assert abs(q["keras_float"]["psnr"] - q["tflite_float"]["psnr"]) < 0.01
    assert q["int8_loss_db"] == pytest.approx(q["keras_float"]["psnr"] - q["tflite_int8"]["psnr"])
    assert q["int8_loss_db"] <= 0.5
    assert (
        m.preprocess["size"] == 28 and m.dataset["name"] == "mnist" and m.train["command"] == "test fixture"
    )
    assert m.command == "pytest"


def test_int8_models_io_dtypes_batch1_and_only_builtin_int8_ops(exported):
    from cae_edge.device.litert import make_interpreter
    from cae_edge.export.convert import model_info

    path = Path(exported.path)
    enc = make_interpreter(path / "encoder.tflite")
    dec = make_interpreter(path / "decoder.tflite")
    ei, eo = enc.get_input_details()[0], enc.get_output_details()[0]
    di, do = dec.get_input_details()[0], dec.get_output_details()[0]
    assert ei["dtype"] == np.int8 and list(ei["shape"]) == [1, 28, 28, 1]
    assert ei["quantization"] == (pytest.approx(1 / 255), -128)
    assert np.float32(ei["quantization"][0]) == np.float32(1 / 255)
    assert eo["dtype"] == np.int8 and list(eo["shape"]) == [1, 32]
    assert di["dtype"] == np.int8 and list(di["shape"]) == [1, 32]
    assert do["dtype"] == np.int8 and list(do["shape"]) == [1, 28, 28, 1]
    for name in ("encoder.tflite", "decoder.tflite"):
        info = model_info((path / name).read_bytes())
        assert set(info.ops) <= ALLOWED_OPS, info.ops  # no SHAPE/STRIDED_SLICE/PACK, no (DE)QUANTIZE
        assert info.custom_ops == () and info.n_subgraphs == 1
        assert set(info.tensor_types) <= {"INT8", "INT32"}, info.tensor_types
    for name in ("encoder_float.tflite", "decoder_float.tflite"):
        assert "FLOAT32" in model_info((path / name).read_bytes()).tensor_types


def test_latent_quantization_identical_on_both_sides(exported, bundle):
    from cae_edge.device.litert import make_interpreter
    from cae_edge.export.convert import io_quant

    path = Path(exported.path)
    enc_out = io_quant((path / "encoder.tflite").read_bytes(), "output")
    dec_in = io_quant((path / "decoder.tflite").read_bytes(), "input")
    assert enc_out.same_as(dec_in) and enc_out.same_as(bundle.latent_quant)
    a = make_interpreter(path / "encoder.tflite").get_output_details()[0]["quantization"]
    b = make_interpreter(path / "decoder.tflite").get_input_details()[0]["quantization"]
    assert a == b


def test_litert_round_trip_close_to_keras_float(tiny_run, bundle, mnist):
    import keras

    x = mnist.x_test[:200]
    enc = keras.models.load_model(tiny_run / "encoder.keras")
    dec = keras.models.load_model(tiny_run / "decoder.keras")
    keras_rec = to_uint8(dec.predict(enc.predict(x[..., None] / 255.0, verbose=0), verbose=0)[..., 0])
    e, d = bundle.encoder(), bundle.decoder()
    payloads = [e.encode(img) for img in x]
    assert all(isinstance(p, bytes) and len(p) == 32 for p in payloads)
    int8_rec = np.stack([d.decode(p) for p in payloads])
    assert int8_rec.dtype == np.uint8 and int8_rec.shape == x.shape
    assert psnr_per_image(keras_rec, int8_rec).mean() >= 30.0
    # and the latents are the quantized float latents, up to one quantization step
    z = enc.predict(x[:50, ..., None] / 255.0, verbose=0)
    q = np.stack([e.encode_latent(img) for img in x[:50]]).astype(np.int32)
    from cae_edge.quant import quantize

    step_error = np.abs(q - quantize(z, bundle.latent_quant).astype(np.int32))
    # percentile calibration saturates the rarest activations on purpose: a few latents move further
    spread = np.percentile(step_error, [50, 95, 99])
    assert step_error.mean() < 1.0 and spread[1] <= 2, spread


def test_set_io_quant_changes_only_the_parameters(exported):
    from cae_edge.export.convert import io_quant, set_io_quant

    data = (Path(exported.path) / "decoder.tflite").read_bytes()
    from ai_edge_litert import schema_py_generated as schema

    edited = set_io_quant(data, "input", QuantParams(0.5, 3))
    assert len(edited) == len(data)
    # Besides the 4-byte scale and 8-byte zero point, only the int32 biases of the op reading the input (and
    # their per-channel scales) change: they are stored in input_scale * weight_scale units.
    m = schema.Model.GetRootAs(bytearray(data), 0)
    sg = m.Subgraphs(0)
    ops = [sg.Operators(i) for i in range(sg.OperatorsLength())]
    first = next(op for op in ops if op.Inputs(0) == sg.Inputs(0))
    n_bias = sg.Tensors(first.Inputs(2)).Shape(0)
    assert sum(a != b for a, b in zip(data, edited, strict=True)) <= 12 + 8 * n_bias
    assert io_quant(edited, "input") == QuantParams(0.5, 3)


def test_sigmoid_input_range_is_cut_to_the_useful_logits(exported):
    from ai_edge_litert import schema_py_generated as schema

    from cae_edge.export.convert import LOGIT_CLIP, tighten_logistic_inputs

    data = (Path(exported.path) / "decoder.tflite").read_bytes()
    m = schema.Model.GetRootAs(bytearray(data), 0)
    sg = m.Subgraphs(0)
    ops = [sg.Operators(i) for i in range(sg.OperatorsLength())]
    codes = [m.OperatorCodes(op.OpcodeIndex()).BuiltinCode() for op in ops]
    op = ops[codes.index(schema.BuiltinOperator.LOGISTIC)]
    q = sg.Tensors(op.Inputs(0)).Quantization()
    scale, zp = float(q.ScaleAsNumpy()[0]), int(q.ZeroPointAsNumpy()[0])
    lo, hi = scale * (-128 - zp), scale * (127 - zp)
    assert -LOGIT_CLIP - scale <= lo <= 0 <= hi <= LOGIT_CLIP + scale
    again, changed = tighten_logistic_inputs(data)
    assert changed == 0 and again == data  # already applied at export; idempotent


def test_one_byte_tamper_is_detected(bundle_copy):
    f = bundle_copy / "decoder.tflite"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"decoder\.tflite: sha256 .* tampered"):
        load_bundle(bundle_copy)


def test_truncated_file_is_detected(bundle_copy):
    f = bundle_copy / "encoder.tflite"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"encoder\.tflite: truncated: 1000 bytes"):
        load_bundle(bundle_copy)


def _relist(bundle_dir: Path, name: str, *, keep_pair_id: bool = True) -> None:
    """Rewrite the manifest entry of ``name`` to the file's current hash/size (as a careless copy would)."""
    d = json.loads((bundle_dir / "manifest.json").read_text())
    e = file_entry(bundle_dir / name)
    d["files"][name] = {"sha256": e.sha256, "bytes": e.bytes}
    if not keep_pair_id:
        from cae_edge.manifest import pair_id

        d["pair_id"] = pair_id(d["files"]["encoder.tflite"]["sha256"], d["files"]["decoder.tflite"]["sha256"])
    (bundle_dir / "manifest.json").write_text(json.dumps(d))


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"garbage!" * 500])
def test_not_a_flatbuffer_is_a_bundle_error_even_when_listed(bundle_copy, content):
    (bundle_copy / "decoder.tflite").write_bytes(content)
    _relist(bundle_copy, "decoder.tflite", keep_pair_id=False)
    with pytest.raises(BundleError, match=r"decoder\.tflite: .*(too small|not a TFLite flatbuffer)"):
        load_bundle(bundle_copy)


def test_truncated_but_listed_file_is_rejected_by_the_verifier(bundle_copy):
    f = bundle_copy / "encoder.tflite"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _relist(bundle_copy, "encoder.tflite", keep_pair_id=False)
    with pytest.raises(BundleError, match=r"encoder\.tflite: .*rejected the model"):
        load_bundle(bundle_copy)


def test_missing_file(bundle_copy):
    (bundle_copy / "encoder.tflite").unlink()
    with pytest.raises(BundleError, match=r"encoder\.tflite: missing"):
        load_bundle(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest not found"):
        load_bundle(bundle_copy)


def test_decoder_from_another_export_is_a_pair_mismatch(bundle_copy, forced):
    shutil.copy(Path(forced) / "decoder.tflite", bundle_copy / "decoder.tflite")
    _relist(bundle_copy, "decoder.tflite")  # hashes fixed up, pair id left alone
    with pytest.raises(PairMismatchError, match="pair_id"):
        load_bundle(bundle_copy)


def test_model_not_matching_manifest_tensor_details(bundle_copy):
    d = json.loads((bundle_copy / "manifest.json").read_text())
    d["models"]["decoder"]["output"]["zero_point"] = 0
    (bundle_copy / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match=r"decoder\.tflite: output zero point -128 \(manifest: 0\)"):
        load_bundle(bundle_copy)


@pytest.fixture(scope="module")
def forced(tiny_run, tmp_path_factory):
    """Export through the CLI with a forced integer latent quantization (scale 1, zero point 0)."""
    out = tmp_path_factory.mktemp("forced") / "b"
    r = CliRunner().invoke(
        app,
        [
            "export",
            str(tiny_run),
            "--out",
            str(out),
            "--latent-scale",
            "1",
            "--margin",
            "100",
            "--calib",
            "100",
            "--verify-limit",
            "100",
            "--no-bias-correction",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "pair id" in r.output and "tflite_int8" in r.output and "encoder.tflite" in r.output
    return out


def test_forced_latent_quantization_is_used_on_both_sides(forced):
    m = Manifest.read(forced)
    assert m.latent_quant == QuantParams(1.0, 0)
    assert m.models["encoder"].output.scale == 1.0 and m.models["decoder"].input.zero_point == 0
    assert "--latent-scale 1" in m.command and "--no-bias-correction" in m.command
    assert "encoder_bias_correction" not in m.quality
    b = load_bundle(forced)
    assert b.encoder().encode_latent(np.zeros((28, 28), np.uint8)).dtype == np.int8


def test_margin_failure_leaves_nothing_behind(tiny_run, tmp_path):
    from cae_edge.export.writer import ExportOptions, export

    out = tmp_path / "bad"
    with pytest.raises(ExportError, match="over the 0.5 dB margin"):
        # a latent step of 0.005 clips every latent to +-0.64: a huge loss
        export(ExportOptions(tiny_run, out, calib=50, verify_limit=50, latent_scale=0.005))
    assert not out.exists() and not out.with_name("bad.tmp").exists()


def test_cli_bundle_info_and_errors(exported, tiny_run, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["bundle", "info", exported.path])
    assert r.exit_code == 0, r.output
    assert exported.pair_id in r.output and "tflite_int8" in r.output
    r = runner.invoke(app, ["bundle", "info", exported.path, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["pair_id"] == exported.pair_id
    r = runner.invoke(app, ["bundle", "info", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "not a shipped bundle name" in r.output
    r = runner.invoke(app, ["export", str(tiny_run), "--out", exported.path])
    assert r.exit_code == 1 and "already exists" in r.output
    (tmp_path / "emptyrun").mkdir()
    r = runner.invoke(app, ["export", str(tmp_path / "emptyrun"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "missing config.json, encoder.keras, decoder.keras" in r.output


def test_cli_range_search_records_both_searches_and_beats_the_percentile_ranges(exported, tiny_run, tmp_path):
    """`export --range-search` on the same run and calibration as the plain export: both searches are in the
    manifest, each ended no worse than it started on the calibration images, the command says so, and the
    int8 pair is no further from float on the test digits than the plain export's (±0.02 dB)."""
    out = tmp_path / "searched"
    r = CliRunner().invoke(
        app,
        ["export", str(tiny_run), "--out", str(out), "--calib", "200", "--verify-limit", str(VERIFY)]
        + ["--margin", "0.5", "--range-search", "--json"],
    )
    assert r.exit_code == 0, r.output
    m = load_bundle(out).manifest
    assert "--range-search" in m.command
    rs = m.quality["range_search"]
    assert set(rs) == {"encoder", "decoder"}
    for side in rs.values():
        assert side["after"] <= side["before"] and side["evaluations"] >= 1 and side["objective"]
    assert rs["decoder"]["after"] < rs["decoder"]["before"]  # something to gain on a 3-epoch decoder
    assert "range_search" not in exported.quality
    assert m.quality["int8_loss_db"] <= exported.quality["int8_loss_db"] + 0.02


@pytest.fixture(scope="module")
def coarse_pair(tiny_run, tmp_path_factory):
    """The same run exported twice with a coarse forced latent step: as is, and with --adapt-decoder 3."""
    from cae_edge.export.writer import ExportOptions, export

    root = tmp_path_factory.mktemp("adapt")
    common = dict(calib=100, verify_limit=VERIFY, latent_scale=COARSE_STEP, margin_db=100.0)
    plain = export(ExportOptions(tiny_run, root / "plain", **common))
    adapted = export(ExportOptions(tiny_run, root / "adapted", adapt_epochs=3, adapt_lr=1e-3, **common))
    return plain, adapted


COARSE_STEP = 2.0
"""A latent step coarser than the tiny run's latents want: the decoder has something to adapt to."""


def test_adapting_the_decoder_to_int8_latents_wins_back_quality(coarse_pair):
    plain, adapted = coarse_pair
    gain = adapted.quality["tflite_int8"]["psnr"] - plain.quality["tflite_int8"]["psnr"]
    assert gain > 0.5, (plain.quality, adapted.quality)
    a = adapted.quality["decoder_adaptation"]
    assert a["epochs"] == 3 and a["train_images"] == 8000 and a["loss_last_epoch"] < a["loss_first_epoch"]
    # the unadapted float reference is recorded, and it is the plain export's Keras float figure
    assert a["keras_float_before"]["psnr"] == pytest.approx(plain.quality["keras_float"]["psnr"], abs=1e-6)
    assert "decoder_adaptation" not in plain.quality
    r = CliRunner().invoke(app, ["bundle", "info", adapted.path])
    assert r.exit_code == 0 and "adapted to the int8 encoder's latents (3 epochs)" in r.output, r.output


def test_adaptation_changes_only_the_decoder(coarse_pair, mnist):
    plain, adapted = coarse_pair
    bp, ba = load_bundle(plain.path), load_bundle(adapted.path)
    ep, ea = bp.encoder(), ba.encoder()
    imgs = mnist.x_test[:50]
    latents = [ep.encode_latent(i) for i in imgs]
    assert all(np.array_equal(q, ea.encode_latent(i)) for q, i in zip(latents, imgs, strict=True))
    dp, da = bp.decoder(), ba.decoder()
    assert any(not np.array_equal(dp.decode_latent(q), da.decode_latent(q)) for q in latents)
    assert plain.pair_id != adapted.pair_id  # a decoder from one cannot be paired with the other's manifest
    assert ba.manifest.latent_quant == QuantParams(COARSE_STEP, 0)


def test_adapt_options_and_inputs_are_checked(tiny_run, tmp_path):
    import keras

    from cae_edge.errors import ConfigError
    from cae_edge.export.adapt import AdaptOptions, adapt_decoder
    from cae_edge.export.writer import ExportOptions

    with pytest.raises(ConfigError, match="adapt epochs -1"):
        ExportOptions(tiny_run, tmp_path / "x", adapt_epochs=-1).validate()
    with pytest.raises(ConfigError, match="adapt learning rate 5"):
        AdaptOptions(epochs=1, learning_rate=5).validate()
    dec = keras.models.load_model(tiny_run / "decoder.keras", compile=False)
    with pytest.raises(ConfigError, match="one latent per image"):
        adapt_decoder(dec, np.zeros((3, 32)), np.zeros((4, 28, 28), np.uint8), AdaptOptions(epochs=1))


def test_bias_correction_removes_a_known_latent_shift(exported, mnist):
    from cae_edge.export.convert import correct_output_bias, run_int8_encoder
    from cae_edge.quant import dequantize

    enc = (Path(exported.path) / "encoder.tflite").read_bytes()
    qp = load_bundle(exported.path).manifest.latent_quant
    imgs = mnist.x_train[:300]
    now = dequantize(run_int8_encoder(enc, imgs), qp)
    wanted = np.where(np.arange(now.shape[1]) % 2 == 0, 3.0, -3.0) * qp.scale  # +-3 latent steps per dim
    fixed, stats = correct_output_bias(enc, imgs, now + wanted)
    assert stats["mean_abs_shift_before"] == pytest.approx(3 * qp.scale, rel=0.05)
    moved = (dequantize(run_int8_encoder(fixed, imgs), qp) - now).mean(axis=0)
    assert np.abs(moved - wanted).max() < 0.5 * qp.scale, moved / qp.scale
    assert stats["mean_abs_shift_after"] < 0.2 * qp.scale
    assert len(fixed) == len(enc)  # only bias values changed


def test_export_records_the_encoder_bias_correction(exported):
    bc = exported.quality["encoder_bias_correction"]
    assert bc["rounds"] == 2 and bc["images"] == 200
    assert bc["mean_abs_shift_after"] <= bc["mean_abs_shift_before"]


def test_percentile_calibration_narrows_only_intermediate_ranges(tiny_run, mnist):
    import keras
    import tensorflow as tf

    from cae_edge.export.convert import _quiet, _schema, check_int8_builtin, convert_int8, percentile_ranges

    dec = keras.models.load_model(tiny_run / "decoder.keras", compile=False)
    reps = np.random.default_rng(0).normal(0, 1, (100, 32)).astype(np.float32)
    conv = tf.lite.TFLiteConverter.from_keras_model(dec)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([r[None]] for r in reps)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv._experimental_calibrate_only = True
    with _quiet():
        calibrated = bytes(conv.convert())

    def ranges(buf):
        sg = _schema().Model.GetRootAs(bytearray(buf), 0).Subgraphs(0)
        out = {}
        for t in range(sg.TensorsLength()):
            q = sg.Tensors(t).Quantization()
            if q is not None and q.MinLength() == 1:
                out[t] = (float(q.MinAsNumpy()[0]), float(q.MaxAsNumpy()[0]))
        return out, {sg.Inputs(0), sg.Outputs(0)}

    before, io = ranges(calibrated)
    after, _ = ranges(percentile_ranges(calibrated, reps, 99.0))
    assert before.keys() == after.keys() and len(before) >= 8
    for t, (lo, hi) in after.items():
        assert before[t][0] <= lo <= hi <= before[t][1]
        if t in io:
            assert (lo, hi) == before[t]
    narrower = [t for t in after if t not in io and after[t] != before[t]]
    assert len(narrower) >= len(before) - len(io) - 1, (before, after)
    dec1 = keras.models.clone_model(dec)  # any batch size converts; the bundle path rebuilds at batch 1
    dec1.set_weights(dec.get_weights())
    check_int8_builtin(convert_int8(dec1, reps[:20], 99.9), "decoder.tflite")


def test_calibration_percentile_is_checked(tiny_run, tmp_path):
    from cae_edge.errors import ConfigError
    from cae_edge.export.writer import ExportOptions

    with pytest.raises(ConfigError, match="calibration percentile 30"):
        ExportOptions(tiny_run, tmp_path / "x", calib_percentile=30).validate()


def test_staged_bundle_replaces_out_only_when_the_block_finishes(tmp_path):
    from cae_edge.export.writer import staged_bundle

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name, text in (("manifest.json", "{}"), ("encoder.tflite", "e"), ("entropy.npz", "old")):
        (src / name).write_text(text)
    out.mkdir()
    (out / "keep.txt").write_text("before")
    with pytest.raises(RuntimeError), staged_bundle(out, copy_from=src, keep_out=("entropy.npz",)) as tmp:
        assert sorted(p.name for p in tmp.iterdir()) == ["encoder.tflite"]  # no manifest, no kept-out file
        raise RuntimeError("verification failed")
    assert (out / "keep.txt").read_text() == "before" and not (tmp_path / "out.tmp").exists()
    with staged_bundle(out, copy_from=src, keep_out=("entropy.npz",)) as tmp:
        (tmp / "entropy.npz").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["encoder.tflite", "entropy.npz"]
    assert (out / "entropy.npz").read_text() == "new" and not (tmp_path / "out.tmp").exists()
