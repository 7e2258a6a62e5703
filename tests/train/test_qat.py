"""Quantization-aware fine-tuning (``train --qat``): the fake quantization against TFLite's int8 models,
the option checks, and the export of a fine-tuned run (real MNIST, tiny runs, real bundles)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_ratedistortion import _tiny  # the same tiny real-data run

from cae_edge.errors import ConfigError
from cae_edge.train.options import RDOptions, TrainOptions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rd_run(tmp_path_factory):
    """A tiny rate-distortion run on real MNIST digits (the start of the fine-tuning)."""
    from cae_edge.train.ratedistortion import train_rd

    return train_rd(_tiny(tmp_path_factory.mktemp("qat"), "start"))


@pytest.fixture(scope="module")
def calib(mnist):
    return (mnist.x_train[:200].astype(np.float32) / 255.0)[..., None]


def _tflite_scales(
    tflite: bytes, kinds: tuple[str, ...] = ("CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "LEAKY_RELU")
) -> list[float]:
    """Scales of the int8 tensors the ``kinds`` ops (default: weight and activation ops) write, in graph
    order (graph output left out: the latent, or the sigmoid's fixed 1/256)."""
    from cae_edge.device.litert import make_interpreter

    it = make_interpreter(tflite, xnnpack=False)
    details = {t["index"]: t for t in it.get_tensor_details()}
    graph_out = it.get_output_details()[0]["index"]
    return [
        float(details[op["outputs"][0]]["quantization_parameters"]["scales"][0])
        for op in it._get_ops_details()
        if op["op_name"] in kinds and op["outputs"][0] != graph_out
    ]


def test_fake_quantized_weights_are_the_int8_encoders_weights(calib):
    """The int8 encoder's kernels (the export's PTQ of the shipped float encoder, without channel
    equalization, as a QAT run is exported), dequantized, are the float encoder's kernels through
    :func:`fake_quant_weights` (per channel, symmetric, narrow range)."""
    import tensorflow as tf

    from cae_edge.device.litert import make_interpreter
    from cae_edge.export.convert import convert_encoder, rebuild_batch1
    from cae_edge.quant import QuantParams
    from cae_edge.train.from_bundle import models_from_bundle, read_start, tflite_weights, to_keras_layout
    from cae_edge.train.model import build_encoder
    from cae_edge.train.qat import fake_quant_weights

    start = read_start("mnist-small")
    encoder, _ = models_from_bundle(start)
    enc_q = convert_encoder(rebuild_batch1(encoder, build_encoder, start.model), calib, QuantParams(1.0, 0))
    it = make_interpreter(enc_q, xnnpack=False)
    details = {t["index"]: t for t in it.get_tensor_details()}
    int8_kernels = []
    for op in it._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            t = details[op["inputs"][1]]
            q = np.array(it.get_tensor(t["index"])).astype(np.float64)
            scales = t["quantization_parameters"]["scales"]
            shape = (-1,) + (1,) * (q.ndim - 1)
            int8_kernels.append(to_keras_layout(op["op_name"], q * scales.reshape(shape)))
    float_ops = tflite_weights(start.path / "encoder_float.tflite")
    assert len(int8_kernels) == len(float_ops) == 6
    for op, expected in zip(float_ops, int8_kernels, strict=True):
        kernel = to_keras_layout(op.op, op.weights[0])
        got = fake_quant_weights(tf, tf.constant(kernel), -1).numpy()
        step = np.abs(kernel).max() / 127
        off = np.abs(got - expected) > 1e-3 * step  # a value at a rounding tie may land one step away
        assert off.mean() < 1e-3 and np.abs(got - expected).max() < 1.01 * step, (op.tensor, off.mean())
        assert np.abs(kernel - expected).max() > 0.1 * step  # the float kernel itself is not on the grid


def _layer_by_layer(qmodel, tflite: bytes, inputs: np.ndarray) -> list[tuple[str, float, float]]:
    """Each layer of ``qmodel`` fed the int8 TFLite model's own (dequantized) input tensor of the matching
    op (reference kernels): ``(op, share of values more than half a step off, largest difference in
    steps)`` of the fake-quantized output against the op's int8 output."""
    from cae_edge.device.litert import make_interpreter

    it = make_interpreter(tflite, xnnpack=False, preserve_all_tensors=True)
    details = {t["index"]: t for t in it.get_tensor_details()}
    ops = [op for op in it._get_ops_details() if op["op_name"] != "RESHAPE"]
    layers = [la for la in qmodel.layers if type(la).__name__ not in ("Flatten", "Reshape")]
    if ops[-1]["op_name"] == "LOGISTIC":  # the last layer's sigmoid is its own op in TFLite
        ops = ops[: len(layers) - 1] + [ops[-1]]
    assert len(ops) == len(layers)
    graph_in = it.get_input_details()[0]

    def real(index: int) -> np.ndarray:
        t = details[index]
        scale, zp = t["quantization_parameters"]["scales"][0], t["quantization_parameters"]["zero_points"][0]
        return (np.array(it.get_tensor(index)).astype(np.float64) - zp) * scale

    seen: list[dict[int, np.ndarray]] = []
    for x in inputs:
        q = np.clip(np.rint(x / graph_in["quantization"][0]) + graph_in["quantization"][1], -128, 127)
        it.set_tensor(graph_in["index"], q.astype(np.int8)[None])
        it.invoke()
        seen.append(
            {i: real(i) for i in details if len(details[i]["quantization_parameters"]["scales"]) == 1}
        )
    found = []
    for layer, op in zip(layers, ops, strict=True):
        data = op["inputs"][2] if op["op_name"] == "TRANSPOSE_CONV" else op["inputs"][0]
        if op["op_name"] == "LOGISTIC":  # fed the logits' input: the last transposed conv's
            data = _producer_input(it, op["inputs"][0])
        x_in = np.concatenate([s[data] for s in seen]).astype(np.float32)
        in_scale = float(details[data]["quantization_parameters"]["scales"][0])
        got = np.asarray(qmodel.apply_layer(layer, x_in, in_scale))
        out = op["outputs"][0]
        want = np.concatenate([s[out] for s in seen])
        step = float(details[out]["quantization_parameters"]["scales"][0])
        if layer.name not in qmodel.points:
            got = np.rint(got / step) * step  # the encoder's latent: rounded by the caller
        diff = np.abs(got.reshape(want.shape) - want) / step
        found.append((op["op_name"], float(np.mean(diff > 0.5)), float(diff.max())))
    return found


def _producer_input(it, tensor: int) -> int:
    """The data input of the op that writes ``tensor`` (TRANSPOSE_CONV: input 2)."""
    for op in it._get_ops_details():
        if op["outputs"][0] == tensor:
            return op["inputs"][2] if op["op_name"] == "TRANSPOSE_CONV" else op["inputs"][0]
    raise AssertionError(f"no op writes tensor {tensor}")


def test_fake_quant_matches_the_int8_tflite_pair(rd_run, calib, mnist):
    """The activation ranges are the export's (same scales), and layer by layer the fake-quantized layers
    compute what the int8 TFLite ops compute: the encoder's convolutions and dense layer to the int8 value,
    every op within one step (TFLite's int8 LeakyReLU and sigmoid round a little differently)."""
    from cae_edge.export.convert import convert_decoder, convert_encoder, rebuild_batch1
    from cae_edge.quant import QuantParams
    from cae_edge.rundir import load_run
    from cae_edge.train.model import build_decoder, build_encoder
    from cae_edge.train.qat import QatModel, calibrate_pair, qat_pair

    encoder, decoder, config = load_run(rd_run.out_dir)
    qenc, qdec = qat_pair(encoder, decoder)
    ranges = calibrate_pair(qenc, qdec, calib)

    enc_q = convert_encoder(rebuild_batch1(encoder, build_encoder, config.model), calib, QuantParams(1.0, 0))
    want = _tflite_scales(enc_q)
    got = [(hi - lo) / 255 for lo, hi in ranges["encoder"].values()]
    np.testing.assert_allclose(got, want, rtol=1e-3)

    latents = np.clip(np.rint(np.asarray(qenc(calib))), -127, 127).astype(np.float32)
    dec_q, _ = convert_decoder(
        rebuild_batch1(decoder, build_decoder, config.model), latents, QuantParams(1.0, 0)
    )
    want = _tflite_scales(dec_q)
    got = [(hi - lo) / 255 for lo, hi in ranges["decoder"].values()]
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-3)  # last: logits, cut to [-6.29, 5.18] on both
    np.testing.assert_allclose(got[-1], want[-1], rtol=2e-2)

    images = (mnist.x_test[:20].astype(np.float32) / 255.0)[..., None]
    for qmodel, tflite, inputs in ((qenc, enc_q, images), (qdec, dec_q, latents[:20])):
        for op, off, worst in _layer_by_layer(qmodel, tflite, inputs):
            assert worst <= 1.01, (qmodel.name, op, off, worst)  # never more than one int8 step
            if op == "CONV_2D" or (op == "FULLY_CONNECTED" and qmodel is qenc):
                assert off < 0.01, (qmodel.name, op, off)  # to the int8 value
            elif op in ("TRANSPOSE_CONV", "FULLY_CONNECTED"):
                # the decoder's dense layer (integer latent in, step 1) comes out one step higher than
                # rounding in ~6 % of values on this tiny model, the same weights and int32 biases
                assert off < 0.1, (qmodel.name, op, off)
    with pytest.raises(RuntimeError, match="calibrate"):
        QatModel(decoder, 1.0)(latents[:2])


def test_qat_options_are_checked(rd_run, tmp_path):
    from typer.testing import CliRunner

    from cae_edge.cli.main import app

    with pytest.raises(ConfigError, match="--init-from"):
        _tiny(tmp_path, "x", qat=True).validated()
    scenes = TrainOptions(dataset="scenes", init_from="scenes-tiny", rd=RDOptions(qat=True)).validated()
    assert scenes.rd.qat and scenes.model_config().linear_skip  # simulated since the ADD is
    opts = _tiny(tmp_path, "y", qat=True)
    opts.init_from = rd_run.out_dir
    opts = opts.validated()
    assert opts.rd.qat and "--qat" in opts.to_command().split()
    assert TrainOptions.from_dict(json.loads(json.dumps(opts.to_dict()))).rd.qat
    result = CliRunner().invoke(app, ["train", "--qat", "--init-from", "mnist", "--out", str(tmp_path / "z")])
    assert result.exit_code == 1 and "--qat is for rate-distortion runs" in result.output
    result = CliRunner().invoke(app, ["train", "--qat", "--lam", "1", "--out", str(tmp_path / "z")])
    assert result.exit_code == 1 and "add --init-from" in result.output


def test_a_qat_run_exports_as_a_plain_run(rd_run, tmp_path):
    from cae_edge.device.bundle import load_bundle
    from cae_edge.export.writer import ExportOptions, export
    from cae_edge.rundir import load_run
    from cae_edge.train.ratedistortion import train_rd

    opts = _tiny(tmp_path, "tuned", qat=True)
    opts.epochs, opts.init_from, opts.learning_rate = 2, rd_run.out_dir, 1e-4
    result = train_rd(opts)
    metrics = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    assert metrics["qat"]["calibration_images"] == 256 and np.isfinite(metrics["qat"]["psnr_fake_quant"])
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["train"]["rd"]["qat"] is True and "--qat" in config["command"]
    encoder, _, _ = load_run(result.out_dir)
    assert [type(la).__name__ for la in encoder.layers].count("Conv2D") == 5  # the plain model, no extras
    before, _, _ = load_run(rd_run.out_dir)
    assert any(
        not np.array_equal(a, b) for a, b in zip(encoder.get_weights(), before.get_weights(), strict=True)
    )
    out = tmp_path / "bundle"
    export(ExportOptions(run_dir=result.out_dir, out_dir=out, verify_limit=40, margin_db=1.5))
    bundle = load_bundle(out)
    assert bundle.manifest.quality["channel_equalization"] is False  # the PTQ its training simulated
    payload = bundle.encoder().encode(np.zeros((28, 28), np.uint8) + 30)
    assert bundle.decoder().decode(payload).shape == (28, 28)


def _int8_decode(dec_q: bytes, latents: np.ndarray) -> np.ndarray:
    """The int8 decoder's images (real values) of integer latents, with XNNPACK (whose LeakyReLU rounds to
    nearest, as the simulation does)."""
    from cae_edge.device.litert import make_interpreter

    it = make_interpreter(dec_q)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    images = []
    for q in latents:
        it.set_tensor(inp["index"], q.astype(np.int8)[None])
        it.invoke()
        o = out["quantization"]
        images.append((np.array(it.get_tensor(out["index"]))[0].astype(np.float64) - o[1]) * o[0])
    return np.array(images)


def test_fake_quant_of_a_d2s_decoder_has_the_exports_ranges(calib):
    """A shipped d2s decoder (conv at 14x14, depth-to-space, separate sigmoid layer) fake-quantizes at the
    scales the export gives its int8 tensors, the logits cut to [-6.29, 5.18] through the RESHAPE/TRANSPOSE
    between the last conv and the sigmoid; its output is the int8 decoder's within one 1/256 step in most
    pixels."""
    from cae_edge.export.convert import convert_decoder, rebuild_batch1
    from cae_edge.quant import QuantParams
    from cae_edge.train.from_bundle import models_from_bundle, read_start
    from cae_edge.train.model import build_decoder
    from cae_edge.train.qat import LOGIT_CUT, QatModel

    start = read_start("mnist-small")
    assert start.model.head == "d2s"
    encoder, decoder = models_from_bundle(start)
    latents = np.clip(np.rint(np.asarray(encoder(calib))), -127, 127).astype(np.float32)
    qdec = QatModel(decoder, 1.0)
    ranges = qdec.calibrate(latents)
    logits = [name for name in qdec.points if name in qdec.logits]
    assert len(logits) == 1 and logits[0] == qdec.points[-1]
    lo, hi = ranges[logits[0]]
    assert LOGIT_CUT[0] <= lo < 0 < hi <= LOGIT_CUT[1] and -6.4 < LOGIT_CUT[0] and LOGIT_CUT[1] < 5.3

    dec_q, _ = convert_decoder(
        rebuild_batch1(decoder, build_decoder, start.model), latents, QuantParams(1.0, 0)
    )
    want = _tflite_scales(dec_q)
    got = [(hi - lo) / 255 for lo, hi in ranges.values()]
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-3)
    np.testing.assert_allclose(got[-1], want[-1], rtol=2e-2)

    int8 = _int8_decode(dec_q, latents[:50])
    fake = np.asarray(qdec(latents[:50])).reshape(int8.shape)
    plain = np.asarray(decoder(latents[:50])).reshape(int8.shape)
    # one-step differences add up over the layers (as for the convt head: mean 0.58 output steps off the
    # int8 decoder against the float decoder's 0.84), but the fake-quantized decoder is clearly closer to the
    # int8 one than the float decoder is (mnist-hq d2s, first measured: 0.38 against 0.63 steps of 1/256)
    fake_err, float_err = np.mean(np.abs(fake - int8)) * 256, np.mean(np.abs(plain - int8)) * 256
    assert fake_err < 0.75 * float_err, (fake_err, float_err)


def test_fake_quant_of_a_linear_skip_pair_is_the_exported_one(calib, mnist):
    """mnist-xxl (linear path beside the convolutions on both sides, d2s head): the decoder's Dense(784) and
    ADD are int8 tensors with the export's ranges, the ADD's two inputs narrowed as the export narrows them
    before the sigmoid, and the fake-quantized decoder decodes as its int8 TFLite model does (the same PSNR
    to a tenth of a dB, clearly closer than the float decoder); the encoder, whose two paths the export
    fuses into one FULLY_CONNECTED, runs in float."""
    from cae_edge.export.convert import convert_decoder, rebuild_batch1
    from cae_edge.metrics import psnr_per_image, to_uint8
    from cae_edge.quant import QuantParams
    from cae_edge.train.from_bundle import models_from_bundle, read_start
    from cae_edge.train.model import build_decoder
    from cae_edge.train.qat import LOGIT_CUT, calibrate_pair, qat_pair

    start = read_start("mnist-xxl")
    assert start.model.linear_skip and start.model.head == "d2s"
    encoder, decoder = models_from_bundle(start)
    qenc, qdec = qat_pair(encoder, decoder)
    ranges = calibrate_pair(qenc, qdec, calib)
    assert qenc.fused and qenc.points == [] and ranges["encoder"] == {}
    np.testing.assert_array_equal(np.asarray(qenc(calib[:8])), np.asarray(encoder(calib[:8])))

    (add,) = qdec.logits
    assert type(decoder.get_layer(add)).__name__ == "Add" and ranges["decoder"][add][0] == LOGIT_CUT[0]
    latents = np.clip(np.rint(np.asarray(encoder(calib))), -127, 127).astype(np.float32)
    dec_q, _ = convert_decoder(
        rebuild_batch1(decoder, build_decoder, start.model), latents, QuantParams(1.0, 0)
    )
    kinds = ("CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "LEAKY_RELU", "ADD")
    want = sorted(_tflite_scales(dec_q, kinds))
    got = sorted((hi - lo) / 255 for lo, hi in ranges["decoder"].values())
    np.testing.assert_allclose(got, want, rtol=1e-2)  # the two ADD inputs: 0.06 logits, not 0.09 / 0.20

    images = mnist.x_test[:60]
    test_latents = np.clip(np.rint(np.asarray(encoder(images[..., None] / 255.0))), -127, 127)
    int8 = _int8_decode(dec_q, test_latents).reshape(-1, 28, 28)
    fake = np.asarray(qdec(test_latents.astype(np.float32))).reshape(int8.shape)
    plain = np.asarray(decoder(test_latents.astype(np.float32))).reshape(int8.shape)
    db = {
        k: float(psnr_per_image(images, to_uint8(v)).mean())
        for k, v in (("int8", int8), ("fake", fake), ("float", plain))
    }
    # the float decoder is 0.3 dB off the int8 one on these 60 digits (0.29 for the 201 B mnist-xxl)
    assert abs(db["fake"] - db["int8"]) < 0.1 and db["float"] - db["int8"] > 0.2, db
    fake_err, float_err = np.mean(np.abs(fake - int8)) * 256, np.mean(np.abs(plain - int8)) * 256
    assert fake_err < 0.8 * float_err, (fake_err, float_err)


def test_decoder_adaptation_with_qat_trains_through_the_int8_rounding(mnist):
    """``AdaptOptions(qat=True)`` (``readapt --qat``): what the adaptation minimises is the fake-quantized
    decoder's error, not the float one's. At a learning rate too small to move a weight, its first epoch's
    MSE is exactly the float decoder's MSE without ``qat`` and the :class:`QatModel`'s with it, calibrated on
    the same latents (the shipped mnist-hq decoder on its int8 encoder's latents; there the two differ)."""
    from cae_edge.device.bundle import load_bundle, resolve_bundle
    from cae_edge.export.adapt import AdaptOptions, adapt_decoder
    from cae_edge.export.convert import run_int8_encoder
    from cae_edge.export.readapt import keras_decoder_from_tflite
    from cae_edge.quant import dequantize
    from cae_edge.rundir import ModelConfig
    from cae_edge.train.qat import QatModel

    bundle = load_bundle(resolve_bundle("mnist-hq"))
    m = bundle.manifest
    decoder = keras_decoder_from_tflite(
        bundle.model_bytes("decoder_float"), ModelConfig.from_dict(m.train["model"])
    )
    images = mnist.x_train[:256]
    x = (images.astype(np.float32) / 255.0)[..., None]
    latents = dequantize(run_int8_encoder(bundle.model_bytes("encoder"), images), m.latent_quant)

    def mse(model) -> float:
        return float(np.mean((np.asarray(model(latents)).reshape(x.shape) - x) ** 2)) * 255.0**2

    qdec = QatModel(decoder, m.latent_quant.scale)
    qdec.calibrate(latents)  # all 256: fewer than the adaptation's CALIB_IMAGES, so the same ranges
    float_mse, qat_mse = mse(decoder), mse(qdec)
    assert 10 < float_mse < 200 and abs(qat_mse - float_mse) > 0.01 * float_mse, (qat_mse, float_mse)
    for qat, want in ((False, float_mse), (True, qat_mse)):
        _, res = adapt_decoder(
            decoder,
            latents,
            images,
            AdaptOptions(epochs=1, learning_rate=1e-9, qat=qat),
            latent_scale=m.latent_quant.scale,
        )
        assert res.loss_first_epoch == pytest.approx(want, rel=1e-3), (qat, res.loss_first_epoch, want)


def test_readapt_qat_needs_epochs(tmp_path):
    from typer.testing import CliRunner

    from cae_edge.cli.main import app
    from cae_edge.export.readapt import ReadaptOptions

    with pytest.raises(ConfigError, match="needs epochs >= 1"):
        ReadaptOptions(bundle="mnist-tiny", out_dir=tmp_path / "x", epochs=0, qat=True).validate()
    r = CliRunner().invoke(
        app, ["readapt", "mnist-tiny", "--out", str(tmp_path / "y"), "--epochs", "0", "--qat"]
    )
    assert r.exit_code == 1 and "needs epochs >= 1" in r.output, r.output
