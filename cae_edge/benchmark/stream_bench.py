"""``cae-edge stream bench``: throughput of both stream ends on this machine (in-memory source, loopback).

A measurement harness, not node code: it runs the real sender pipeline and the receiver's decode from
:mod:`cae_edge.device` with an in-memory source and a sink that drains in C.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from .. import wire
from ..device.capture import ArraySource, SyntheticSource
from ..device.receiver import receive_pipeline
from ..device.sender import SenderStats, SendOptions, SendPipeline, send_pipeline
from ..device.stream import StageTimer
from ..device.transport import PushSender, SenderOptions
from ..errors import ConfigError
from ..wire import Packet
from .sysinfo import cores, machine_busy_s


@dataclass
class BenchResult:
    """Throughput of both ends on this machine (JSON via :meth:`to_dict`).

    Wall-clock figures depend on what else runs on the machine (``load_avg``); the CPU-time figures per
    stage (this thread's CPU time in tight loops, best of 3) are what one otherwise idle core would need.
    """

    frames: int
    """Frames pushed through each end."""
    pair_id: str
    """Bundle measured."""
    threads: int
    """Interpreter threads."""
    source: str
    """``canvas`` (120x160 synthetic camera frames) or ``digits`` (28x28 test images)."""
    frame_shape: list[int]
    """Shape of the in-memory source frames."""
    sender_fps: float
    """preprocess → encode → pack → send over loopback TCP (drained by a C proxy thread), wall clock."""
    sender_us: dict[str, float]
    """Mean wall µs per frame by stage in that run: preprocess, encode, pack, send, and total."""
    receiver_fps: float
    """unpack → pair check → decode to a 28x28 image (no network, no sink), wall clock."""
    receiver_us: dict[str, float]
    """Mean wall µs per frame by stage: unpack, decode, and total."""
    stage_cpu_us: dict[str, float]
    """CPU µs per frame by stage (tight loops, this thread): preprocess, encode, pack, send, unpack,
    decode."""
    sender_cpu_us: float
    """preprocess + encode + pack + send CPU µs per frame."""
    receiver_cpu_us: float
    """unpack + decode CPU µs per frame."""
    sender_fps_cpu: float
    """1e6 / sender_cpu_us: the sender's rate on one idle core."""
    receiver_fps_cpu: float
    """1e6 / receiver_cpu_us: the receiver's rate on one idle core."""
    bytes_per_frame: float
    """Mean packet size (24-byte header/CRC + payload; the name adds 1 + len once a second)."""
    dropped: int
    """Packets the sender dropped during the run."""
    load_avg: float
    """1-minute load average when the run started (context for the wall-clock figures)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _proxy_until_closed(front: zmq.Socket, back: zmq.Socket) -> None:
    with contextlib.suppress(zmq.ContextTerminated, zmq.ZMQError):
        zmq.proxy(front, back)
    front.close(linger=0)
    back.close(linger=0)


def _cpu_us(fn: Callable[[Any], Any], items: list, repeat: int = 3) -> float:
    """Best-of-``repeat`` CPU time of this thread per call of ``fn`` over ``items``, in µs."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.thread_time_ns()
        for x in items:
            fn(x)
        best = min(best, (time.thread_time_ns() - t0) / len(items) / 1000)
    return round(best, 2)


def _frame_pool(source: str, frames: int, paper: bool) -> np.ndarray:
    """Up to 240 distinct source frames: synthetic 120x160 camera frames or the 28x28 test digits."""
    n_unique = min(frames, 240)
    if source == "canvas":
        synth = SyntheticSource("mnist", paper=paper)
        return np.stack([synth.frame(i) for i in range(n_unique)])
    from .. import datasets

    pool = datasets.load("mnist").x_test[:n_unique]
    return 255 - pool if paper else pool


def _send_over_loopback(
    pipe: SendPipeline, pool: np.ndarray, packed: list[bytes], frames: int
) -> tuple[float, SenderStats, int]:
    """The link's send CPU µs per packet, then the real sender loop over ``frames`` frames; and its drops.

    The receiving end is a PULL socket drained by ``zmq.proxy`` in C (no GIL), so only the sender is timed.
    """
    ctx = zmq.Context()
    sink = ctx.socket(zmq.PULL)
    sink.setsockopt(zmq.LINGER, 0)
    port = sink.bind_to_random_port("tcp://127.0.0.1")
    void = ctx.socket(zmq.PUB)  # nobody subscribes: the proxy drains the PULL socket in C, without the GIL
    void.setsockopt(zmq.LINGER, 0)
    void.bind("inproc://void")
    thread = threading.Thread(target=_proxy_until_closed, args=(sink, void), daemon=True)
    thread.start()
    try:
        with PushSender(f"tcp://127.0.0.1:{port}", SenderOptions(queue_size=frames)) as tx:
            tx.wait_connected(5.0)
            send_cpu = _cpu_us(tx.send, packed)
            tx.flush(5.0)
            stats = pipe.run(ArraySource(pool, loop=True, limit=frames), tx, SendOptions(name="bench"))
            tx.flush(5.0)
            return send_cpu, stats, tx.stats.dropped
    finally:
        ctx.term()  # closes the proxy's sockets (ETERM ends it)
        thread.join(5.0)


def _receive_wall(decoder: Any, packed: list[bytes], pair: bytes, frames: int) -> StageTimer:
    """The receiver's unpack + pair check + decode, end to end, cycling through the packets."""
    ns = time.perf_counter_ns
    timer = StageTimer("unpack", "decode")
    for i in range(frames):
        t0 = ns()
        p = wire.unpack(packed[i % len(packed)])
        if p.pair != pair:  # pragma: no cover - same bundle
            raise ConfigError("bench: pair mismatch")
        t1 = ns()
        decoder.decode(p.payload)
        timer.split(t0, t1, ns())
    return timer


def bench(
    bundle: str | Path | Any = "mnist", frames: int = 5000, *, threads: int = 1, source: str = "canvas"
) -> BenchResult:
    """Measure the sender pipeline from an in-memory source and the receiver's decode, on this machine.

    Args:
        bundle: bundle name, directory or loaded bundle.
        frames: frames through each end.
        threads: interpreter threads.
        source: ``canvas`` — :class:`~cae_edge.device.capture.SyntheticSource` camera frames (120x160, drawn
            beforehand, so capture costs nothing) — or ``digits``: the 28x28 test images themselves.

    The sender really sends over loopback TCP, to a PULL socket drained by ``zmq.proxy`` in C (no GIL).
    """
    import os

    if source not in ("canvas", "digits"):
        raise ConfigError(f"bench source {source!r}: use canvas or digits")
    load = os.getloadavg()[0]
    pipe = send_pipeline(bundle, threads=threads)
    pool = _frame_pool(source, frames, pipe.paper)
    decoder = receive_pipeline(pipe.bundle, threads=threads).decoder
    pre, encoder, pair = pipe.preprocess, pipe.encoder, wire.pair_prefix(pipe.pair_id)
    images = [pre(f) for f in pool]
    payloads = [encoder.encode(im) for im in images]
    packets = [Packet(pair, 1, i, i, p, pipe.kind) for i, p in enumerate(payloads)]
    packed = [wire.pack(p) for p in packets]
    stage = {
        "preprocess": _cpu_us(pre, list(pool)),
        "encode": _cpu_us(encoder.encode, images),
        "pack": _cpu_us(wire.pack, packets),
    }
    stage["send"], s, dropped = _send_over_loopback(pipe, pool, packed, frames)
    stage["unpack"] = _cpu_us(wire.unpack, packed)
    stage["decode"] = _cpu_us(decoder.decode, payloads)
    rx = _receive_wall(decoder, packed, pair, frames)
    rx_total = (rx.ns["unpack"] + rx.ns["decode"]) / frames / 1000
    tx_us = {k: getattr(s, f"{k}_us") for k in ("preprocess", "encode", "pack", "send")}
    tx_cpu = stage["preprocess"] + stage["encode"] + stage["pack"] + stage["send"]
    rx_cpu = stage["unpack"] + stage["decode"]
    return BenchResult(
        frames=frames,
        pair_id=pipe.pair_id,
        threads=threads,
        source=source,
        frame_shape=list(pool.shape[1:]),
        sender_fps=s.fps,
        sender_us={**tx_us, "total": round(sum(tx_us.values()), 2)},
        receiver_fps=round(1e6 / rx_total, 1),
        receiver_us={
            "unpack": rx.mean_us("unpack", frames),
            "decode": rx.mean_us("decode", frames),
            "total": round(rx_total, 2),
        },
        stage_cpu_us=stage,
        sender_cpu_us=round(tx_cpu, 2),
        receiver_cpu_us=round(rx_cpu, 2),
        sender_fps_cpu=round(1e6 / tx_cpu, 1),
        receiver_fps_cpu=round(1e6 / rx_cpu, 1),
        bytes_per_frame=s.bytes_per_frame,
        dropped=dropped,
        load_avg=round(load, 2),
    )


@dataclass
class ReceiverBenchResult:
    """The whole receiver (:func:`~cae_edge.device.receiver.run_receiver`: receive thread, per-sender
    queues, decode in this process or in workers, accounting) fed by senders that cost nothing: packets
    packed beforehand, offered as fast as the receive thread takes them (no network, no sink).
    JSON via :meth:`to_dict`."""

    workers: int
    """Decode processes, the receiver's own counted (1 = the receiver's process only; N > 1: N - 1 worker
    processes, and the receiver's process decodes what they have no room for)."""
    senders: int
    """Distinct senders the packets come from."""
    frames: int
    """Frames decoded."""
    seconds: float
    """Wall clock from the first frame offered to the last decoded."""
    fps: float
    """frames / seconds."""
    cpu_main_us: float
    """CPU µs per frame of the receiver's own process (receive thread, hand-off, accounting, and the frames
    it decoded itself: all with one decode process), over all frames."""
    cpu_workers_us: float
    """CPU µs per frame of the decode worker processes together, over all frames (0 with one decode
    process)."""
    cpu_total_us: float
    """cpu_main_us + cpu_workers_us."""
    decode_us: float
    """Mean wall µs of one decode call (payload → image), wherever it ran."""
    here_pct: float
    """Frames decoded in the receiver's own process, % (100 with one decode process)."""
    here_decode_us: float
    """Of ``cpu_main_us``, what its decode calls took per frame, estimated as ``here_pct`` of a worker
    process's CPU time per frame it decoded (of ``decode_us`` with one decode process): the rest is intake,
    hand-off and accounting."""
    worker_idle_pct: float
    """Share of the run the decode worker processes waited for their next batch after answering one (ran
    dry), % of the wall clock, mean over the workers (0 with one decode process)."""
    dropped: int
    """Frames not decoded (must be 0: the queues hold every frame)."""
    load_avg: float
    """1-minute load average when the run started."""
    cores: int
    """CPUs this process may run on."""
    bound_fps: float
    """The most frames/s its CPU time per frame allows on ``cores`` otherwise idle cores (:func:`bound_fps`;
    approximate: at this run's split between the worker processes and the receiver's)."""
    others_pct: float | None
    """Share of the machine's CPU (all cores) that other processes used during the run, % (None: no
    ``/proc/stat``). The wall-clock rate means what it says only when this is near 0."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _MemoryLink:
    """A receiver link that offers packed packets as fast as they are taken, then nothing."""

    endpoint = "memory"
    closed = False

    def __init__(self, packets: list[bytes]) -> None:
        from ..device.transport import Received

        self.msgs = [Received(data, None) for data in packets]
        self.at = 0
        self.first = 0.0
        """perf_counter at the first call (the receiver's loop has started, its workers are up)."""
        self.cpu_first = 0.0
        """This process's CPU time then."""
        self.busy_first: float | None = None
        """The machine's busy CPU seconds then (:func:`~cae_edge.benchmark.sysinfo.machine_busy_s`)."""
        self.stats = type("LinkStats", (), {"connects": 0, "peers": 0})()

    def recv_many(self, max_n: int = 256, timeout_s: float = 0.1) -> list:
        if not self.first:
            self.busy_first = machine_busy_s()
            self.cpu_first = time.process_time()
            self.first = time.perf_counter()
        out = self.msgs[self.at : self.at + max_n]
        self.at += len(out)
        if not out:
            time.sleep(timeout_s)
        return out


class _LastDelivered:
    """A ledger that keeps when the last frame was delivered, and, when the ``frames``-th is, this process's
    and the machine's CPU time: the run ends there (stopping the decode workers afterwards is not in it)."""

    def __init__(self, frames: int) -> None:
        self.frames, self.n = frames, 0
        self.last = 0.0
        self.cpu_last = 0.0
        self.busy_last: float | None = None

    def arrived(self, packets: list[Packet]) -> None:
        pass

    def dropped(self, packet: Packet, reason: str) -> None:
        pass

    def delivered(self, packet: Packet, age_us: int) -> None:
        self.last = time.perf_counter()
        self.n += 1
        if self.n == self.frames:
            self.busy_last, self.cpu_last = machine_busy_s(), time.process_time()


def receiver_bench(
    bundle: str | Path | Any = "mnist",
    frames: int = 5000,
    *,
    workers: int = 1,
    senders: int = 8,
    threads: int = 1,
) -> ReceiverBenchResult:
    """Run the real receiver loop over ``frames`` prepacked digit frames from ``senders`` senders.

    Measures the receiver alone (the senders cost nothing); with ``workers`` > 1 the decode runs in that many
    processes, the receiver's own counted. The worker start-up (loading the bundle) is not in the time.
    """
    import os

    from ..device.receiver import ReceiveOptions

    if senders < 1:
        raise ConfigError(f"{senders} senders: use >= 1")
    load = os.getloadavg()[0]
    pipe = send_pipeline(bundle, threads=threads)
    pool = _frame_pool("digits", frames, pipe.paper)
    rp = receive_pipeline(pipe.bundle, threads=threads)
    pair = wire.pair_prefix(pipe.pair_id)
    payloads = [pipe.encoder.encode(pipe.preprocess(f)) for f in pool]
    t0 = time.time_ns() // 1000
    packed = [
        wire.pack(
            Packet(
                pair,
                1 + i % senders,
                i // senders,
                (t0 + i) & wire.MASK32,
                payloads[i % len(payloads)],
                pipe.kind,
            )
        )
        for i in range(frames)
    ]
    link = _MemoryLink(packed)
    options = ReceiveOptions(
        max_frames=frames, idle_timeout_s=10.0, max_age_ms=0, queue_per_sender=frames, workers=workers
    )
    ledger = _LastDelivered(frames)
    stats = rp.run(link, [], options, on_log=lambda _m: None, ledger=ledger)  # type: ignore[arg-type]
    if ledger.n < frames:  # pragma: no cover - the queues hold every frame
        ledger.busy_last, ledger.cpu_last = machine_busy_s(), time.process_time()
    busy, end = ledger.busy_last, ledger.last
    # from the loop's start to the last frame: the workers' start-up and stop are not in it
    cpu_main = ledger.cpu_last - link.cpu_first
    wall = ledger.last - link.first
    cpu_workers = stats.worker_cpu_s
    n = max(stats.frames, 1)
    main_us, workers_us = cpu_main / n * 1e6, cpu_workers / n * 1e6
    n_cores = cores()
    here = stats.decoded_here / n
    # a decode's CPU time as a worker spends it (decode_us is wall clock: on a busy box it counts the waits)
    per_decode = workers_us / (1 - here) if here < 1 and workers_us > 0 else stats.decode_us
    here_pct, here_us = here * 100, here * per_decode
    others = None
    if busy is not None and link.busy_first is not None and end > link.first:
        mine = cpu_main + cpu_workers
        # /proc/stat counts in clock ticks (10 ms): over a run of a few ticks the share can round past 100 %
        share = max(0.0, busy - link.busy_first - mine) / ((end - link.first) * n_cores) * 100
        others = round(min(100.0, share), 1)
    return ReceiverBenchResult(
        workers=workers,
        senders=senders,
        frames=stats.frames,
        seconds=round(wall, 3),
        fps=round(stats.frames / wall, 1) if wall > 0 else 0.0,
        cpu_main_us=round(main_us, 1),
        cpu_workers_us=round(workers_us, 1),
        cpu_total_us=round(main_us + workers_us, 1),
        decode_us=stats.decode_us,
        here_pct=round(here_pct, 1),
        here_decode_us=round(here_us, 1),
        worker_idle_pct=round(stats.worker_idle_s / (wall * (workers - 1)) * 100, 1)
        if workers > 1 and wall > 0
        else 0.0,
        dropped=sum(stats.dropped.values()),
        load_avg=round(load, 2),
        cores=n_cores,
        bound_fps=round(bound_fps(workers, n_cores, main_us, workers_us, here_us), 1),
        others_pct=others,
    )


def bound_fps(
    workers: int, n_cores: int, cpu_main_us: float, cpu_workers_us: float, here_decode_us: float = 0.0
) -> float:
    """Frames/s a receiver needing this CPU time per frame reaches at most on ``n_cores`` otherwise idle
    cores, with ``workers`` decode processes (the receiver's own counted).

    Each process gets at most one core (each decodes with one interpreter thread), all of them together at
    most ``n_cores``; the receiver's process decodes whatever the worker processes have no room for, so the
    decode share balances and the limits are the cores the processes can use, and the receiver's own work
    beyond its decode calls (``cpu_main_us`` - ``here_decode_us``: intake, hand-off, accounting), which no
    other process can take. Approximate: a frame decoded here skips the hand-off, so another split changes
    the total a little.
    """
    if workers == 1 or cpu_workers_us <= 0:
        return 1e6 / cpu_main_us
    processes = min(workers, n_cores) * 1e6 / (cpu_main_us + cpu_workers_us)
    return min(processes, 1e6 / max(cpu_main_us - here_decode_us, 1e-3))
