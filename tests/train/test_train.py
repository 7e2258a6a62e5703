"""Training: real tiny runs, the run directory contract, noise and augmentation, option checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cae_edge.errors import ConfigError, DataNotFoundError
from cae_edge.metrics import quality, to_uint8
from cae_edge.rundir import RUN_FILES, check_out_dir, load_run
from cae_edge.train.augment import AugmentOptions, random_affine
from cae_edge.train.noise import NoiseKind, add_noise, noise_kind
from cae_edge.train.options import TrainOptions
from cae_edge.train.train import split_train, train

# ---------------------------------------------------------------- a real run

TINY_LATENT = 8  # the latent size of the tiny_run fixture (conftest.py)


@pytest.mark.slow
def test_run_dir_has_every_file(tiny_run, mnist):
    run = Path(tiny_run.run_dir)
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for png in ("loss.png", "recon.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "mnist"
    assert config["model"]["latent_dim"] == TINY_LATENT
    assert config["train"]["epochs"] == 2 and config["train"]["max_samples"] == 300
    assert config["train"]["augment"] is True  # resolved: on for the 8,000-digit set
    assert config["command"].startswith("cae-edge train --dataset mnist --latent 8 --epochs 2")
    assert f"--out {run}" in config["command"]
    assert config["data"]["train_images"] + config["data"]["val_images"] == 300
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == tiny_run.metrics
    assert metrics["test_images"] == len(mnist.x_test)  # the full test split
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == len(history["lr"]) == 2
    assert history["lr"][1] < history["lr"][0]  # cosine decay is on by default
    n_train = config["data"]["train_images"]
    for ips, seconds in zip(history["images_per_s"], history["seconds"], strict=True):
        assert ips == pytest.approx(n_train / seconds)
    assert metrics["images_per_s"] == pytest.approx(2 * n_train / sum(history["seconds"]))
    assert metrics["threads"] >= 1 and metrics["onednn"] in (True, False)
    json.dumps(tiny_run.to_dict())  # the result serialises


@pytest.mark.slow
def test_training_reduces_loss(tiny_run, mnist):
    import keras

    from cae_edge.train.model import ModelConfig, build_autoencoder

    loss = tiny_run.history["loss"]
    assert loss[-1] < loss[0]
    # Against the same architecture untrained: the test-split MSE went down.
    keras.utils.set_random_seed(1)
    _, _, untrained = build_autoencoder(ModelConfig(latent_dim=TINY_LATENT))
    x = mnist.x_test[:500]
    before = quality(x, to_uint8(untrained.predict(x[..., None] / 255.0, verbose=0)))["mse"]
    assert tiny_run.metrics["mse"] < before


@pytest.mark.slow
def test_saved_models_reload_and_match(tiny_run, mnist):
    encoder, decoder, config = load_run(tiny_run.run_dir)
    assert encoder.output_shape == (None, TINY_LATENT)
    assert decoder.input_shape == (None, TINY_LATENT) and decoder.output_shape == (None, 28, 28, 1)
    x = mnist.x_test[:16, ..., None] / 255.0
    latent = encoder.predict(x, verbose=0)
    assert latent.shape == (16, TINY_LATENT)
    np.testing.assert_allclose(latent, tiny_run.encoder.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    recon = decoder.predict(latent, verbose=0)
    assert recon.shape == (16, 28, 28, 1) and 0.0 <= recon.min() and recon.max() <= 1.0
    assert config["model"]["latent_dim"] == TINY_LATENT


@pytest.mark.slow
@pytest.mark.parametrize("latent", [1, 3, 128])
def test_encoder_output_is_latent_sized(latent, mnist):
    from cae_edge.train.model import ModelConfig, build_autoencoder

    encoder, decoder, autoencoder = build_autoencoder(ModelConfig(latent_dim=latent))
    z = encoder.predict(mnist.x_test[:4, ..., None] / 255.0, verbose=0)
    assert z.shape == (4, latent)
    assert decoder.predict(z, verbose=0).shape == (4, 28, 28, 1)


@pytest.mark.slow
def test_latent_one_denoising_run(tmp_path):
    """Latent size 1 end to end, with salt-and-pepper denoising, no hold-out, exponential decay."""
    events = []
    result = train(
        TrainOptions(
            latent_dim=1,
            epochs=1,
            max_samples=64,
            batch_size=32,
            val_fraction=0,
            noise="salt-pepper",
            noise_amount=0.1,
            augment=False,
            lr_decay="exponential",
            out_dir=str(tmp_path),
        ),
        progress=lambda epoch, logs: events.append((epoch, logs)),
    )
    assert result.encoder.output_shape == (None, 1)
    assert "val_loss" not in result.history and result.data["val_images"] == 0
    d = result.metrics["denoise"]
    assert {"psnr", "ssim", "mse"} <= set(d) and d["noisy_input"]["psnr"] < 30
    assert np.isfinite(result.metrics["psnr"])
    assert result.options["noise"] == "salt-pepper" and result.options["augment"] is False
    assert [e for e, _ in events] == [0, 1]
    assert events[0][1]["device"] == "CPU" or events[0][1]["device"].startswith("GPU")
    assert "--noise salt-pepper --noise-amount 0.1 --no-augment" in result.command


# ---------------------------------------------------------------- noise


def _grey(n=64):
    return np.full((n, 28, 28), 0.5, dtype=np.float32)


def test_gaussian_noise_has_the_requested_sigma():
    rng = np.random.default_rng(0)
    x = _grey()
    y = add_noise(x, "gaussian", 0.1, rng)
    diff = y - x
    assert y.dtype == np.float32 and y.shape == x.shape
    assert abs(diff.std() - 0.1) < 0.005 and abs(diff.mean()) < 0.005
    assert (y != x).mean() > 0.99
    # Clipped to [0, 1] even with a large sigma.
    z = add_noise(x, "gaussian", 1.0, rng)
    assert z.min() == 0.0 and z.max() == 1.0


def test_salt_pepper_sets_a_fraction_to_black_or_white():
    x = _grey()
    y = add_noise(x, NoiseKind.SALT_PEPPER, 0.2, np.random.default_rng(0))
    changed = y != x
    assert abs(changed.mean() - 0.2) < 0.01
    assert set(np.unique(y[changed]).tolist()) == {0.0, 1.0}
    assert abs((y == 0).mean() - (y == 1).mean()) < 0.01
    np.testing.assert_array_equal(y[~changed], 0.5)


def test_noise_is_seeded_and_none_is_identity():
    x = np.random.default_rng(1).random((4, 28, 28)).astype(np.float32)
    a = add_noise(x, "gaussian", 0.2, np.random.default_rng(7))
    b = add_noise(x, "gaussian", 0.2, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(add_noise(x, "none", 0.0, np.random.default_rng(7)), x)


@pytest.mark.parametrize(
    "kind, amount, match",
    [
        ("speckle", 0.1, "unknown noise 'speckle'"),
        ("gaussian", 0.0, "sigma 0.0"),
        ("salt-pepper", 1.0, "fraction"),
    ],
)
def test_bad_noise_raises(kind, amount, match):
    with pytest.raises(ConfigError, match=match):
        add_noise(_grey(1), kind, amount, np.random.default_rng(0))


def test_noise_kind_aliases():
    assert noise_kind("salt_pepper") is NoiseKind.SALT_PEPPER
    assert noise_kind("SP") is NoiseKind.SALT_PEPPER


# ---------------------------------------------------------------- augmentation


def test_augment_identity_when_off(mnist):
    x = mnist.x_test[:32].astype(np.float32) / 255
    np.testing.assert_array_equal(
        random_affine(x, np.random.default_rng(0), AugmentOptions(probability=0.0)), x
    )


def test_augment_shifts_and_rotates_a_little(mnist):
    x = mnist.x_test[:200].astype(np.float32) / 255
    y = random_affine(x[..., None], np.random.default_rng(0), AugmentOptions(probability=1.0))[..., 0]
    assert y.shape == x.shape and y.min() >= 0.0 and y.max() <= 1.0 + 1e-6
    changed = np.abs(y - x).reshape(len(x), -1).max(axis=1) > 0.05
    assert changed.mean() > 0.9
    # Small transforms of centred digits: ink is kept (within interpolation), centre of mass moves <= ~3 px.
    assert np.allclose(y.sum(axis=(1, 2)), x.sum(axis=(1, 2)), rtol=0.1)
    grid = np.arange(28)

    def com(a):
        m = a.sum(axis=(1, 2))
        return np.stack([(a.sum(axis=2) * grid).sum(1) / m, (a.sum(axis=1) * grid).sum(1) / m], 1)

    assert np.linalg.norm(com(y) - com(x), axis=1).max() < 3.5


# ---------------------------------------------------------------- options and early errors


def test_split_train_is_seeded_capped_and_disjoint():
    x = np.arange(100)
    tr, va = split_train(x, 40, 0.25, np.random.default_rng(0))
    assert len(tr) == 30 and len(va) == 10 and not set(tr) & set(va)
    tr2, va2 = split_train(x, 40, 0.25, np.random.default_rng(0))
    np.testing.assert_array_equal(tr, tr2)
    tr3, va3 = split_train(x[:1], None, 0.5, np.random.default_rng(0))
    assert len(tr3) == 1 and len(va3) == 0


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"dataset": "cifar"}, "unknown dataset 'cifar'"),
        ({"latent_dim": 0}, "latent dim 0"),
        ({"latent_dim": -3}, "latent dim -3"),
        ({"latent_dim": 2.5}, "latent dim 2.5"),
        ({"epochs": 0}, "epochs 0"),
        ({"batch_size": 0}, "batch size 0"),
        ({"learning_rate": 0}, "learning rate 0"),
        ({"lr_decay": "step"}, "unknown lr decay 'step'"),
        ({"noise": "blur"}, "unknown noise 'blur'"),
        ({"noise": "gaussian", "noise_amount": 5}, "sigma 5"),
        ({"max_samples": 0}, "max samples 0"),
        ({"val_fraction": 0.9}, "validation fraction 0.9"),
        ({"enc_widths": (32, 0, 16)}, "enc_widths"),
        ({"init": "zeros"}, "unknown init 'zeros'"),
        ({"threads": 0}, "threads 0"),
        ({"threads": 1.5}, "threads 1.5"),
    ],
)
def test_bad_options_raise_config_error(kw, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        train(TrainOptions(out_dir=str(tmp_path / "run"), **kw))
    assert not (tmp_path / "run").exists()


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_out_dir(blocker)
    with pytest.raises(ConfigError, match="not a directory"):
        train(TrainOptions(out_dir=str(blocker / "run")))


def test_missing_data_raises_before_creating_the_run(no_data):
    with pytest.raises(DataNotFoundError, match="no mnist data found"):
        train(TrainOptions(out_dir=str(no_data / "run")))
    assert not (no_data / "run").exists()


def test_bad_input_fails_before_tensorflow_is_imported(tmp_path):
    code = (
        "import sys\n"
        "from cae_edge.train.train import TrainOptions, train\n"
        "from cae_edge.errors import ConfigError\n"
        "for kw in ({'dataset': 'nope'}, {'latent_dim': 0}, {'out_dir': sys.argv[1]}):\n"
        "    try:\n"
        "        train(TrainOptions(**kw))\n"
        "    except ConfigError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('no error for %r' % kw)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'\n"
    )
    blocker = tmp_path / "f"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-c", code, str(blocker / "run")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_options_round_trip_and_command():
    opts = TrainOptions(
        dataset="fashion-mnist",
        latent_dim=32,
        enc_widths=(16, 16, 8),
        noise="gaussian",
        augment=False,
        threads=3,
    ).validated()
    assert opts.dataset == "fashion" and opts.noise_amount == 0.2 and opts.out_dir == "runs/fashion-latent32"
    assert TrainOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts
    cmd = opts.to_command()
    for part in (
        "--dataset fashion",
        "--latent 32",
        "--enc-widths 16,16,8",
        "--noise gaussian",
        "--no-augment",
        "--threads 3",
    ):
        assert part in cmd


@pytest.mark.slow
def test_he_init_redraws_conv_kernels_only():
    import keras

    from cae_edge.train.model import ModelConfig, build_autoencoder
    from cae_edge.train.train import he_init_convs

    keras.utils.set_random_seed(0)
    encoder, decoder, _ = build_autoencoder(ModelConfig(latent_dim=4))
    dense_before = [w.copy() for w in encoder.get_layer("latent").get_weights()]
    convs = [ly for m in (encoder, decoder) for ly in m.layers if isinstance(ly, keras.layers.Conv2D)]
    convs += [
        ly for m in (encoder, decoder) for ly in m.layers if isinstance(ly, keras.layers.Conv2DTranspose)
    ]
    convs = list(dict.fromkeys(convs))
    assert he_init_convs(encoder, decoder) == len(convs) >= 9  # the paper's 5 convs + 4 transposed convs
    for ly in convs:
        if isinstance(ly, keras.layers.Conv2DTranspose):
            continue
        fan_in = int(np.prod(ly.kernel.shape[:-1]))
        std = float(np.std(np.array(ly.kernel)))
        # He-normal (truncated normal): std close to sqrt(2 / fan_in)
        assert 0.6 * np.sqrt(2 / fan_in) < std < 1.2 * np.sqrt(2 / fan_in), (ly.name, std, fan_in)
    for w, w0 in zip(encoder.get_layer("latent").get_weights(), dense_before, strict=True):
        np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize("env, want", [(None, True), ("0", False)])
def test_training_asks_for_onednn_unless_told_not_to(env, want):
    """``cae-edge train`` calls ``prefer_onednn()`` before TensorFlow is imported: TensorFlow then runs its
    oneDNN kernels on every x86 CPU (by itself only on AVX512-VNNI / BF16 / AMX ones); the user's
    ``TF_ENABLE_ONEDNN_OPTS=0`` wins. Checked in a fresh interpreter (the switch is read at import)."""
    import os

    env_vars = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if env is not None:
        env_vars["TF_ENABLE_ONEDNN_OPTS"] = env
    code = (
        "from cae_edge.train.train import onednn_enabled, prefer_onednn\n"
        "prefer_onednn()\n"
        "print('onednn', onednn_enabled())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env_vars, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert f"onednn {want}" in out, out
