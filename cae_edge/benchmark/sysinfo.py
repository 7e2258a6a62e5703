"""Facts about the machine a benchmark ran on. No TensorFlow (its version is read from package metadata)."""

from __future__ import annotations

import os
import platform
import resource
import sys
from dataclasses import dataclass, field
from importlib import metadata


@dataclass
class SystemInfo:
    """Where and with what the figures were measured."""

    cpu_model: str
    """CPU model name (``/proc/cpuinfo``, ``lscpu``-like), or the platform's processor string."""
    cpu_flags: list[str]
    """SIMD features relevant to XNNPACK (neon/asimd/dotprod on ARM; avx2/fma/avx512*/vnni on x86)."""
    cores: int
    """Logical CPUs usable by this process."""
    machine: str
    """Architecture (``x86_64``, ``aarch64``)."""
    os: str
    """Operating system and kernel."""
    python: str
    """Python version."""
    numpy: str
    """numpy version."""
    litert: str
    """Interpreter package and version (``ai-edge-litert 2.3.0`` or ``tflite-runtime ...``)."""
    tensorflow: str | None
    """TensorFlow version if installed (not imported), else None."""
    load_average: list[float] = field(default_factory=list)
    """1/5/15-minute load average at the start (other work on the machine inflates latencies)."""


_FLAGS = (
    "neon",
    "asimd",
    "asimddp",
    "dotprod",
    "i8mm",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
)


def _version(*names: str) -> str | None:
    for name in names:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu() -> tuple[str, list[str]]:
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    if not model:
        model = platform.processor() or platform.machine()
    return model, sorted(f for f in flags if f in _FLAGS)


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_busy_s() -> float | None:
    """CPU seconds all processes on this machine have used since boot (``/proc/stat``: all but idle and
    iowait); None where there is no ``/proc/stat``. The difference over a run, less the run's own CPU time,
    is what other processes took meanwhile."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = sum(ticks[3:5])  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user .. steal (guest time is inside user)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def collect() -> SystemInfo:
    """Describe this machine."""
    import numpy as np

    model, flags = _cpu()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return SystemInfo(
        cpu_model=model,
        cpu_flags=flags,
        cores=cores(),
        machine=platform.machine(),
        os=f"{platform.system()} {platform.release()} ({platform.platform()})",
        python=platform.python_version(),
        numpy=np.__version__,
        litert=_version("ai-edge-litert", "tflite-runtime") or "none",
        tensorflow=(_version("tensorflow", "tensorflow-cpu") or "").split(" ")[-1] or None,
        load_average=load,
    )
