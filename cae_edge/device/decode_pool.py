"""Decode in worker processes, so that a receiver is not one Python core (``stream receive --workers N``:
N - 1 of these workers, the receiver's own process decoding too).

::

    main process                                      worker processes (spawned, one decoder each)
    fresh frames ─► a worker with room ──────────► pipe: one message ─► decode batch ─┐
    (handed off in batches, one lock)                  per batch (≤ 64)              │
    sinks, accounting ◄─ answers in order ◄─ pipe: one array of images + the failures ◄┘
    (main process)

Each worker decodes its batches in the order they came and answers in that order, and the caller takes the
answers in the order each worker sent them; the receiver puts each sender's frames back in order wherever
they were decoded (:class:`cae_edge.device.receiver._Ticket`). Per batch the main process sends one message
(the payloads) and gets one back (the decoded images as one array, the frames the decoder refused by index,
the batch's decode time), so what a frame costs beyond its decode is a few list operations on each side.
Each worker holds enough batches for a few of the interpreter's switch intervals of decoding
(:data:`AHEAD_SWITCHES`), so that it does not run dry while the receiver's process is late to refill it; the
time it waited for a batch after answering one is reported (:attr:`DecodePool.idle_s`). A worker that dies
is started again; the frames it held are returned as failed (the receiver counts them as dropped, reason
``worker``).

Workers are started with ``spawn`` (never ``fork``: the parent has ZeroMQ and threads running).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import selectors
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CaeEdgeError, ConfigError, PacketError

BATCH = 64
"""Frames sent to a worker in one message, at most."""
IN_FLIGHT = 2
"""Batches a worker holds at least room for (one decoding, one waiting); more while a batch decodes in less
than :data:`AHEAD_SWITCHES` interpreter switch intervals (:meth:`DecodePool.room`)."""
MAX_IN_FLIGHT = 16
"""Batches a worker holds at most, however fast its decoder."""
AHEAD_SWITCHES = 3
"""A worker is given work for this many of the interpreter's switch intervals (``sys.getswitchinterval()``,
5 ms: 15 ms), measured by its decode time per frame. The receiver's process refills the workers from its
main loop, and while its receive thread is busy (a burst of packets) the main loop waits up to one switch
interval for the interpreter lock each time it lets go of it (a decode call, a pipe write): a worker holding
less than that runs dry meanwhile. More would only add age."""
START_TIMEOUT_S = 60.0
"""A worker that has not loaded its decoder by then is a configuration problem."""

WORKER_FAILED = "worker"
"""Reason returned for frames a worker held when it died."""


def _worker(conn: Connection, bundle: str, threads: int) -> None:  # pragma: no cover - runs in a child
    """Load the bundle's decoder, then decode batches until told to stop (``None``) or the pipe closes.

    Each answer is compact: the decoded images as one array, the failures by index (most batches have none),
    the batch's decode time, and this process's CPU time, escape count and idle time (waiting for a batch
    after answering one) so far.
    """
    import os
    import signal

    # Ctrl-C or a service stop reaches the whole process group: the parent stops, then closes us (and if it
    # dies, our pipe ends and so do we)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from .bundle import load_bundle

    decoder = load_bundle(bundle).decoder(threads)
    decode, codec = decoder.decode, getattr(decoder, "codec", None)
    conn.send(("ready", os.getpid()))
    cpu0 = time.process_time()  # decoding only, not the start-up
    ns = time.perf_counter_ns
    recv, send = conn.recv, conn.send
    idle_ns, answered = 0, 0
    while True:
        try:
            batch = recv()
        except EOFError:
            return
        if batch is None:
            return
        if answered:  # waiting for work between two batches: the worker ran dry (not before the first)
            idle_ns += ns() - answered
        images: list[np.ndarray] = []
        failed: dict[int, tuple[str, str]] = {}
        t0 = ns()
        for i, payload in enumerate(batch):  # the same call as the inline path: nothing else per frame
            try:
                images.append(decode(payload))
            except (PacketError, CaeEdgeError, ValueError) as e:
                failed[i] = (getattr(e, "reason", "payload"), str(e))
        t_ns = ns() - t0
        stacked = np.stack(images) if images else None  # one array to pickle, not one per frame
        cpu = time.process_time() - cpu0
        send((stacked, failed, t_ns, cpu, getattr(codec, "escaped_decoded", 0), idle_ns / 1e9))
        answered = ns()


def batches_in_flight(decode_ns: float, ahead_ns: float) -> int:
    """Batches of :data:`BATCH` a worker should hold to have ``ahead_ns`` of decoding at ``decode_ns`` per
    frame: at least :data:`IN_FLIGHT`, at most :data:`MAX_IN_FLIGHT`."""
    frames = ahead_ns / max(decode_ns, 1.0)
    return min(MAX_IN_FLIGHT, max(IN_FLIGHT, math.ceil(frames / BATCH)))


@dataclass(slots=True)
class Answer:
    """One batch back from a worker: its tokens in the order submitted, the decoded images of those not in
    ``failed`` (in the same order), and why the others failed."""

    tokens: list[Any]
    """What :meth:`DecodePool.submit` was given with each frame, in the order submitted."""
    images: np.ndarray | None
    """Decoded images, one per token not in ``failed``, in token order (None: none decoded)."""
    failed: dict[int, tuple[str, str]]
    """Token index -> (reason, message) for the frames not decoded."""
    decode_ns: int
    """Time the worker spent decoding the whole batch."""

    @classmethod
    def failing(cls, tokens: list[Any], reason: str, message: str) -> Answer:
        """Every frame of ``tokens`` failed for ``reason``."""
        return cls(tokens, None, dict.fromkeys(range(len(tokens)), (reason, message)), 0)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def decode_ns_each(self) -> int:
        """The batch's decode time per frame (its mean)."""
        return self.decode_ns // max(1, len(self.tokens))

    def __iter__(self) -> Iterator[tuple[Any, Any, str | None, str | None]]:
        """(token, image or None, reason, message) per frame, in order."""
        images, failed, k = self.images, self.failed, 0
        for i, token in enumerate(self.tokens):
            if i in failed:
                reason, message = failed[i]
                yield token, None, reason, message
            else:
                yield token, images[k], None, None  # type: ignore[index]
                k += 1


class _Worker:
    __slots__ = ("proc", "conn", "pid", "tokens", "payloads", "sent", "cpu_s", "escaped", "idle_s")

    def __init__(self) -> None:
        self.proc: Any = None
        self.conn: Connection | None = None
        self.pid = 0
        self.tokens: list[Any] = []
        """Tokens of the frames not yet sent."""
        self.payloads: list[bytes] = []
        """Their payloads."""
        self.sent: deque[list[Any]] = deque()
        """Tokens of the batches sent and not yet answered, oldest first."""
        self.cpu_s = 0.0
        self.escaped = 0
        self.idle_s = 0.0


class DecodePool:
    """``workers`` processes, each with the bundle's decoder.

    :meth:`submit` a frame for a worker (the caller picks it, e.g. one with :meth:`room`), :meth:`answers`
    yields the batches that came back (:meth:`results`: frame by frame), in order per worker.
    Not thread-safe: one thread drives it.

    Raises:
        ConfigError: bad worker count, or a worker could not start (its bundle failed to load).
    """

    def __init__(self, bundle: str | Path, workers: int, threads: int = 1) -> None:
        if not 1 <= workers <= 63:
            raise ConfigError(
                f"{workers} decode worker processes: use 1 .. 63 (the receiver's own process decodes too)"
            )
        self.bundle, self.threads = str(bundle), threads
        self.ctx = mp.get_context("spawn")
        self.selector = selectors.DefaultSelector()
        """Each worker's pipe and process sentinel, registered once (not a new poll set per wait)."""
        self.workers = [_Worker() for _ in range(workers)]
        self.restarts = 0
        """Workers started again after they died."""
        self.cpu_dead_s = 0.0
        """CPU seconds of workers that died or stopped (as last reported)."""
        self.idle_dead_s = 0.0
        """Idle seconds of workers that died or stopped (as last reported)."""
        self.decode_ns = 0.0
        """Decode time per frame in the workers, moving average over batches (0: none answered yet)."""
        self.in_flight_max = IN_FLIGHT
        """Batches each worker may hold now (:meth:`room`)."""
        self.ahead_ns = AHEAD_SWITCHES * sys.getswitchinterval() * 1e9
        for w in self.workers:
            self._start(w)
        for w in self.workers:
            self._await_ready(w)

    def __len__(self) -> int:
        return len(self.workers)

    def _start(self, w: _Worker) -> None:
        parent, child = self.ctx.Pipe()
        w.proc = self.ctx.Process(
            target=_worker, args=(child, self.bundle, self.threads), name="cae-edge-decode", daemon=True
        )
        w.proc.start()
        child.close()
        w.conn, w.cpu_s, w.escaped, w.idle_s = parent, 0.0, 0, 0.0
        self.selector.register(parent, selectors.EVENT_READ, w)
        self.selector.register(w.proc.sentinel, selectors.EVENT_READ, w)

    def _await_ready(self, w: _Worker) -> None:
        assert w.conn is not None
        if not w.conn.poll(START_TIMEOUT_S):
            raise ConfigError(
                f"a decode worker did not start within {START_TIMEOUT_S:.0f} s (bundle {self.bundle})"
            )
        try:
            _, w.pid = w.conn.recv()
        except EOFError:
            raise ConfigError(
                f"a decode worker died while loading bundle {self.bundle} (exit code {w.proc.exitcode}); "
                "run with --workers 1 to see the error"
            ) from None

    @property
    def pids(self) -> list[int]:
        """Worker process ids, by worker index."""
        return [w.pid for w in self.workers]

    @property
    def in_flight(self) -> int:
        """Frames submitted and not yet returned."""
        return sum(self.held())

    def held(self) -> list[int]:
        """Frames each worker holds now (sent and not answered, or waiting to be sent)."""
        return [len(w.tokens) + sum(map(len, w.sent)) for w in self.workers]

    def room(self) -> list[int]:
        """Frames each worker can be given now: what fills its batches in flight, less what it holds.

        A worker holds :data:`IN_FLIGHT` batches of :data:`BATCH`, or more (up to :data:`MAX_IN_FLIGHT`)
        while that is less than :data:`AHEAD_SWITCHES` switch intervals of decoding at the workers' decode
        time per frame."""
        full = BATCH * self.in_flight_max
        return [full - h for h in self.held()]

    @property
    def idle_s(self) -> float:
        """Seconds the workers waited for a batch after answering one (ran dry), all workers together."""
        return self.idle_dead_s + sum(w.idle_s for w in self.workers)

    def _timed(self, answer: Answer) -> None:
        """Follow the workers' decode time per frame; size the batches in flight by it."""
        if not answer.tokens or answer.images is None:
            return
        each = answer.decode_ns / len(answer.tokens)
        self.decode_ns = each if not self.decode_ns else self.decode_ns + (each - self.decode_ns) / 8
        self.in_flight_max = batches_in_flight(self.decode_ns, self.ahead_ns)

    @property
    def cpu_s(self) -> float:
        """CPU seconds the workers spent decoding so far, start-up excluded (reported with every answer)."""
        return self.cpu_dead_s + sum(w.cpu_s for w in self.workers)

    @property
    def escaped(self) -> int:
        return sum(w.escaped for w in self.workers)

    def submit(self, index: int, token: Any, payload: bytes) -> None:
        """Queue ``payload`` for worker ``index``; ``token`` comes back with its result."""
        w = self.workers[index]
        w.tokens.append(token)
        w.payloads.append(payload)

    def has_room(self) -> bool:
        """Whether some worker could take another batch now."""
        return any(len(w.sent) < self.in_flight_max for w in self.workers)

    def flush(self) -> None:
        """Send pending frames to each worker that has room for another batch (one message per batch)."""
        for w in self.workers:
            while w.tokens and len(w.sent) < self.in_flight_max:
                payloads = w.payloads[:BATCH]
                try:
                    w.conn.send(payloads)  # type: ignore[union-attr]
                except (BrokenPipeError, ConnectionResetError, OSError):
                    break  # still pending: the sentinel tells answers() it died
                w.sent.append(w.tokens[:BATCH])
                del w.tokens[:BATCH], w.payloads[:BATCH]

    def answers(self, timeout_s: float) -> Iterator[Answer]:
        """The batches answered within ``timeout_s``, in order per worker.

        A dead worker's batches come back with every frame failed (reason :data:`WORKER_FAILED`), and the
        worker is started again.
        """
        self.flush()
        if not any(w.sent or w.tokens for w in self.workers):
            return
        restarted: set[int] = set()
        for key, _ in self.selector.select(timeout_s):
            w = key.data
            if id(w) in restarted:
                continue
            if key.fileobj is w.conn or w.conn.poll():  # type: ignore[union-attr]  # an answer, or EOF: died
                try:
                    images, failed, t_ns, w.cpu_s, w.escaped, w.idle_s = w.conn.recv()  # type: ignore[union-attr]
                except (EOFError, OSError):
                    restarted.add(id(w))
                    yield from self._restart(w)
                    continue
                answer = Answer(w.sent.popleft(), images, failed, t_ns)
                self._timed(answer)
                yield answer
            else:  # died, nothing left in the pipe
                restarted.add(id(w))
                yield from self._restart(w)
        self.flush()

    def results(self, timeout_s: float) -> Iterator[tuple[Any, Any, str | None, str | None, int]]:
        """:meth:`answers` frame by frame: (token, image or None, reject reason, message, decode ns: the
        batch's mean)."""
        for answer in self.answers(timeout_s):
            for token, image, reason, message in answer:
                yield token, image, reason, message, answer.decode_ns_each

    def _restart(self, w: _Worker) -> Iterator[Answer]:
        code = w.proc.exitcode
        w.proc.join(1.0)
        self.selector.unregister(w.conn)
        self.selector.unregister(w.proc.sentinel)
        w.conn.close()  # type: ignore[union-attr]
        self.cpu_dead_s += w.cpu_s
        self.idle_dead_s += w.idle_s
        lost = [token for batch in w.sent for token in batch]
        w.sent.clear()
        self.restarts += 1
        self._start(w)
        self._await_ready(w)
        if lost:
            yield Answer.failing(lost, WORKER_FAILED, f"decode worker died (exit code {code})")

    def take_all(self) -> list[Any]:
        """Tokens of every frame not yet returned, forgotten here (answers still to come are ignored)."""
        out = []
        for w in self.workers:
            out += [token for batch in w.sent for token in batch]
            out += w.tokens
            w.sent.clear()
            w.tokens, w.payloads = [], []
        return out

    def close(self) -> None:
        """Stop the workers (what they still hold is not returned)."""
        for w in self.workers:
            try:
                w.conn.send(None)  # type: ignore[union-attr]
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 2.0
        for w in self.workers:
            while w.proc.is_alive() and time.monotonic() < deadline:  # answers still coming: read, ignore
                try:
                    if w.conn.poll(0.05):  # type: ignore[union-attr]
                        answer = w.conn.recv()  # type: ignore[union-attr]
                        w.cpu_s, w.idle_s = answer[3], answer[5]
                except (EOFError, OSError):
                    break
            w.proc.join(0.5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(1.0)
            w.conn.close()  # type: ignore[union-attr]
            self.cpu_dead_s += w.cpu_s
            self.idle_dead_s += w.idle_s
            w.cpu_s = w.idle_s = 0.0
        self.selector.close()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
