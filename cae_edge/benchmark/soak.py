"""Soak test: K sender processes at full rate into one receiver on loopback, receiver killed and restarted.

::

    soak (this process)                                  workdir/
      ├─ receiver #1 (cae_edge.benchmark.soak receiver)  rx-1.arr: (sender id, seq) per packet that arrived
      │                                                  rx-1.drp: (sender id, seq, reason) per frame dropped
      │                                                  rx-1.rec: (sender id, seq, time, age) per decode
      ├─ sender 1..K (cae_edge.benchmark.soak sender)    tx-NAME.json: stats + dropped seqs by reason
      │     synthetic source → preprocess → encode → pack → PushSender (the real node pipeline)
      ├─ at S seconds: SIGKILL receiver #1 (a crash, not a clean stop); start receiver #2 on the same port
      └─ at T seconds (later if receiver #2 needed long to start): senders stop and flush; receiver #2
         drains, then SIGTERM

Every frame a sender produced (sequence numbers ``0 .. N-1``) ends up in exactly one bucket, by sequence
number, never by subtraction:

* ``delivered`` — decoded by a receiver (the receiver's ledger, :class:`~cae_edge.device.receiver.Ledger`,
  writes each record with one ``os.write``, so a SIGKILL loses nothing already recorded);
* ``dropped_queue`` — the sender's bounded queue was full (receiver away, or ZeroMQ's queue full): reported
  by the transport's ``on_drop`` callback with the packet, so the exact sequence numbers are known;
* ``dropped_close`` — still queued when the sender's close flush gave up (also from ``on_drop``);
* ``rx_dropped`` — arrived at a receiver, which dropped it undecoded, by reason: ``stale`` (older than the
  max age when its turn came), ``backlog`` (pushed out of its full per-sender queue), ``shutdown`` (still
  queued when it was stopped) — from the receiver's ledger, by sequence number;
* ``lost_restart`` — in flight when receiver #1 was killed, measured, not inferred from a gap:
  ``lost_restart_queued`` arrived at receiver #1 (its arrival record has them) but it died before deciding
  on them; the rest were handed to ZeroMQ and never arrived anywhere, with sequence numbers between the last
  that arrived at receiver #1 and the first that arrived at receiver #2 — in the sockets (sender's ZeroMQ
  queue, TCP buffers, receiver #1's ZeroMQ queue) when the connection died. PUSH/PULL keeps per-sender order,
  so nothing else can fall in that window;
* ``lost_at_end`` — handed to ZeroMQ after the last packet that arrived, never arrived (the sender's close
  linger ran out; 0 when the receiver keeps up);
* ``unexplained`` — anything else: a frame missing mid-stream (a dropped connection), one the last receiver
  took in but never accounted, one counted twice. A correct link has none; the run checks it.

Resume time per sender: from receiver #2 being bound and ready to its first decoded frame of that sender.
Receiver CPU: user + system time of each receiver process (``wait4`` rusage), over its lifetime.

Bounded: at most 32 senders and 600 s; every wait has a deadline, and a process that misses one is killed
and reported under ``hangs``. Loopback only (``tcp://127.0.0.1``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

MAX_SENDERS = 32
MAX_SECONDS = 600.0
LOOPBACK = "127.0.0.1"
_REC = struct.Struct("<HIdq")  # sender id, seq, decode time (Unix s), age when decoded (µs)
_ARR = struct.Struct("<HI")  # sender id, seq
_DRP = struct.Struct("<HIB")  # sender id, seq, reason (index in RX_REASONS)
RX_REASONS = ("stale", "backlog", "shutdown", "refused")
"""The receivers' drop reasons as the soak records them (``refused``: a payload the decoder refused)."""
REC_DTYPE = np.dtype([("sid", "<u2"), ("seq", "<u4"), ("t", "<f8"), ("age_us", "<i8")])
ARR_DTYPE = np.dtype([("sid", "<u2"), ("seq", "<u4")])
DRP_DTYPE = np.dtype([("sid", "<u2"), ("seq", "<u4"), ("reason", "u1")])

Progress = Callable[[str], None]


# ================================================================================================ options


@dataclass
class SoakOptions:
    """What the soak run does."""

    senders: int = 8
    """Sender processes (1 .. 32)."""
    seconds: float = 60.0
    """How long the senders stream (1 .. 600)."""
    restart_at: float | None = 30.0
    """Kill the receiver (SIGKILL) this many seconds in and start a new one; ``None`` = no restart."""
    down_s: float = 0.0
    """Extra time the receiver stays dead before the new one is launched (it also needs its start-up time)."""
    bundle: str = "mnist"
    """Bundle both ends use."""
    fps: float = 0.0
    """Per-sender frame-rate cap; 0 = full rate (as fast as each sender can capture and encode)."""
    queue_size: int = 64
    """Each sender's send queue."""
    policy: str = "drop-oldest"
    """Each sender's drop policy."""
    secure: bool = True
    """Use CURVE (fresh keys for every run); False = plaintext."""
    flush_s: float = 2.0
    """How long each sender may flush its queue when it stops."""
    resume_target_s: float = 2.0
    """Every sender should deliver again within this long after the new receiver is ready."""
    after_restart_s: float = 4.0
    """The run is extended, if needed, so that the senders stream this long after the new receiver is
    ready (a cold start of a receiver on a busy machine can take seconds)."""
    workdir: Path | None = None
    """Keep records, logs and keys here; default: a temporary directory, removed afterwards."""
    rcvhwm: int | None = None
    """Receiver's ZeroMQ high-water mark per sender; ``None`` = the transport's default."""
    sndhwm: int | None = None
    """Senders' ZeroMQ high-water mark; ``None`` = the transport's default."""
    rx_heartbeat_ms: int | None = None
    """Receiver's ZMTP heartbeat interval (0 = off); ``None`` = the transport's default."""
    max_age_ms: float = 250.0
    """Receiver's age bound (frames older are dropped undecoded, reason ``stale``); 0 = none."""
    queue_per_sender: int = 256
    """Receiver's per-sender queue (full: the oldest is dropped, reason ``backlog``)."""
    png: bool = False
    """The receivers also write every decoded frame as a PNG file in the work directory (a real receiver's
    slow sink: it lowers what the receiver can take, so that senders on the same machine can overload it)."""
    sink_ms: float = 0.0
    """The receivers' sink takes this long per frame (it sleeps, using no CPU: a stand-in for a slow sink such
    as a video encoder). It caps a receiver near ``1000 / (sink_ms + decode ms)`` frames/s whatever else runs
    on the machine, so that an offered load can be set as a multiple of what the receiver can take."""

    def check(self) -> None:
        """Raise :class:`ConfigError` for a value out of bounds."""
        if not 1 <= self.senders <= MAX_SENDERS:
            raise ConfigError(f"senders {self.senders}: must be 1 .. {MAX_SENDERS}")
        if not 1.0 <= self.seconds <= MAX_SECONDS:
            raise ConfigError(f"seconds {self.seconds}: must be 1 .. {MAX_SECONDS:.0f}")
        if self.restart_at is not None and not 0 < self.restart_at < self.seconds:
            raise ConfigError(
                f"restart at {self.restart_at} s: must be inside the run (0 < S < {self.seconds:g}), "
                "or None for no restart"
            )
        if not 0 <= self.down_s <= 60:
            raise ConfigError(f"down time {self.down_s} s: must be 0 .. 60")
        if self.fps < 0:
            raise ConfigError(f"fps {self.fps}: must be >= 0 (0 = full rate)")
        if not 0 <= self.sink_ms <= 1000:
            raise ConfigError(f"sink time {self.sink_ms} ms: must be 0 .. 1000")
        if self.max_age_ms < 0:
            raise ConfigError(f"max age {self.max_age_ms} ms: must be >= 0 (0 = no bound)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["workdir"] = str(self.workdir) if self.workdir else None
        return d


@dataclass
class SenderAccount:
    """One sender's frames, each in exactly one bucket (see the module docstring)."""

    name: str
    """Sender name."""
    produced: int = 0
    """Frames captured, encoded and packed (sequence numbers 0 .. produced-1)."""
    delivered: int = 0
    """Frames decoded by a receiver."""
    dropped_queue: int = 0
    """Dropped by the sender because its queue was full."""
    dropped_close: int = 0
    """Still queued when the sender's close flush gave up."""
    rx_dropped: dict[str, int] = field(default_factory=dict)
    """Arrived at a receiver and dropped there undecoded, by reason (``stale``, ``backlog``, ``shutdown``)."""
    lost_restart: int = 0
    """In flight when the receiver was killed: in its queues (``lost_restart_queued``) or in the sockets."""
    lost_restart_queued: int = 0
    """Of ``lost_restart``: had arrived at the killed receiver, which died before deciding on them."""
    lost_at_end: int = 0
    """Handed to ZeroMQ after the last packet that arrived, never arrived (close linger ran out)."""
    unexplained: int = 0
    """Missing for no reason above (0 on a correct link)."""
    duplicates: int = 0
    """Frames decoded more than once (0 on a correct link)."""
    transport_dropped: int = 0
    """The transport's own drop counter (must equal ``dropped_queue``)."""
    resume_s: float | None = None
    """New receiver ready -> first frame of this sender decoded by it (None: never resumed or no restart)."""
    outage_s: float | None = None
    """Last frame decoded by the old receiver -> first frame decoded by the new one."""
    fps: float = 0.0
    """This sender's production rate."""
    cpu_s: float = 0.0
    """Sender process CPU time (user + system)."""
    connects: int = 0
    """Connections the sender made (1 + one per receiver restart, normally)."""
    exit_code: int | None = None
    """Sender process exit status."""

    @property
    def accounted(self) -> bool:
        """True when the buckets add up, nothing is unexplained or duplicated, and the counters agree."""
        parts = (
            self.delivered
            + self.dropped_queue
            + self.dropped_close
            + sum(self.rx_dropped.values())
            + self.lost_restart
            + self.lost_at_end
        )
        return (
            parts + self.unexplained == self.produced
            and self.unexplained == 0
            and self.duplicates == 0
            and self.transport_dropped == self.dropped_queue
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accounted"] = self.accounted
        return d


@dataclass
class ReceiverRun:
    """One receiver process."""

    incarnation: int
    """1 = the first, 2 = the one started after the kill."""
    pid: int
    """Process id."""
    alive_s: float
    """Launch -> exit."""
    ready_s: float | None
    """Launch -> bound and ready (start-up time)."""
    cpu_s: float
    """User + system CPU seconds."""
    cpu_percent: float
    """``cpu_s`` over ``alive_s`` (100 = one full core)."""
    frames: int
    """Frames it decoded."""
    rejected: int
    """Packets it refused (from its last status file)."""
    received: int
    """Packets that arrived (all senders)."""
    dropped: dict[str, int]
    """Frames it dropped undecoded, by reason."""
    latency_p50_ms: float | None
    """Capture -> decoded latency, median over every frame it decoded."""
    latency_p99_ms: float | None
    """The same, 99th percentile."""
    ended: str
    """``killed`` (the planned SIGKILL), ``stopped`` (SIGTERM, clean) or ``hung`` (had to be killed)."""


@dataclass
class SoakResult:
    """Everything a soak run measured (JSON via :meth:`to_dict`)."""

    options: dict
    """The :class:`SoakOptions` used."""
    endpoint: str
    """Where the receivers listened."""
    duration_s: float = 0.0
    """Senders' go -> last process done."""
    kill_at_s: float | None = None
    """When receiver #1 was killed (seconds after go)."""
    restart_ready_s: float | None = None
    """Kill -> receiver #2 bound and ready (process start-up + bundle load)."""
    receivers: list[ReceiverRun] = field(default_factory=list)
    """Each receiver process."""
    senders: list[SenderAccount] = field(default_factory=list)
    """Each sender's account."""
    hangs: list[str] = field(default_factory=list)
    """Processes that missed a deadline and were killed."""

    @property
    def totals(self) -> dict[str, int]:
        keys = (
            "produced",
            "delivered",
            "dropped_queue",
            "dropped_close",
            "lost_restart",
            "lost_restart_queued",
        )
        out = {k: sum(getattr(s, k) for s in self.senders) for k in (*keys, "lost_at_end")}
        for reason in RX_REASONS:
            out[f"rx_{reason}"] = sum(s.rx_dropped.get(reason, 0) for s in self.senders)
        out["unexplained"] = sum(s.unexplained for s in self.senders)
        out["duplicates"] = sum(s.duplicates for s in self.senders)
        out["rejected"] = sum(r.rejected for r in self.receivers)
        return out

    @property
    def resume_max_s(self) -> float | None:
        vals = [s.resume_s for s in self.senders if s.resume_s is not None]
        return max(vals) if vals else None

    @property
    def verdict(self) -> dict[str, bool]:
        restarted = self.options.get("restart_at") is not None
        target = self.options.get("resume_target_s", 2.0)
        resumed = all(s.resume_s is not None and s.resume_s <= target for s in self.senders)
        return {
            "no_hang": not self.hangs and all(s.exit_code == 0 for s in self.senders),
            "all_resumed_within_target": resumed if restarted else True,
            "all_accounted": all(s.accounted for s in self.senders) and self.totals["rejected"] == 0,
        }

    @property
    def ok(self) -> bool:
        return all(self.verdict.values())

    def to_dict(self) -> dict:
        return {
            "options": self.options,
            "endpoint": self.endpoint,
            "duration_s": self.duration_s,
            "kill_at_s": self.kill_at_s,
            "restart_ready_s": self.restart_ready_s,
            "receivers": [asdict(r) for r in self.receivers],
            "senders": [s.to_dict() for s in self.senders],
            "totals": self.totals,
            "resume_max_s": self.resume_max_s,
            "hangs": self.hangs,
            "verdict": self.verdict,
            "ok": self.ok,
        }


# ================================================================================================ workers


def _stop_on_sigterm() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def _cpu_self() -> float:
    t = os.times()
    return t.user + t.system


class _FileLedger:
    """The receiver's :class:`~cae_edge.device.receiver.Ledger` as three append-only files (``PREFIX.arr``,
    ``.drp``, ``.rec``): one ``os.write`` per call, so a SIGKILL loses nothing already recorded, and each
    packet's arrival is on disk before the receiver can decide anything about it."""

    def __init__(self, prefix: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self._fds = {ext: os.open(f"{prefix}.{ext}", flags, 0o644) for ext in ("arr", "drp", "rec")}

    def arrived(self, packets: list) -> None:
        os.write(self._fds["arr"], b"".join(_ARR.pack(p.sender_id, p.seq) for p in packets))

    def dropped(self, packet: Any, reason: str) -> None:
        code = RX_REASONS.index(reason) if reason in RX_REASONS else RX_REASONS.index("refused")
        os.write(self._fds["drp"], _DRP.pack(packet.sender_id, packet.seq, code))

    def delivered(self, packet: Any, age_us: int) -> None:
        os.write(self._fds["rec"], _REC.pack(packet.sender_id, packet.seq, time.time(), age_us))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


class _SlowSink:
    """Takes ``seconds`` per frame, sleeping (see :attr:`SoakOptions.sink_ms`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        time.sleep(self.seconds)

    def close(self) -> None:
        pass


def _receiver_main(cfg: dict) -> int:
    from ..device.receiver import ReceiveOptions, receive_pipeline
    from ..device.security import CurveServer, SecurityOptions
    from ..device.sinks import PngSink
    from ..device.status import StatusFile, receiver_status, write_json_atomic
    from ..device.transport import PullReceiver, ReceiverOptions

    stop = _stop_on_sigterm()
    pipe = receive_pipeline(cfg["bundle"])
    curve = None
    if cfg["secure"]:
        curve = CurveServer(SecurityOptions(key=Path(cfg["key"]), allowed_keys=Path(cfg["allowed"])))
    ledger = _FileLedger(cfg["record"])
    status = StatusFile(cfg["status"], every_s=0.5)

    def on_stats(s: Any, force: bool = False) -> None:
        auth = curve.stats if curve else None
        status.update(receiver_status(s, auth, secured=curve is not None), force=force)

    hwm = {"rcvhwm": cfg["rcvhwm"]} if cfg.get("rcvhwm") else {}
    if cfg.get("rx_heartbeat_ms") is not None:
        hwm["heartbeat_ivl_ms"] = cfg["rx_heartbeat_ms"]
    with PullReceiver(cfg["bind"], ReceiverOptions(security=curve, **hwm)) as link:
        write_json_atomic(cfg["ready"], {"time": time.time(), "pid": os.getpid()})
        options = ReceiveOptions(
            stats_every_s=0.5, max_age_ms=cfg["max_age_ms"], queue_per_sender=cfg["queue_per_sender"]
        )
        sinks: list[Any] = [PngSink(cfg["png"])] if cfg.get("png") else []
        if cfg.get("sink_ms"):
            sinks.append(_SlowSink(cfg["sink_ms"] / 1000))
        stats = pipe.run(link, sinks, options, on_stats=on_stats, stop=stop, ledger=ledger)
        on_stats(stats, force=True)
    ledger.close()
    return 0


def _sender_main(cfg: dict) -> int:
    from .. import wire
    from ..device.capture import SyntheticSource
    from ..device.security import CurveClient, SecurityOptions
    from ..device.sender import SendOptions, send_pipeline
    from ..device.status import write_json_atomic
    from ..device.transport import PushSender, SenderOptions

    stop = _stop_on_sigterm()
    drops: dict[str, list[int]] = {"queue": [], "close": []}

    def on_drop(data: bytes, why: str) -> None:
        drops.setdefault(why, []).append(wire.unpack(data).seq)

    pipe = send_pipeline(cfg["bundle"])
    source = SyntheticSource("mnist", seed=cfg["index"], paper=pipe.paper)
    curve = None
    if cfg["secure"]:
        curve = CurveClient(SecurityOptions(key=Path(cfg["key"]), server_key=Path(cfg["server_key"])))
    link_opts = SenderOptions(
        queue_size=cfg["queue_size"],
        policy=cfg["policy"],
        security=curve,
        on_drop=on_drop,
        close_flush_s=cfg["flush_s"],
        **({"sndhwm": cfg["sndhwm"]} if cfg.get("sndhwm") else {}),
    )
    with PushSender(cfg["connect"], link_opts) as link:
        connected = link.wait_connected(30.0)
        write_json_atomic(cfg["ready"], {"time": time.time(), "connected": connected})
        go = Path(cfg["go"])
        give_up = time.monotonic() + 120.0
        while not go.exists() and not stop.is_set():
            if time.monotonic() > give_up:
                return 5
            time.sleep(0.01)
        end = Path(cfg["end"])

        def watch_end() -> None:  # the orchestrator decides when the run ends (>= seconds)
            while not stop.is_set() and not end.exists():
                time.sleep(0.01)
            stop.set()

        threading.Thread(target=watch_end, daemon=True).start()
        options = SendOptions(name=cfg["name"], fps=cfg["fps"], stats_every_s=3600.0)
        stats = pipe.run(source, link, options, stop=stop)
        link.close()
        stats.absorb(link.stats)
    write_json_atomic(
        cfg["result"],
        {"stats": stats.to_dict(), "drops": drops, "cpu_s": _cpu_self(), "t_end": time.time()},
    )
    return 0


# ============================================================================================ orchestrator


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class _Proc:
    """A worker process with its config file, log and exit bookkeeping (rusage via wait4)."""

    def __init__(self, role: str, cfg: dict, workdir: Path, tag: str) -> None:
        self.tag = tag
        cfg_path = workdir / f"{tag}.cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        self.log_path = workdir / f"{tag}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in reap()
        self.started = time.time()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "cae_edge.benchmark.soak", role, str(cfg_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.pid = self.popen.pid
        self.exit_code: int | None = None
        self.cpu_s = 0.0
        self.ended: float | None = None

    def poll(self) -> bool:
        """Reap if it exited; True when done."""
        if self.exit_code is not None:
            return True
        pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._done(status, ru)
        return True

    def _done(self, status: int, ru: Any) -> None:
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.exit_code
        self.cpu_s = ru.ru_utime + ru.ru_stime
        self.ended = time.time()
        self._log.close()

    def wait(self, timeout_s: float) -> bool:
        """Wait until exit or the deadline; True if it exited."""
        deadline = time.monotonic() + timeout_s
        while not self.poll():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.exit_code is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def log_tail(self, n: int = 600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""


def _wait_file(path: Path, proc: _Proc, timeout_s: float) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                pass
        if proc.poll():
            return None
        time.sleep(0.02)
    return None


def _read_records(path: Path, dtype: np.dtype = REC_DTYPE) -> np.ndarray:
    if not path.exists():
        return np.zeros(0, dtype)
    raw = path.read_bytes()
    raw = raw[: len(raw) - len(raw) % dtype.itemsize]  # a SIGKILL can't cut a write, but be safe
    return np.frombuffer(raw, dtype)


def run_soak(opts: SoakOptions, progress: Progress | None = None) -> SoakResult:
    """Run the soak test and account for every frame.

    Args:
        opts: What to run.
        progress: Called with one line per phase (start, kill, restart, end).

    Returns:
        The measurements; ``result.ok`` says whether the targets were met.

    Raises:
        ConfigError: bad options, or a worker could not start (its log tail is quoted).
    """
    from .. import wire

    opts.check()
    say = progress or (lambda _m: None)
    own_dir = opts.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="cae-edge-soak-")) if own_dir else Path(opts.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    endpoint = f"tcp://{LOOPBACK}:{port}"
    names = [f"soak-{i:02d}" for i in range(opts.senders)]
    result = SoakResult(options=opts.to_dict(), endpoint=endpoint)
    procs: list[_Proc] = []
    try:
        keys: dict[str, Any] = {}
        if opts.secure:
            from ..device.security import generate_keypair

            allowed = workdir / "allowed"
            allowed.mkdir(exist_ok=True)
            rx_keys = generate_keypair("receiver", workdir / "keys", overwrite=True)
            keys["receiver"] = rx_keys
            for n in names:
                k = generate_keypair(n, workdir / "keys", overwrite=True)
                shutil.copy(k.public_path, allowed / k.public_path.name)
                keys[n] = k

        def start_receiver(incarnation: int) -> tuple[_Proc, float]:
            tag = f"rx-{incarnation}"
            ready = workdir / f"{tag}.ready.json"
            ready.unlink(missing_ok=True)
            cfg = {
                "bind": endpoint,
                "bundle": opts.bundle,
                "secure": opts.secure,
                "record": str(workdir / tag),
                "max_age_ms": opts.max_age_ms,
                "queue_per_sender": opts.queue_per_sender,
                "png": str(workdir / f"{tag}-png") if opts.png else None,
                "sink_ms": opts.sink_ms,
                "status": str(workdir / f"{tag}.status.json"),
                "ready": str(ready),
                "rcvhwm": opts.rcvhwm,
                "rx_heartbeat_ms": opts.rx_heartbeat_ms,
            }
            if opts.secure:
                cfg["key"] = str(keys["receiver"].secret_path)
                cfg["allowed"] = str(workdir / "allowed")
            p = _Proc("receiver", cfg, workdir, tag)
            procs.append(p)
            info = _wait_file(ready, p, 90.0)
            if info is None:
                p.kill()
                p.wait(5)
                raise ConfigError(f"soak: receiver #{incarnation} did not start: {p.log_tail()}")
            return p, float(info["time"])

        say(f"receiver #1 on {endpoint} ({'CURVE' if opts.secure else 'plaintext'})")
        rx1, ready1 = start_receiver(1)
        rx_procs = [rx1]
        rx_ready = [ready1]
        go = workdir / "go.json"
        senders: list[_Proc] = []
        for i, n in enumerate(names):
            cfg = {
                "index": i,
                "name": n,
                "connect": endpoint,
                "bundle": opts.bundle,
                "secure": opts.secure,
                "seconds": opts.seconds,
                "fps": opts.fps,
                "queue_size": opts.queue_size,
                "policy": opts.policy,
                "flush_s": opts.flush_s,
                "sndhwm": opts.sndhwm,
                "ready": str(workdir / f"tx-{n}.ready.json"),
                "go": str(go),
                "end": str(workdir / "end.json"),
                "result": str(workdir / f"tx-{n}.json"),
            }
            if opts.secure:
                cfg["key"] = str(keys[n].secret_path)
                cfg["server_key"] = str(keys["receiver"].public_path)
            p = _Proc("sender", cfg, workdir, f"tx-{n}")
            senders.append(p)
            procs.append(p)
        for p, n in zip(senders, names, strict=True):
            if _wait_file(workdir / f"tx-{n}.ready.json", p, 90.0 + 5.0 * opts.senders) is None:
                raise ConfigError(f"soak: sender {n} did not start: {p.log_tail()}")
        t0 = time.time()
        from ..device.status import write_json_atomic

        write_json_atomic(go, {"time": t0})
        say(f"{opts.senders} senders streaming for {opts.seconds:g} s")

        t_kill = None
        if opts.restart_at is not None:
            time.sleep(max(0.0, t0 + opts.restart_at - time.time()))
            t_kill = time.time()
            rx1.kill(signal.SIGKILL)
            if not rx1.wait(10):
                result.hangs.append("receiver #1 survived SIGKILL for 10 s")
            result.kill_at_s = round(t_kill - t0, 3)
            say(f"receiver #1 killed at {result.kill_at_s:.2f} s")
            time.sleep(opts.down_s)
            rx2, ready2 = start_receiver(2)
            rx_procs.append(rx2)
            rx_ready.append(ready2)
            result.restart_ready_s = round(ready2 - t_kill, 3)
            say(f"receiver #2 ready {result.restart_ready_s:.2f} s after the kill")

        # end at `seconds`, extended so that at least `after_restart_s` follow the new receiver being ready
        t_end = t0 + opts.seconds
        if len(rx_ready) > 1:
            t_end = max(t_end, rx_ready[1] + opts.after_restart_s)
        time.sleep(max(0.0, t_end - time.time()))
        write_json_atomic(workdir / "end.json", {"time": time.time()})
        say(f"senders told to stop at {time.time() - t0:.2f} s")
        end_deadline = time.time() + opts.flush_s + 30.0
        for p, n in zip(senders, names, strict=True):
            if not p.wait(max(0.5, end_deadline - time.time())):
                result.hangs.append(f"sender {n} did not stop within {opts.flush_s + 30:.0f} s of its end")
                p.kill()
                p.wait(5)
        # let the receiver drain: stop once its records stopped growing for 0.5 s (at most 15 s)
        rx_last = rx_procs[-1]
        files = [workdir / f"rx-{len(rx_procs)}.{ext}" for ext in ("arr", "drp", "rec")]
        size, quiet_since, give_up = -1, time.monotonic(), time.monotonic() + 15.0
        while time.monotonic() < give_up:
            now_size = sum(f.stat().st_size for f in files if f.exists())
            if now_size != size:
                size, quiet_since = now_size, time.monotonic()
            elif time.monotonic() - quiet_since >= 0.5:
                break
            time.sleep(0.05)
        rx_last.kill(signal.SIGTERM)
        if not rx_last.wait(15):
            result.hangs.append(f"receiver #{len(rx_procs)} did not stop within 15 s of SIGTERM")
            rx_last.kill()
            rx_last.wait(5)
        result.duration_s = round(time.time() - t0, 3)
        say("analysing")

        # ---------------------------------------------------------------------------------- receivers
        n_rx = len(rx_procs)
        recs = [_read_records(workdir / f"rx-{i + 1}.rec") for i in range(n_rx)]
        arrs = [_read_records(workdir / f"rx-{i + 1}.arr", ARR_DTYPE) for i in range(n_rx)]
        drps = [_read_records(workdir / f"rx-{i + 1}.drp", DRP_DTYPE) for i in range(n_rx)]
        for i, p in enumerate(rx_procs):
            st_path = workdir / f"rx-{i + 1}.status.json"
            rejected, p50, p99 = 0, None, None
            if st_path.exists():
                try:
                    st = json.loads(st_path.read_text())
                    rejected = int(st["receiver"].get("rejected_total", 0))
                except (ValueError, KeyError):
                    rejected = 0
            if len(recs[i]):
                q50, q99 = np.percentile(recs[i]["age_us"] / 1000.0, (50, 99))
                p50, p99 = round(float(q50), 2), round(float(q99), 2)
            codes = np.bincount(drps[i]["reason"], minlength=len(RX_REASONS))
            dropped = {r: int(n) for r, n in zip(RX_REASONS, codes, strict=False) if n}
            alive = (p.ended or time.time()) - p.started
            killed = i == 0 and t_kill is not None
            result.receivers.append(
                ReceiverRun(
                    incarnation=i + 1,
                    pid=p.pid,
                    alive_s=round(alive, 3),
                    ready_s=round(rx_ready[i] - p.started, 3),
                    cpu_s=round(p.cpu_s, 3),
                    cpu_percent=round(100 * p.cpu_s / alive, 1) if alive > 0 else 0.0,
                    frames=int(len(recs[i])),
                    rejected=rejected,
                    received=int(len(arrs[i])),
                    dropped=dropped,
                    latency_p50_ms=p50,
                    latency_p99_ms=p99,
                    ended="killed" if killed else ("stopped" if p.exit_code == 0 else f"exit {p.exit_code}"),
                )
            )

        # ---------------------------------------------------------------------------------- senders
        for p, n in zip(senders, names, strict=True):
            acc = SenderAccount(name=n, exit_code=p.exit_code, cpu_s=round(p.cpu_s, 3))
            res_path = workdir / f"tx-{n}.json"
            if not res_path.exists():
                result.hangs.append(f"sender {n} wrote no result (exit {p.exit_code}): {p.log_tail(300)}")
                result.senders.append(acc)
                continue
            res = json.loads(res_path.read_text())
            st = res["stats"]
            acc.produced, acc.fps, acc.connects = int(st["frames"]), float(st["fps"]), int(st["connects"])
            acc.transport_dropped = int(st["dropped"])
            sid = wire.sender_id(n)
            acc = account_sender(
                acc,
                [r[r["sid"] == sid] for r in recs],
                res["drops"].get("queue", []),
                res["drops"].get("close", []),
                arrivals=[a[a["sid"] == sid]["seq"] for a in arrs],
                rx_drops=[d[d["sid"] == sid] for d in drps],
                restart_ready=rx_ready[1] if t_kill is not None else None,
            )
            result.senders.append(acc)
        return result
    finally:
        for p in procs:
            if not p.poll():
                p.kill()
                p.wait(5)
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def account_sender(
    acc: SenderAccount,
    deliveries: list[np.ndarray],
    dropped_queue: list[int] | np.ndarray,
    dropped_close: list[int] | np.ndarray,
    *,
    arrivals: list[np.ndarray] | None = None,
    rx_drops: list[np.ndarray] | None = None,
    restart_ready: float | None = None,
) -> SenderAccount:
    """Put each of a sender's frames ``0 .. acc.produced-1`` into exactly one bucket (a pure function).

    Args:
        acc: The sender's account with ``produced`` (and ``transport_dropped``) filled in; updated in place.
        deliveries: Per receiver process, in order, the records (fields ``seq``, ``t``) of frames it decoded.
        dropped_queue: Sequence numbers the sender's queue dropped.
        dropped_close: Sequence numbers still queued when the sender closed.
        arrivals: Per receiver process, the sequence numbers that arrived there (default: what it decoded or
            dropped, i.e. a receiver that accounted for everything it took in).
        rx_drops: Per receiver process, records (fields ``seq``, ``reason``: index in :data:`RX_REASONS`) of
            frames it dropped undecoded.
        restart_ready: Unix time the second receiver was ready (``None``: no restart). Every receiver but the
            last was killed.

    Returns:
        ``acc`` with every bucket, duplicates, ``unexplained``, and the resume/outage times.
    """
    n_rx = len(deliveries)
    rx_drops = rx_drops if rx_drops is not None else [np.zeros(0, DRP_DTYPE) for _ in range(n_rx)]

    def seqs_of(parts: list) -> np.ndarray:
        return np.concatenate([np.asarray(x, np.int64) for x in parts]) if parts else np.zeros(0, np.int64)

    got = seqs_of([d["seq"] for d in deliveries])
    uniq = np.unique(got)
    acc.duplicates = int(len(got) - len(uniq))
    valid = uniq[uniq < acc.produced]
    acc.delivered = int(len(valid))
    q = np.unique(np.asarray(dropped_queue, np.int64))
    c = np.unique(np.asarray(dropped_close, np.int64))
    acc.dropped_queue, acc.dropped_close = int(len(q)), int(len(c))
    rx_all = seqs_of([d["seq"] for d in rx_drops])
    rx_reason = np.concatenate([np.asarray(d["reason"], np.int64) for d in rx_drops]) if rx_drops else rx_all
    rx_uniq = np.unique(rx_all)
    acc.rx_dropped = {}
    for code, reason in enumerate(RX_REASONS):
        n = len(np.unique(rx_all[rx_reason == code]))
        if n:
            acc.rx_dropped[reason] = int(n)
    dropped = np.union1d(np.union1d(q, c), rx_uniq)
    # delivered and also dropped, dropped twice (sender and receiver, or by two reasons), or beyond what was
    # produced: never explainable
    clash = len(np.intersect1d(valid, dropped)) + len(np.intersect1d(q, c)) + int(len(uniq) - len(valid))
    clash += len(np.intersect1d(rx_uniq, np.union1d(q, c))) + int(len(rx_all) - len(rx_uniq))
    clash += int((dropped >= acc.produced).sum())
    missing = np.setdiff1d(np.arange(acc.produced), np.union1d(valid, dropped))
    if arrivals is None:
        arrivals = [np.union1d(d["seq"], r["seq"]) for d, r in zip(deliveries, rx_drops, strict=True)]
    arrived = [np.unique(np.asarray(a, np.int64)) for a in arrivals]
    explained = np.zeros(len(missing), bool)
    acc.lost_restart = acc.lost_restart_queued = acc.lost_at_end = 0
    acc.resume_s = acc.outage_s = None
    if restart_ready is not None and n_rx > 1:
        # in the killed receiver's queues: it recorded their arrival, then died before deciding on them
        queued = np.isin(missing, arrived[0])
        # in the sockets: never arrived anywhere, between the last arrival at #1 and the first at #2
        last1 = int(arrived[0].max()) if len(arrived[0]) else -1
        first2 = int(arrived[1].min()) if len(arrived[1]) else acc.produced
        never = ~np.isin(missing, np.concatenate(arrived))
        in_sockets = never & (missing > last1) & (missing < first2)
        acc.lost_restart_queued = int(queued.sum())
        acc.lost_restart = acc.lost_restart_queued + int(in_sockets.sum())
        explained |= queued | in_sockets
        second = deliveries[1]
        if len(second):
            t_first2 = float(second["t"].min())
            acc.resume_s = round(t_first2 - restart_ready, 3)
            first = deliveries[0]
            if len(first):
                acc.outage_s = round(t_first2 - float(first["t"].max()), 3)
    last_arrived = max((int(a.max()) for a in arrived if len(a)), default=-1)
    tail = (missing > last_arrived) & ~explained
    acc.lost_at_end = int(tail.sum())
    explained |= tail
    acc.unexplained = int((~explained).sum()) + clash
    return acc


def _worker(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("sender", "receiver"):
        print("usage: python -m cae_edge.benchmark.soak sender|receiver CONFIG.json", file=sys.stderr)
        return 2
    cfg = json.loads(Path(argv[1]).read_text())
    return _sender_main(cfg) if argv[0] == "sender" else _receiver_main(cfg)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
