"""``cae-edge benchmark``: latency, size and rate–distortion against JPEG, WebP, JPEG XL, PNG and PCA. No
TensorFlow.

Modules: :mod:`.latency` (LiteRT timing, model size, LiteRT tool cross-check), :mod:`.codecs` (classical
codecs and how their bytes are counted), :mod:`.curves` (quality vs bytes rows), :mod:`.bdrate` (Bjøntegaard
delta rate / PSNR of bundle families against WebP and JPEG XL), :mod:`.sysinfo` (the machine),
:mod:`.report` (JSON schema, tables, plot), :mod:`.run` (one benchmark run). Stream harnesses, run through
``cae-edge stream``: :mod:`.stream_bench` (both ends' throughput) and :mod:`.soak` (a fleet of simulated nodes
through ZeroMQ or MQTT, the receiver killed and restarted, the broker restarted, every frame accounted for;
:mod:`.local_broker` runs its mosquitto); both drive the real sender and receiver from :mod:`cae_edge.device`.
"""

from .report import SCHEMA, SCHEMA_VERSION, BenchmarkReport, validate
from .run import BenchmarkOptions, run_benchmark

__all__ = ["SCHEMA", "SCHEMA_VERSION", "BenchmarkOptions", "BenchmarkReport", "run_benchmark", "validate"]
