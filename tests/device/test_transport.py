"""PUSH/PULL links on 127.0.0.1, random ports: delivery, drop policies, receiver restarts, bad endpoints."""

from __future__ import annotations

import time

import pytest
import zmq

from cae_edge.device.transport import PullReceiver, PushSender, ReceiverOptions, SenderOptions
from cae_edge.errors import ConfigError

WAIT_S = 10.0  # upper bound for things that must happen; never a timing assertion


def _free_endpoint() -> str:
    """An endpoint nobody listens on (bound once by the OS, then released)."""
    with PullReceiver("tcp://127.0.0.1:*") as rx:
        return rx.endpoint


def _drain(rx: PullReceiver, n: int) -> list[bytes]:
    got: list[bytes] = []
    for _ in range(100):
        got += [m.data for m in rx.recv_many(timeout_s=WAIT_S / 100)]
        if len(got) >= n:
            break
    return got


def test_delivery_in_order() -> None:
    with (
        PullReceiver("tcp://127.0.0.1:*") as rx,
        PushSender(rx.endpoint, SenderOptions(queue_size=500)) as tx,
    ):
        assert rx.port and rx.endpoint.endswith(f":{rx.port}")
        assert tx.wait_connected(WAIT_S)
        msgs = [b"frame-%d" % i for i in range(200)]
        for m in msgs:
            tx.send(m)
        assert tx.flush(WAIT_S) == 0
        assert _drain(rx, 200) == msgs
        assert tx.stats.sent == 200 and tx.stats.dropped == 0 and tx.stats.connects == 1
        assert rx.stats.received == 200
    assert tx.closed and rx.closed


def test_many_senders_one_receiver() -> None:
    with PullReceiver("tcp://127.0.0.1:*") as rx:
        senders = [PushSender(rx.endpoint) for _ in range(3)]
        try:
            for s in senders:
                assert s.wait_connected(WAIT_S)
            for i in range(50):
                for k, s in enumerate(senders):
                    s.send(b"%d:%d" % (k, i))
            for s in senders:
                s.flush(WAIT_S)
            got = _drain(rx, 150)
        finally:
            for s in senders:
                s.close()
    assert len(got) == 150
    for k in range(3):  # each sender's frames arrive in order
        assert [int(m.split(b":")[1]) for m in got if m.startswith(b"%d:" % k)] == list(range(50))
    assert rx.stats.connects == 3


@pytest.mark.parametrize(("policy", "kept"), [("drop-oldest", range(92, 100)), ("drop-newest", range(8))])
def test_no_receiver_never_blocks_and_drops_by_policy(policy: str, kept: range) -> None:
    endpoint = _free_endpoint()
    with PushSender(endpoint, SenderOptions(queue_size=8, policy=policy)) as tx:
        for i in range(100):  # would hang here if send blocked on the absent receiver
            tx.send(b"%d" % i)
        assert tx.stats.dropped == 92 and tx.stats.queued == 8 and tx.stats.sent == 0
        with PullReceiver(endpoint) as rx:
            assert tx.wait_connected(WAIT_S)
            assert tx.flush(WAIT_S) == 0
            assert _drain(rx, 8) == [b"%d" % i for i in kept]


def test_receiver_restart_resumes_delivery() -> None:
    rx = PullReceiver("tcp://127.0.0.1:*")
    endpoint = rx.endpoint
    with PushSender(endpoint, SenderOptions(queue_size=4)) as tx:
        assert tx.wait_connected(WAIT_S)
        tx.send(b"before")
        tx.flush(WAIT_S)
        assert _drain(rx, 1) == [b"before"]
        rx.close()
        deadline = time.monotonic() + WAIT_S
        while tx.stats.peers and time.monotonic() < deadline:  # the receiver is gone; the sender keeps going
            tx.send(b"while-down")
            time.sleep(0.02)  # let the disconnect event arrive
        assert tx.stats.disconnects == 1
        with PullReceiver(endpoint) as rx2:
            assert tx.wait_connected(WAIT_S)
            tx.send(b"after")
            tx.flush(WAIT_S)
            got: list[bytes] = []
            while b"after" not in got and time.monotonic() < deadline + WAIT_S:
                got += _drain(rx2, 1)
        assert tx.stats.connects == 2
        assert b"after" in got and b"before" not in got


def test_close_gives_up_on_an_absent_receiver() -> None:
    tx = PushSender(_free_endpoint(), SenderOptions(queue_size=50, close_flush_s=0.0))
    for i in range(10):
        tx.send(b"%d" % i)
    tx.close()
    assert tx.closed and tx.stats.lost_at_close == 10 and tx.stats.queued == 0
    tx.close()  # idempotent
    with pytest.raises(ConfigError, match="closed"):
        tx.send(b"x")


def test_security_hook_is_applied_and_closed() -> None:
    calls: list[str] = []

    class Recorder:
        def apply(self, sock: zmq.Socket) -> None:
            calls.append(f"apply {sock.type}")

        def close(self) -> None:
            calls.append("close")

    with PullReceiver("tcp://127.0.0.1:*", ReceiverOptions(security=Recorder())):
        pass
    assert calls == [f"apply {zmq.PULL}", "close"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: PushSender("tcp://*:5555"), "'\\*' is for --bind"),
        (lambda: PushSender("not-an-endpoint"), "not-an-endpoint"),
        (lambda: PushSender("tcp://127.0.0.1:1", SenderOptions(policy="block")), "queue policy 'block'"),
        (lambda: PushSender("tcp://127.0.0.1:1", SenderOptions(queue_size=0)), "queue size 0"),
        (lambda: PullReceiver("tcp://256.1.1.1:99999"), "tcp://256.1.1.1:99999"),
    ],
)
def test_bad_endpoints_and_options(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_address_in_use() -> None:
    with PullReceiver("tcp://127.0.0.1:*") as rx:
        with pytest.raises(ConfigError, match="another receiver"):
            PullReceiver(rx.endpoint)
