"""Latency of .tflite models through LiteRT, and of whole per-frame paths. No TensorFlow.

How a model is timed (:func:`time_model`)::

    make_interpreter(bytes, threads)           ── init_us (create + allocate_tensors)
    set_tensor(input) once                      (a real test image / latent, preallocated)
    invoke()                                   ── first_us
    invoke() x warmup                          (not recorded)
    t0 = perf_counter_ns(); invoke(); t1 ...   x runs ── LatencyStats (µs)

Only ``invoke()`` is inside the timer: the figure is the interpreter's run time plus the unavoidable cost of
one Python → C++ call (about 1-5 µs, see ``notes`` in the report). Per-frame paths (:func:`time_callable`)
time a whole Python function instead: preprocess → encode → pack on the sender, unpack → decode on the
receiver.

Cross-check: :func:`run_litert_tool` runs LiteRT's own benchmark script
(``python -m ai_edge_litert.tools.benchmark_litert_model``, shipped with ai-edge-litert; it drives the
``CompiledModel`` API and prints milliseconds with two decimals, i.e. a 10 µs resolution), and
:func:`time_compiled_model` times the same ``CompiledModel`` calls in-process with ``perf_counter_ns``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..device.litert import make_interpreter

LITERT_TOOL_MODULE = "ai_edge_litert.tools.benchmark_litert_model"


@dataclass
class LatencyStats:
    """Summary of ``runs`` timed calls, in microseconds."""

    runs: int
    """Number of timed calls."""
    mean_us: float
    """Arithmetic mean."""
    std_us: float
    """Standard deviation."""
    min_us: float
    """Fastest call."""
    p50_us: float
    """Median."""
    p95_us: float
    """95th percentile."""
    p99_us: float
    """99th percentile."""
    max_us: float
    """Slowest call."""

    @classmethod
    def from_ns(cls, samples_ns: np.ndarray | list[int]) -> LatencyStats:
        """Summarise raw ``perf_counter_ns`` durations.

        Raises:
            ValueError: no samples.
        """
        us = np.asarray(samples_ns, dtype=np.float64) / 1e3
        if us.size == 0:
            raise ValueError("no timing samples: runs must be >= 1")
        p50, p95, p99 = np.percentile(us, [50, 95, 99])
        return cls(
            runs=int(us.size),
            mean_us=float(us.mean()),
            std_us=float(us.std()),
            min_us=float(us.min()),
            p50_us=float(p50),
            p95_us=float(p95),
            p99_us=float(p99),
            max_us=float(us.max()),
        )


@dataclass
class ModelLatency:
    """One model timed at one thread count."""

    model: str
    """``encoder``, ``decoder``, ``encoder_float`` or ``decoder_float`` (bundle manifest key)."""
    file: str
    """File name inside the bundle."""
    precision: str
    """``int8`` or ``float``."""
    threads: int
    """``num_threads`` given to the interpreter."""
    init_us: float
    """Interpreter creation + ``allocate_tensors()``."""
    first_us: float
    """The first ``invoke()`` (includes lazy XNNPACK setup)."""
    warmup: int
    """Untimed calls between the first and the timed ones."""
    stats: LatencyStats
    """The timed calls."""
    xnnpack: bool = True
    """Whether the default XNNPACK delegate was on."""


@dataclass
class PathLatency:
    """A whole per-frame path timed as one Python call."""

    path: str
    """``sender`` or ``receiver``."""
    steps: str
    """What one call does, e.g. ``preprocess(480x640 BGR) -> encode -> pack``."""
    threads: int
    """Interpreter threads."""
    stats: LatencyStats
    """The timed calls."""


@dataclass
class ToolComparison:
    """Our p50 next to LiteRT's own figures for the same file and thread count."""

    model: str
    """Bundle manifest key."""
    threads: int
    """Threads used by all three measurements."""
    ours_p50_us: float
    """This benchmark's Interpreter ``invoke()`` p50."""
    compiled_model_p50_us: float | None
    """``CompiledModel.run_by_index`` timed in-process with ``perf_counter_ns`` (None if unavailable)."""
    tool_median_us: float | None
    """Median reported by ``benchmark_litert_model`` (None if the tool failed; resolution 10 µs)."""
    tool_mean_us: float | None
    """Mean reported by the tool."""
    tool_runs: int
    """Runs the tool was asked for."""
    ratio: float | None
    """``ours_p50_us / tool_median_us``."""
    error: str = ""
    """Why the tool gave no figure, if it did not."""
    repeats: int = 1
    """Alternating rounds of the three measurements; each figure is its best p50 over the rounds."""


# ---------------------------------------------------------------- timing


def time_invoke(interpreter, runs: int, warmup: int) -> tuple[float, LatencyStats]:
    """Time ``interpreter.invoke()`` (inputs already set).

    Returns:
        (first call in µs, stats of the timed calls).
    """
    invoke = interpreter.invoke
    clock = time.perf_counter_ns
    t0 = clock()
    invoke()
    first_us = (clock() - t0) / 1e3
    for _ in range(warmup):
        invoke()
    samples = np.empty(runs, dtype=np.int64)
    for i in range(runs):
        t0 = clock()
        invoke()
        samples[i] = clock() - t0
    return first_us, LatencyStats.from_ns(samples)


def time_model(
    model: bytes,
    sample: np.ndarray,
    *,
    name: str,
    file: str = "",
    threads: int = 1,
    runs: int = 1000,
    warmup: int = 100,
    xnnpack: bool = True,
) -> ModelLatency:
    """Time one .tflite model on one preallocated input.

    Args:
        model: The .tflite bytes.
        sample: Input tensor matching the model's input (dtype and shape), e.g. a quantized test image.
        name: Manifest key (``encoder``, ...), recorded in the result.
        file: File name, recorded in the result.
        threads: Interpreter threads.
        runs: Timed calls.
        warmup: Untimed calls after the first.
        xnnpack: Keep the default XNNPACK delegate.

    Returns:
        The :class:`ModelLatency`.

    Raises:
        ConfigError: ``sample`` does not fit the model input.
        BundleError: the interpreter rejects the model.
    """
    from ..errors import ConfigError

    if runs < 1 or warmup < 0:
        raise ConfigError(f"runs {runs} / warmup {warmup}: need runs >= 1 and warmup >= 0")
    t0 = time.perf_counter_ns()
    interp = make_interpreter(model, threads, xnnpack=xnnpack)
    init_us = (time.perf_counter_ns() - t0) / 1e3
    detail = interp.get_input_details()[0]
    sample = np.asarray(sample)
    if sample.dtype != detail["dtype"] or sample.size != int(np.prod(detail["shape"])):
        raise ConfigError(
            f"{name}: input sample {sample.dtype} {sample.shape} does not fit the model input "
            f"{np.dtype(detail['dtype']).name} {list(detail['shape'])}"
        )
    interp.set_tensor(detail["index"], sample.reshape(detail["shape"]))
    first_us, stats = time_invoke(interp, runs, warmup)
    precision = "int8" if np.dtype(detail["dtype"]) in (np.int8, np.uint8) else "float"
    return ModelLatency(name, file, precision, int(threads), init_us, first_us, int(warmup), stats, xnnpack)


def time_callable(fn: Callable[[int], object], runs: int, warmup: int) -> LatencyStats:
    """Time ``fn(i)`` for i in ``range(runs)`` after ``warmup`` untimed calls (``fn`` picks its own input)."""
    for i in range(warmup):
        fn(i)
    clock = time.perf_counter_ns
    samples = np.empty(runs, dtype=np.int64)
    for i in range(runs):
        t0 = clock()
        fn(i)
        samples[i] = clock() - t0
    return LatencyStats.from_ns(samples)


def time_compiled_model(path: str | Path, threads: int, runs: int, warmup: int) -> LatencyStats:
    """Time ``CompiledModel.run_by_index`` (ai_edge_litert's newer API) in-process, inputs preallocated.

    Raises:
        ImportError: ai_edge_litert without the CompiledModel API (e.g. tflite_runtime only).
        RuntimeError: LiteRT cannot compile the model.
    """
    from ai_edge_litert.compiled_model import CompiledModel  # benchmark-only comparison
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, Options

    opts = Options(
        hardware_accelerators=HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=int(threads))
    )
    model = CompiledModel.from_file(str(path), options=opts)
    inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)

    def run(_i: int, run_by_index=model.run_by_index, ins=inputs, outs=outputs) -> None:
        run_by_index(0, ins, outs)

    return time_callable(run, runs, warmup)


def time_compiled_model_subprocess(
    path: str | Path, threads: int, runs: int, warmup: int, timeout_s: float = 300
) -> LatencyStats:
    """:func:`time_compiled_model` in a child process: LiteRT's environment logs its accelerator registry
    (NPU/GPU plugins it cannot find) through a buffered stream that would end up on our terminal.

    Raises:
        RuntimeError: the child failed (message has its last output lines).
    """
    cmd = [
        sys.executable,
        "-m",
        "cae_edge.benchmark.latency",
        str(path),
        str(threads),
        str(runs),
        str(warmup),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise RuntimeError(f"CompiledModel timing exited {proc.returncode}: {tail}")
    return LatencyStats(**json.loads(lines[-1]))


def litert_tool_available() -> bool:
    """Whether LiteRT's benchmark script is importable here."""
    import importlib.util

    try:
        return importlib.util.find_spec(LITERT_TOOL_MODULE) is not None
    except ModuleNotFoundError:
        return False


def run_litert_tool(path: str | Path, threads: int, runs: int, warmup: int, timeout_s: float = 300) -> dict:
    """Run ``python -m ai_edge_litert.tools.benchmark_litert_model`` on a file and return its result JSON.

    The tool times ``CompiledModel.run_by_name`` with ``time.perf_counter`` and rounds to 0.01 ms.

    Returns:
        The tool's result dict (``latency`` holds ``median_ms``, ``avg_ms``, ``min_ms``, ...).

    Raises:
        RuntimeError: the tool is missing or failed (the message has the last lines of its output).
    """
    if not litert_tool_available():
        raise RuntimeError(f"{LITERT_TOOL_MODULE} is not installed (it ships with ai-edge-litert >= 2.x)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            LITERT_TOOL_MODULE,
            f"--model={path}",
            f"--num_runs={runs}",
            f"--warmup_runs={warmup}",
            f"--num_threads={threads}",
            f"--result_json={out}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
        if proc.returncode != 0 or not out.is_file():
            tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
            raise RuntimeError(f"benchmark_litert_model exited {proc.returncode}: {tail}")
        return json.loads(out.read_text())


def compare_with_tool(
    path: str | Path,
    name: str,
    threads: int,
    sample: np.ndarray,
    runs: int,
    warmup: int,
    repeats: int = 3,
) -> ToolComparison:
    """Our Interpreter p50 vs LiteRT's tool median and an in-process CompiledModel p50, same file and threads.

    The three measurements alternate ``repeats`` times and each reports its best (lowest) p50: on a shared
    machine, load that comes and goes would otherwise decide the ratio rather than the runtimes.
    """
    ours, cm, tool, tool_mean = [], [], [], []
    errors: dict[str, str] = {}
    data = Path(path).read_bytes()
    for _ in range(max(1, repeats)):
        ours.append(
            time_model(data, sample, name=name, threads=threads, runs=runs, warmup=warmup).stats.p50_us
        )
        if "CompiledModel" not in errors:
            try:
                cm.append(time_compiled_model_subprocess(path, threads, runs, warmup).p50_us)
            except Exception as e:  # optional comparison: the reason goes into the report
                errors["CompiledModel"] = f"{type(e).__name__}: {e}"
        if "tool" not in errors:
            try:
                lat = run_litert_tool(path, threads, runs, warmup)["latency"]
                tool.append(float(lat["median_ms"]) * 1e3)
                tool_mean.append(float(lat["avg_ms"]) * 1e3)
            except Exception as e:
                errors["tool"] = f"{type(e).__name__}: {e}"
    median = min(tool) if tool else None
    ratio = min(ours) / median if median else None
    return ToolComparison(
        model=name,
        threads=int(threads),
        ours_p50_us=min(ours),
        compiled_model_p50_us=min(cm) if cm else None,
        tool_median_us=median,
        tool_mean_us=min(tool_mean) if tool_mean else None,
        tool_runs=int(runs),
        ratio=ratio,
        error="; ".join(f"{k}: {v}" for k, v in errors.items()),
        repeats=max(1, repeats),
    )


# ---------------------------------------------------------------- size


@dataclass
class ModelSize:
    """Static size of one .tflite model."""

    model: str
    """Bundle manifest key."""
    file: str
    """File name."""
    bytes: int
    """File size."""
    params: int | None
    """Elements of all constant tensors (weights, biases); None without the flatbuffer schema module."""
    weight_bytes: int | None
    """Bytes of those constant tensors' buffers."""
    tensor_bytes: int
    """Sum of the non-constant (activation/IO) tensor sizes: an upper bound of LiteRT's arena, which reuses
    memory between tensors whose lifetimes do not overlap (LiteRT's Python API does not report the arena)."""
    ops: list[str] = field(default_factory=list)
    """Operators in execution order."""
    input: dict = field(default_factory=dict)
    """Input dtype, shape, scale, zero_point."""
    output: dict = field(default_factory=dict)
    """Output dtype, shape, scale, zero_point."""


def _io(detail: dict) -> dict:
    scale, zp = detail.get("quantization", (0.0, 0))
    return {
        "dtype": np.dtype(detail["dtype"]).name,
        "shape": [int(s) for s in detail["shape"]],
        "scale": float(scale),
        "zero_point": int(zp),
    }


def _constant_tensors(data: bytes) -> dict[int, int] | None:
    """Tensor index → buffer bytes for constant tensors of subgraph 0, from the flatbuffer."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return None
    model = schema.Model.GetRootAs(data, 0)
    sub = model.Subgraphs(0)
    out = {}
    for i in range(sub.TensorsLength()):
        buf = model.Buffers(sub.Tensors(i).Buffer())
        size = buf.DataLength() if buf is not None else 0
        if buf is not None and not size and hasattr(buf, "Size"):
            size = int(buf.Size() or 0)  # large models keep buffers outside the flatbuffer
        if size:
            out[i] = int(size)
    return out


def model_size(data: bytes, name: str, file: str = "") -> ModelSize:
    """Size, parameter count, tensor memory and op list of a .tflite model (LiteRT, no TensorFlow)."""
    interp = make_interpreter(data, 1, xnnpack=False)
    consts = _constant_tensors(data)
    details = interp.get_tensor_details()
    params = weight_bytes = None
    if consts is not None:
        params = sum(int(np.prod(d["shape"])) for d in details if d["index"] in consts)
        weight_bytes = sum(consts.values())
    skip = consts or {}
    tensor_bytes = sum(
        int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize for d in details if d["index"] not in skip
    )
    try:
        ops = [o["op_name"] for o in interp._get_ops_details()]  # noqa: SLF001 - only source of the op list
    except AttributeError:
        ops = []
    return ModelSize(
        model=name,
        file=file,
        bytes=len(data),
        params=params,
        weight_bytes=weight_bytes,
        tensor_bytes=int(tensor_bytes),
        ops=ops,
        input=_io(interp.get_input_details()[0]),
        output=_io(interp.get_output_details()[0]),
    )


def to_dict(obj) -> dict:
    """Dataclass → dict (nested)."""
    return asdict(obj)


if __name__ == "__main__":  # used by time_compiled_model_subprocess: PATH THREADS RUNS WARMUP -> JSON stats
    _path, _threads, _runs, _warmup = sys.argv[1], *map(int, sys.argv[2:5])
    print(json.dumps(asdict(time_compiled_model(_path, _threads, _runs, _warmup))), flush=True)
