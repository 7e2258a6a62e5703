"""The node side installs from published wheels only: no compiler, no Rust, on a Raspberry Pi or x86_64.

pip resolves the ``node`` and ``receiver`` extras (plus the core dependencies) from pyproject.toml for
another machine's platform tags with ``--only-binary=:all:``: Raspberry Pi OS 64-bit Bookworm (Python 3.11,
glibc 2.36) and Trixie (Python 3.13, glibc 2.41) on aarch64, and x86_64 Linux. Any package without a wheel
for those tags fails the resolution, which a wheel-less package (``constriction``) proves below.

These tests need the package index (marked ``network``); they are not skipped without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
CORE: list[str] = PYPROJECT["project"]["dependencies"]

TARGETS = {
    # name: (python version, architecture, newest glibc of that OS)
    "pi-bookworm": ("3.11", "aarch64", 36),
    "pi-trixie": ("3.13", "aarch64", 41),
    "x86_64-linux": ("3.11", "x86_64", 36),
}
"""Machines the node side must install on from wheels alone."""


def _name(req: str) -> str:
    """``"pyzmq>=25"`` -> ``"pyzmq"``."""
    for sep in "<>=!~;[ ":
        req = req.split(sep)[0]
    return req.strip().lower()


def platform_tags(arch: str, glibc_minor: int) -> list[str]:
    """The wheel platform tags pip accepts on a glibc ``2.<glibc_minor>`` Linux of ``arch``.

    pip's ``--platform`` does not widen ``manylinux_2_X`` to older glibc versions by itself, so list them.
    """
    tags = [f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 16, -1)]
    return [*tags, f"manylinux2014_{arch}", f"linux_{arch}"]


def resolve(requirements: list[str], target: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run pip's resolver for ``target`` with wheels only; return the process and its install report."""
    python, arch, glibc = TARGETS[target]
    tmp_path.mkdir(parents=True, exist_ok=True)
    req_file = tmp_path / "requirements.txt"
    req_file.write_text("\n".join(requirements) + "\n")
    report = tmp_path / "report.json"
    cmd = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--target", str(tmp_path / "target"), "--python-version", python, "--implementation", "cp",
        "--only-binary=:all:", "--report", str(report), "-r", str(req_file),
    ]  # fmt: skip
    for tag in platform_tags(arch, glibc):
        cmd += ["--platform", tag]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    data = json.loads(report.read_text()) if report.exists() else {}
    return proc, data


def test_platform_tags_cover_the_pi_glibc_range():
    tags = platform_tags("aarch64", 36)
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags
    assert "manylinux_2_27_aarch64" in tags  # ai-edge-litert 2.x ships only this aarch64 tag
    assert "manylinux_2_37_aarch64" not in tags  # Bookworm's glibc is 2.36


@pytest.mark.parametrize("extra", ["node", "receiver"])
def test_node_extras_hold_no_sdist_only_package(extra):
    names = {_name(r) for r in EXTRAS[extra] + CORE}
    assert "constriction" not in names  # no aarch64 wheel (it needs Rust to build)
    assert not names & {"tensorflow", "scikit-image", "matplotlib", "scipy", "pillow"}, names


def test_numba_is_for_the_receiver_and_optional_on_a_node():
    # the compiled entropy coder: the receiver's, a node's by choice (`.[node,fast]`); never plain `node`,
    # whose aarch64 CI runs under emulation and must not JIT
    assert "numba" not in {_name(r) for r in EXTRAS["node"]}
    for extra in ("receiver", "fast", "dev"):
        assert "numba" in {_name(r) for r in EXTRAS[extra]}, extra


def test_device_extra_is_the_union_of_the_roles():
    union = {_name(r) for role in ("node", "receiver", "bench") for r in EXTRAS[role]}
    assert {_name(r) for r in EXTRAS["device"]} == union
    assert "constriction" in {_name(r) for r in EXTRAS["dev"]}


@pytest.mark.network
@pytest.mark.parametrize(
    "extra,target",
    [
        ("node", "pi-bookworm"),
        ("node", "pi-trixie"),
        ("receiver", "pi-bookworm"),
        ("receiver", "pi-trixie"),
        ("node", "x86_64-linux"),
        ("node+fast", "pi-bookworm"),
        ("node+fast", "pi-trixie"),
    ],
)
def test_node_side_resolves_to_wheels_only(extra, target, tmp_path):
    reqs = CORE + [r for name in extra.split("+") for r in EXTRAS[name]]
    proc, report = resolve(reqs, target, tmp_path)
    assert proc.returncode == 0, (
        f"{extra} extra on {target}: no wheel for some package\n{proc.stderr[-3000:]}"
    )
    installed = {item["metadata"]["name"].lower(): item["download_info"]["url"] for item in report["install"]}
    for req in reqs:
        if "python_version < '3.11'" not in req:
            assert _name(req) in installed, f"{req} missing from the resolution: {sorted(installed)}"
    arch = TARGETS[target][1]
    for name, url in installed.items():
        filename = url.rsplit("/", 1)[-1]
        assert filename.endswith(".whl"), f"{name}: {filename} is not a wheel"
        assert arch in filename or "-none-any" in filename, f"{name}: {filename} is not for {arch}"


@pytest.mark.network
@pytest.mark.parametrize("extras", [("node",), ("node", "fast")])
def test_node_resolves_with_bookworms_own_numpy(extras, tmp_path):
    # A venv made with --system-site-packages (to see the OS's picamera2) keeps Debian Bookworm's numpy
    # 1.24.2, which picamera2's compiled parts need (README: Raspberry Pi); the node extras must fit it.
    reqs = CORE + [r for name in extras for r in EXTRAS[name]]
    proc, report = resolve(reqs + ["numpy==1.24.2"], "pi-bookworm", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}
    assert versions["numpy"] == "1.24.2" and "ai-edge-litert" in versions
    assert ("numba" in versions) == ("fast" in extras)


@pytest.mark.network
def test_a_package_without_an_aarch64_wheel_fails_the_same_resolution(tmp_path):
    # constriction publishes x86_64 and macOS wheels but none for Linux aarch64: the check must catch that.
    proc, _ = resolve(CORE + EXTRAS["node"] + ["constriction>=0.4"], "pi-bookworm", tmp_path / "pi")
    assert proc.returncode != 0
    assert "No matching distribution found for constriction" in proc.stderr, proc.stderr[-3000:]
    # ... while the same request resolves for x86_64: the failure is the missing wheel, not the index.
    proc, report = resolve(CORE + EXTRAS["node"] + ["constriction>=0.4"], "x86_64-linux", tmp_path / "x86")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "constriction" in {item["metadata"]["name"].lower() for item in report["install"]}
