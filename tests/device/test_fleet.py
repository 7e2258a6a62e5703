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


# ----------------------------------------------------------------------------- receiver: identity, isolation


@pytest.fixture(scope="module")
def bundle():
    from cae_edge.device.bundle import load_bundle

    return load_bundle("mnist")


@pytest.fixture(scope="module")
def payload(bundle) -> bytes:
    from cae_edge import datasets
    from cae_edge.device.preprocess import Preprocessor

    digit = datasets.load("mnist").x_test[0]
    return bundle.encoder().encode(Preprocessor({**bundle.preprocess, "invert": False})(digit))


def _packet(bundle, payload: bytes, name: str, seq: int, sid: int | None = None, pair=None) -> bytes:
    from cae_edge.payload import payload_kind

    sid = wire.sender_id(name) if sid is None else sid
    return wire.pack(
        wire.Packet(
            pair or wire.pair_prefix(bundle.pair_id),
            sid,
            seq,
            seq,
            payload,
            payload_kind(bundle.coding),
            name if sid == wire.sender_id(name) else None,
        )
    )


def _run_receiver(bundle, link: PullReceiver, sinks: list, logs: list, **opts):
    """run_receiver on a thread; returns (thread, result holder)."""
    import threading

    from cae_edge.device.receiver import ReceiveOptions, run_receiver
    from cae_edge.payload import payload_kind

    out: dict = {}

    def run() -> None:
        out["stats"] = run_receiver(
            link,
            bundle.decoder(),
            pair_id=bundle.pair_id,
            kind=payload_kind(bundle.coding),
            sinks=sinks,
            # no age bound: these tests count every frame, and a busy machine must not turn one stale
            options=ReceiveOptions(idle_timeout_s=WAIT_S, **{"max_age_ms": 0, **opts}),
            on_log=logs.append,
        )

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _raw_push(ctx: zmq.Context, endpoint: str, keys: dict | None = None, who: str = "") -> zmq.Socket:
    push = ctx.socket(zmq.PUSH)
    push.linger = 2000
    if keys is not None:
        security.CurveClient(
            security.SecurityOptions(key=keys[who].secret_path, server_key=keys["receiver"].public_path)
        ).apply(push)
    push.connect(endpoint)
    return push


def test_identity_comes_from_the_key_not_the_claimed_name(keys: dict, bundle, payload, tmp_path) -> None:
    """Node b claims to be a: its frames stay b's (stats, folder); the claim is counted, not believed."""
    from cae_edge.device.sinks import PngSink

    logs: list[str] = []
    rx = _server(keys)
    thread, out = _run_receiver(bundle, rx, [PngSink(tmp_path / "out")], logs, max_frames=20)
    ctx = zmq.Context()
    a, b = _raw_push(ctx, rx.endpoint, keys, "a"), _raw_push(ctx, rx.endpoint, keys, "b")
    try:
        for seq in range(10):
            a.send(_packet(bundle, payload, "a", seq))
            b.send(_packet(bundle, payload, "a", 100 + seq))  # same claimed name and sender id as a
        thread.join(WAIT_S)
    finally:
        a.close(), b.close(), ctx.term(), rx.close()
    s = out["stats"]
    assert set(s.senders) == {"a", "b"}
    assert s.senders["a"].frames == 10 and s.senders["a"].name_mismatch == 0
    assert s.senders["b"].frames == 10 and s.senders["b"].name_mismatch == 10
    assert s.senders["b"].claimed == "a" and s.senders["b"].peer == "b"
    assert s.senders["a"].lost == 0 and s.senders["b"].lost == 0 and s.senders["b"].restarts == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "b"]
    assert len(list((tmp_path / "out" / "b").glob("*.png"))) == 10
    assert any("the node authenticated as b calls itself a" in line for line in logs)


def test_a_sink_failure_is_counted_and_the_receiver_goes_on(bundle, payload, tmp_path) -> None:
    """A sender named status.json, where a file of that name already is: its frames fail, nothing stops."""
    from cae_edge.device.sinks import PngSink

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "status.json").write_text("{}")
    logs: list[str] = []
    rx = PullReceiver("tcp://127.0.0.1:*")
    thread, out = _run_receiver(bundle, rx, [PngSink(out_dir)], logs, max_frames=20)
    ctx = zmq.Context()
    push = _raw_push(ctx, rx.endpoint)
    try:
        for seq in range(10):
            push.send(_packet(bundle, payload, "status.json", seq))
            push.send(_packet(bundle, payload, "cam", seq))
        thread.join(WAIT_S)
    finally:
        push.close(), ctx.term(), rx.close()
    s = out["stats"]
    assert s.status == "finished" and s.frames == 20 and s.sink_errors == 10
    assert len(list((out_dir / "cam").glob("*.png"))) == 10
    assert (out_dir / "status.json").read_text() == "{}"
    sink_lines = [line for line in logs if "PngSink could not write" in line]
    assert 1 <= len(sink_lines) <= 5  # rate-limited


def test_floods_of_ids_and_bad_packets_are_bounded(bundle, payload) -> None:
    """3000 distinct sender ids and 3000 packets with random pair ids: state capped, log lines capped."""
    import os

    logs: list[str] = []
    rx = PullReceiver("tcp://127.0.0.1:*")
    thread, out = _run_receiver(bundle, rx, [], logs, max_frames=3000, max_senders=100)
    ctx = zmq.Context()
    push = _raw_push(ctx, rx.endpoint)
    try:
        for i in range(3000):
            push.send(_packet(bundle, payload, "x", 0, pair=os.urandom(4)))  # wrong bundle, random pair
            push.send(_packet(bundle, payload, "x", 0, sid=(i * 7 + 1) & 0xFFFF))  # a new sender id
        thread.join(WAIT_S)
    finally:
        push.close(), ctx.term(), rx.close()
    s = out["stats"]
    assert s.rejected["pair"] == 3000 and s.frames == 3000
    assert len(s.senders) == 100 and s.evicted == 2900
    assert len(logs) < 40, logs[:50]  # a few lines per kind, not one per packet or sender
    assert s.log_suppressed > 5000


# ------------------------------------------------------------------------------------------------ CLI


def _cli(*args: str):
    from typer.testing import CliRunner

    from cae_edge.cli.main import app

    return CliRunner().invoke(app, ["stream", *args])


def _one_error_line(result, *words: str) -> None:
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1, result.output
    assert len(errors) == 1 and all(w in errors[0] for w in words), result.output
    assert "Traceback" not in result.output


def test_cli_receive_refuses_a_port_out_of_range(keys: dict) -> None:
    r = _cli(
        "receive", "--bind", "tcp://127.0.0.1:99999", "--keys", str(keys["receiver"].secret_path),
        "--allowed-keys", str(keys["allowed"]),
    )  # fmt: skip
    _one_error_line(r, "99999", "1 .. 65535")


def test_cli_send_refuses_a_frame_rate_below_one_an_hour() -> None:
    r = _cli(
        "send", "--source", "synthetic", "--connect", "tcp://127.0.0.1:5555", "--insecure", "--fps", "1e-9"
    )
    _one_error_line(r, "fps", "1e-09", "one an hour")


def test_cli_send_unlistable_folder_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    real_iterdir = Path.iterdir

    def iterdir(self: Path):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)  # root ignores chmod 000, so deny it here
    r = _cli("send", "--source", str(folder), "--connect", "tcp://127.0.0.1:5555", "--insecure")
    _one_error_line(r, str(folder), "cannot list", "Permission denied")


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--video", "x.xyz", ("unknown video type '.xyz'", ".avi")),
        ("--video", "{name}.avi", ("only field",)),
        ("--status", "out/status.json", ("--status", "inside --out", "status.json")),
        ("--json", "out/sub/rx.json", ("--json", "inside --out")),
    ],
)
def test_cli_receive_bad_output_paths(keys: dict, tmp_path: Path, flag: str, value: str, words) -> None:
    (tmp_path / "out" / "sub").mkdir(parents=True)
    r = _cli(
        "receive", "--bind", "tcp://127.0.0.1:*", "--keys", str(keys["receiver"].secret_path),
        "--allowed-keys", str(keys["allowed"]), "--out", str(tmp_path / "out"), flag, str(tmp_path / value),
        "--timeout", "0.2",
    )  # fmt: skip
    _one_error_line(r, *words)


def test_cli_refused_sender_exits_1_with_the_reason(keys: dict) -> None:
    """A node whose key the receiver does not allow stops with the reason instead of `sent 0`, exit 0."""
    with _server(keys) as rx:
        r = _cli(
            "send", "--source", "synthetic", "--connect", rx.endpoint, "--fps", "50", "--give-up-after", "1",
            "--keys", str(keys["rogue"].secret_path), "--server-key", str(keys["receiver"].public_path), "-q",
        )  # fmt: skip
        _one_error_line(r, "refused", "not in its --allowed-keys")


def test_allowed_key_file_names_must_be_usable_sender_names(keys: dict) -> None:
    shutil.copy(keys["rogue"].public_path, keys["allowed"] / "..key")  # would be sender "." (the --out root)
    with pytest.raises(security.KeyFileError, match="not a usable sender name"):
        security.load_allowed_keys(keys["allowed"])
    found, problems = security.scan_allowed_keys(keys["allowed"])
    assert sorted(found.values()) == ["a", "b"] and "not a usable sender name" in problems[0]


def test_frames_queued_during_an_outage_are_filed_under_the_name(bundle) -> None:
    """The receiver goes away mid-stream; frames made meanwhile wait in the sender's queue and reach the new
    receiver first: each must carry the name, or they would be filed (folders too) under id-XXXX."""
    from cae_edge import datasets
    from cae_edge.device.capture import ArraySource
    from cae_edge.device.preprocess import Preprocessor
    from cae_edge.device.sender import SendOptions, run_sender
    from cae_edge.device.sinks import MemorySink
    from cae_edge.payload import payload_kind

    first = PullReceiver("tcp://127.0.0.1:*")
    endpoint = first.endpoint
    frames = datasets.load("mnist").x_test[:12]
    pre = Preprocessor({**bundle.preprocess, "invert": False})

    with PushSender(endpoint, SenderOptions(queue_size=100)) as tx:

        class Outage(ArraySource):
            def read(self):
                if self._i == 4:  # the receiver dies; wait until the sender has noticed and ZeroMQ has
                    first.close()  # dropped its pipe (POLLOUT off: next frames wait in the sender's queue)
                    _until(
                        lambda: tx.stats.peers == 0 and not tx._sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT,
                        lambda: time.sleep(0.01),
                        "disconnect seen",
                    )
                return super().read()

        assert tx.wait_connected(WAIT_S)
        run_sender(
            Outage(frames), pre, bundle.encoder(), tx, pair_id=bundle.pair_id,
            options=SendOptions(name="cam", name_every_s=3600), kind=payload_kind(bundle.coding),
        )  # fmt: skip
        queued = tx.stats.queued  # made after the disconnect, waiting for a receiver
        assert queued >= 1
        sink, logs = MemorySink(), []
        second = PullReceiver(endpoint)
        thread, out = _run_receiver(bundle, second, [sink], logs, max_frames=queued)
        assert tx.flush(WAIT_S) == 0
        thread.join(WAIT_S)
        second.close()
    assert len(sink.frames) == queued and all(seq >= 4 for _, seq in sink.frames)
    assert {name for name, _ in sink.frames} == {"cam"} and set(out["stats"].senders) == {"cam"}
