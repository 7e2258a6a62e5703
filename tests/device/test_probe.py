"""The interpreter probe: a crashing, hanging or missing interpreter is one clear error, not a dead node.

The failures are real: a shim package on PYTHONPATH stands in for ``ai_edge_litert`` in the probe's child
process and really kills it with a signal, hangs, or fails to import.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cae_edge.cli.main import app
from cae_edge.device import litert
from cae_edge.device.bundle import load_bundle
from cae_edge.device.probe import probe_interpreter
from cae_edge.errors import RuntimeCrashError, RuntimeMissingError

ENCODER_BYTES = (Path(litert.__file__).parents[1] / "bundles" / "mnist" / "encoder.tflite").read_bytes()


def _shim(tmp_path, monkeypatch, init: str = "", interpreter: str | None = None, tflite_runtime: str = ""):
    """Put fake ``ai_edge_litert`` (and ``tflite_runtime``) packages first on the child's PYTHONPATH."""
    root = tmp_path / "shim"
    pkg = root / "ai_edge_litert"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(init))
    if interpreter is not None:
        (pkg / "interpreter.py").write_text(textwrap.dedent(interpreter))
    if tflite_runtime:
        (root / "tflite_runtime").mkdir()
        (root / "tflite_runtime" / "__init__.py").write_text(textwrap.dedent(tflite_runtime))
    old = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(root), old) if p))
    return root


def test_probe_runs_the_encoder_with_the_installed_interpreter():
    r = probe_interpreter("mnist")
    assert r.module == "ai_edge_litert"
    assert (r.package, r.version) == ("ai-edge-litert", importlib.metadata.version("ai-edge-litert"))
    assert r.latent_dim == load_bundle("mnist").latent_dim
    assert r.bundle.endswith("mnist") and r.seconds > 0


@pytest.mark.parametrize(
    "body,signame",
    [("os.abort()", "SIGABRT"), ("os.kill(os.getpid(), signal.SIGSEGV)", "SIGSEGV")],
)
def test_an_interpreter_killed_by_a_signal_is_one_clear_error(tmp_path, monkeypatch, body, signame):
    _shim(
        tmp_path,
        monkeypatch,
        interpreter=f"""
        import os, signal
        class Interpreter:
            def __init__(self, **kwargs):
                {body}
        """,
    )
    with pytest.raises(RuntimeCrashError) as e:
        probe_interpreter("mnist")
    msg = str(e.value)
    version = importlib.metadata.version("ai-edge-litert")
    assert f"ai-edge-litert {version}" in msg and f"crashed with {signame}" in msg
    assert "encoder of mnist" in msg and "pip install 'ai-edge-litert==VERSION'" in msg
    assert "\n" not in msg


def test_a_crash_while_importing_still_names_the_package(tmp_path, monkeypatch):
    _shim(tmp_path, monkeypatch, init="import os\nos.abort()\n")
    with pytest.raises(RuntimeCrashError, match=r"\(ai-edge-litert [0-9.]+\) crashed with SIGABRT"):
        probe_interpreter("mnist")


def test_a_hanging_interpreter_is_killed_and_reported(tmp_path, monkeypatch):
    _shim(
        tmp_path,
        monkeypatch,
        interpreter="""
        import time
        class Interpreter:
            def __init__(self, **kwargs):
                time.sleep(3600)
        """,
    )
    with pytest.raises(RuntimeCrashError, match=r"hung for more than 1 s"):
        probe_interpreter("mnist", timeout_s=1.0)


def test_a_missing_interpreter_package_is_one_clear_error(tmp_path, monkeypatch):
    _shim(
        tmp_path,
        monkeypatch,
        init="raise ImportError('libfoo.so: cannot open shared object file')",
        tflite_runtime="raise ImportError('No module named tflite_runtime')",
    )
    with pytest.raises(RuntimeMissingError) as e:
        probe_interpreter("mnist")
    msg = str(e.value)
    assert "no TFLite interpreter installed" in msg and "libfoo.so" in msg
    assert "pip install 'cae-edge[node]'" in msg


def test_stream_send_reports_a_crashing_interpreter_and_exits_1(tmp_path, monkeypatch):
    _shim(
        tmp_path,
        monkeypatch,
        interpreter="""
        import os, signal
        class Interpreter:
            def __init__(self, **kwargs):
                os.kill(os.getpid(), signal.SIGSEGV)
        """,
    )
    r = CliRunner().invoke(
        app,
        ["stream", "send", "--source", "synthetic", "--connect", "tcp://127.0.0.1:9", "--insecure"],
    )
    assert r.exit_code == 1, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "crashed with SIGSEGV" in errors[0], r.output


def test_stream_send_probe_timeout_is_the_limit_it_reports(tmp_path, monkeypatch):
    _shim(
        tmp_path,
        monkeypatch,
        interpreter="""
        import time
        class Interpreter:
            def __init__(self, **kwargs):
                time.sleep(3600)
        """,
    )
    r = CliRunner().invoke(
        app,
        ["stream", "send", "--source", "synthetic", "--connect", "tcp://127.0.0.1:9", "--insecure"]
        + ["--probe-timeout", "2"],
    )
    assert r.exit_code == 1, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hung for more than 2 s" in errors[0], r.output


# ---- 32-bit ARM -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "machine,bits,expected",
    [("armv7l", 32, True), ("armv6l", 32, True), ("aarch64", 32, True), ("aarch64", 64, False),
     ("x86_64", 64, False)],
)  # fmt: skip
def test_is_32bit_arm(machine, bits, expected):
    assert litert.is_32bit_arm(machine, bits) is expected


def test_no_interpreter_on_32bit_arm_says_a_64bit_os_is_required(monkeypatch):
    monkeypatch.setattr(litert, "_BACKEND", None)
    monkeypatch.setattr(litert.platform, "machine", lambda: "armv7l")
    for name in list(litert.PACKAGES):
        for mod in [m for m in list(sys.modules) if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, mod)
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    with pytest.raises(RuntimeMissingError) as e:
        litert.make_interpreter(ENCODER_BYTES)  # a real model: only the missing interpreter can fail
    msg = str(e.value)
    assert "32-bit ARM system (armv7l" in msg and "a 64-bit OS is required" in msg
    assert "Raspberry Pi OS (64-bit)" in msg
