"""Training on a user's own frames (a recording of a video of real photographs), --init-from a shipped bundle,
and the export that calibrates on those frames. Tiny runs: one epoch over a few dozen frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cae_edge import photos
from cae_edge.cli.main import app
from cae_edge.device import recording
from cae_edge.device.record import RecordOptions, record
from cae_edge.errors import ConfigError
from cae_edge.train.options import TrainOptions

runner = CliRunner()


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> Path:
    """A recording of 80 frames (8 s at 10 fps) of a camera panning across the installed photographs."""
    tmp = tmp_path_factory.mktemp("user")
    video = tmp / "pan.avi"
    photos.write_pan_video(video, seconds=8, fps=10, size=(160, 120))
    return Path(record(RecordOptions(tmp / "rec"), str(video)).path)


@pytest.fixture(scope="module")
def start():
    from cae_edge.train.from_bundle import read_start

    return read_start("mnist-small")


# ---------------------------------------------------------------- the bundle as a starting point


def test_read_start_names_the_bundles_architecture_and_prior(start):
    manifest = json.loads((start.path / "manifest.json").read_text())
    assert start.kind == "bundle" and start.dataset == "mnist"
    assert start.model.latent_dim == manifest["latent_dim"] == 48
    assert start.prior is not None and len(start.prior["loc"]) == 48 and not start.notes
    assert start.rd["lam_final"] == manifest["train"]["rd"]["lam_final"]


def test_read_start_rejects_what_is_neither_run_nor_bundle(tmp_path):
    from cae_edge.train.from_bundle import read_start

    with pytest.raises(ConfigError, match="not a run directory"):
        read_start(str(tmp_path))


def test_options_from_a_bundle_take_its_model_and_rate(rec, start):
    opts = TrainOptions(dataset=str(rec), init_from="mnist-small", out_dir="x").validated()
    assert opts.rd is not None and opts.model_config() == start.model
    assert opts.rd.lam == start.rd["lam_final"] and opts.rd.target_bytes == start.rd["target_bytes"]
    assert opts.epochs == 5 and opts.learning_rate == 5e-4
    assert "--init-from mnist-small" in opts.to_command() and "--test-fraction 0.2" in opts.to_command()
    assert TrainOptions(dataset=str(rec), init_from="mnist").validated().rd is None  # a plain bundle
    with pytest.raises(ConfigError, match="--init-from mnist-small: its model"):
        TrainOptions(dataset=str(rec), init_from="mnist-small", latent_dim=32).validated()
    with pytest.raises(ConfigError, match="unknown dataset 'nowhere/rec'"):
        TrainOptions(dataset="nowhere/rec").validated()


# ---------------------------------------------------------------- training and export


@pytest.mark.slow
def test_cli_plain_run_on_a_recording_splits_by_time(rec, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", str(rec), "--latent", "8", "--epochs", "1", "--batch-size", "16"]
    result = runner.invoke(
        app, [*args, "--no-augment", "--test-fraction", "0.25", "--gap", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    config = json.loads((out / "config.json").read_text())
    data = config["data"]
    assert config["dataset"] == str(rec) and data["name"] == "recording"
    assert data["user"] == {
        "path": str(rec),
        "kind": "recording",
        "preprocess": recording.DEFAULT_PREPROCESS,
        "test_fraction": 0.25,
        "gap": 3,
    }
    assert data["test_images"] == 20 and data["train_images"] + data["val_images"] == 80 - 20 - 3
    assert data["time_test"][0] > data["time_train"][1]  # every test frame is later than every train frame
    assert "--dataset " + str(rec) in config["command"] and "--gap 3" in config["command"]
    assert (out / "recon.png").is_file()


@pytest.fixture(scope="module")
def tuned(rec, tmp_path_factory):
    """mnist-small fine-tuned for one epoch on the recording, then exported."""
    from cae_edge.export.writer import ExportOptions, export
    from cae_edge.train.ratedistortion import train_rd

    tmp = tmp_path_factory.mktemp("tuned")
    opts = TrainOptions(dataset=str(rec), init_from="mnist-small", epochs=1, out_dir=str(tmp / "run"))
    result = train_rd(opts)
    bundle = export(ExportOptions(run_dir=tmp / "run", out_dir=tmp / "bundle", margin_db=3.0, calib=40))
    return result, tmp / "run", Path(bundle.path)


@pytest.mark.slow
def test_fine_tuning_a_bundle_on_a_recording_records_its_start(tuned, start):
    result, run, _ = tuned
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["start"] == {"kind": "bundle", "name": "mnist-small", "notes": []}
    assert config["rd"]["lam"] == start.rd["lam_final"] and config["model"]["latent_dim"] == 48
    assert config["data"]["time_test"][0] > config["data"]["time_train"][1]
    assert np.isfinite(result.psnr) and result.bytes_entropy > 0


@pytest.mark.slow
def test_export_calibrates_on_the_recording_and_keeps_its_preprocessing(tuned, rec):
    from cae_edge.device.bundle import load_bundle

    _, _, path = tuned
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["preprocess"] == recording.DEFAULT_PREPROCESS  # the recording's, not mnist-small's
    ds = manifest["dataset"]
    assert ds["name"] == "recording" and "recording rec" in ds["source"] and "by time" in ds["split"]
    assert ds["calibration"].startswith("40 training images of recording rec")
    assert manifest["quality"]["n_images"] == 16 and manifest["coding"]["kind"] == "entropy"
    bundle = load_bundle(path)  # what a node loads: encode and decode a recorded frame
    frame = recording.read_recording(rec).frames[-1]
    out = bundle.decoder().decode(bundle.encoder().encode(frame))
    assert out.shape == (28, 28) and out.dtype == np.uint8


@pytest.mark.slow
def test_an_exported_bundle_is_a_start_too(tuned, rec):
    """A user's bundle has no self-test images: the rebuilt pair is checked on the run's own frames."""
    from cae_edge.errors import BundleError
    from cae_edge.train.from_bundle import check_against_tflite, models_from_bundle, read_start

    _, _, path = tuned
    start = read_start(str(path))
    frames = recording.read_recording(rec).frames[::8]
    encoder, decoder = models_from_bundle(start, images=frames)
    assert max(check_against_tflite(start, encoder, decoder, frames).values()) < 1e-3
    with pytest.raises(BundleError, match="no readable self-test images"):
        models_from_bundle(start)


@pytest.mark.slow
def test_export_of_a_run_whose_frames_are_gone_says_so(tuned, tmp_path):
    import shutil

    from cae_edge.errors import ExportError
    from cae_edge.export.writer import ExportOptions, export

    _, run, _ = tuned
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    config = json.loads((moved / "config.json").read_text())
    config["data"]["user"]["path"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="which is not there"):
        export(ExportOptions(run_dir=moved, out_dir=tmp_path / "b"))
