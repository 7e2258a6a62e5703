"""`cae-edge benchmark --tiles`: tiled frames of the held-out photographs against WebP, seams vs interiors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cae_edge import metrics, tiles
from cae_edge.benchmark import tiles as tiles_bench
from cae_edge.benchmark.report import validate
from cae_edge.benchmark.tiles import TilesOptions, run_tiles
from cae_edge.cli.main import app
from cae_edge.device.bundle import load_bundle
from cae_edge.errors import ConfigError


@pytest.fixture(scope="module")
def report():
    opts = TilesOptions(
        bundles=["scenes-tiny", "scenes-small"], frames=12, webp_qualities=[1, 50], jpegxl_distances=[]
    )
    return run_tiles(opts)


def test_rows_are_the_tiled_frames_through_the_wire(report) -> None:
    rows = {(r.codec, r.setting): r for r in report.rd}
    assert set(rows) == {
        ("cae-edge int8", "scenes-tiny"),
        ("cae-edge int8", "scenes-small"),
        ("webp", "q=1"),
        ("webp", "q=50"),
    }
    assert all(r.dataset == "scenes-112x112" and r.images == 12 for r in report.rd)
    small = rows[("cae-edge int8", "scenes-small")]
    # recompute the row by hand: 16 tiles per frame, each the bundle's payload, + grid and lengths
    frames = tiles_bench.tiled_frames(12, 4)
    b = load_bundle("scenes-small")
    enc, dec = b.encoder(), b.decoder()
    payloads = [[enc.encode(t) for t in tiles.split_tiles(f, 4, 4)] for f in frames]
    sizes = [2 + sum(len(p) + 1 for p in ps) for ps in payloads]  # every entropy tile is < 128 bytes
    assert small.bytes_payload == pytest.approx(np.mean(sizes))
    assert small.bytes_total == pytest.approx(np.mean(sizes) + 24)
    recon = np.stack([tiles.join_tiles([dec.decode(p) for p in ps], 4, 4) for ps in payloads])
    assert small.psnr == pytest.approx(metrics.psnr_per_image(frames, recon).mean())
    seam, interior = tiles.seam_psnr(frames, recon)
    assert (small.psnr_seam, small.psnr_interior) == pytest.approx((seam, interior))
    # WebP rows carry the same split, as the reference without a tile grid
    assert all(r.psnr_seam is not None and r.psnr_interior is not None for r in report.rd)
    assert rows[("webp", "q=50")].psnr > rows[("webp", "q=1")].psnr


def test_report_validates_and_renders(report, tmp_path) -> None:
    d = json.loads(report.to_json(tmp_path / "t.json"))
    assert validate(d) == []
    assert [b["anchor"] for b in d["bd"]] == ["webp"] * 3 + ["jpegxl"] * 3
    md = tiles_bench.markdown(d)
    assert "| codec | setting | bytes payload | bytes total | PSNR dB | seam dB | interior dB" in md
    assert "**scenes-112x112** (12 frames" in md and "| webp | payload |" in md
    del d["rd"][0]["psnr_seam"]
    assert any("rd[0].psnr_seam: missing" in p for p in validate(d))


def test_options_and_bundles_are_checked() -> None:
    for opts, match in (
        (TilesOptions(tiles=1), "tiles 1: use 2 .. 16"),
        (TilesOptions(frames=0), "frames 0"),
        (TilesOptions(bundles=[]), "no bundle given"),
    ):
        with pytest.raises(ConfigError, match=match):
            opts.validate()
    with pytest.raises(ConfigError, match="centres one object per frame"):
        run_tiles(TilesOptions(bundles=["mnist"], frames=2, baselines=False))


def test_cli_tiles_mode(tmp_path) -> None:
    res = CliRunner().invoke(
        app,
        ["benchmark", "--tiles", "2", "--bundle", "scenes-tiny", "--limit", "4", "--no-baselines",
         "--json", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "scenes-56x56" in res.output and "seam dB" in res.output
    d = json.loads((tmp_path / "t.json").read_text())
    assert validate(d) == [] and d["rd"][0]["images"] == 4 and d["rd"][0]["psnr_seam"] is not None
    assert "scenes-56x56" in (tmp_path / "t.md").read_text()
