"""Check, in a child process, that the TFLite interpreter loads and runs a bundle's encoder on this machine.

Some interpreter builds crash the whole process instead of raising (ai-edge-litert 2.x dies with SIGSEGV
inside ``Interpreter(...)`` under some CPU emulators; a wheel for the wrong CPU dies with SIGILL). A node that
loads its encoder in-process would then die without a word. :func:`probe_interpreter` runs the load and one
``invoke`` in a child process first (``python -m cae_edge.device.probe BUNDLE``), so a crash, a hang or a
missing package becomes one error that names the package, its version and the signal::

    parent ── spawn ──► child: import interpreter ─► {"stage": "import", ...}     (one JSON line each)
                               load_bundle + encode one image ─► {"stage": "ok", ...}  exit 0
                               project error ─► {"error": ..., "kind": ...}          exit 2
    parent ◄── exit status, last JSON line: ok -> ProbeResult; signal/timeout -> RuntimeCrashError;
                                            error -> the same error class in the parent
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import BundleError, CaeEdgeError, ConfigError, RuntimeCrashError, RuntimeMissingError

DEFAULT_TIMEOUT_S = 30.0
"""Room for a slow board to start Python from a cold SD card; healthy probes took 0.2-0.7 s here."""
_ERRORS: dict[str, type[CaeEdgeError]] = {
    "RuntimeMissingError": RuntimeMissingError,
    "BundleError": BundleError,
    "PairMismatchError": BundleError,
    "ConfigError": ConfigError,
}


@dataclass
class ProbeResult:
    """What the child process found: the interpreter in use and one successful encoder run."""

    module: str
    """Interpreter module (``ai_edge_litert`` or ``tflite_runtime``)."""
    package: str
    """Its pip package (``ai-edge-litert`` or ``tflite-runtime``)."""
    version: str
    """The package version (``"?"`` without package metadata)."""
    bundle: str
    """The bundle directory whose encoder ran."""
    latent_dim: int
    """Length of the latent the encoder produced."""
    seconds: float
    """Wall time of the whole probe, process start included."""

    def to_dict(self) -> dict:
        return asdict(self)


def _machine() -> str:
    return f"{platform.machine()}, Python {platform.python_version()}"


def _child_env() -> dict[str, str]:
    """The parent's environment, with this cae_edge importable in the child (after any PYTHONPATH given)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([*parts, root] if root not in parts else parts)
    return env


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def probe_interpreter(bundle: str | Path = "mnist", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> ProbeResult:
    """Load ``bundle`` and run its int8 encoder once in a child process.

    Args:
        bundle: Shipped bundle name or bundle directory.
        timeout_s: Give up (and kill the child) after this long.

    Returns:
        The interpreter package and version that ran the encoder.

    Raises:
        RuntimeMissingError: no interpreter package could be imported (on 32-bit ARM: a 64-bit OS is needed).
        RuntimeCrashError: the child was killed by a signal (segfault, illegal instruction, abort) or hung.
        BundleError: the bundle is missing or broken.
        CaeEdgeError: the child failed in another way (its last line of output is quoted).
    """
    from .bundle import resolve_bundle
    from .litert import installed_packages

    path = resolve_bundle(bundle)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "cae_edge.device.probe", str(path)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=_child_env(), stdin=subprocess.DEVNULL
        )
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, e.stdout or "", e.stderr or ""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        err = err.decode(errors="replace") if isinstance(err, bytes) else err
    seconds = time.perf_counter() - t0
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # an interpreter may print to stdout too
    seen = next((d for d in reversed(lines) if "package" in d), None)
    if seen is not None:
        package = f"{seen['package']} {seen['version']}"
    else:  # died before it could say: name what is installed, found without importing it
        found = installed_packages()
        package = " / ".join(f"{p} {v}" for _, p, v in found) or "no interpreter package"
    what = f"loading and running the encoder of {path.name} ({path})"

    if rc is None:
        raise RuntimeCrashError(
            f"the TFLite interpreter ({package}) hung for more than {timeout_s:.0f} s {what} on this machine "
            f"({_machine()}); try another release of it, or raise the timeout on a very slow machine"
        )
    if rc < 0:
        name = _signal_name(-rc)
        pkg = seen["package"] if seen else "ai-edge-litert"
        raise RuntimeCrashError(
            f"the TFLite interpreter ({package}) crashed with {name} {what} on this machine ({_machine()}); "
            f"this build does not run here: install another release (`pip index versions {pkg}`, then "
            f"`pip install '{pkg}==VERSION'`) and check again with `cae-edge doctor`"
        )
    if lines and "error" in lines[-1]:
        kind = _ERRORS.get(str(lines[-1].get("kind")), CaeEdgeError)
        raise kind(str(lines[-1]["error"]))
    if rc != 0 or not lines or lines[-1].get("stage") != "ok":
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise CaeEdgeError(f"interpreter check failed (exit status {rc}) {what}: {last}")
    ok = lines[-1]
    return ProbeResult(
        module=ok["module"],
        package=ok["package"],
        version=ok["version"],
        bundle=str(path),
        latent_dim=int(ok["latent_dim"]),
        seconds=seconds,
    )


def _say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()  # before the next step, which may kill this process


def _child(bundle: str) -> int:
    """The child side: one JSON line per stage on stdout; exit 0 when the encoder ran."""
    import numpy as np

    from .bundle import IMAGE_SHAPE, load_bundle
    from .litert import backend_name, backend_package

    try:
        module = backend_name()
        package, version = backend_package()
        _say(stage="import", module=module, package=package, version=version)
        b = load_bundle(bundle)
        latent = b.encoder().encode_latent(np.zeros(IMAGE_SHAPE, dtype=np.uint8))
    except CaeEdgeError as e:
        _say(error=str(e), kind=type(e).__name__)
        return 2
    _say(stage="ok", module=module, package=package, version=version, latent_dim=int(latent.shape[-1]))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m cae_edge.device.probe BUNDLE_DIR")
    sys.exit(_child(sys.argv[1]))
