"""A receiver a fleet can trust: revocation, visible refusals, bounded messages, no libzmq abort, CLI checks.

Real sockets on 127.0.0.1 with random ports; every wait has a deadline (never a timing assertion).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from cae_edge import wire
from cae_edge.device import security
from cae_edge.device.lograte import RateLimitedLog
from cae_edge.device.transport import (
    PullReceiver,
    PushSender,
    ReceiverOptions,
    SenderOptions,
    check_endpoint,
)
from cae_edge.errors import ConfigError, LinkRefusedError

WAIT_S = 15.0  # upper bound for things that must happen; never a timing assertion


@pytest.fixture
def keys(tmp_path: Path) -> dict:
    """A receiver pair, node pairs a/b (allowed) and rogue (not), and the allowed-keys directory."""
    out = {name: security.generate_keypair(name, tmp_path / name) for name in ("receiver", "a", "b", "rogue")}
    out["other-rx"] = security.generate_keypair("other-rx", tmp_path / "orx")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for name in ("a", "b"):
        shutil.copy(out[name].public_path, allowed)
    out["allowed"] = allowed
    return out


def _server(keys: dict, events: list | None = None, **kw) -> PullReceiver:
    curve = security.CurveServer(
        security.SecurityOptions(key=keys["receiver"].secret_path, allowed_keys=keys["allowed"])
    )
    hook = None if events is None else (lambda kind, msg: events.append((kind, msg)))
    return PullReceiver("tcp://127.0.0.1:*", ReceiverOptions(security=curve, on_event=hook, **kw))


def _client(keys: dict, who: str, server: str = "receiver", **kw) -> SenderOptions:
    opts = security.SecurityOptions(key=keys[who].secret_path, server_key=keys[server].public_path)
    return SenderOptions(security=security.CurveClient(opts), reconnect_ivl_max_ms=200, **kw)


def _until(cond, step, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT_S} s")
        step()


# ------------------------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    ("endpoint", "bind", "match"),
    [
        ("tcp://127.0.0.1:99999", True, "port '99999' must be 1 .. 65535"),
        ("tcp://127.0.0.1:65536", False, "port '65536'"),
        ("tcp://127.0.0.1:0", False, "port '0'"),
        ("tcp://127.0.0.1:*", False, "port '\\*'"),
        ("tcp://127.0.0.1:-1", True, "port '-1'"),
        ("tcp://127.0.0.1", True, "use tcp://HOST:PORT"),
        ("udp://127.0.0.1:5555", True, "use tcp://HOST:PORT"),
        ("tcp://*:5555", False, "'\\*' is for --bind"),
    ],
)
def test_bad_endpoints_are_refused(endpoint: str, bind: bool, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_endpoint(endpoint, bind=bind)


@pytest.mark.parametrize(
    ("endpoint", "bind"),
    [
        ("tcp://*:5555", True),
        ("tcp://127.0.0.1:*", True),
        ("tcp://0.0.0.0:0", True),
        ("tcp://[::1]:65535", False),
        ("tcp://cam-1.local:1", False),
        ("ipc:///tmp/x", False),
    ],
)
def test_good_endpoints_pass(endpoint: str, bind: bool) -> None:
    assert check_endpoint(endpoint, bind=bind) == endpoint


def test_receiver_never_binds_a_wrapped_port() -> None:
    with pytest.raises(ConfigError, match="99999"):
        PullReceiver("tcp://127.0.0.1:99999")


# --------------------------------------------------------------------------------------- rate-limited log


def test_rate_limited_log_passes_a_few_lines_per_window_then_counts() -> None:
    now = [0.0]
    lines: list[str] = []
    log = RateLimitedLog(lines.append, lines=3, window_s=10.0, clock=lambda: now[0])
    passed = [log("pair", f"refused {i}") for i in range(1000)]
    assert passed == [True] * 3 + [False] * 997
    assert log("crc", "other category") is True  # categories are independent
    assert lines == ["refused 0", "refused 1", "refused 2", "other category"]
    now[0] = 10.5
    assert log("pair", "next window")
    assert lines[-2:] == ["... and 997 more 'pair' messages in 10 s (counted, not logged)", "next window"]
    log("pair", "x"), log("pair", "y"), log("pair", "suppressed")
    log.flush()
    assert lines[-1] == "... and 1 more 'pair' messages in 10 s (counted, not logged)"
    assert log.suppressed == 998


# ----------------------------------------------------------------------------------------- revocation


def test_revoked_key_loses_its_connection_and_others_reconnect(keys: dict) -> None:
    events: list = []
    with (
        _server(keys, events, revoke_check_s=0.2) as rx,
        PushSender(rx.endpoint, _client(keys, "a", give_up_refused_s=0)) as a,
        PushSender(rx.endpoint, _client(keys, "b")) as b,
    ):
        got: list = []

        def pump(tag: bytes = b"x") -> None:
            a.send(b"a-" + tag)
            b.send(b"b-" + tag)
            got.extend(rx.recv_many(timeout_s=0.02))

        _until(lambda: {m.peer for m in got} == {"a", "b"}, pump, "both nodes delivering")
        (keys["allowed"] / "a.key").unlink()  # the operator revokes node a
        revoked_at = time.monotonic()
        _until(lambda: a.stats.refused_by.get("key", 0) >= 1, pump, "node a refused after revocation")
        assert a.stats.disconnects >= 1 and a.stats.peers == 0
        assert rx.stats.revocations == 1 and rx.stats.refused_by.get("key", 0) >= 1
        assert rx.options.security.stats.revoked == ["a"]
        assert any(kind == "revoked" and "key a removed" in msg for kind, msg in events)
        assert any(kind == "key" and "not in --allowed-keys" in msg for kind, msg in events)
        print(f"revocation to refusal: {time.monotonic() - revoked_at:.2f} s")
        # b reconnected by itself; a delivers nothing any more
        got.clear()
        _until(lambda: sum(m.peer == "b" for m in got) >= 20, lambda: pump(b"late"), "node b after the drop")
        assert all(m.peer == "b" for m in got)
        assert b.stats.connects >= 2 and not b.stats.refused


def test_emptied_allowed_directory_admits_no_one(keys: dict) -> None:
    with _server(keys) as rx:  # starting with an empty directory is an error; emptying it later is not
        for f in keys["allowed"].glob("*.key"):
            f.unlink()
        a = PushSender(rx.endpoint, _client(keys, "a", give_up_refused_s=0))
        _until(
            lambda: a.stats.refused_by.get("key", 0) >= 2,
            lambda: (a.send(b"x"), rx.recv_many(timeout_s=0.02)),
            "node a refused twice",
        )
        assert rx.options.security.stats.allowed_keys == 0
        assert rx.options.security.stats.accepted == {}
        assert rx.recv_many(timeout_s=0.2) == []
        a.close()


def test_a_damaged_key_file_does_not_keep_a_removed_key_trusted(keys: dict) -> None:
    curve = security.CurveServer(
        security.SecurityOptions(key=keys["receiver"].secret_path, allowed_keys=keys["allowed"])
    )
    a_key = keys["a"].public_key.encode()
    assert curve.provider.callback("*", a_key)
    (keys["allowed"] / "a.key").unlink()
    (keys["allowed"] / "broken.key").write_text("not a certificate")
    assert not curve.provider.callback("*", a_key)
    assert "broken.key" in curve.stats.reload_error
    assert curve.stats.allowed_keys == 1  # b stays trusted
    assert curve.poll_revoked(0) == ["a"]  # a had connected: revoked
    assert curve.poll_revoked(0) == []


# ------------------------------------------------------------------------------------ visible refusals


@pytest.mark.parametrize(
    ("who", "server", "insecure", "rx_kind", "reason"),
    [
        ("rogue", "receiver", False, "key", "not in its --allowed-keys"),
        ("a", "other-rx", False, "crypto", "pinned --server-key"),
        ("a", "receiver", True, "mechanism", "CURVE keys.*--insecure"),
    ],
)
def test_refused_sender_gives_up_with_the_reason_and_receiver_counts_it(
    keys: dict, who: str, server: str, insecure: bool, rx_kind: str, reason: str
) -> None:
    events: list = []
    if insecure:
        opts = SenderOptions(reconnect_ivl_max_ms=200, give_up_refused_s=1.0)
    else:
        opts = _client(keys, who, server, give_up_refused_s=1.0)
    with _server(keys, events) as rx, PushSender(rx.endpoint, opts) as tx:
        deadline = time.monotonic() + WAIT_S
        with pytest.raises(LinkRefusedError, match=reason) as info:
            while time.monotonic() < deadline:
                tx.send(b"frame")
                rx.recv_many(timeout_s=0.02)
        assert "was refused" in str(info.value)
        _until(lambda: rx.stats.refused_by.get(rx_kind, 0) >= 1, lambda: rx.recv_many(0.05), "receiver count")
        assert rx.stats.received == 0 and tx.stats.peers == 0
        assert any(kind == rx_kind for kind, _ in events)


def test_insecure_sender_to_secured_receiver_is_refused_at_wait_connected(keys: dict) -> None:
    with _server(keys) as rx, PushSender(rx.endpoint, SenderOptions(give_up_refused_s=0.5)) as tx:
        deadline = time.monotonic() + WAIT_S
        with pytest.raises(LinkRefusedError, match="--insecure"):
            while time.monotonic() < deadline:
                tx.wait_connected(0.05)
                rx.recv_many(timeout_s=0.02)


# ------------------------------------------------------------------------------------- message size cap


def test_oversize_message_is_refused_and_others_are_served() -> None:
    with PullReceiver("tcp://127.0.0.1:*") as rx, PushSender(rx.endpoint) as good:
        assert rx.options.max_message_bytes == wire.MAX_PACKET_BYTES + 64
        ctx = zmq.Context()
        big = ctx.socket(zmq.PUSH)
        big.linger = 0
        big.connect(rx.endpoint)
        try:
            big.send(b"\0" * (8 << 20))  # 8 MB: refused from its size header, never buffered
            _until(lambda: rx.stats.disconnects >= 1, lambda: rx.recv_many(timeout_s=0.05), "oversize drop")
            got: list = []
            _until(
                lambda: len(got) >= 5,
                lambda: (good.send(b"small"), got.extend(rx.recv_many(timeout_s=0.05))),
                "the good sender",
            )
            assert {m.data for m in got} == {b"small"}
        finally:
            big.close()
            ctx.term()


# ------------------------------------------------------------------------------------------ libzmq abort

_ABORT_SCENARIO = r"""
import sys, threading, time
from cae_edge.device.transport import PullReceiver, PushSender, ReceiverOptions, SenderOptions

# An overloaded receiver (tiny queue, slow consumer) whose senders hang up while it is full: with ZMTP
# heartbeats on either end this aborts libzmq <= 4.3.5 (`!_io_error`, stream_engine_base.cpp:310).
extra = dict(heartbeat_ivl_ms=int(sys.argv[1])) if len(sys.argv) > 1 else {}
with PullReceiver("tcp://127.0.0.1:*", ReceiverOptions(rcvhwm=100, **extra)) as rx:
    def sender():
        with PushSender(rx.endpoint, SenderOptions(sndhwm=100, close_flush_s=0, **extra)) as tx:
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                tx.send(b"x" * 40)
                time.sleep(0.0002)
    threads = [threading.Thread(target=sender) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        if rx.recv_many(max_n=1, timeout_s=0.01):
            time.sleep(0.002)
    for t in threads:
        t.join()
print("no abort")
"""


def test_overloaded_receiver_whose_senders_hang_up_does_not_abort() -> None:
    """The `!_io_error` trigger, with the default options (no heartbeats): 3 runs, none may abort.

    With ``heartbeat_ivl_ms=1`` on both ends the same scenario aborted in most runs here (see docs/fleet.md).
    """
    for _ in range(3):
        r = subprocess.run(
            [sys.executable, "-c", _ABORT_SCENARIO], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr[-500:]
        assert "no abort" in r.stdout
