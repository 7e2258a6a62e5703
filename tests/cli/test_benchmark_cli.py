"""`cae-edge benchmark` through typer's runner, and the no-TensorFlow rule for the benchmark package."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cae_edge.benchmark import validate
from cae_edge.cli.main import app

runner = CliRunner()


@pytest.mark.slow
def test_tiny_run_writes_json_and_png(tmp_path):
    out, png = tmp_path / "out.json", tmp_path / "rd.png"
    result = runner.invoke(
        app,
        ["benchmark", "--bundle", "mnist", "--limit", "50", "--runs", "20", "--warmup", "2", "--threads", "1",
         "--json", str(out), "--plot", str(png), "--markdown", str(tmp_path / "r.md")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Rate–distortion" in result.output and "cae-edge int8" in result.output
    d = json.loads(out.read_text())
    assert validate(d) == []
    assert d["options"]["limit"] == 50 and d["options"]["runs"] == 20
    assert all(r["images"] == 50 for r in d["rd"])
    assert all(m["stats"]["runs"] == 20 for m in d["bundles"][0]["latency"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "**cae-edge int8**" in (tmp_path / "r.md").read_text()


def test_no_baselines_and_bad_bundle(tmp_path):
    out = tmp_path / "o.json"
    result = runner.invoke(
        app,
        [
            "benchmark",
            "-b",
            "mnist",
            "--limit",
            "5",
            "--runs",
            "3",
            "-t",
            "1",
            "--no-baselines",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    # Keras float rows appear only when the bundle's training run is still on disk (and TF installed)
    assert {r["codec"] for r in json.loads(out.read_text())["rd"]} - {"cae-edge keras-float"} == {
        "cae-edge int8",
        "cae-edge tflite-float",
    }

    bad = runner.invoke(app, ["benchmark", "--bundle", str(tmp_path / "nope"), "--runs", "3"])
    assert bad.exit_code == 1
    assert "error:" in bad.output and "nope" in bad.output


def test_benchmark_package_imports_without_tensorflow():
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"
        "sys.modules['keras'] = None\n"
        "import cae_edge.benchmark, cae_edge.benchmark.run, cae_edge.cli.benchmark\n"
        "from cae_edge.benchmark import BenchmarkOptions, run_benchmark\n"
        "r = run_benchmark(BenchmarkOptions(bundles=['mnist'], threads=[1], runs=3, warmup=0, limit=3,\n"
        "                  baselines=False))\n"
        "assert 'tensorflow' not in {m for m in sys.modules if sys.modules[m] is not None}\n"
        "print(len(r.rd))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "2"
