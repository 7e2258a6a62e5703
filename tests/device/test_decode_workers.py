"""``--workers N``: decode in N - 1 worker processes and the receiver's own, each sender's frames in order
wherever they were decoded, a dead worker counted and replaced, every frame decoded or counted. Real sockets,
the real shipped bundle, real worker processes (and, for the order across places, a stand-in pool the test
answers in the order it chooses)."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from cae_edge import wire
from cae_edge.device import receiver
from cae_edge.device.bundle import load_bundle
from cae_edge.device.capture import SyntheticSource
from cae_edge.device.decode_pool import (
    BATCH,
    IN_FLIGHT,
    MAX_IN_FLIGHT,
    WORKER_FAILED,
    Answer,
    DecodePool,
    batches_in_flight,
)
from cae_edge.device.preprocess import Preprocessor
from cae_edge.device.receiver import ReceiveOptions, ReceiverStats, even_share, receive_pipeline
from cae_edge.device.transport import PullReceiver, PushSender, Received, SenderOptions
from cae_edge.errors import ConfigError
from cae_edge.wire import Packet

WAIT_S = 60.0  # upper bound for things that must happen; never a timing assertion
NAMES = ("cam-a", "cam-b", "cam-c", "cam-d", "cam-e")
FRAMES = 200


@pytest.fixture(scope="module")
def frames() -> tuple[object, list[bytes], list[np.ndarray]]:
    """The mnist bundle, 40 encoded payloads and what the in-process decoder makes of them."""
    bundle = load_bundle("mnist")
    pre, enc, dec = Preprocessor(bundle.preprocess), bundle.encoder(), bundle.decoder()
    synth = SyntheticSource("mnist", seed=3)
    payloads = [enc.encode(pre(synth.frame(i))) for i in range(40)]
    return bundle, payloads, [dec.decode(p) for p in payloads]


class Recorder:
    """A sink that keeps what it was given, in order."""

    def __init__(self) -> None:
        self.got: dict[str, list[tuple[int, np.ndarray]]] = {}

    def write(self, sender: str, seq: int, image: np.ndarray) -> None:
        self.got.setdefault(sender, []).append((seq, image.copy()))

    def close(self) -> None:
        pass


def _send(endpoint: str, bundle, name: str, payloads: list[bytes], n: int, pace_s: float = 0.0) -> None:
    pair, kind = wire.pair_prefix(bundle.pair_id), receive_pipeline(bundle).kind
    with PushSender(endpoint, SenderOptions(queue_size=n)) as tx:
        tx.wait_connected(WAIT_S)
        for seq in range(n):
            p = Packet(
                pair, wire.sender_id(name), seq, time.time_ns() // 1000 & wire.MASK32,
                payloads[seq % len(payloads)], kind,
                sender_name=name if seq == 0 else None, epoch=5 if seq == 0 else None,
            )  # fmt: skip
            tx.send(wire.pack(p))
            if pace_s:
                time.sleep(pace_s)
        tx.close(flush_s=WAIT_S)


def _receive(bundle, options: ReceiveOptions, sinks: list, n_per_sender: int, on_stats=None, pace_s=0.0):
    pipe = receive_pipeline(bundle)
    with PullReceiver("tcp://127.0.0.1:*") as link:
        senders = [
            threading.Thread(target=_send, args=(link.endpoint, bundle, name, PAYLOADS, n_per_sender, pace_s))
            for name in NAMES
        ]
        for th in senders:
            th.start()
        try:
            return pipe.run(link, sinks, options, on_stats=on_stats)
        finally:
            for th in senders:
                th.join(WAIT_S)


PAYLOADS: list[bytes] = []


def _identity(stats: ReceiverStats) -> None:
    for ps in stats.senders.values():
        assert ps.received == ps.frames + sum(ps.dropped.values()) + ps.queued
    assert stats.received == stats.frames + sum(stats.dropped.values()) + stats.queued


def test_two_decode_processes_keep_each_senders_frames_in_order_and_decode_them_as_one_does(frames) -> None:
    bundle, payloads, images = frames
    PAYLOADS[:] = payloads
    sink = Recorder()
    total = FRAMES * len(NAMES)
    options = ReceiveOptions(
        workers=2, max_age_ms=0, queue_per_sender=total, max_frames=total, idle_timeout_s=WAIT_S
    )
    stats = _receive(bundle, options, [sink], FRAMES)
    assert stats.status == "finished" and stats.frames == total and stats.workers == 2
    assert len(stats.worker_pids) == 1 and os.getpid() not in stats.worker_pids  # one worker + this process
    assert stats.worker_restarts == 0 and stats.dropped == {} and stats.rejected == {}
    assert 0 <= stats.decoded_here <= total
    assert set(sink.got) == set(NAMES)
    for name in NAMES:
        seqs = [seq for seq, _ in sink.got[name]]
        assert seqs == list(range(FRAMES))  # every frame, in the order sent
        for seq, image in sink.got[name]:
            assert np.array_equal(image, images[seq % len(images)])
    _identity(stats)
    assert stats.worker_idle_s >= 0  # waits between batches, counted (a paced feed leaves the worker idle)


def test_a_killed_worker_is_counted_and_replaced(frames) -> None:
    bundle, payloads, images = frames
    with DecodePool(bundle.path, 2) as pool:
        first = pool.pids[0]
        os.kill(first, signal.SIGKILL)
        for i in range(10):  # handed to a worker that is dead: they come back as failed
            pool.submit(0, i, payloads[i])
        back: dict[int, tuple] = {}
        deadline = time.monotonic() + WAIT_S
        while len(back) < 10 and time.monotonic() < deadline:
            for token, image, reason, _msg, _ns in pool.results(0.1):
                back[token] = (image, reason)
        assert pool.restarts == 1 and pool.pids[0] != first
        # sent before it was seen dead: failed as "worker"; if the send failed, the new one decoded them
        for i, (image, reason) in back.items():
            assert (reason == WORKER_FAILED and image is None) or np.array_equal(image, images[i])
        pool.submit(0, "after", payloads[0])  # the replacement decodes
        got = []
        deadline = time.monotonic() + WAIT_S
        while not got and time.monotonic() < deadline:
            got += list(pool.results(0.1))
        assert got[0][0] == "after" and np.array_equal(got[0][1], images[0])


def test_a_worker_killed_mid_stream_is_replaced_and_every_frame_still_counted(frames) -> None:
    bundle, payloads, _ = frames
    PAYLOADS[:] = payloads
    killed: list[int] = []

    def kill_once(s: ReceiverStats) -> None:
        if not killed and s.frames >= 50 and s.worker_pids:
            killed.append(s.worker_pids[0])
            os.kill(s.worker_pids[0], signal.SIGKILL)

    options = ReceiveOptions(
        workers=2, max_age_ms=0, queue_per_sender=FRAMES, idle_timeout_s=5.0, stats_every_s=0.02
    )
    stats = _receive(bundle, options, [Recorder()], FRAMES, on_stats=kill_once, pace_s=0.002)
    assert killed and stats.worker_restarts == 1 and killed[0] not in stats.worker_pids
    assert set(stats.dropped) <= {"worker"} and stats.rejected == {}
    assert stats.received == FRAMES * len(NAMES) and stats.queued == 0
    assert stats.frames + stats.dropped.get("worker", 0) == stats.received  # decoded or counted
    _identity(stats)


def test_a_refused_payload_comes_back_in_its_place_and_the_rest_of_its_batch_decodes(frames) -> None:
    bundle, payloads, images = frames
    bad = payloads[3][:-1] + bytes([payloads[3][-1] ^ 0xFF]) + b"\x00" * 40  # not what the decoder takes
    sent = [payloads[0], b"", payloads[1], bad, payloads[2]]
    with DecodePool(bundle.path, 2) as pool:
        for i, payload in enumerate(sent):
            pool.submit(1, i, payload)
        back = []
        deadline = time.monotonic() + WAIT_S
        while len(back) < len(sent) and time.monotonic() < deadline:
            back += list(pool.results(0.1))
    assert [token for token, *_ in back] == [0, 1, 2, 3, 4]  # one batch, in the order submitted
    for (token, image, reason, message, _ns), want in zip(back, (0, None, 1, None, 2), strict=True):
        if want is None:
            assert image is None and reason and message, (token, reason)
        else:
            assert reason is None and np.array_equal(image, images[want])


def test_worker_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="workers 0"):
        ReceiveOptions(workers=0).check()
    with pytest.raises(ConfigError, match="workers 65: must be 1 .. 64 decode processes"):
        ReceiveOptions(workers=65).check()
    with pytest.raises(ConfigError, match="0 decode worker processes: use 1 .. 63"):
        DecodePool("mnist", 0)


class _AllAtOnce:
    """A receiver link that offers every packet in its first batch (so the receiver's first step sees them
    all queued), then nothing."""

    endpoint, closed, options = "memory", False, None

    def __init__(self, packets: list[bytes]) -> None:
        self.msgs = [Received(data, None) for data in packets]
        self.stats = type("LinkStats", (), {"connects": 0, "peers": 0})()

    def recv_many(self, max_n: int = 256, timeout_s: float = 0.1) -> list[Received]:
        out, self.msgs = self.msgs[:max_n], self.msgs[max_n:]
        if not out:
            time.sleep(timeout_s)
        return out


def _packets(bundle, payloads: list[bytes], per_sender: int, bad: set[tuple[str, int]] = frozenset()) -> list:
    """``per_sender`` frames of each of :data:`NAMES`, interleaved; ``bad``: (name, seq) with a payload the
    decoder refuses."""
    pair, kind = wire.pair_prefix(bundle.pair_id), receive_pipeline(bundle).kind
    t0 = time.time_ns() // 1000
    out = []
    for seq in range(per_sender):
        for name in NAMES:
            payload = b"\x01" if (name, seq) in bad else payloads[seq % len(payloads)]
            p = Packet(
                pair, wire.sender_id(name), seq, (t0 + seq) & wire.MASK32, payload, kind, sender_name=name
            )
            out.append(wire.pack(p))
    return out


@pytest.mark.parametrize("workers", [2, 3])
def test_the_receivers_process_decodes_what_the_workers_have_no_room_for_in_order(frames, workers) -> None:
    bundle, payloads, images = frames
    per_sender = 60
    total = per_sender * len(NAMES)
    link = _AllAtOnce(_packets(bundle, payloads, per_sender))
    sink = Recorder()
    options = ReceiveOptions(
        workers=workers, max_age_ms=0, batch=total, queue_per_sender=total, max_frames=total,
        idle_timeout_s=WAIT_S,
    )  # fmt: skip
    stats = receive_pipeline(bundle).run(link, [sink], options)  # type: ignore[arg-type]
    assert stats.status == "finished" and stats.frames == total and stats.workers == workers
    assert len(stats.worker_pids) == workers - 1 and stats.worker_cpu_s > 0
    # the first step finds every frame queued: the workers take what fills their batches, this process more
    assert 0 < stats.decoded_here < total
    assert stats.dropped == {} and stats.rejected == {} and stats.queued == 0
    for name in NAMES:
        assert [seq for seq, _ in sink.got[name]] == list(range(per_sender))
        for seq, image in sink.got[name]:
            assert np.array_equal(image, images[seq % len(images)])
    _identity(stats)


class _HeldPool:
    """Stands in for the decode pool: holds what it is given, ``room`` frames per worker, until the test
    answers (in the order it chooses)."""

    escaped = restarts = 0
    cpu_s = idle_s = 0.0

    def __init__(self, workers: int, room: int) -> None:
        self.held: list[list] = [[] for _ in range(workers)]
        self.size = room
        self.pids = [0] * workers

    def room(self) -> list[int]:
        return [self.size - len(h) for h in self.held]

    def submit(self, index: int, token, payload: bytes) -> None:
        self.held[index].append((token, payload))

    def flush(self) -> None:
        pass


def test_a_senders_frames_settle_in_order_across_workers_and_this_process(frames) -> None:
    """Frames decoded here wait for their sender's earlier frames in a worker; a worker's answer that comes
    back out of order, a dead worker's frames and a refused payload each settle in their place."""
    bundle, payloads, images = frames
    ledger_seen: list[tuple[int, int, str]] = []

    class Ledger:
        def arrived(self, packets) -> None:
            pass

        def dropped(self, p: Packet, reason: str) -> None:
            ledger_seen.append((p.sender_id, p.seq, reason))

        def delivered(self, p: Packet, age_us: int) -> None:
            ledger_seen.append((p.sender_id, p.seq, "delivered"))

    pipe = receive_pipeline(bundle)
    sink = Recorder()
    link = _AllAtOnce([])
    rx = receiver._Receiving(
        link, pipe.decoder, bundle.pair_id, pipe.kind, [sink], lambda _m: None,
        ReceiveOptions(workers=3, max_age_ms=0), Ledger(),
    )  # fmt: skip
    rx.pool = pool = _HeldPool(2, room=4)
    names = NAMES[:3]
    per_sender = 6
    bad = ("cam-c", 3)  # decoded here, refused
    packets = [
        p for p in _packets(bundle, payloads, per_sender, {bad}) if wire.unpack(p).sender_name in names
    ]
    rx.arrive([Received(p, None) for p in packets])
    items = rx.next_frames(100, 0.0)
    assert [(p.sender_name, p.seq) for _, p, _ in items][:4] == [
        ("cam-a", 0),
        ("cam-b", 0),
        ("cam-c", 0),
        ("cam-a", 1),
    ]
    rx.hand_off(items, pool.room())
    # 4 frames to each worker, the other 10 decoded here: none delivered, each waits for an earlier frame
    assert [len(h) for h in pool.held] == [4, 4] and rx.decoded_here == 9  # and cam-c 3 refused
    assert sink.got == {} and ledger_seen == [] and rx.report(0.0).queued == len(items)

    def answer(held: list) -> Answer:
        return Answer([t for t, _ in held], np.stack([pipe.decoder.decode(pl) for _, pl in held]), {}, 1000)

    rx.returned(answer(pool.held[1]))  # the second worker answers first: still all behind the first's
    assert sink.got == {}
    rx.returned(Answer.failing([t for t, _ in pool.held[0]], WORKER_FAILED, "decode worker died"))
    died = {("cam-a", 0), ("cam-b", 0), ("cam-c", 0), ("cam-a", 1)}
    stats = rx.report(0.0)
    assert stats.queued == 0 and rx.inflight == 0
    assert stats.dropped == {"worker": 4, "payload": 1} and stats.rejected == {"payload": 1}
    assert stats.frames == len(items) - 5 and stats.decoded_here == 9
    for name in names:
        ps = stats.senders[name]
        assert ps.received == ps.frames + sum(ps.dropped.values()) + ps.queued == per_sender
        want = [seq for seq in range(per_sender) if (name, seq) not in died and (name, seq) != bad]
        assert [seq for seq, _ in sink.got[name]] == want  # in order, wherever each was decoded
        for seq, image in sink.got[name]:
            assert np.array_equal(image, images[seq % len(images)])
        sid = wire.sender_id(name)
        assert [seq for s, seq, _ in ledger_seen if s == sid] == list(range(per_sender))  # settled in order


def test_a_worker_holds_enough_batches_for_a_few_switch_intervals_of_decoding() -> None:
    ahead = 15e6  # ns
    assert (
        batches_in_flight(200_000, ahead) == IN_FLIGHT
    )  # slow decode: 75 frames are 15 ms, two batches hold them
    assert batches_in_flight(30_000, ahead) == -(-500 // BATCH)  # 500 frames: 8 batches
    assert batches_in_flight(100, ahead) == MAX_IN_FLIGHT  # however fast: no more than this
    assert batches_in_flight(0, ahead) == MAX_IN_FLIGHT


def test_the_workers_share_is_capped_only_towards_the_end_of_a_bounded_run() -> None:
    assert even_share([128, 100], [0, 28], 10_000) == [128, 100]  # under way: what fills their batches
    # 90 left + 28 held: 40 each for the two workers and this process; the second already holds 28
    assert even_share([128, 100], [0, 28], 90) == [40, 12]
    assert even_share([0, 0], [128, 128], 0) == [-42, -42]  # they hold more than their share (86): none
    assert even_share([128], [0], 1) == [1]


def test_the_receive_thread_gives_way_while_the_queues_are_deep_and_still_takes_every_frame(frames) -> None:
    bundle, payloads, _ = frames
    per_sender = 120
    total = per_sender * len(NAMES)
    link = _AllAtOnce(_packets(bundle, payloads, per_sender))
    pipe = receive_pipeline(bundle)
    rx = receiver._Receiving(
        link, pipe.decoder, bundle.pair_id, pipe.kind, [], lambda _m: None,
        ReceiveOptions(workers=2, max_age_ms=0, queue_per_sender=total), None,
    )  # fmt: skip
    pump = receiver._ReceiveThread(link, rx, 64, give_way=100)  # nobody takes from the queues
    pump.start()
    deadline = time.monotonic() + WAIT_S
    while rx.queued < total and time.monotonic() < deadline:
        time.sleep(0.01)
    pump.halt.set()
    pump.join(WAIT_S)
    assert pump.error is None and rx.queued == total
    assert pump.gave_way == -(-total // 64) - 1  # after each batch that left more than 100 queued
    stats = rx.report(0.0)
    assert stats.received == total and stats.dropped == {}
    _identity(stats)
