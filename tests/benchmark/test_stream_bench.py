"""`cae-edge stream bench`: the real sender pipeline and the receiver's decode, measured on loopback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cae_edge import wire
from cae_edge.benchmark import stream_bench
from cae_edge.cli.main import app
from cae_edge.device.bundle import load_bundle

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle():
    return load_bundle("mnist")


def test_bench_smoke(bundle, tmp_path) -> None:
    r = stream_bench.bench(bundle, frames=200)
    assert r.sender_fps > 0 and r.receiver_fps > 0 and r.sender_cpu_us > 0
    assert set(r.sender_us) == {"preprocess", "encode", "pack", "send", "total"}
    assert set(r.stage_cpu_us) == {"preprocess", "encode", "pack", "send", "unpack", "decode"}
    assert r.sender_fps_cpu == pytest.approx(1e6 / r.sender_cpu_us, rel=1e-3)
    out = tmp_path / "bench.json"
    result = runner.invoke(
        app, ["stream", "bench", "--frames", "100", "--source", "digits", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "per idle core" in result.output and json.loads(out.read_text())["frame_shape"] == [28, 28]
    named = 1 + len("bench") + 4  # name length, name and epoch, on the packets that carry the name
    assert wire.OVERHEAD_BYTES < r.bytes_per_frame <= wire.OVERHEAD_BYTES + bundle.latent_dim + named
    json.dumps(r.to_dict())


def test_receiver_bench_runs_the_whole_receiver_with_and_without_workers(tmp_path) -> None:
    out = tmp_path / "rx.json"
    result = runner.invoke(
        app,
        ["stream", "bench", "--frames", "300", "--workers", "1", "--workers", "2", "--rounds", "1",
         "--senders", "3", "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert [r["workers"] for r in runs] == [1, 2]
    for r in runs:
        assert r["frames"] == 300 and r["dropped"] == 0 and r["senders"] == 3 and r["fps"] > 0
        assert r["cpu_total_us"] == pytest.approx(r["cpu_main_us"] + r["cpu_workers_us"], abs=0.2)
        # the report rounds each time to 0.1 µs: the bound lies within what those roundings allow
        bounds = [
            stream_bench.bound_fps(
                r["workers"],
                r["cores"],
                r["cpu_main_us"] + a,
                r["cpu_workers_us"] + b,
                r["here_decode_us"] + c,
            )
            for a in (-0.05, 0.05)
            for b in (-0.05, 0.05)
            for c in (-0.05, 0.05)
        ]
        assert min(bounds) - 0.05 <= r["bound_fps"] <= max(bounds) + 0.05
        assert r["others_pct"] is None or 0 <= r["others_pct"] <= 100
    assert runs[0]["cpu_workers_us"] == 0 and runs[0]["here_pct"] == 100  # one process decodes everything
    assert runs[0]["worker_idle_pct"] == 0 and 0 <= runs[1]["worker_idle_pct"] <= 100
    assert runs[0]["here_decode_us"] == pytest.approx(runs[0]["decode_us"], abs=0.1)
    # a decode here costs what one costs in the worker process; the report rounds here_pct to 0.1 % and the
    # times to 0.1 µs, so the check spans what those roundings allow (h/(1-h) is steep when h is large)
    w = runs[1]["cpu_workers_us"]
    ends = [
        h / (1 - h) * cw
        for h in ((runs[1]["here_pct"] - 0.05) / 100, (runs[1]["here_pct"] + 0.05) / 100)
        for cw in (w - 0.05, w + 0.05)
    ]
    assert min(ends) - 0.05 <= runs[1]["here_decode_us"] <= max(ends) + 0.05
    # all frames are offered at once: the worker process takes what fills its batches, the receiver the rest
    assert runs[1]["cpu_workers_us"] > 0 and 0 < runs[1]["here_pct"] < 100
    one, two = report["summary"]["1"], report["summary"]["2"]
    assert one["bound_ratio"] == 1.0 and two["bound_ratio"] == pytest.approx(
        two["bound_fps"] / one["bound_fps"], abs=0.01
    )
    assert two["best_fps"] == runs[1]["fps"] and "2 decode process(es), 1 run(s): median CPU" in result.output
    assert two["median_fps"] == runs[1]["fps"] and two["median_wall_ratio"] == two["wall_ratio"]  # one run
    assert "median wall" in result.output and "ran dry" in result.output
    assert two["here_pct"] == runs[1]["here_pct"] and "decoded in the receiver's process" in result.output


def test_the_bound_is_the_tightest_of_cores_processes_and_the_main_processs_own_work() -> None:
    assert stream_bench.bound_fps(1, 2, 80.0, 0.0) == pytest.approx(12_500)  # one process: one core
    assert stream_bench.bound_fps(2, 2, 50.0, 50.0, 40.0) == pytest.approx(20_000)  # 2 cores, 100 µs in all
    assert stream_bench.bound_fps(2, 16, 50.0, 50.0, 40.0) == pytest.approx(20_000)  # 2 processes, 2 cores
    assert stream_bench.bound_fps(3, 2, 10.0, 90.0) == pytest.approx(20_000)  # 3 processes on 2 cores
    assert stream_bench.bound_fps(8, 16, 40.0, 90.0) == pytest.approx(25_000)  # the main process's own work
    assert stream_bench.bound_fps(8, 16, 60.0, 90.0, 20.0) == pytest.approx(25_000)  # its decode calls aside
