"""The receiver under overload: bounded age, fair turns, every frame decoded or counted, no abort.

The policy tests drive the receiver's steps on a simulated clock (the decoder advances it), so they are exact
whatever the machine's load; the last test overloads a real receiver over real sockets.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from cae_edge import wire
from cae_edge.device import receiver
from cae_edge.device.bundle import load_bundle
from cae_edge.device.capture import SyntheticSource
from cae_edge.device.preprocess import Preprocessor
from cae_edge.device.receiver import ReceiveOptions, run_receiver
from cae_edge.device.sender import SendOptions, run_sender
from cae_edge.device.transport import PullReceiver, PushSender, Received, SenderOptions
from cae_edge.errors import ConfigError
from cae_edge.payload import payload_kind
from cae_edge.wire import Packet

WAIT_S = 60.0  # upper bound for things that must happen; never a timing assertion
PAIR = "0123456789abcdef"


class Clock:
    """Simulated microseconds: the receiver reads it, the fake decoder advances it."""

    def __init__(self) -> None:
        self.us = 1_700_000_000_000_000

    def __call__(self) -> int:
        return self.us


class SlowDecoder:
    """Takes ``cost_us`` of simulated time per frame."""

    def __init__(self, clock: Clock, cost_us: int) -> None:
        self.clock, self.cost_us = clock, cost_us

    def decode(self, payload: bytes) -> np.ndarray:
        self.clock.us += self.cost_us
        return np.zeros((28, 28), np.uint8)


class Ledger:
    def __init__(self) -> None:
        self.arrivals: list[tuple[int, int]] = []
        self.drops: list[tuple[int, int, str]] = []
        self.ages: dict[int, list[int]] = {}
        self.lock = threading.Lock()

    def arrived(self, packets: list[Packet]) -> None:
        with self.lock:
            self.arrivals += [(p.sender_id, p.seq) for p in packets]

    def dropped(self, p: Packet, reason: str) -> None:
        with self.lock:
            self.drops.append((p.sender_id, p.seq, reason))

    def delivered(self, p: Packet, age_us: int) -> None:
        with self.lock:
            self.ages.setdefault(p.sender_id, []).append(age_us)


def simulate(
    clock: Clock,
    options: ReceiveOptions,
    *,
    senders: int,
    period_us: int,
    cost_us: int,
    seconds: float,
    skew_us: int = 0,
):
    """``senders`` senders making a frame every ``period_us`` each, a decoder taking ``cost_us`` per frame.

    Between decodes the receive thread's step takes in everything produced so far (as the real one does).
    Returns the final stats and the ledger.
    """
    monkey = pytest.MonkeyPatch()
    monkey.setattr(receiver, "now_us", clock)
    try:
        ledger = Ledger()
        link = SimpleNamespace(endpoint="sim", closed=True)
        rx = receiver._Receiving(
            link, SlowDecoder(clock, cost_us), PAIR, wire.PayloadKind.INT8, [], print, options, ledger
        )
        names = [f"cam-{i}" for i in range(senders)]
        made = [0] * senders
        start, end = clock.us, clock.us + int(seconds * 1e6)
        while clock.us < end:
            batch = []
            for i, name in enumerate(names):
                while start + made[i] * period_us + i <= clock.us:  # capture time of the next frame
                    t = start + made[i] * period_us + i - skew_us
                    p = Packet(
                        wire.pair_prefix(PAIR), wire.sender_id(name), made[i], t & wire.MASK32, b"\x00" * 16,
                        sender_name=name if made[i] % 100 == 0 else None,
                        epoch=7 if made[i] % 100 == 0 else None,
                    )  # fmt: skip
                    batch.append(Received(wire.pack(p), None))
                    made[i] += 1
            if batch:
                rx.arrive(batch)
            item = rx.next_frame(0.0)
            if item is None:
                clock.us += 100
            else:
                rx.serve(*item)
        rx.drop_queued()
        return rx.report(0.0), ledger, made
    finally:
        monkey.undo()


@pytest.mark.parametrize("load", [2, 5])
def test_overload_keeps_age_bounded_turns_fair_and_counts_every_frame(load: int) -> None:
    clock = Clock()
    cost, senders = 1000, 4  # the decoder does 1000 frames/s; the senders offer `load` times that
    stats, ledger, made = simulate(
        clock,
        ReceiveOptions(max_age_ms=250),
        senders=senders,
        period_us=senders * cost // load,
        cost_us=cost,
        seconds=3.0,
    )
    ages = np.concatenate([np.array(a) for a in ledger.ages.values()])
    assert ages.max() <= 250_000  # no frame decoded older than the bound...
    assert np.percentile(ages, 99) <= 125_000 + cost  # ...and under overload the newest win: half of it
    decoded = [p.frames for p in stats.senders.values()]
    assert max(decoded) - min(decoded) <= 2  # each sender its turn
    assert stats.frames == sum(decoded) >= 0.95 * 3.0 * 1e6 / cost  # the decoder was never idle
    for (name, ps), n in zip(sorted(stats.senders.items()), made, strict=True):
        assert ps.received == n == ps.frames + sum(ps.dropped.values()), name
        assert ps.dropped.get("stale", 0) > 0 and ps.lost == 0 and ps.restarts == 0 and ps.queued == 0
        assert ps.latency_ms["p99"] <= 250
    assert len(ledger.arrivals) == sum(made)
    assert len(ledger.drops) == sum(stats.dropped.values()) == sum(made) - stats.frames


def test_no_age_bound_and_a_small_queue_drop_the_oldest_as_backlog() -> None:
    clock = Clock()
    stats, ledger, made = simulate(
        clock,
        ReceiveOptions(max_age_ms=0, queue_per_sender=8),
        senders=2,
        period_us=500,
        cost_us=1000,
        seconds=1,
    )
    for ps, n in zip(stats.senders.values(), made, strict=True):
        assert set(ps.dropped) <= {"backlog", "shutdown"} and ps.dropped["backlog"] > 0
        assert ps.received == n == ps.frames + sum(ps.dropped.values())
    # drop-oldest: a sender's decoded sequence numbers only ever go up, and the last ones made got through
    assert max(seq for _, seq, reason in ledger.drops if reason == "backlog") < max(made) - 8


def test_a_sender_clock_far_off_is_measured_not_dropped_as_stale() -> None:
    clock = Clock()
    stats, _, made = simulate(
        clock,
        ReceiveOptions(max_age_ms=50),
        senders=1,
        period_us=2000,
        cost_us=500,
        seconds=1,
        skew_us=10_000_000,
    )
    (ps,) = stats.senders.values()
    assert ps.frames == made[0] and ps.dropped == {}  # 10 s "old" by its clock, fresh by arrival
    assert ps.clock_offset_ms == pytest.approx(10_000, abs=1)
    assert ps.latency_ms["max"] < 50


def _packet(seq: int, t_us: int, epoch: int | None = None, name: str = "cam") -> Packet:
    return Packet(b"abcd", wire.sender_id(name), seq & wire.MASK32, t_us & wire.MASK32, b"", epoch=epoch)


def test_sequence_accounting_restarts_by_epoch_wraps_and_never_explodes() -> None:
    logs: list[str] = []

    def log(kind: str, message: str) -> None:
        logs.append(message)

    peer = receiver._Peer(wire.sender_id("cam"))
    t = 1_000_000_000
    seqs = [(0, 5), (1, None), (2, None), (6, None), (7, 5)]  # 3 lost (3, 4, 5)
    for seq, epoch in seqs:
        t += 1000
        peer.sequence(_packet(seq, t, epoch), t, log)
    assert (peer.stats.lost, peer.stats.restarts) == (3, 0)
    # a restart whose first (named) packets were dropped: seq goes back first, the new epoch comes later
    for seq, epoch in [(3, None), (4, None), (5, 9)]:
        t += 1000
        peer.sequence(_packet(seq, t, epoch), t, log)
    assert (peer.stats.lost, peer.stats.restarts) == (3, 1)
    # the 32-bit sequence wraps: not a restart, not 4 billion lost
    for seq in (wire.MASK32 - 1, wire.MASK32, 0, 2):  # 1 lost
        t += 1000
        peer.sequence(_packet(seq, t), t, log)
    assert (peer.stats.lost, peer.stats.restarts, peer.stats.jumps) == (4, 1, 0)
    # two processes under one name, interleaved: A (epoch 9, seq ~100000) and B (epoch 11, seq ~10).
    # B's first epoch looks like a restart; A's epoch coming back gives them away: flagged once, and the
    # interleaved sequence numbers count as neither losses nor restarts
    for k in range(200):
        t += 1000
        if k % 2 == 0:
            peer.sequence(_packet(100_000 + k, t, 9 if k % 20 == 0 else None), t, log)
        else:
            peer.sequence(_packet(10 + k, t, 11 if k % 20 == 1 else None), t, log)
    assert peer.stats.id_conflict and sum("at once" in line for line in logs) == 1
    assert (peer.stats.lost, peer.stats.restarts) == (4, 2)


def test_options_are_checked() -> None:
    for bad, match in [
        (ReceiveOptions(max_age_ms=-1), "max age"),
        (ReceiveOptions(queue_per_sender=0), "queue per sender"),
        (ReceiveOptions(batch=0), "batch"),
    ]:
        with pytest.raises(ConfigError, match=match):
            bad.check()


# ------------------------------------------------------------------------------------------- real sockets


@pytest.mark.slow
def test_overloaded_receiver_never_aborts_and_accounts_for_every_frame() -> None:
    """3 full-rate senders into a receiver whose sink takes 3 ms a frame (far beyond 5x overload)."""
    bundle = load_bundle("mnist")

    class SlowSink:
        def write(self, sender: str, seq: int, image: np.ndarray) -> None:
            time.sleep(0.003)

        def close(self) -> None:
            pass

    ledger = Ledger()
    stop = threading.Event()
    result: dict = {}
    with PullReceiver("tcp://127.0.0.1:*") as link:

        def receive() -> None:
            result["stats"] = run_receiver(
                link, bundle.decoder(), pair_id=bundle.pair_id, kind=payload_kind(bundle.coding),
                sinks=[SlowSink()], options=ReceiveOptions(max_age_ms=100), stop=stop, ledger=ledger,
            )  # fmt: skip

        rx_thread = threading.Thread(target=receive)
        rx_thread.start()
        sent = {}

        def send(i: int) -> None:
            name = f"load-{i}"
            with PushSender(link.endpoint, SenderOptions(queue_size=64)) as tx:
                s = run_sender(
                    SyntheticSource("mnist", seed=i, limit=1500), Preprocessor(bundle.preprocess),
                    bundle.encoder(), tx, pair_id=bundle.pair_id,
                    options=SendOptions(name=name, wait_connected_s=WAIT_S),
                )  # fmt: skip
                tx.close(flush_s=WAIT_S)
                sent[name] = s.absorb(tx.stats)

        senders = [threading.Thread(target=send, args=(i,)) for i in range(3)]
        for th in senders:
            th.start()
        for th in senders:
            th.join(WAIT_S * 2)
        deadline = time.monotonic() + WAIT_S
        while len(ledger.arrivals) < sum(s.sent for s in sent.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        rx_thread.join(WAIT_S)
        assert not rx_thread.is_alive()
        connects = link.stats.connects
    stats = result["stats"]
    assert connects == 3  # a backlogged receiver kept every connection: no heartbeat timeout, no reconnect
    assert stats.rejected == {} and set(stats.senders) == set(sent)
    for name, s in sent.items():
        ps = stats.senders[name]
        assert s.frames == 1500 and s.connects == 1 and s.sent + s.drops["queue"] + s.drops["close"] == 1500
        assert ps.received == s.sent  # everything handed to ZeroMQ arrived...
        assert ps.received == ps.frames + sum(ps.dropped.values())  # ...and was decoded or counted
        assert ps.lost <= s.drops["queue"] + s.drops["close"] and ps.restarts == 0
    assert stats.dropped.get("stale", 0) + stats.dropped.get("backlog", 0) > 0  # it was overloaded


@pytest.mark.slow
def test_a_stalled_receiver_keeps_its_senders_and_counts_what_went_stale() -> None:
    """The decode loop stalls 5 s (longer than the 3-s heartbeat timeout) while 3 senders send 100 fps."""
    bundle = load_bundle("mnist")

    class StallingSink:
        stalled = False

        def write(self, sender: str, seq: int, image: np.ndarray) -> None:
            if not self.stalled:
                self.stalled = True
                time.sleep(5.0)

        def close(self) -> None:
            pass

    stop = threading.Event()
    result: dict = {}
    with PullReceiver("tcp://127.0.0.1:*") as link:

        def receive() -> None:
            result["stats"] = run_receiver(
                link, bundle.decoder(), pair_id=bundle.pair_id, kind=payload_kind(bundle.coding),
                sinks=[StallingSink()], options=ReceiveOptions(), stop=stop,
            )  # fmt: skip

        rx_thread = threading.Thread(target=receive)
        rx_thread.start()
        sent = {}

        def send(i: int) -> None:
            name = f"cam-{i}"
            with PushSender(link.endpoint) as tx:
                s = run_sender(
                    SyntheticSource("mnist", seed=i, limit=800), Preprocessor(bundle.preprocess),
                    bundle.encoder(), tx, pair_id=bundle.pair_id,
                    options=SendOptions(name=name, fps=100, wait_connected_s=WAIT_S),
                )  # fmt: skip
                tx.close(flush_s=WAIT_S)
                sent[name] = s.absorb(tx.stats)

        senders = [threading.Thread(target=send, args=(i,)) for i in range(3)]
        for th in senders:
            th.start()
        for th in senders:
            th.join(WAIT_S * 2)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if sum(x.sent for x in sent.values()) <= link.stats.received:
                break
            time.sleep(0.05)
        stop.set()
        rx_thread.join(WAIT_S)
        connects = link.stats.connects
    stats = result["stats"]
    assert connects == 3  # the stall timed no sender out
    assert stats.dropped.get("stale", 0) > 0  # what aged during the stall was dropped, and counted
    for name, s in sent.items():
        ps = stats.senders[name]
        assert s.connects == 1 and s.frames == 800
        assert ps.received == s.sent and ps.lost == s.dropped  # nothing vanished in between
        assert ps.received == ps.frames + sum(ps.dropped.values())


def test_the_receiver_stops_while_senders_keep_streaming() -> None:
    """--max-frames reached under a full-rate stream: the loop ends; what was queued is counted."""
    bundle = load_bundle("mnist")
    stop_tx = threading.Event()
    with PullReceiver("tcp://127.0.0.1:*") as link, PushSender(link.endpoint) as tx:

        def send() -> None:
            run_sender(
                SyntheticSource("mnist", seed=1), Preprocessor(bundle.preprocess), bundle.encoder(), tx,
                pair_id=bundle.pair_id, options=SendOptions(name="flood", wait_connected_s=WAIT_S),
                stop=stop_tx,
            )  # fmt: skip

        sender = threading.Thread(target=send)
        sender.start()
        try:
            stats = run_receiver(
                link, bundle.decoder(), pair_id=bundle.pair_id, kind=payload_kind(bundle.coding),
                options=ReceiveOptions(max_frames=50, idle_timeout_s=WAIT_S),
            )  # fmt: skip
        finally:
            stop_tx.set()
            sender.join(WAIT_S)
    assert stats.status == "finished" and stats.frames == 50
    ps = stats.senders["flood"]
    assert ps.received == ps.frames + sum(ps.dropped.values()) and ps.queued == 0


def test_senders_beyond_max_senders_are_forgotten_but_their_frames_still_count() -> None:
    clock = Clock()
    stats, ledger, made = simulate(
        clock, ReceiveOptions(max_senders=2), senders=5, period_us=1000, cost_us=1000, seconds=0.5
    )
    assert stats.evicted > 0 and len(stats.senders) <= 2
    assert stats.received == sum(made) == len(ledger.arrivals)
    assert stats.frames + sum(stats.dropped.values()) == stats.received and stats.queued == 0
    assert len(ledger.drops) == sum(stats.dropped.values())
