#!/usr/bin/env bash
# Cross-architecture test: the camera node's side in aarch64 userlands under qemu-user, the receiver on x86.
#
# For each userland (Debian bookworm = Python 3.11, trixie = Python 3.13, the Raspberry Pi OS bases) and each
# shipped bundle: `cae-edge stream send` runs under emulation (CURVE on loopback) into an x86
# `cae-edge stream receive`; then the aarch64 encoder's int8 latents for the inputs the node saw are compared
# with the x86 encoder's, and the frames decoded from both on x86 are compared (PSNR). One table at the end;
# exit 1 if any bundle fails (a frame lost, a received frame that is not the node's latents decoded, a
# preprocessed pixel that differs, a latent step over ARM64_MAX_STEP, a PSNR under ARM64_MIN_PSNR).
#
# The node side installs only aarch64 wheels (the project's node packages, pip --only-binary=:all:); the
# project itself comes from this checkout on PYTHONPATH. Emulated timings mean nothing; only the phases'
# wall times are printed, for the CI budget.
#
# Needs: root or a qemu-user(-static) >= 10 and debootstrap already installed (bookworm's qemu 7.2 crashes in
# ai-edge-litert 2.3's Interpreter: the script installs both from bookworm-backports when it can). No
# binfmt_misc: every aarch64 program is started through qemu-aarch64(-static) explicitly.
#
# Cached under .cache/arm64 (rootfs and packages per userland): a second run only streams and compares.
# Environment: PY (host Python with the project's device packages, default .venv/bin/python),
#   ARM64_USERLANDS ("bookworm:cortex-a72 trixie:cortex-a76": suite:qemu CPU), ARM64_BUNDLES (default: every
#   shipped bundle), ARM64_FRAMES (100), ARM64_MAX_STEP (1), ARM64_MIN_PSNR (30), ARM64_PROBE_TIMEOUT (300 s,
#   the node's --probe-timeout), ARM64_PROBE_CRASH (1: check the probe under qemu 7.2), DEBOOTSTRAP_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { echo "error: PY=$PY: not a Python (run \`make setup\` or set PY)" >&2; exit 1; }
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
CACHE=$REPO/.cache/arm64
OUT=$CACHE/run
USERLANDS=${ARM64_USERLANDS:-"bookworm:cortex-a72 trixie:cortex-a76"}
FRAMES=${ARM64_FRAMES:-100}
MAX_STEP=${ARM64_MAX_STEP:-1}
MIN_PSNR=${ARM64_MIN_PSNR:-30}
PROBE_TIMEOUT=${ARM64_PROBE_TIMEOUT:-300} # the node's interpreter check starts an emulated Python: slow
NODE=arm64-node
export PYTHONPATH=$REPO
trap 'kill $(jobs -p) 2> /dev/null || true' EXIT # no receiver outlives the script
mkdir -p "$CACHE"

T0=$(date +%s)
PHASES=()
phase_start() { PHASE=$1; PHASE_T=$(date +%s); echo "== $PHASE"; }
phase_end() {
  local s=$(($(date +%s) - PHASE_T))
  PHASES+=("$(printf '%-52s %5d s' "$PHASE" "$s")")
}
CLI_MAIN='import sys; from cae_edge.cli.main import main; sys.argv[0] = "cae-edge"; main()'
x86_cli() { "$PY" -c "$CLI_MAIN" "$@"; }

# ---------------------------------------------------------------- tools: qemu-user >= 10, debootstrap
phase_start "tools (qemu-user >= 10, debootstrap)"
qemu_bin() { command -v qemu-aarch64-static || command -v qemu-aarch64 || true; }
qemu_major() { "$1" --version | sed -n 's/^qemu-aarch64 version \([0-9]*\).*/\1/p'; }
QEMU=$(qemu_bin)
if [ -z "$QEMU" ] || [ "$(qemu_major "$QEMU")" -lt 10 ] || ! command -v debootstrap > /dev/null; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
    echo "error: need qemu-user(-static) >= 10 and debootstrap (found: ${QEMU:-no qemu-aarch64}); as root on" \
      "Debian 12: add bookworm-backports and \`apt-get install -t bookworm-backports qemu-user-static debootstrap\`" >&2
    exit 1
  fi
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # the mirror this machine already uses for bookworm
    mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
    mirror=${mirror:-$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2> /dev/null)}
    [ -n "$mirror" ] || { echo "error: no bookworm mirror in the apt sources to add bookworm-backports" >&2; exit 1; }
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\n%s\n' "$mirror" \
      'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' > /etc/apt/sources.list.d/bookworm-backports.sources
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-user-static debootstrap > /dev/null
  QEMU=$(qemu_bin)
fi
QEMU_VERSION=$("$QEMU" --version | head -1)
if [ "$(qemu_major "$QEMU")" -lt 10 ]; then
  echo "error: $QEMU_VERSION: ai-edge-litert 2.3 needs qemu-user >= 10 (bookworm-backports)" >&2
  exit 1
fi
echo "   $QEMU_VERSION"
phase_end

# ---------------------------------------------------------------- aarch64 userlands
# debootstrap --foreign unpacks the essential packages; the rest (python3 and its libraries) are unpacked
# here with dpkg-deb, since the second stage would need aarch64 binfmt. No maintainer script has to run for
# Python to work.
make_rootfs() {
  local suite=$1 root=$CACHE/rootfs-$1
  [ -f "$root/.ready" ] && return 0
  rm -rf "$root" "$root.tmp"
  debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 "$suite" "$root.tmp" \
    ${DEBOOTSTRAP_MIRROR:+"$DEBOOTSTRAP_MIRROR"} > "$CACHE/debootstrap-$suite.log" 2>&1 \
    || { tail -5 "$CACHE/debootstrap-$suite.log" >&2; return 1; }
  for deb in "$root.tmp"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$root.tmp"; done
  rm -f "$root.tmp"/var/cache/apt/archives/*.deb
  mv "$root.tmp" "$root"
  touch "$root/.ready"
}

# The node's Python. It names itself as sys.executable (qemu -0), so the child processes it starts (the
# interpreter probe) run emulated as well: without binfmt_misc the kernel cannot start an aarch64 binary.
python_wrapper() {
  local root=$CACHE/rootfs-$1
  printf '#!/bin/sh\nexec %s -L %s -0 "$0" %s/usr/bin/python3 "$@"\n' "$QEMU" "$root" "$root" \
    > "$root/usr/bin/python3-qemu"
  chmod +x "$root/usr/bin/python3-qemu"
}

# The node's packages: the `node` extra when pyproject.toml has one, else the node's share of `device`.
node_requirements() {
  "$PY" - << 'EOF'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = p.get("optional-dependencies", {})
node = extras.get("node") or ["ai-edge-litert", "opencv-python-headless", "pyzmq"]
print("\n".join(p["dependencies"] + node))
EOF
}

install_wheels() {
  local suite=$1 pyver=$2 glibc=$3 site=$CACHE/site-$1
  local reqs stamp tags="--platform manylinux2014_aarch64" i
  reqs=$(node_requirements)
  stamp="$pyver glibc $glibc: $(echo "$reqs" | tr '\n' ' ')"
  if [ -f "$site/.ready" ] && [ "$(cat "$site/.ready")" = "$stamp" ]; then return 0; fi
  for i in $(seq 17 "${glibc#2.}"); do tags="$tags --platform manylinux_2_${i}_aarch64"; done
  rm -rf "$site"
  # shellcheck disable=SC2086
  echo "$reqs" | "$PY" -m pip install -q --disable-pip-version-check --target "$site" --only-binary=:all: \
    --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" --abi abi3 --abi none $tags \
    --cache-dir "$CACHE/pip" -r /dev/stdin 2>&1 | grep -v '^WARNING: Location' >&2 || true
  [ -d "$site/ai_edge_litert" ] || { echo "error: aarch64 wheels for Python $pyver did not install" >&2; return 1; }
  echo "$stamp" > "$site/.ready"
}

declare -A ARMPY CPU_OF PYTHON_OF
for ul in $USERLANDS; do
  suite=${ul%%:*}
  CPU_OF[$suite]=${ul#*:}
  phase_start "userland $suite: rootfs"
  make_rootfs "$suite"
  python_wrapper "$suite"
  root=$CACHE/rootfs-$suite
  read -r pyver glibc "PYTHON_OF[$suite]" < <(QEMU_CPU=${CPU_OF[$suite]} "$root/usr/bin/python3-qemu" -c \
    'import platform, sys; print("%d.%d" % sys.version_info[:2], platform.libc_ver()[1], platform.python_version())')
  echo "   Debian $suite: Python ${PYTHON_OF[$suite]}, glibc $glibc"
  phase_end
  phase_start "userland $suite: aarch64 wheels (Python $pyver)"
  install_wheels "$suite" "$pyver" "$glibc"
  phase_end
  ARMPY[$suite]="$root/usr/bin/python3-qemu"
done
arm_py() {  # arm_py SUITE ARGS...: the node's Python (checkout first on the path, then the wheels)
  local suite=$1
  shift
  PYTHONPATH=$REPO:$CACHE/site-$suite QEMU_CPU=${CPU_OF[$suite]} "${ARMPY[$suite]}" "$@"
}
arm_cli() {
  local suite=$1
  shift
  arm_py "$suite" -c "$CLI_MAIN" "$@"
}

# ---------------------------------------------------------------- inputs and keys (x86)
phase_start "inputs and keys"
rm -rf "$OUT" && mkdir -p "$OUT"
if [ -n "${ARM64_BUNDLES:-}" ]; then
  BUNDLES=$ARM64_BUNDLES
else
  BUNDLES=$(x86_cli bundle list | awk '{print $1}')
fi
BUNDLES=${BUNDLES//$'\n'/ }
[ -n "$BUNDLES" ] || { echo "error: no bundles to test" >&2; exit 1; }
declare -A SOURCE
for b in $BUNDLES; do
  SOURCE[$b]=$("$PY" scripts/arm64_check.py inputs --bundle "$b" --count "$FRAMES" --root "$OUT" \
    2> "$OUT/inputs.log") || { cat "$OUT/inputs.log" >&2; exit 1; }
done
keys=$OUT/keys
x86_cli keys generate receiver --dir "$keys" > /dev/null
x86_cli keys generate "$NODE" --dir "$keys" > /dev/null
mkdir -p "$keys/allowed" && cp "$keys/$NODE.key" "$keys/allowed/"
phase_end

# ---------------------------------------------------------------- stream, compare (per userland, per bundle)
stream_bundle() {  # the node under emulation streams FRAMES frames into an x86 receiver on loopback (CURVE)
  local suite=$1 b=$2 d=$OUT/$1/$2 port receiver rc=0
  mkdir -p "$d"
  port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # exec: $! is the receiver itself, so a kill reaches it; --max-age-ms 0: every frame is compared, none may
  # be dropped for age on a busy machine
  (exec "$PY" -c "$CLI_MAIN" stream receive --bind "tcp://127.0.0.1:$port" --bundle "$b" --out "$d/received" \
    --keys "$keys/receiver.key_secret" --allowed-keys "$keys/allowed" --max-frames "$FRAMES" --timeout 300 \
    --max-age-ms 0 \
    --json "$d/receiver.json" --quiet 2> "$d/receiver.log") &
  receiver=$!
  arm_cli "$suite" stream send --source "${SOURCE[$b]}" --bundle "$b" --name "$NODE" \
    --connect "tcp://127.0.0.1:$port" --keys "$keys/$NODE.key_secret" --server-key "$keys/receiver.key" \
    --max-frames "$FRAMES" --wait 120 --probe-timeout "$PROBE_TIMEOUT" --save-inputs "$d/sent" \
    --save-inputs-format png \
    --json "$d/sender.json" 2> "$d/sender.log" || rc=$?
  if [ "$rc" != 0 ]; then
    kill "$receiver" 2> /dev/null || true
    echo "   $b: sender exited $rc: $(tail -1 "$d/sender.log")"
  fi
  wait "$receiver" || true
}

for ul in $USERLANDS; do
  suite=${ul%%:*}
  phase_start "userland $suite: stream and compare ($(echo $BUNDLES | wc -w) bundles)"
  for b in $BUNDLES; do stream_bundle "$suite" "$b"; done
  arm_py "$suite" scripts/arm64_check.py latents --dir "$OUT/$suite" --name "$NODE" 2> "$OUT/$suite/latents.log" \
    || tail -5 "$OUT/$suite/latents.log"
  for b in $BUNDLES; do
    "$PY" scripts/arm64_check.py compare --dir "$OUT/$suite/$b" --bundle "$b" --source "${SOURCE[$b]}" \
      --name "$NODE" --userland "$suite (Python ${PYTHON_OF[$suite]})" --cpu "${CPU_OF[$suite]}" \
      --frames "$FRAMES" --max-step "$MAX_STEP" --min-psnr "$MIN_PSNR" 2> "$OUT/$suite/$b/compare.log" \
      || { echo "   $b: comparison failed:"; tail -3 "$OUT/$suite/$b/compare.log"; }
  done
  phase_end
done

# ---------------------------------------------------------------- the interpreter probe's error path
# Under bookworm's own qemu-user 7.2, ai-edge-litert 2.3 dies with SIGSEGV inside Interpreter(...): the node's
# interpreter probe (a child process) must turn that into one error line and exit 1, not a dead process.
# The 7.2 binary is taken from its package without installing it (ARM64_PROBE_CRASH=0 leaves this out).
PROBE="not run (ARM64_PROBE_CRASH=0)"
if [ "${ARM64_PROBE_CRASH:-1}" != 0 ]; then
  suite=${USERLANDS%% *}
  suite=${suite%%:*}
  phase_start "interpreter probe under qemu 7.2 ($suite)"
  q72=$CACHE/qemu-7.2/qemu-aarch64-static
  if [ ! -x "$q72" ]; then
    rm -rf "$CACHE/qemu-7.2" && mkdir -p "$CACHE/qemu-7.2"
    (cd "$CACHE/qemu-7.2" && apt-get download -qq qemu-user-static/bookworm 2> /dev/null \
      && dpkg-deb --fsys-tarfile qemu-user-static_*.deb | tar -xO ./usr/bin/qemu-aarch64-static > q.tmp \
      && chmod +x q.tmp && mv q.tmp qemu-aarch64-static; rm -f ./*.deb q.tmp) || true
  fi
  d=$OUT/probe-qemu-7.2
  mkdir -p "$d"
  if [ ! -x "$q72" ]; then
    PROBE="FAIL: could not get qemu-user-static 7.2 from bookworm (apt-get download qemu-user-static/bookworm)"
  else
    root=$CACHE/rootfs-$suite
    printf '#!/bin/sh\nexec %s -L %s -0 "$0" %s/usr/bin/python3 "$@"\n' "$q72" "$root" "$root" > "$d/python3"
    chmod +x "$d/python3"
    rc=0
    PYTHONPATH=$REPO:$CACHE/site-$suite QEMU_CPU=${CPU_OF[$suite]} "$d/python3" -c "$CLI_MAIN" stream send \
      --source "${SOURCE[${BUNDLES%% *}]}" --bundle "${BUNDLES%% *}" --connect tcp://127.0.0.1:9 --insecure \
      --max-frames 1 --probe-timeout "$PROBE_TIMEOUT" --quiet > "$d/sender.log" 2>&1 || rc=$?
    said=$(grep '^error: ' "$d/sender.log" | tail -1)
    echo "   $("$q72" --version | head -1): node exit $rc: ${said:-no error line}"
    if [ "$rc" = 1 ] && grep -q 'crashed with SIG' <<< "$said" && ! grep -q 'Traceback' "$d/sender.log"; then
      PROBE="ok (exit 1, one line: ${said#error: })"
    else
      PROBE="FAIL: expected exit 1 and 'error: ... crashed with SIG...' (exit $rc; see $d/sender.log)"
    fi
  fi
  phase_end
fi

# ---------------------------------------------------------------- report
echo
echo "aarch64 under $QEMU_VERSION; $FRAMES frames per bundle; latents compared with this machine's ($(uname -m))"
echo
status=0
echo "interpreter probe under qemu 7.2: $PROBE"
if [[ $PROBE == FAIL* ]]; then status=1; fi
echo
"$PY" scripts/arm64_check.py table --dir "$OUT" --expect $(($(echo $USERLANDS | wc -w) * $(echo $BUNDLES | wc -w))) | tee "$OUT/table.md" || status=1
echo
echo "wall time per phase (emulated: not a speed figure):"
printf '  %s\n' "${PHASES[@]}"
printf '  %-52s %5d s\n' "total" $(($(date +%s) - T0))
exit $status
