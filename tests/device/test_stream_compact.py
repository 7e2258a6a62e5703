"""Compact frames end to end: real sockets on 127.0.0.1, the shipped mnist bundle, real MNIST digits."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from cae_edge import datasets, wire
from cae_edge.device import security
from cae_edge.device.bundle import load_bundle
from cae_edge.device.capture import ArraySource
from cae_edge.device.preprocess import Preprocessor
from cae_edge.device.receiver import ReceiveOptions, run_receiver
from cae_edge.device.sender import SendOptions, run_sender
from cae_edge.device.sinks import MemorySink
from cae_edge.device.transport import PullReceiver, PushSender, ReceiverOptions, SenderOptions
from cae_edge.payload import payload_kind
from cae_edge.wire import Packet

WAIT_S = 60.0  # upper bound for things that must happen; never a timing assertion
N = 60


@pytest.fixture(scope="module")
def bundle():
    return load_bundle("mnist")


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return 255 - datasets.load("mnist").x_test[:N]  # dark ink on light paper, as the bundle expects


def _run(bundle, digits, rx_link: PullReceiver, tx_options: SenderOptions, name: str, every: int):
    sink, logs, out = MemorySink(), [], {}
    stop = threading.Event()

    def receive() -> None:
        out["stats"] = run_receiver(
            rx_link,
            bundle.decoder(),
            pair_id=bundle.pair_id,
            kind=payload_kind(bundle.coding),
            sinks=[sink],
            options=ReceiveOptions(max_age_ms=0, idle_timeout_s=WAIT_S, max_frames=len(digits)),
            on_log=logs.append,
            stop=stop,
        )

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    with PushSender(rx_link.endpoint, tx_options) as tx:
        s = run_sender(
            ArraySource(digits),
            Preprocessor(bundle.preprocess),
            bundle.encoder(),
            tx,
            pair_id=bundle.pair_id,
            options=SendOptions(name=name, wait_connected_s=WAIT_S, compact=True, session_every=every),
        )
        assert tx.flush(WAIT_S) == 0
        thread.join(WAIT_S)
    assert not thread.is_alive(), "receiver did not finish"
    return s, out["stats"], sink


def _check_frames(bundle, digits, sink: MemorySink, who: str) -> None:
    pre, enc, dec = Preprocessor(bundle.preprocess), bundle.encoder(), bundle.decoder()
    for seq, d in enumerate(digits):
        np.testing.assert_array_equal(sink.frames[(who, seq)], dec.decode(enc.encode(pre(d))))


def test_insecure_link_carries_id_and_check(bundle, digits) -> None:
    with PullReceiver("tcp://127.0.0.1:*") as rx:
        s, r, sink = _run(bundle, digits, rx, SenderOptions(queue_size=1000), "cam-c", every=25)
    assert s.status == "finished" and s.frames == N and s.dropped == 0
    sessions = N - s.compact
    assert 3 <= sessions < N // 2  # frames 0, 25, 50 at least (and one per new connection)
    full = wire.packet_size(0, "cam-c", epoch=True)
    overhead = s.bytes_per_frame - s.payload_bytes
    # a compact frame: type 1 + id 2 + seq delta 1 + time delta 1-2 (ms) + check 2 = 7..8 bytes
    assert sessions * full + s.compact * 7 <= round(overhead * N) <= sessions * full + s.compact * 8
    assert r.rejected == {} and r.frames == N
    peer = r.senders["cam-c"]
    assert peer.frames == N and peer.lost == 0 and peer.dropped == {}
    _check_frames(bundle, digits, sink, "cam-c")


def test_curve_link_frames_cost_4_bytes(bundle, digits, tmp_path) -> None:
    rx_keys = security.generate_keypair("receiver", tmp_path / "rx")
    node = security.generate_keypair("node-1", tmp_path / "node")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(node.public_path, allowed)
    server = security.CurveServer(security.SecurityOptions(key=rx_keys.secret_path, allowed_keys=allowed))
    client = security.CurveClient(
        security.SecurityOptions(key=node.secret_path, server_key=rx_keys.public_path)
    )
    with PullReceiver("tcp://127.0.0.1:*", ReceiverOptions(security=server)) as rx:
        tx_options = SenderOptions(queue_size=1000, security=client)
        s, r, sink = _run(bundle, digits, rx, tx_options, "n1", every=100)
    assert s.frames == N and s.dropped == 0 and s.compact >= N - 2
    full = wire.packet_size(0, "n1", epoch=True)
    overhead = s.bytes_per_frame - s.payload_bytes
    sessions = (N - s.compact) * full  # a compact frame: type 1 + seq delta 1 + time delta 1-2 (ms)
    assert sessions + s.compact * 3 <= round(overhead * N) <= sessions + s.compact * 4
    assert r.rejected == {} and r.senders["node-1"].frames == N and r.senders["node-1"].lost == 0
    _check_frames(bundle, digits, sink, "node-1")


def test_compact_frames_without_session_are_counted(bundle, digits) -> None:
    """A receiver that missed the session packet counts the compact frames after it (``no-session``), and
    reads the sender again from its next session packet."""
    pre, enc = Preprocessor(bundle.preprocess), bundle.encoder()
    pair, sid = wire.pair_prefix(bundle.pair_id), wire.sender_id("late")
    payloads = [enc.encode(pre(d)) for d in digits[:6]]
    session = Packet(pair, sid, 0, 1000, payloads[0], sender_name="late", epoch=7)
    later = Packet(pair, sid, 3, 9000, payloads[3], sender_name="late", epoch=7)
    msgs = [wire.pack_compact(Packet(pair, sid, i, 2000 * i, payloads[i]), session, check=True, with_id=True)
            for i in (1, 2)]  # fmt: skip
    msgs += [wire.pack(later)]
    msgs += [wire.pack_compact(Packet(pair, sid, i, 9000 + i, payloads[i]), later, check=True, with_id=True)
             for i in (4, 5)]  # fmt: skip
    msgs += [wire.pack_compact(Packet(pair, sid, 6, 9006, b"x"), session, check=True, with_id=True)]
    with PullReceiver("tcp://127.0.0.1:*") as rx:
        sink, stop = MemorySink(), threading.Event()
        out = {}
        thread = threading.Thread(
            target=lambda: out.setdefault(
                "r",
                run_receiver(
                    rx, bundle.decoder(), pair_id=bundle.pair_id, kind=payload_kind(bundle.coding),
                    sinks=[sink], options=ReceiveOptions(max_age_ms=0, idle_timeout_s=WAIT_S, max_frames=3),
                    stop=stop,
                ),
            ),
            daemon=True,
        )  # fmt: skip
        thread.start()
        with PushSender(rx.endpoint, SenderOptions(queue_size=100)) as tx:
            assert tx.wait_connected(WAIT_S)
            for m in msgs:
                tx.send(m)
            assert tx.flush(WAIT_S) == 0
            thread.join(WAIT_S)
    r = out["r"]
    assert r.rejected == {"no-session": 2, "session": 1}
    assert sorted(seq for _, seq in sink.frames) == [3, 4, 5]


def test_cli_processes_stream_compact_frames(tmp_path) -> None:
    """`stream send --compact` into `stream receive`, real processes: every frame arrives, and the sender's
    bytes per frame are the payload plus at most 8 bytes of compact overhead and its session packets."""
    import json
    import subprocess
    import sys

    cli = [sys.executable, "-c", "from cae_edge.cli.main import main; main()", "stream"]
    with PullReceiver("tcp://127.0.0.1:*") as probe:
        endpoint = probe.endpoint
    rx_json, tx_json, n = tmp_path / "rx.json", tmp_path / "tx.json", 200
    common = ["--bundle", "mnist-tiny", "--insecure", "-q"]
    rx = subprocess.Popen(
        [*cli, "receive", "--bind", endpoint, "--max-frames", str(n), "--max-age-ms", "0",
         "--timeout", str(WAIT_S), "--json", str(rx_json), *common],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    tx = subprocess.run(
        [*cli, "send", "--source", "synthetic", "--connect", endpoint, "--name", "cam-z", "--fps", "200",
         "--max-frames", str(n), "--wait", str(WAIT_S), "--compact", "--session-every", "50",
         "--json", str(tx_json), *common],
        capture_output=True, text=True, timeout=2 * WAIT_S,
    )  # fmt: skip
    try:
        out, _ = rx.communicate(timeout=WAIT_S)
    finally:
        if rx.poll() is None:
            rx.kill()
    assert tx.returncode == 0 and rx.returncode == 0, (tx.stdout + tx.stderr, out)
    t, r = json.loads(tx_json.read_text()), json.loads(rx_json.read_text())
    assert t["frames"] == n and n - t["compact"] >= n // 50
    sessions = (n - t["compact"]) * wire.packet_size(0, "cam-z", epoch=True)
    assert round((t["bytes_per_frame"] - t["payload_bytes"]) * n) <= sessions + 8 * t["compact"]
    assert r["rejected_total"] == 0 and r["senders"]["cam-z"]["frames"] == n
    assert r["senders"]["cam-z"]["lost"] == 0


class _RecordingLink:
    """A link that keeps what it is given and drops the packets at the listed indexes (send returns False)."""

    endpoint = "test://"
    closed = False
    authenticates_messages = identifies_sender = True

    def __init__(self, drop: set[int]) -> None:
        from cae_edge.device.transport import LinkStats

        self.stats, self.drop, self.packets = LinkStats(), drop, []

    def send(self, data: bytes) -> bool:
        self.packets.append(data)
        return len(self.packets) - 1 not in self.drop


def test_a_drop_starts_a_new_session(bundle, digits) -> None:
    """After the link drops a packet (maybe the session packet) the next frame is a full session packet; no
    compact frame refers to a session that never left; on a CURVE-like link a compact frame costs 3-4 B."""
    link = _RecordingLink(drop={5})
    s = run_sender(
        ArraySource(digits[:20]), Preprocessor(bundle.preprocess), bundle.encoder(), link,
        pair_id=bundle.pair_id, options=SendOptions(name="cam1", compact=True, session_every=100),
    )  # fmt: skip
    full = [i for i, d in enumerate(link.packets) if not wire.is_compact(d)]
    assert full == [0, 6] and s.compact == 18
    session = None
    for i, data in enumerate(link.packets):
        if i in full:
            session = wire.unpack(data)
            assert session.sender_name == "cam1" and session.epoch == s.epoch
        else:
            p = wire.expand(wire.unpack_compact(data), session)
            assert p.seq == i and 3 <= len(data) - len(p.payload) <= 4
