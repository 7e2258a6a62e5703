"""Kernel families (XNNPACK, LiteRT builtin, tflite-micro): the micro adapter, per-family quality, latent
files, `cae-edge benchmark --kernels`, and the decoder rebuilt from a float .tflite for `cae-edge readapt`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cae_edge import datasets
from cae_edge.benchmark.kernels import (
    KernelsOptions,
    kernel_quality,
    load_latents,
    markdown_table,
    run_kernels,
)
from cae_edge.cli.main import app
from cae_edge.device.bundle import load_bundle
from cae_edge.device.litert import KERNELS, make_interpreter
from cae_edge.errors import BundleError, ConfigError

runner = CliRunner()
N = 24
ENTROPY_BUNDLES = (
    "mnist-xxl",
    "mnist-xl",
    "mnist-hq",
    "mnist-small",
    "mnist-tiny",
    "fashion-xxl",
    "fashion-xl",
    "fashion-hq",
    "fashion-small",
    "fashion-tiny",
)


@pytest.fixture(scope="module")
def hq():
    return load_bundle("mnist-hq")


@pytest.fixture(scope="module")
def test_images():
    return datasets.load("mnist").x_test[:N]


def test_micro_interpreter_reports_the_tensors_litert_does(hq):
    data = hq.model_bytes("encoder")
    lite, micro = make_interpreter(data), make_interpreter(data, kernels="micro")
    for a, b in ((lite.get_input_details()[0], micro.get_input_details()[0]),
                 (lite.get_output_details()[0], micro.get_output_details()[0])):  # fmt: skip
        assert list(a["shape"]) == list(b["shape"])
        assert np.dtype(a["dtype"]) == np.dtype(b["dtype"])
        assert np.float32(a["quantization"][0]) == np.float32(b["quantization"][0])
        assert a["quantization"][1] == b["quantization"][1]


def test_every_family_encodes_through_the_bundle_api(hq, test_images):
    for kernels in KERNELS:
        q = hq.encoder(kernels=kernels).encode_latent(test_images[0])
        assert q.shape == (hq.latent_dim,) and q.dtype == np.int8
        # a decoded image close to the input, whatever ran the encoder
        img = hq.decoder(kernels=kernels).decode_latent(q)
        assert np.abs(img.astype(int) - test_images[0]).mean() < 20


def test_unknown_kernels_are_refused(hq):
    with pytest.raises(BundleError, match="kernels 'gpu'"):
        make_interpreter(hq.model_bytes("encoder"), kernels="gpu")


def test_kernel_quality_rows_and_spread(hq, test_images):
    xnn = np.stack([hq.encoder().encode_latent(x) for x in test_images])
    r = kernel_quality(hq, test_images, ("xnnpack", "builtin", "micro"), {"copy": xnn})
    assert list(r.psnr) == ["xnnpack", "builtin", "micro", "copy"]
    assert r.psnr["copy"] == r.psnr["xnnpack"]  # the same latents decode to the same images
    assert r.changed["xnnpack"] == r.changed["copy"] == 0.0 and r.max_step["copy"] == 0
    assert r.spread_db == pytest.approx(max(r.psnr.values()) - min(r.psnr.values()))
    assert all(15 < v < 40 for v in r.psnr.values())
    d = r.to_dict()
    assert d["spread_db"] == r.spread_db and d["n_images"] == N
    table = markdown_table([r])
    assert "| mnist-hq | 24 |" in table and "copy dB" in table
    with pytest.raises(ConfigError, match="need \\(24, 160\\)"):
        kernel_quality(hq, test_images, ("xnnpack",), {"short": xnn[:5]})


def test_load_latents_npy_and_npz(tmp_path):
    q = np.arange(-20, 20, dtype=np.int8).reshape(10, 4)
    np.save(tmp_path / "a.npy", q)
    np.testing.assert_array_equal(load_latents(tmp_path / "a.npy", "any", (6, 4)), q[:6])
    np.savez(tmp_path / "b.npz", **{"mnist-hq": q})
    np.testing.assert_array_equal(load_latents(tmp_path / "b.npz", "mnist-hq", (10, 4)), q)
    with pytest.raises(ConfigError, match="no array named 'fashion-hq'"):
        load_latents(tmp_path / "b.npz", "fashion-hq", (10, 4))
    with pytest.raises(ConfigError, match="need int8 \\(>= 11, 4\\)"):
        load_latents(tmp_path / "a.npy", "any", (11, 4))
    np.save(tmp_path / "f.npy", q.astype(np.float32))
    with pytest.raises(ConfigError, match="float32"):
        load_latents(tmp_path / "f.npy", "any", (10, 4))
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ConfigError, match="cannot read latents"):
        load_latents(tmp_path / "bad.npy", "any", (10, 4))


def test_kernels_options_are_checked():
    with pytest.raises(ConfigError, match="'gpu'"):
        KernelsOptions(kernels=("gpu",)).validate()
    with pytest.raises(ConfigError, match="clash"):
        KernelsOptions(kernels=("xnnpack",), latents={"xnnpack": "x.npy"}).validate()
    with pytest.raises(ConfigError, match="limit 0"):
        KernelsOptions(limit=0).validate()


def test_run_kernels_reads_a_latent_file_per_bundle(hq, test_images, tmp_path):
    xnn = np.stack([hq.encoder().encode_latent(x) for x in test_images])
    np.savez(tmp_path / "arm.npz", **{"mnist-hq": xnn})
    opts = KernelsOptions(
        bundles=["mnist-hq"], kernels=("xnnpack",), latents={"aarch64": str(tmp_path / "arm.npz")}, limit=N
    )
    (r,) = run_kernels(opts)
    assert r.psnr["aarch64"] == r.psnr["xnnpack"] and r.spread_db == 0.0


def test_benchmark_kernels_cli(tmp_path):
    md, js = tmp_path / "k.md", tmp_path / "k.json"
    result = runner.invoke(
        app,
        ["benchmark", "--kernels", "--bundle", "mnist-tiny", "--limit", "10", "--markdown", str(md),
         "--json", str(js)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "spread" in result.output and "micro" in result.output
    d = json.loads(js.read_text())
    assert d["kernels"][0]["bundle"] == "mnist-tiny" and set(d["kernels"][0]["psnr"]) == set(KERNELS)
    assert "| mnist-tiny | 10 |" in md.read_text()
    bad = runner.invoke(
        app, ["benchmark", "--kernels", "--bundle", "mnist-tiny", "--kernel-latents", "x.npy"]
    )
    assert bad.exit_code == 1 and "NAME=FILE" in bad.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ENTROPY_BUNDLES)
def test_shipped_quality_hardly_depends_on_the_encoder_kernels(name):
    """Issue 11: the int8 PSNR spread between kernel families is <= 0.1 dB (first 1000 test images)."""
    b = load_bundle(name)
    x = datasets.load(b.manifest.dataset["name"]).x_test[:1000]
    r = kernel_quality(b, x, KERNELS)
    assert r.spread_db <= 0.1, r.to_dict()


@pytest.mark.slow
def test_keras_decoder_rebuilt_from_the_float_tflite(hq):
    from cae_edge.export.readapt import keras_decoder_from_tflite
    from cae_edge.rundir import ModelConfig

    cfg = ModelConfig.from_dict(hq.manifest.train["model"])
    decoder = keras_decoder_from_tflite(hq.model_bytes("decoder_float"), cfg)
    z = np.random.default_rng(0).normal(0, 16, (3, cfg.latent_dim)).round().astype(np.float32)
    it = make_interpreter(hq.model_bytes("decoder_float"))
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    for v, keras_out in zip(z, decoder.predict(z, verbose=0), strict=True):
        it.set_tensor(i["index"], v[None])
        it.invoke()
        np.testing.assert_allclose(it.get_tensor(o["index"])[0], keras_out, atol=1e-5)
    other = ModelConfig.from_dict({**hq.manifest.train["model"], "dec_widths": [32, 32, 16]})
    from cae_edge.errors import ExportError

    with pytest.raises(ExportError, match="do not fit"):
        keras_decoder_from_tflite(hq.model_bytes("decoder_float"), other)


@pytest.mark.slow
def test_readapt_changes_only_the_decoder(tmp_path):
    from cae_edge.errors import ExportError
    from cae_edge.export.readapt import ReadaptOptions, readapt_bundle

    src = load_bundle("mnist-tiny")
    copy = tmp_path / "src"
    shutil.copytree(src.path, copy)
    (copy / "notes.txt").write_text("a file the manifest does not list travels along\n")
    out = tmp_path / "tiny"
    opts = ReadaptOptions(bundle=copy, out_dir=out, epochs=1, train_limit=200, verify_limit=50)
    res = readapt_bundle(opts)
    new = load_bundle(out)  # verifies hashes, pair id and tensor details
    for name in ("encoder.tflite", "encoder_float.tflite", "entropy.npz"):
        assert new.read_file(name) == src.read_file(name)
    assert new.read_file("decoder.tflite") != src.read_file("decoder.tflite")
    assert (out / "notes.txt").read_text() == (copy / "notes.txt").read_text()
    assert res.pair_id == new.pair_id != src.pair_id
    q = new.manifest.quality
    assert q["n_images"] == 50 and q["decoder_readaptation"]["kernels"] == ["xnnpack", "builtin"]
    assert q["decoder_readaptation"]["train_images"] == 400  # 200 images x 2 families
    assert set(q["kernels"]["after"]["psnr"]) == set(KERNELS)
    assert q["kernels"]["after"]["psnr"]["xnnpack"] == pytest.approx(q["tflite_int8"]["psnr"], abs=1e-9)
    with pytest.raises(ExportError, match="already exists"):
        readapt_bundle(opts)
    with pytest.raises(ConfigError, match="'gpu'"):
        ReadaptOptions(bundle=copy, out_dir=out, kernels=("gpu",)).validate()


def test_readapt_reads_the_calibration_export_records(tmp_path):
    """Export writes "N training images of SOURCE, seed S"; readapt recalibrates the decoder the same way."""
    from types import SimpleNamespace

    from cae_edge.export.readapt import ReadaptOptions, _calibration

    opts = ReadaptOptions(bundle=tmp_path, out_dir=tmp_path / "out")
    cmd = "cae-edge export runs/x --out b --calib 1000 --calib-percentile 99.9"
    for text in (
        "1000 training images of Debian package dataset-fashion-mnist, seed 3",
        "1000 training images, seed 3",
    ):
        m = SimpleNamespace(dataset={"calibration": text}, command=cmd)
        assert _calibration(m, opts)[:2] == (1000, 3)
    with pytest.raises(ConfigError, match="'some images' does not say how many"):
        _calibration(SimpleNamespace(dataset={"calibration": "some images"}, command=cmd), opts)


@pytest.mark.slow
def test_readapt_with_no_epochs_converts_the_same_float_decoder_again(tmp_path):
    """`readapt --epochs 0` re-converts a bundle's float decoder with this version's export and nothing else:
    shipped fashion-small (linear path) went through it when the ADD halves of the logits began to be cut, so
    doing it again gives an int8 decoder that computes the same images, with its logit halves cut (the
    file's bytes may differ: tensor names follow how many Keras models the process built before). On the CPU
    the bundle was converted on, every image is identical; on another (AVX2 against AVX512: float sums in
    another order) a calibrated range can differ in its last bits: on an AVX2-only box 197 of 200 images
    were identical and 0.01 % of pixels moved (at most 5 levels)."""
    from cae_edge.export.convert import tighten_logistic_inputs
    from cae_edge.export.readapt import ReadaptOptions, readapt_bundle

    src = load_bundle("fashion-small")
    out = tmp_path / "small"
    res = readapt_bundle(ReadaptOptions(bundle="fashion-small", out_dir=out, epochs=0, verify_limit=300))
    new = load_bundle(out)
    for name in ("encoder.tflite", "encoder_float.tflite", "entropy.npz"):
        assert new.read_file(name) == src.read_file(name), name
    assert res.pair_id == new.pair_id
    x = datasets.load("fashion").x_test[:200]
    enc, dec_old, dec_new = src.encoder(), src.decoder(), new.decoder()
    moved = []
    for img in x:
        q = enc.encode_latent(img).copy()
        moved.append(np.abs(dec_old.decode_latent(q).astype(int) - dec_new.decode_latent(q).astype(int)))
    moved = np.stack(moved)
    identical = int(sum(not m.any() for m in moved))
    assert identical >= 190 and (moved > 0).mean() < 1e-3 and moved.max() <= 16, (identical, moved.max())
    _, changed = tighten_logistic_inputs(new.read_file("decoder.tflite"))
    assert changed == 0  # cut by the conversion
    q = new.manifest.quality
    assert q["decoder_readaptation"]["epochs"] == 0 and q["n_images"] == 300
    # the float reference decodes the rounded latent, as export's does (the unrounded float pair is better)
    assert q["keras_float"]["psnr"] < q["tflite_float"]["psnr"] - 0.3 and 0 < q["int8_loss_db"] < 0.3
    with pytest.raises(ConfigError, match="a new head needs epochs >= 1"):
        ReadaptOptions(bundle="fashion-small", out_dir=out, epochs=0, head="convt").validate()


def test_readapt_range_search_changes_only_the_decoders_ranges(tmp_path):
    """`readapt --epochs 0 --range-search`: encoder and entropy model as they were, the search recorded and
    closer on the calibration images, and the int8 pair on held-out images no worse than the shipped one."""
    from cae_edge.export.readapt import ReadaptOptions, readapt_bundle
    from cae_edge.metrics import psnr_per_image

    src = load_bundle("fashion-small")
    out = tmp_path / "searched"
    readapt_bundle(
        ReadaptOptions(bundle="fashion-small", out_dir=out, epochs=0, verify_limit=300, range_search=True)
    )
    new = load_bundle(out)
    for name in ("encoder.tflite", "encoder_float.tflite", "entropy.npz"):
        assert new.read_file(name) == src.read_file(name), name
    assert new.read_file("decoder.tflite") != src.read_file("decoder.tflite")
    rs = new.manifest.quality["decoder_readaptation"]["range_search"]
    assert rs["factors"] and rs["after"] < rs["before"] and rs["objective"].startswith("mean over")
    x = datasets.load("fashion").x_test[:300]
    enc = src.encoder()
    latents = [enc.encode_latent(img).copy() for img in x]

    def psnr(bundle) -> float:
        dec = bundle.decoder()
        return float(psnr_per_image(x, np.stack([dec.decode_latent(q) for q in latents])).mean())

    assert psnr(new) > psnr(src) - 0.02


@pytest.mark.slow
def test_readapt_keeps_the_exports_encoder_records(tmp_path):
    """A re-adapted bundle keeps what its export recorded of the encoder, which readapt leaves as it is: its
    bias correction and its range search (mnist-xxl's encoder was searched by `export --range-search`)."""
    from cae_edge.export.readapt import ReadaptOptions, readapt_bundle

    src = load_bundle("mnist-xxl").manifest.quality
    assert src["encoder_range_search"]["factors"]  # the export's search of this encoder
    out = tmp_path / "again"
    readapt_bundle(ReadaptOptions(bundle="mnist-xxl", out_dir=out, epochs=0, equalize=False, verify_limit=50))
    q = load_bundle(out).manifest.quality
    assert q["encoder_range_search"] == src["encoder_range_search"]
    assert q["encoder_bias_correction"] == src["encoder_bias_correction"]
    assert "range_search" not in q["decoder_readaptation"]  # no search this time: none recorded for it
