"""The MQTT transport against a real mosquitto (TLS, passwords, ACLs) on 127.0.0.1: see ``mqtt_broker.py``.

In-process loops (run_sender / run_receiver with MqttSender / MqttReceiver) for the fine-grained checks; real
`cae-edge stream` processes where a process must die (a receiver killed, a node's last will).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import test_stream
from test_stream import direct, paper_frames
from typer.testing import CliRunner

from cae_edge import wire
from cae_edge.cli.main import app
from cae_edge.device import broker as brokercfg
from cae_edge.device.capture import ArraySource
from cae_edge.device.config import parse_node_config
from cae_edge.device.mqtt import (
    MqttOptions,
    MqttReceiver,
    MqttSender,
    MqttSenderOptions,
    parse_broker_url,
    read_password_file,
)
from cae_edge.device.preprocess import Preprocessor
from cae_edge.device.receiver import ReceiveOptions, run_receiver
from cae_edge.device.sender import SendOptions, run_sender
from cae_edge.device.sinks import MemorySink
from cae_edge.errors import ConfigError
from cae_edge.payload import payload_kind
from cae_edge.wire import PayloadKind

WAIT_S = 60.0  # upper bound for things that must happen (slow shared CI box); never a timing assertion
CLI = [sys.executable, "-c", "from cae_edge.cli.main import main; main()"]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "mqtt"
bundle, digits, entropy_bundle = (
    test_stream.bundle,
    test_stream.digits,
    test_stream.entropy_bundle,
)  # fixtures


def wait_for(what: str, predicate, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


class _Rx:
    """run_receiver with an MqttReceiver on its own thread, an in-memory sink and the log lines collected."""

    def __init__(self, broker, name: str, bundle, options: ReceiveOptions | None = None, **link_kw) -> None:
        self.logs: list[str] = []
        self.link = MqttReceiver(
            broker.url,
            broker.receiver_options(name, on_log=self.logs.append, pair_id=bundle.pair_id, **link_kw),
        )
        assert self.link.wait_connected(WAIT_S), f"{name} did not subscribe: {self.link.stats}"
        self.sink = MemorySink()
        self.stop = threading.Event()
        self.stats = None
        self.latest = None

        def run() -> None:
            self.stats = run_receiver(
                self.link,
                bundle.decoder(),
                pair_id=bundle.pair_id,
                kind=payload_kind(bundle.coding),
                sinks=[self.sink],
                options=options
                or ReceiveOptions(stats_every_s=0.0, max_age_ms=0),  # every frame: no age bound
                on_log=self.logs.append,
                on_stats=lambda st: setattr(self, "latest", st),
                stop=self.stop,
            )

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def seqs(self, node: str) -> list[int]:
        return sorted(seq for name, seq in list(self.sink.frames) if name == node)

    def finish(self):
        self.stop.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "receiver did not finish"
        self.link.close()
        return self.stats


class _Tx:
    """run_sender with an MqttSender on its own thread (a looping in-memory source, paced)."""

    def __init__(self, broker, name: str, bundle, frames, *, fps: float, limit: int | None = None, **kw):
        kw.setdefault("queue_size", 1000)
        self.link = MqttSender(broker.url, name, broker.sender_options(name, **kw), pair_id=bundle.pair_id)
        assert self.link.wait_connected(WAIT_S), f"{name} did not connect: {self.link.stats}"
        self.stop = threading.Event()
        self.stats = None
        source = ArraySource(frames, loop=True, limit=limit)

        def run() -> None:
            self.stats = run_sender(
                source,
                Preprocessor(bundle.preprocess),
                bundle.encoder(),
                self.link,
                pair_id=bundle.pair_id,
                options=SendOptions(name=name, fps=fps),
                stop=self.stop,
            )

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self):
        self.stop.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "sender did not finish"
        self.link.close(WAIT_S)
        return self.stats.absorb(self.link.stats)


# ------------------------------------------------------------------------------------ broker config files


def test_passwd_lines_are_mosquitto_pbkdf2_sha512() -> None:
    import base64
    import hashlib

    line = brokercfg.passwd_line("cam1", "s3cret", salt=b"0123456789ab")
    user, _, rest = line.partition(":")
    _, kind, rounds, salt, digest = rest.split("$")
    assert user == "cam1" and kind == "7" and int(rounds) == brokercfg.PBKDF2_ITERATIONS
    assert base64.b64decode(salt) == b"0123456789ab"
    want = hashlib.pbkdf2_hmac("sha512", b"s3cret", b"0123456789ab", int(rounds))
    assert base64.b64decode(digest) == want
    assert brokercfg.passwd_line("cam1", "s3cret") != brokercfg.passwd_line("cam1", "s3cret")  # fresh salts


def test_acl_lets_a_node_write_only_its_own_topics() -> None:
    acl = brokercfg.acl_file(["cam1", "cam2"], ["rx1"], prefix="site/cae")
    blocks = {b.split("\n")[1]: b for b in acl.split("\n\n") if b.startswith("# ") and "\nuser " in b}
    cam1 = blocks["user cam1"]
    assert "topic write site/cae/cam1/frames" in cam1 and "topic write site/cae/cam1/status" in cam1
    assert "cam2" not in cam1 and "read" not in cam1 and "+" not in cam1
    assert "topic read site/cae/+/frames" in blocks["user rx1"] and "write" not in blocks["user rx1"]
    assert "pattern" not in acl


def test_broker_config_bad_input() -> None:
    with pytest.raises(ConfigError, match="no --node"):
        brokercfg.write_broker_config("unused", [], ["rx1"])
    with pytest.raises(ConfigError, match="given twice"):
        brokercfg.write_broker_config("unused", ["cam1"], ["cam1"])
    with pytest.raises(ConfigError, match="sender name"):
        brokercfg.write_broker_config("unused", ["cam/1"], ["rx1"])
    for prefix in ("", "a/#", "/abs", "$SYS", "a//b"):
        with pytest.raises(ConfigError, match="topic prefix"):
            brokercfg.check_prefix(prefix)


def test_docs_example_is_what_the_generator_writes() -> None:
    """docs/mqtt/ holds `cae-edge mqtt broker-config --conf-dir /etc/mosquitto/cae-edge` output for cam1,
    cam2, rx1 (passwords and keys left out); regenerate it when the generator changes."""
    conf = brokercfg.mosquitto_conf("/etc/mosquitto/cae-edge", nodes=2)
    assert (DOCS / "mosquitto.conf").read_text() == conf
    assert (DOCS / "acl").read_text() == brokercfg.acl_file(["cam1", "cam2"], ["rx1"])
    lines = (DOCS / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["cam1", "cam2", "rx1"]
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in lines)


def test_broker_queue_grows_with_the_fleet() -> None:
    """A fixed queue of 200 lost frames at the broker for 50 nodes after a restart (the soak): the generated
    config holds 80 frames a node."""

    def queued(nodes: int, max_queued: int | None = None) -> int:
        conf = brokercfg.mosquitto_conf("/c", nodes=nodes, max_queued=max_queued)
        return int(next(x for x in conf.splitlines() if x.startswith("max_queued_messages ")).split()[1])

    assert queued(1) == queued(2) == 200
    assert queued(50) == 4000 and queued(100) == 8000
    assert queued(50, max_queued=123) == 123  # the soak's --broker-queue


def test_cli_writes_a_complete_config(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: the TLS files cannot be made")
    out = tmp_path / "cfg"
    r = CliRunner().invoke(
        app,
        ["mqtt", "broker-config", "--out", str(out), "--node", "cam1", "--receiver", "rx1", "--port", "9999"],
    )
    assert r.exit_code == 0, r.output
    for f in (
        "mosquitto.conf",
        "passwd",
        "acl",
        "tls/ca.crt",
        "tls/server.crt",
        "tls/server.key",
        "nodes/cam1.toml",
    ):
        assert (out / f).is_file(), f
    assert "listener 9999" in (out / "mosquitto.conf").read_text()
    for secret in ("passwd", "secrets/cam1.password", "secrets/rx1.password", "tls/ca.key", "tls/server.key"):
        assert (out / secret).stat().st_mode & 0o077 == 0, secret
    password = read_password_file(out / "secrets" / "cam1.password")
    assert len(password) >= 32 and password not in (out / "passwd").read_text()
    node = parse_node_config(
        {**__import__("tomllib").loads((out / "nodes/cam1.toml").read_text())}, out / "nodes/cam1.toml",
        check_key_files=False,
    )  # fmt: skip
    assert node.transport == "mqtt" and node.mqtt.broker == "mqtts://localhost:9999" and node.name == "cam1"
    r = CliRunner().invoke(
        app, ["mqtt", "broker-config", "--out", str(out), "--node", "cam1", "--receiver", "cam1"]
    )
    assert r.exit_code == 1 and "given twice" in r.output


# -------------------------------------------------------------------------------------- options, config


def test_urls_and_options_are_checked(tmp_path: Path) -> None:
    assert parse_broker_url("mqtts://broker.lan") == ("mqtts", "broker.lan", 8883)
    assert parse_broker_url("mqtt://[::1]:1884") == ("mqtt", "::1", 1884)
    for bad in ("tcp://h:1", "mqtts://", "mqtts://h:99999", "mqtts://h:1/path", "mqtts://u:p@h"):
        with pytest.raises(ConfigError, match="mqtts://HOST:PORT"):
            parse_broker_url(bad)
    pw = tmp_path / "pw"
    pw.write_text("hunter2hunter2\n")
    pw.chmod(0o600)
    assert read_password_file(pw) == "hunter2hunter2"
    with pytest.raises(ConfigError, match="unencrypted"):
        MqttOptions(password_file=pw).check("mqtt://h")
    assert MqttOptions(insecure=True).check("mqtt://h") == ("h", 1883, False)
    with pytest.raises(ConfigError, match="no password file"):
        MqttOptions().check("mqtts://h")
    with pytest.raises(ConfigError, match="CA file"):
        MqttOptions(password_file=pw, ca_file=tmp_path / "nope.crt").check("mqtts://h")
    with pytest.raises(ConfigError, match="queue policy"):
        MqttSenderOptions(password_file=pw, policy="block").check("mqtts://h")
    pw.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_password_file(pw)
    pw.write_text("\n")
    pw.chmod(0o600)
    with pytest.raises(ConfigError, match="empty"):
        read_password_file(pw)
    with pytest.raises(ConfigError, match="not found|No such file"):
        read_password_file(tmp_path / "missing")


def test_node_config_picks_the_transport(tmp_path: Path) -> None:
    pw = tmp_path / "cam1.password"
    pw.write_text("x" * 32)
    pw.chmod(0o600)
    base = {"name": "cam1", "source": "synthetic"}
    cfg = parse_node_config({**base, "transport": "mqtt", "mqtt": {"broker": "mqtts://b:8883",
                             "password_file": "cam1.password"}}, tmp_path / "n.toml")  # fmt: skip
    assert cfg.transport == "mqtt" and cfg.mqtt.password_file == pw and cfg.connect == ""
    assert cfg.to_dict()["mqtt"]["password_file"] == str(pw)
    # the same file streams over ZeroMQ when only the transport changes (and then needs `connect`)
    with pytest.raises(ConfigError, match="missing 'connect'"):
        parse_node_config({**base, "transport": "zmq", "mqtt": {"broker": "mqtts://b"}}, tmp_path / "n.toml")
    bad = [
        ({"transport": "amqp"}, "transport = 'amqp'"),
        ({"transport": "mqtt"}, "needs \\[mqtt\\] broker"),
        ({"transport": "mqtt", "mqtt": {"broker": "mqtts://b"}}, "no password file"),
        ({"transport": "mqtt", "mqtt": {"broker": "mqtt://b", "password_file": str(pw)}}, "unencrypted"),
        ({"transport": "mqtt", "mqtt": {"brokr": "mqtts://b"}}, "did you mean 'broker'"),
        ({"transport": "mqtt", "mqtt": {"broker": "mqtts://b", "password_file": "nope"}}, "nope"),
        ({"transport": "mqtt", "mqtt": {"broker": "mqtts://b", "username": "a/b"}}, "mqtt.username"),
    ]
    for extra, match in bad:
        with pytest.raises(ConfigError, match=match):
            parse_node_config({**base, **extra}, tmp_path / "n.toml")


def test_cli_mqtt_usage_errors() -> None:
    r = CliRunner().invoke(app, ["stream", "send", "--source", "synthetic", "--transport", "mqtt"])
    assert r.exit_code == 1 and "--broker required" in r.output
    r = CliRunner().invoke(app, ["stream", "receive", "--transport", "mqtt"])
    assert r.exit_code == 1 and "needs --broker" in r.output
    r = CliRunner().invoke(
        app, ["stream", "receive", "--transport", "mqtt", "--broker", "mqtts://127.0.0.1:1"]
    )
    assert r.exit_code == 1 and "no password file" in r.output


# ------------------------------------------------------------------------------------ through the broker


def test_round_trip_through_the_broker_is_bit_exact(mqtt_broker, bundle, digits) -> None:
    frames = paper_frames(digits)
    rx = _Rx(
        mqtt_broker,
        "rx1",
        bundle,
        ReceiveOptions(max_frames=len(frames), idle_timeout_s=WAIT_S, max_age_ms=0),
    )
    with MqttSender(mqtt_broker.url, "cam1", mqtt_broker.sender_options("cam1", queue_size=1000),
                    pair_id=bundle.pair_id) as tx:  # fmt: skip
        assert tx.wait_connected(WAIT_S)
        s = run_sender(ArraySource(frames), Preprocessor(bundle.preprocess), bundle.encoder(), tx,
                       pair_id=bundle.pair_id, options=SendOptions(name="cam1"))  # fmt: skip
        assert tx.flush(WAIT_S) == 0
        wait_for("cam1 online at the receiver", lambda: "cam1" in rx.link.nodes)
        assert rx.link.nodes["cam1"].state == "online" and rx.link.nodes["cam1"].pair_id == bundle.pair_id
        rx.thread.join(WAIT_S)
    assert s.status == "finished" and s.frames == len(frames) and s.dropped == 0 and s.connected
    assert tx.stats.sent == tx.stats.acked == len(frames) and tx.stats.denied == 0
    r = rx.stats
    assert r.status == "finished" and r.frames == len(frames) and r.rejected == {}
    peer = r.senders["cam1"]
    assert peer.peer == "cam1" and peer.lost == 0 and peer.skipped == 0 and peer.frames == len(frames)
    for seq, want in enumerate(direct(bundle, frames)):
        np.testing.assert_array_equal(rx.sink.frames[("cam1", seq)], want)
    # a clean close replaces the retained status: offline, said goodbye
    wait_for("cam1 offline", lambda: rx.link.nodes["cam1"].state == "offline")
    assert rx.link.nodes["cam1"].reason == "closed" and rx.link.stats.peers == 0
    assert any("node cam1 offline (closed)" in line for line in rx.logs)
    rx.link.close()


def test_compact_frames_through_the_broker(mqtt_broker, bundle, digits) -> None:
    """--compact over MQTT: the topic names the sender (no id in the frame), each frame carries the 2-byte
    check (TLS ends at the broker): 6 bytes of overhead on the compact frames; every frame arrives intact."""
    frames = paper_frames(digits)
    every = ReceiveOptions(max_frames=len(frames), idle_timeout_s=WAIT_S, max_age_ms=0)
    rx = _Rx(mqtt_broker, "rx1", bundle, every)
    with MqttSender(mqtt_broker.url, "cam1", mqtt_broker.sender_options("cam1", queue_size=1000),
                    pair_id=bundle.pair_id) as tx:  # fmt: skip
        assert tx.wait_connected(WAIT_S)
        opts = SendOptions(name="cam1", compact=True, session_every=10)
        s = run_sender(ArraySource(frames), Preprocessor(bundle.preprocess), bundle.encoder(), tx,
                       pair_id=bundle.pair_id, options=opts)  # fmt: skip
        assert tx.flush(WAIT_S) == 0
        rx.thread.join(WAIT_S)
    n = len(frames)
    assert s.frames == n and s.dropped == 0 and n - s.compact >= n // 10
    sessions = (n - s.compact) * wire.packet_size(0, "cam1", epoch=True)
    overhead = round((s.bytes_per_frame - s.payload_bytes) * n)
    assert sessions + 5 * s.compact <= overhead <= sessions + 6 * s.compact  # type, seq, 1-2 B time, check
    r = rx.stats
    assert r.frames == n and r.rejected == {} and r.senders["cam1"].lost == 0
    for seq, want in enumerate(direct(bundle, frames)):
        np.testing.assert_array_equal(rx.sink.frames[("cam1", seq)], want)
    rx.link.close()


def test_entropy_coded_payloads_through_the_broker(mqtt_broker, bundle, entropy_bundle, digits) -> None:
    frames = paper_frames(digits[:12])
    rx = _Rx(
        mqtt_broker,
        "rx1",
        entropy_bundle,
        ReceiveOptions(max_frames=len(frames), idle_timeout_s=WAIT_S, max_age_ms=0),
    )
    opts = mqtt_broker.sender_options("cam2", queue_size=1000)
    with MqttSender(mqtt_broker.url, "cam2", opts, pair_id=entropy_bundle.pair_id) as tx:
        assert tx.wait_connected(WAIT_S)
        s = run_sender(ArraySource(frames), Preprocessor(entropy_bundle.preprocess), entropy_bundle.encoder(),
                       tx, pair_id=entropy_bundle.pair_id, kind=PayloadKind.ENTROPY,
                       options=SendOptions(name="cam2"))  # fmt: skip
        assert tx.flush(WAIT_S) == 0
        rx.thread.join(WAIT_S)
    assert s.payload_bytes < bundle.latent_dim and rx.stats.frames == len(frames) and rx.stats.rejected == {}
    for seq, want in enumerate(direct(bundle, frames)):
        np.testing.assert_array_equal(rx.sink.frames[("cam2", seq)], want)
    rx.link.close()


def test_two_receivers_split_one_fleet(mqtt_broker, bundle, digits) -> None:
    frames, n = paper_frames(digits[:10]), 60
    rxs = [_Rx(mqtt_broker, name, bundle) for name in ("rx1", "rx2")]
    txs = [_Tx(mqtt_broker, name, bundle, frames, fps=100.0, limit=n) for name in ("cam1", "cam2")]
    for tx in txs:
        tx.thread.join(WAIT_S)
        assert tx.link.flush(WAIT_S) == 0
    wait_for("every frame decoded", lambda: sum(len(rx.sink.frames) for rx in rxs) >= 2 * n)
    time.sleep(0.2)  # a duplicate would arrive now (none may)
    sent = [tx.finish() for tx in txs]
    stats = [rx.finish() for rx in rxs]
    assert all(s.frames == s.sent == n and s.dropped == 0 for s in sent)
    got = [set(rx.sink.frames) for rx in rxs]
    assert got[0] | got[1] == {(node, seq) for node in ("cam1", "cam2") for seq in range(n)}
    assert not got[0] & got[1]  # each frame went to exactly one receiver
    for st, mine in zip(stats, got, strict=True):
        assert st.frames == len(mine) > 0 and st.rejected == {}
        for node in ("cam1", "cam2"):  # the other receiver's share shows as skipped, not lost
            seqs = sorted(seq for name, seq in mine if name == node)
            p = st.senders[node]
            assert p.peer == node and p.lost == 0 and p.frames == len(seqs)
            assert p.skipped == seqs[-1] - seqs[0] + 1 - len(seqs)


def test_broker_restart_nodes_reconnect(mqtt_broker, bundle, digits) -> None:
    frames = paper_frames(digits[:10])
    rx = _Rx(mqtt_broker, "rx1", bundle)
    tx = _Tx(mqtt_broker, "cam1", bundle, frames, fps=50.0, queue_size=64)
    wait_for("frames before the restart", lambda: len(rx.seqs("cam1")) >= 10)
    mqtt_broker.stop()
    wait_for("both ends notice", lambda: not tx.link.connected and not rx.link.connected)
    before = rx.seqs("cam1")[-1]
    mqtt_broker.start()
    wait_for("frames after the restart", lambda: sum(1 for s in rx.seqs("cam1") if s > before + 5) >= 20)
    wait_for(
        "cam1 online again", lambda: rx.link.nodes.get("cam1") and rx.link.nodes["cam1"].state == "online"
    )
    s = tx.finish()
    r = rx.finish()
    assert tx.link.stats.broker_connects >= 2 and tx.link.stats.broker_disconnects >= 1
    assert rx.link.stats.broker_connects >= 2
    assert s.frames == s.sent + s.dropped + s.lost_at_close  # every frame sent or counted as dropped
    assert r.senders["cam1"].frames > 30 and r.rejected == {}
    assert any("lost the broker" in line for line in rx.logs)


def test_node_without_credentials_is_refused(mqtt_broker, bundle, tmp_path: Path) -> None:
    rx = _Rx(mqtt_broker, "rx1", bundle)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    links = [
        MqttSender(mqtt_broker.url, "cam1", mqtt_broker.sender_options("cam1", password_file=wrong)),
        MqttSender(mqtt_broker.url, "cam2", MqttSenderOptions(ca_file=mqtt_broker.files.ca, insecure=True)),
    ]
    for tx in links:
        wait_for("the broker refuses", lambda tx=tx: tx.stats.refused >= 2)  # and it keeps retrying
        assert not tx.connected and not tx.wait_connected(0.2)
        assert "Not authorized" in tx.stats.refused_reason or "Bad user name" in tx.stats.refused_reason
        for _ in range(10):
            tx.send(b"\xca" * 40)  # never blocks: queued, then dropped at close
        tx.close(0.1)
        assert tx.stats.sent == 0 and tx.stats.lost_at_close == 10
    r = rx.finish()
    assert r.frames == 0 and r.rejected == {} and rx.link.nodes == {}


def test_wrong_ca_or_no_broker_is_a_clear_error(mqtt_broker, tmp_path: Path) -> None:
    brokercfg.make_tls(tmp_path / "other", ["127.0.0.1"])  # a CA that did not sign the broker's certificate
    logs: list[str] = []
    opts = mqtt_broker.sender_options("cam1", ca_file=tmp_path / "other" / "ca.crt", on_log=logs.append)
    with MqttSender(mqtt_broker.url, "cam1", opts) as tx:
        wait_for("failed TLS handshakes", lambda: tx.stats.connect_failures >= 2)  # retried
        assert not tx.connected and tx.stats.last_error.startswith("TLS: ")
        assert "--ca-file" in tx.stats.last_error
        assert sum("cannot connect to the broker" in line for line in logs) == 1  # logged once
    port = mqtt_broker.port
    mqtt_broker.stop()
    with MqttSender(f"mqtts://127.0.0.1:{port}", "cam1", mqtt_broker.sender_options("cam1")) as tx:
        wait_for("connection refused", lambda: tx.stats.connect_failures >= 2)  # and it keeps trying
        assert not tx.connected and "refused" in tx.stats.last_error.lower()
        assert tx.send(b"x") and tx.stats.queued == 1  # never blocks


def test_node_publishing_under_another_nodes_topic_is_refused(mqtt_broker, bundle, digits) -> None:
    rx = _Rx(mqtt_broker, "rx1", bundle)
    frames = paper_frames(digits[:5])
    # cam1's credentials, cam2's topic: the broker authenticates cam1 and its ACL refuses every publish
    opts = mqtt_broker.sender_options("cam1", username="cam1", client_id="impostor")
    with MqttSender(mqtt_broker.url, "cam2", opts, pair_id=bundle.pair_id) as evil:
        assert evil.wait_connected(WAIT_S)
        run_sender(ArraySource(frames), Preprocessor(bundle.preprocess), bundle.encoder(), evil,
                   pair_id=bundle.pair_id, options=SendOptions(name="cam2"))  # fmt: skip
        wait_for("every publish refused", lambda: evil.stats.denied >= len(frames) + 1)  # + online status
        assert evil.stats.acked == 0 and "Not authorized" in evil.stats.refused_reason
    # the real cam1 on its own topic goes through meanwhile
    tx = _Tx(mqtt_broker, "cam1", bundle, frames, fps=0.0, limit=len(frames))
    tx.thread.join(WAIT_S)
    assert tx.link.flush(WAIT_S) == 0
    wait_for("cam1's frames", lambda: len(rx.seqs("cam1")) == len(frames))
    tx.finish()
    r = rx.finish()
    assert set(r.senders) == {"cam1"} and r.senders["cam1"].peer == "cam1" and "cam2" not in rx.link.nodes


def test_bad_payloads_are_counted_never_fatal(mqtt_broker, bundle, digits) -> None:
    rx = _Rx(mqtt_broker, "rx1", bundle)
    frames = paper_frames(digits[:8])
    good = _Tx(mqtt_broker, "cam1", bundle, frames, fps=0.0, limit=len(frames))
    enc, pre = bundle.encoder(), Preprocessor(bundle.preprocess)
    packet = wire.pack(wire.Packet(wire.pair_prefix(bundle.pair_id), wire.sender_id("cam2"), 0, 0,
                                   enc.encode(pre(frames[0]))))  # fmt: skip
    other_pair = wire.pack(wire.Packet(b"\x00\x01\x02\x03", wire.sender_id("cam2"), 1, 0, b"\x00" * 16))
    bad = [
        b"",
        b"garbage",
        packet[:-1],
        packet[:-4] + b"\x00\x00\x00\x00",
        b"\xcaE\x07" + packet[3:],
        other_pair,
    ]
    with MqttSender(mqtt_broker.url, "cam2", mqtt_broker.sender_options("cam2"), pair_id="not-a-pair") as tx:
        assert tx.wait_connected(WAIT_S)
        for data in bad:
            tx.send(data)
        assert tx.flush(WAIT_S) == 0
        # a status that is not the node's JSON is counted too
        tx._client.publish(tx.status_topic, b"{not json", qos=1, retain=False).wait_for_publish(WAIT_S)
        good.thread.join(WAIT_S)
        assert good.link.flush(WAIT_S) == 0
        wait_for("every bad packet refused", lambda: rx.latest and rx.latest.rejected_total >= len(bad))
        wait_for("the good frames", lambda: len(rx.seqs("cam1")) == len(frames))
        wait_for("the bad status", lambda: rx.link.stats.bad_status >= 1)
    good.finish()
    r = rx.finish()
    assert r.frames == len(frames) and r.senders["cam1"].frames == len(frames)
    assert r.rejected_total == len(bad) and {"short", "crc", "version", "pair"} <= set(r.rejected)
    assert any("node cam2 online (bundle not-a-pair) -- this receiver's bundle is" in x for x in rx.logs)


# ------------------------------------------------------------------------------------------- processes


def _finish(proc: subprocess.Popen, timeout: float = WAIT_S) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_processes_receiver_killed_the_other_takes_over_and_the_node_will(
    mqtt_broker, bundle, tmp_path: Path
) -> None:
    """A node run from the generated node config, two receivers of one group; SIGKILL one receiver, then
    the node."""
    nodes = mqtt_broker.files.node_configs["cam1"].parent
    shutil.copy(mqtt_broker.password_file("cam1"), nodes / "cam1.password")
    shutil.copy(mqtt_broker.files.ca, nodes / "ca.crt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    status = tmp_path / "rx1.json"
    rx1 = subprocess.Popen(CLI + ["stream", "receive", *mqtt_broker.cli_args("rx1"), "--status", str(status),
                                  "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=env)  # fmt: skip
    rx2 = _Rx(mqtt_broker, "rx2", bundle)
    node = subprocess.Popen(CLI + ["stream", "send", "--config", str(nodes / "cam1.toml"), "--source",
                                   "synthetic", "--fps", "40", "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    try:

        def rx1_frames() -> int:
            try:
                return json.loads(status.read_text())["receiver"]["frames"]
            except (OSError, ValueError, KeyError):
                return 0

        wait_for("both receivers get a share", lambda: rx1_frames() > 0 and len(rx2.seqs("cam1")) > 0)
        assert node.poll() is None and rx1.poll() is None
        doc = json.loads(status.read_text())
        assert doc["secured"] and doc["mqtt"]["nodes"]["cam1"]["state"] == "online"
        assert doc["senders"]["cam1"]["peer"] == "cam1"
        rx1.send_signal(signal.SIGKILL)
        rx1.wait(WAIT_S)
        killed_at = rx2.seqs("cam1")[-1]

        def consecutive_run() -> int:
            seqs = [s for s in rx2.seqs("cam1") if s > killed_at]
            best = run = 0
            for a, b in zip(seqs, seqs[1:], strict=False):
                run = run + 1 if b == a + 1 else 0
                best = max(best, run)
            return best

        wait_for("rx2 takes every frame", lambda: consecutive_run() >= 20)
        node.send_signal(signal.SIGKILL)
        node.wait(WAIT_S)
        wait_for("the node's last will", lambda: rx2.link.nodes["cam1"].state == "offline")
        assert rx2.link.nodes["cam1"].reason == "connection lost"
        assert rx2.link.nodes["cam1"].pair_id == bundle.pair_id
    finally:
        for p in (rx1, node):
            if p.poll() is None:
                p.kill()
            _finish(p)
    r = rx2.finish()
    assert r.senders["cam1"].lost == 0 and r.senders["cam1"].skipped > 0 and r.rejected == {}
    # the will is retained: a receiver that starts now learns the node is offline, with its bundle
    late = MqttReceiver(mqtt_broker.url, mqtt_broker.receiver_options("rx1"))
    try:
        assert late.wait_connected(WAIT_S)
        wait_for("retained status", lambda: "cam1" in late.nodes)
        assert late.nodes["cam1"].state == "offline" and late.nodes["cam1"].pair_id == bundle.pair_id
    finally:
        late.close()


def test_doctor_checks_the_broker_of_an_mqtt_node_config(mqtt_broker, digits, tmp_path: Path) -> None:
    import cv2

    from cae_edge.device import doctor
    from cae_edge.device.config import load_node_config

    toml = mqtt_broker.files.node_configs["cam1"]
    shutil.copy(mqtt_broker.password_file("cam1"), toml.parent / "cam1.password")
    shutil.copy(mqtt_broker.files.ca, toml.parent / "ca.crt")
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), digits[0])
    opts = doctor.DoctorOptions(bundles=["mnist"], source=str(frames), config=toml, connect_timeout_s=WAIT_S)
    report = doctor.run_doctor(opts)
    checks = {c.name: c for c in report.checks}
    assert report.ok, [c for c in report.checks if c.status == "fail"]
    assert checks["broker"].status == "ok" and "connected as 'cam1'" in checks["broker"].detail
    assert "key" not in checks and "receiver" not in checks  # no CURVE keys, no ZeroMQ receiver here
    (toml.parent / "cam1.password").write_text("wrong-password\n")
    bad = doctor.check_broker(load_node_config(toml), WAIT_S)
    assert bad.status == "fail" and "Not authorized" in bad.detail and "passwd" in bad.fix
    mqtt_broker.stop()
    down = doctor.check_broker(load_node_config(toml), 1.0)
    assert down.status == "fail" and "no MQTT connection" in down.detail and "refused" in down.detail.lower()
