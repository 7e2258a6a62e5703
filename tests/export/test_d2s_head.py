"""The depth-to-space decoder head (``ModelConfig.head = "d2s"``): the builder, its int8 graph, the head
option's checks, and ``cae-edge readapt --head d2s`` from a shipped bundle to a verified bundle whose decoder
reads back (``readapt``, ``train --init-from``) into Keras computing what its float TFLite computes.

Real data throughout: MNIST training and test digits, the shipped mnist and scenes-hq bundles
(the convt heads left to start from).
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from cae_edge import datasets
from cae_edge.cli.main import app
from cae_edge.device.bundle import load_bundle
from cae_edge.device.litert import make_interpreter
from cae_edge.errors import ConfigError
from cae_edge.rundir import HEADS, ModelConfig

runner = CliRunner()
INT8_OPS = {
    "FULLY_CONNECTED",
    "LEAKY_RELU",
    "RESHAPE",
    "TRANSPOSE_CONV",
    "CONV_2D",
    "LOGISTIC",
    "TRANSPOSE",
    "ADD",
}
"""Ops an int8 d2s decoder may hold (LiteRT builtins, all int8 in XNNPACK; ADD: a linear path's)."""


def test_head_is_validated_and_recorded_only_when_not_the_default():
    assert HEADS == ("convt", "d2s")
    with pytest.raises(ConfigError, match=r"decoder head 'd2x': must be one of convt, d2s"):
        ModelConfig(head="d2x").validate()
    with pytest.raises(ConfigError, match=r"decoder head 'D2S'"):
        ModelConfig.from_dict({"latent_dim": 16, "head": "D2S"})
    assert "head" not in ModelConfig().to_dict()  # configs and manifests of convt models read as before
    cfg = ModelConfig(latent_dim=16, head="d2s")
    assert cfg.to_dict()["head"] == "d2s" and ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_train_options_take_the_head():
    from cae_edge.train.options import RDOptions, TrainOptions

    opts = TrainOptions(dataset="mnist", latent_dim=16, head="d2s").validated()
    assert opts.model_config().head == "d2s" and "--head d2s" in opts.to_command()
    assert TrainOptions(dataset="mnist", latent_dim=16).validated().model_config().head == "convt"
    with pytest.raises(ConfigError, match="decoder head 'wide'"):
        TrainOptions(dataset="mnist", head="wide").validated()
    with pytest.raises(ConfigError, match="--head"):  # a bundle keeps its model (mnist: convt)
        TrainOptions(dataset="mnist", init_from="mnist", head="d2s").validated()
    # a preset does not undo the head a bundle was given later (mnist-hq ships with the d2s head)
    shipped = ModelConfig.from_dict(load_bundle("mnist-hq").manifest.train["model"])
    assert shipped.head == "d2s"
    for preset in (None, "hq"):
        rd = RDOptions(preset=preset)
        opts = TrainOptions(dataset="mnist", init_from="mnist-hq", rd=rd).validated()
        assert opts.model_config() == shipped


def test_cli_rejects_an_unknown_head():
    r = runner.invoke(app, ["readapt", "mnist-tiny", "--out", "x", "--head", "d2x"])
    assert r.exit_code != 0 and "d2x" in r.output
    from cae_edge.export.readapt import ReadaptOptions

    with pytest.raises(ConfigError, match="decoder head 'd2x'"):
        ReadaptOptions(bundle="mnist-tiny", out_dir="x", head="d2x").validate()
    with pytest.raises(ConfigError, match="head width 8: .* needs a new head"):
        ReadaptOptions(bundle="mnist-tiny", out_dir="x", head_width=8).validate()
    with pytest.raises(ConfigError, match="augment copies -1: must be >= 0"):
        ReadaptOptions(bundle="mnist-tiny", out_dir="x", augment_copies=-1).validate()


def test_depth_to_space_puts_each_channel_at_its_pixel(mnist):
    """Real digits cut into 2x2 blocks (tf.nn.space_to_depth) come back whole through the Keras layers."""
    import keras
    import tensorflow as tf

    from cae_edge.train.model import depth_to_space, logit_pixels

    x = (mnist.x_test[:8] / 255.0).astype(np.float32)[..., None]
    blocks = tf.nn.space_to_depth(x, 2).numpy()  # (8, 14, 14, 4)
    inp = keras.Input((14, 14, 4))
    np.testing.assert_array_equal(keras.Model(inp, depth_to_space(inp, 14))(blocks), x)
    # the d2s head's logit order: logit k of the flattened (14, 14, 4) tensor is pixel logit_pixels("d2s")[k]
    np.testing.assert_array_equal(x.reshape(8, -1)[:, logit_pixels("d2s")], blocks.reshape(8, -1))


def _short_d2s_readapt(name: str, out, **options):
    """``name`` re-adapted to a d2s head 8 wide, 1 head-only + 1 full epoch, written to ``out``."""
    from cae_edge.export.readapt import ReadaptOptions, readapt_bundle

    src = load_bundle(name)
    opts = ReadaptOptions(
        bundle=src.path,
        out_dir=out,
        head="d2s",
        head_width=8,
        head_epochs=1,
        epochs=1,
        margin_db=5.0,
        **options,
    )
    return src, readapt_bundle(opts)


@pytest.fixture(scope="module")
def readapted(tmp_path_factory):
    """mnist re-adapted to the d2s head (hidden conv 8 wide) on 200 real training digits and one
    shifted/rotated copy of each (1 head-only + 1 full epoch). The plain 128-d bundle: every shipped MNIST
    preset already has the d2s head."""
    out = tmp_path_factory.mktemp("d2s") / "mnist-d2s"
    src, res = _short_d2s_readapt("mnist", out, augment_copies=1, train_limit=200, verify_limit=50)
    return src, res, load_bundle(out)


@pytest.mark.slow
def test_readapt_to_d2s_changes_only_the_decoder(readapted):
    src, res, new = readapted  # load_bundle verified hashes, pair id and tensor details
    for name in ("encoder.tflite", "encoder_float.tflite"):  # (the plain bundle has no entropy model)
        assert new.read_file(name) == src.read_file(name)
    assert res.pair_id == new.pair_id != src.pair_id
    model = new.manifest.train["model"]
    old = src.manifest.train["model"]
    assert model == {**old, "head": "d2s", "dec_widths": [*old["dec_widths"][:2], 8]}
    q = new.manifest.quality
    head = q["decoder_readaptation"]["head"]
    assert head["from"] == "convt" and head["to"] == "d2s" and head["width"] == model["dec_widths"][2] == 8
    assert head["head_only"]["epochs"] == 1
    assert q["decoder_readaptation"]["train_images"] == 800  # (200 digits + 200 moved copies) x 2 families
    assert (
        q["n_images"] == 50 and q["int8_loss_db"] <= q["margin_db"] == 5.0
    )  # verified against the float pair
    assert new.manifest.quality["kernels"]["after"]["psnr"]["xnnpack"] == pytest.approx(
        q["tflite_int8"]["psnr"]
    )


def _check_int8_d2s_decoder(tflite: bytes) -> None:
    from cae_edge.export.convert import model_info

    info = model_info(tflite)
    assert set(info.ops) <= INT8_OPS and {"CONV_2D", "TRANSPOSE", "LOGISTIC"} <= set(info.ops), info.ops
    assert info.custom_ops == () and info.n_subgraphs == 1
    assert set(info.tensor_types) <= {"INT8", "INT32"}, info.tensor_types  # int32: biases, shapes, perms
    it = make_interpreter(tflite, xnnpack=False)
    details = {t["index"]: t for t in it.get_tensor_details()}
    convs = [op for op in it._get_ops_details() if op["op_name"] in ("CONV_2D", "TRANSPOSE_CONV")]
    assert [op["op_name"] for op in convs] == ["TRANSPOSE_CONV", "TRANSPOSE_CONV", "CONV_2D", "CONV_2D"]
    for op in convs:
        ins = [int(i) for i in op["inputs"]]
        data = details[ins[2] if op["op_name"] == "TRANSPOSE_CONV" else ins[0]]
        out = details[int(op["outputs"][0])]
        assert data["dtype"] == out["dtype"] == np.int8
        assert data["shape"][-1] > 1 and out["shape"][-1] > 1, (op["op_name"], data["shape"], out["shape"])
    assert list(out["shape"]) == [1, 14, 14, 4]  # the last conv: the 2x2 blocks
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    assert i["dtype"] == o["dtype"] == np.int8 and list(o["shape"]) == [1, 28, 28, 1]


@pytest.mark.slow
def test_d2s_int8_decoder_is_int8_builtin_with_no_one_channel_conv(readapted):
    _check_int8_d2s_decoder(readapted[2].model_bytes("decoder"))


def test_shipped_d2s_decoders_are_int8_builtin_with_no_one_channel_conv():
    from cae_edge.device.bundle import available_bundles

    d2s = [n for n in available_bundles() if load_bundle(n).manifest.train["model"].get("head") == "d2s"]
    assert "mnist-hq" in d2s
    for name in d2s:
        _check_int8_d2s_decoder(load_bundle(name).model_bytes("decoder"))


@pytest.mark.slow
def test_d2s_decoder_reads_back_from_its_float_tflite(readapted, mnist):
    """readapt's reader and `train --init-from`'s both rebuild the d2s decoder computing what the file does,
    on the latents the bundle's own int8 encoder makes of real test digits."""
    from cae_edge.export.convert import run_int8_encoder
    from cae_edge.export.readapt import keras_decoder_from_tflite
    from cae_edge.quant import dequantize
    from cae_edge.train.from_bundle import models_from_bundle, read_start

    _, _, new = readapted
    cfg = ModelConfig.from_dict(new.manifest.train["model"])
    z = dequantize(run_int8_encoder(new.model_bytes("encoder"), mnist.x_test[:12]), new.manifest.latent_quant)
    assert z.std(axis=0).max() > 0.5  # real, varied latents
    it = make_interpreter(new.model_bytes("decoder_float"))
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    want = []
    for v in z:
        it.set_tensor(i["index"], v[None].astype(np.float32))
        it.invoke()
        want.append(it.get_tensor(o["index"])[0])
    want = np.stack(want)
    assert want.std() > 0.03  # varies with the latent (a decoder trained for two short epochs)
    decoder = keras_decoder_from_tflite(new.model_bytes("decoder_float"), cfg)
    np.testing.assert_allclose(decoder.predict(z, verbose=0), want, atol=1e-5)
    start = read_start(str(new.path))
    assert start.model.head == "d2s"
    _, decoder2 = models_from_bundle(start)  # checks itself on the bundle's self-test images too
    np.testing.assert_allclose(decoder2.predict(z, verbose=0), want, atol=1e-5)
    with pytest.raises(Exception, match="do not fit"):  # the convt builder does not fit a d2s file
        from dataclasses import replace

        keras_decoder_from_tflite(new.model_bytes("decoder_float"), replace(cfg, head="convt"))


def test_new_head_keeps_the_shared_layers_and_the_linear_path():
    """scenes-hq (linear_skip, convt head): with both heads' last conv silenced, the old and the new decoder
    are the same sigmoid(linear path) image: the Dense(784) columns were put in the d2s head's block order."""
    import keras

    from cae_edge.export.readapt import keras_decoder_from_tflite, new_head_decoder

    b = load_bundle("scenes-hq")
    cfg = ModelConfig.from_dict(b.manifest.train["model"])
    old = keras_decoder_from_tflite(b.model_bytes("decoder_float"), cfg)
    new, new_cfg = new_head_decoder(old, cfg, "d2s", width=8)
    assert new_cfg.head == "d2s" and new_cfg.dec_widths == (*cfg.dec_widths[:2], 8)
    frozen = [la for la in new.layers if la.weights and not la.trainable]
    assert len(frozen) == 4  # Dense, ConvT 3→7, ConvT 7→14, the linear path's Dense

    def chain(model):  # the weight layers of the conv path, in data-flow order
        return [la for la in model.layers if la.weights and la.weights[0].shape[-1] != 28 * 28]

    assert chain(new)[:3] == [la for la in frozen if la in chain(new)]
    for la, twin in zip(chain(new)[:3], chain(old)[:3], strict=True):
        for a, w in zip(la.get_weights(), twin.get_weights(), strict=True):
            np.testing.assert_array_equal(a, w)
    for model, filters in ((old, 1), (new, 4)):
        (last,) = [la for la in model.layers if getattr(la, "filters", 0) == filters]
        last.set_weights([np.zeros_like(w) for w in last.get_weights()])
    frames = datasets.load(b.manifest.dataset["name"]).x_test[:6]
    enc = b.encoder(precision="float")
    z = np.stack([enc.encode_latent(f) for f in frames]).astype(np.float32)
    y_old = keras.ops.convert_to_numpy(old(z))
    y_new = keras.ops.convert_to_numpy(new(z))
    assert y_old.std() > 0.05
    np.testing.assert_allclose(y_new, y_old, atol=1e-6)


@pytest.mark.slow
def test_cli_readapt_head_records_its_command(tmp_path):
    import json

    out = tmp_path / "tiny-d2s"
    args = ["readapt", "mnist", "--out", str(out), "--head", "d2s", "--head-width", "8"]
    args += ["--head-epochs", "1", "--epochs", "1", "--train-limit", "100", "--verify-limit", "20"]
    r = runner.invoke(app, [*args, "--margin", "5", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout[r.stdout.index("{") :])
    cmd = res["quality"]["decoder_readaptation"]["command"]
    assert "--head d2s --head-epochs 1 --head-lr 0.001 --head-width 8" in cmd
    assert load_bundle(out).manifest.train["model"]["head"] == "d2s"
    # a second readaptation keeps the head (and its width) and records the first one before it
    again = ["readapt", str(out), "--out", str(tmp_path / "again"), "--epochs", "1", "--train-limit", "100"]
    r = runner.invoke(app, [*again, "--verify-limit", "20", "--margin", "5", "--json"])
    assert r.exit_code == 0, r.output
    second = load_bundle(tmp_path / "again").manifest
    assert second.train["model"] == load_bundle(out).manifest.train["model"]
    record = second.quality["decoder_readaptation"]
    assert [e["command"] for e in record["earlier"]] == [cmd] and "head" not in record
    r = runner.invoke(app, ["bundle", "info", str(tmp_path / "again")])
    assert r.exit_code == 0 and r.output.count("then ") == 2 and "--head d2s" in r.output


@pytest.mark.slow
def test_readapt_to_d2s_with_the_linear_path(tmp_path):
    """scenes-hq (linear_skip, convt head) through readapt --head d2s on 100 real training frames: an int8 d2s
    decoder whose linear path adds at 14x14x4, read back into Keras computing what its float file computes."""
    from cae_edge.export.readapt import keras_decoder_from_tflite

    out = tmp_path / "scenes-hq-d2s"
    src, _ = _short_d2s_readapt("scenes-hq", out, train_limit=100, verify_limit=30)
    new = load_bundle(out)
    for name in ("encoder.tflite", "encoder_float.tflite", "entropy.npz"):
        assert new.read_file(name) == src.read_file(name)
    assert new.manifest.train["model"]["linear_skip"] and new.manifest.train["model"]["head"] == "d2s"
    _check_int8_d2s_decoder(new.model_bytes("decoder"))
    cfg = ModelConfig.from_dict(new.manifest.train["model"])
    frames = datasets.load(new.manifest.dataset["name"]).x_test[:8]
    enc = new.encoder(precision="float")
    z = np.round(np.stack([enc.encode_latent(f) for f in frames])).astype(np.float32)
    dec = new.decoder(precision="float")
    want = np.stack([dec.decode_latent(v) for v in z]).astype(np.int16)
    decoder = keras_decoder_from_tflite(new.model_bytes("decoder_float"), cfg)
    got = np.clip(np.rint(decoder.predict(z, verbose=0)[..., 0] * 255), 0, 255).astype(np.int16)
    assert want.std() > 5 and np.abs(got - want).max() <= 1


@pytest.mark.slow
def test_d2s_head_trains_from_scratch_with_he_init(mnist):
    """`train --head d2s` (He init): the output conv starts at the convt output layer's scale, so real digits
    train instead of collapsing to black (all-black MNIST is MSE 0.111 on the 0-1 scale)."""
    import keras

    from cae_edge.train.model import D2S_BLOCKS, build_autoencoder
    from cae_edge.train.train import he_init_convs

    keras.utils.set_random_seed(0)
    enc, dec, ae = build_autoencoder(ModelConfig(latent_dim=32, head="d2s"))
    assert he_init_convs(enc, dec) == 5 + 4
    blocks = dec.get_layer(D2S_BLOCKS).kernel.numpy()
    assert blocks.std() == pytest.approx(np.sqrt(2 / 9), rel=0.25)
    x = (mnist.x_train[:1500] / 255.0).astype(np.float32)[..., None]
    black = float((x**2).mean())
    ae.compile(keras.optimizers.Adam(3e-3), "mse")
    loss = ae.fit(x, x, epochs=4, batch_size=128, verbose=0).history["loss"]
    assert loss[-1] < 0.6 * black, (loss, black)
