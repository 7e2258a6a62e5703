#!/usr/bin/env bash
# The main job on a built-in default: a short training run on real MNIST digits, then its test metrics.
set -euo pipefail
cli=${1:-cae-edge}
out=demo-out
mkdir -p "$out"
"$cli" train --dataset mnist --epochs 5 --out "$out/run"
