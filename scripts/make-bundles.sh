#!/usr/bin/env bash
# Regenerate the shipped bundles cae_edge/bundles/{mnist,fashion} from scratch with the project's own CLI:
# `cae-edge train` (Keras float run) then `cae-edge export` (int8 PTQ + verification of the int8 pair with
# LiteRT over the whole test split; the export fails if int8 loses more than 0.5 dB). Both commands are
# recorded in each manifest ("command", "train.command"). Finally the golden int8 latents are refreshed.
#
# Usage: scripts/make-bundles.sh [CLI] [PYTHON]      (make bundles passes the venv's)
# Env:   DATASETS (default "mnist fashion"), EPOCHS_MNIST (default 20), EPOCHS_FASHION (default 5),
#        RUNS (default runs/bundles)
set -euo pipefail
cli=${1:-cae-edge}
py=${2:-python3}
runs=${RUNS:-runs/bundles}
cd "$(dirname "$0")/.."

for name in ${DATASETS:-mnist fashion}; do
  case $name in
    mnist) epochs=${EPOCHS_MNIST:-20} ;;
    fashion) epochs=${EPOCHS_FASHION:-5} ;;
    *) echo "unknown dataset $name (mnist or fashion)" >&2; exit 1 ;;
  esac
  echo "== $name: train $epochs epochs"
  rm -rf "${runs:?}/$name"
  nice "$cli" train --dataset "$name" --latent 128 --epochs "$epochs" --seed 0 --out "$runs/$name"
  echo "== $name: export"
  nice "$cli" export "$runs/$name" --out "cae_edge/bundles/$name" --overwrite
done

echo "== golden int8 latents"
"$py" tests/golden/regenerate.py
for name in ${DATASETS:-mnist fashion}; do
  "$cli" bundle info "$name"
done
