"""Both ends of a stream with the shipped bundle and real sockets on 127.0.0.1 (random ports).

In-process loops for the fine-grained checks; real `cae-edge stream` processes for the video-file round trip
and the receiver restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib

import cv2
import numpy as np
import pytest
import zmq
from typer.testing import CliRunner

from cae_edge import datasets, wire
from cae_edge.cli.main import app
from cae_edge.device import sender
from cae_edge.device.bundle import load_bundle
from cae_edge.device.capture import ArraySource, VideoCaptureSource
from cae_edge.device.preprocess import Preprocessor
from cae_edge.device.receiver import ReceiveOptions, run_receiver
from cae_edge.device.sender import SendOptions, run_sender
from cae_edge.device.sinks import MemorySink
from cae_edge.device.transport import PullReceiver, PushSender, SenderOptions
from cae_edge.errors import ConfigError, SourceError
from cae_edge.payload import payload_kind
from cae_edge.wire import Packet, PayloadKind

WAIT_S = 60.0  # upper bound for things that must happen (slow shared CI box); never a timing assertion
CLI = [sys.executable, "-c", "from cae_edge.cli.main import main; main()"]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle("mnist")


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return datasets.load("mnist").x_test[:40]


def paper_frames(digits: np.ndarray) -> np.ndarray:
    """Camera-like 120x160 frames: each real digit, enlarged and off-centre, dark ink on light paper."""
    frames = []
    for i, d in enumerate(digits):
        canvas = np.zeros((120, 160), np.uint8)
        x, y = 20 + (i * 7) % 40, 10 + (i * 5) % 30
        canvas[y : y + 84, x : x + 84] = cv2.resize(d, (84, 84), interpolation=cv2.INTER_LINEAR)
        frames.append(255 - canvas)
    return np.stack(frames)


def direct(bundle, frames) -> list[np.ndarray]:
    """What the receiver must show: preprocess, encode, decode in this process, no network."""
    pre, enc, dec = Preprocessor(bundle.preprocess), bundle.encoder(), bundle.decoder()
    return [dec.decode(enc.encode(pre(f))) for f in frames]


def every_frame(**kw) -> ReceiveOptions:
    """Receiver options for tests that check every frame arrives: no age bound, so a slow, loaded machine
    cannot turn a late frame into a (counted) drop."""
    return ReceiveOptions(max_age_ms=0, idle_timeout_s=WAIT_S, **kw)


def _endpoint() -> str:
    with PullReceiver("tcp://127.0.0.1:*") as rx:
        return rx.endpoint


class _ReceiverThread:
    """run_receiver on its own thread, with an in-memory sink and the log lines collected."""

    def __init__(self, bundle, options: ReceiveOptions) -> None:
        self.link = PullReceiver("tcp://127.0.0.1:*")
        self.sink = MemorySink()
        self.logs: list[str] = []
        self.stop = threading.Event()
        self.stats = None
        self.latest = None  # the last on_stats report (every loop turn with stats_every_s=0)

        def run() -> None:
            self.stats = run_receiver(
                self.link,
                bundle.decoder(),
                pair_id=bundle.pair_id,
                kind=payload_kind(bundle.coding),
                sinks=[self.sink],
                options=options,
                on_log=self.logs.append,
                on_stats=lambda st: setattr(self, "latest", st),
                stop=self.stop,
            )

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, *senders: PushSender) -> None:
        for tx in senders:  # what the link could not take yet waits in the sender's queue until a flush
            assert tx.flush(WAIT_S) == 0
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "receiver did not finish"
        self.link.close()


# -------------------------------------------------------------------------------------------- in process


def test_in_process_round_trip_is_bit_exact(bundle, digits) -> None:
    frames = paper_frames(digits)
    rx = _ReceiverThread(bundle, every_frame(max_frames=len(frames)))
    reports = []
    with PushSender(rx.link.endpoint, SenderOptions(queue_size=1000)) as tx:
        s = run_sender(
            ArraySource(frames),
            Preprocessor(bundle.preprocess),
            bundle.encoder(),
            tx,
            pair_id=bundle.pair_id,
            options=SendOptions(name="cam-a", wait_connected_s=WAIT_S, stats_every_s=0.0),
            on_stats=reports.append,
        )
        rx.join(tx)
    assert s.status == "finished" and s.frames == len(frames) and s.dropped == 0
    enc, pre = bundle.encoder(), Preprocessor(bundle.preprocess)
    payload = np.mean([len(enc.encode(pre(f))) for f in frames])
    assert s.payload_bytes == pytest.approx(payload, abs=0.01)
    # 24 bytes of header + CRC per frame, plus the name (1 + 5 bytes) and epoch (4) on the packets with a name
    assert (
        wire.OVERHEAD_BYTES + payload
        < s.bytes_per_frame
        <= wire.OVERHEAD_BYTES + payload + 1 + len("cam-a") + 4
    )
    assert reports and reports[-1].frames <= len(frames)
    r = rx.stats
    assert r.status == "finished" and r.frames == len(frames) and r.rejected == {}
    peer = r.senders["cam-a"]
    assert peer.frames == len(frames) and peer.lost == 0 and peer.sender_id == wire.sender_id("cam-a")
    assert set(peer.latency_ms) == {"mean", "p50", "p95", "p99", "max"} and peer.latency_ms["max"] >= 0
    assert peer.received == len(frames) and peer.dropped == {} and peer.restarts == 0
    for seq, want in enumerate(direct(bundle, frames)):
        np.testing.assert_array_equal(rx.sink.frames[("cam-a", seq)], want)
    assert any("new sender cam-a" in line for line in rx.logs)


def test_rejects_are_counted_and_good_senders_served(bundle, digits) -> None:
    frames = paper_frames(digits[:10])
    enc, pre = bundle.encoder(), Preprocessor(bundle.preprocess)
    pair = wire.pair_prefix(bundle.pair_id)
    sid = wire.sender_id("raw")

    def packet(seq: int, **kw) -> bytes:
        fields = dict(pair=pair, sender_id=sid, seq=seq, t_us=123, payload=enc.encode(pre(frames[seq])))
        fields.update(kw)
        return wire.pack(Packet(**fields, sender_name="raw"))

    def with_crc(body: bytes) -> bytes:
        return body + zlib.crc32(body).to_bytes(4, "little")

    good = packet(0)
    bad = [
        b"",  # short
        b"hello, is this the receiver?" * 3,  # magic
        good[: len(good) // 2],  # truncated: length
        good[:-1] + bytes([good[-1] ^ 1]),  # crc
        with_crc(good[:2] + b"\x07" + good[3:-4]),  # version
        packet(1, pair=b"\xde\xad\xbe\xef"),  # pair
        packet(2, payload=b"\x01\x02\x03"),  # payload: not this bundle's latent size
        packet(3, kind=PayloadKind.ENTROPY),  # coding
        packet(4, pair=b"\xde\xad\xbe\xef"),  # pair again: counted, not logged twice
    ]
    rx = _ReceiverThread(bundle, every_frame(max_frames=10 + 5))
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 1000)
    raw.connect(rx.link.endpoint)
    try:
        with PushSender(rx.link.endpoint, SenderOptions(queue_size=1000)) as tx:
            for data in bad:
                raw.send(data)
            for seq in range(5, 10):  # a good frame on the same connection after the bad ones
                raw.send(packet(seq))
            run_sender(  # and a well-behaved node on its own connection
                ArraySource(frames),
                pre,
                enc,
                tx,
                pair_id=bundle.pair_id,
                options=SendOptions(name="good-node", wait_connected_s=WAIT_S),
            )
            rx.join(tx)
    finally:
        raw.close()
        ctx.term()
    r = rx.stats
    assert r.rejected == {
        "short": 1,
        "magic": 1,
        "length": 1,
        "crc": 1,
        "version": 1,
        "pair": 2,
        "payload": 1,
        "coding": 1,
    }
    assert r.senders["good-node"].frames == 10 and r.senders["raw"].frames == 5
    want = direct(bundle, frames)
    for seq in range(10):
        np.testing.assert_array_equal(rx.sink.frames[("good-node", seq)], want[seq])
    pair_lines = [line for line in rx.logs if "pair id" in line]
    assert len(pair_lines) == 1
    assert "deadbeef" in pair_lines[0] and bundle.pair_id in pair_lines[0] and "raw" in pair_lines[0]


@pytest.fixture(scope="module")
def entropy_bundle(bundle, narrow_alphabet):
    """The shipped bundle plus an entropy model of its int8 latents (same models, so the same pair id) whose
    alphabet real frames overflow."""
    return narrow_alphabet(bundle, datasets.load("mnist").x_train[:300])


def test_entropy_coded_stream(bundle, entropy_bundle, digits) -> None:
    frames = paper_frames(digits[:12])
    assert payload_kind(entropy_bundle.coding) is PayloadKind.ENTROPY
    rx = _ReceiverThread(entropy_bundle, every_frame(max_frames=len(frames)))
    int8_rx = _ReceiverThread(
        bundle, ReceiveOptions(stats_every_s=0.0, max_age_ms=0)
    )  # same pair id, other coding
    with (
        PushSender(rx.link.endpoint, SenderOptions(queue_size=1000)) as tx,
        PushSender(int8_rx.link.endpoint) as tx2,
    ):
        for link in (tx, tx2):
            s = run_sender(
                ArraySource(frames),
                Preprocessor(entropy_bundle.preprocess),
                entropy_bundle.encoder(),
                link,
                pair_id=entropy_bundle.pair_id,
                kind=PayloadKind.ENTROPY,
                options=SendOptions(name="ent", wait_connected_s=WAIT_S),
            )
            assert s.frames == len(frames)
        rx.join(tx)
        assert tx2.flush(WAIT_S) == 0
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and (
            int8_rx.latest is None or int8_rx.latest.rejected.get("coding", 0) < len(frames)
        ):
            time.sleep(0.05)
        int8_rx.stop.set()
        int8_rx.join()
    assert s.payload_bytes < bundle.latent_dim  # variable-length payloads, smaller than the raw latent
    assert rx.stats.frames == len(frames) and rx.stats.rejected == {}
    assert rx.stats.escaped > 0  # values beyond the alphabet arrived, exactly (next lines), and were counted
    for seq, want in enumerate(direct(bundle, frames)):  # lossless coding: same images as the int8 bundle
        np.testing.assert_array_equal(rx.sink.frames[("ent", seq)], want)
    assert int8_rx.stats.frames == 0 and int8_rx.stats.rejected == {"coding": len(frames)}
    assert any("coding entropy" in line for line in int8_rx.logs)


def test_seq_gaps_and_restarts(bundle, digits) -> None:
    enc, pre = bundle.encoder(), Preprocessor(bundle.preprocess)
    payload = enc.encode(pre(paper_frames(digits[:1])[0]))
    pair, sid = wire.pair_prefix(bundle.pair_id), wire.sender_id("gappy")
    seqs = [0, 1, 2, 5, 6, 10, 0, 1]  # 2 + 3 lost, then the sender restarts
    rx = _ReceiverThread(bundle, every_frame(max_frames=len(seqs)))
    with PushSender(rx.link.endpoint) as tx:
        assert tx.wait_connected(WAIT_S)
        for s in seqs:
            tx.send(wire.pack(Packet(pair, sid, s, wire.MASK32 & (time.time_ns() // 1000), payload)))
        rx.join(tx)
    peer = rx.stats.senders[f"id-{sid:04x}"]  # this sender never sent its name
    assert peer.lost == 5 and peer.restarts == 1 and peer.last_seq == 1 and peer.frames == len(seqs)


class _FailingSource(ArraySource):
    def read(self):
        if self._i >= 3:
            raise SourceError("camera index 0: stopped delivering frames")
        return super().read()


def test_source_failure_mid_stream(bundle, digits) -> None:
    with PushSender(_endpoint(), SenderOptions(close_flush_s=0)) as tx:
        s = run_sender(
            _FailingSource(paper_frames(digits[:5])),
            Preprocessor(bundle.preprocess),
            bundle.encoder(),
            tx,
            pair_id=bundle.pair_id,
            options=SendOptions(name="cam"),
        )
    assert s.status == "source-error" and s.frames == 3 and "stopped delivering" in s.error


def test_send_options_are_checked() -> None:
    for bad in (SendOptions(name="bad name"), SendOptions(fps=-1), SendOptions(max_frames=-2)):
        with pytest.raises(ConfigError):
            bad.check()


# ------------------------------------------------------------------------------------------------- CLI

runner = CliRunner()


@pytest.mark.parametrize(
    ("source", "message"),
    [("missing.mp4", "no such file"), ("7", "no camera at index 7"), ("/dev/video9", "no such device")],
)
def test_cli_source_errors(source: str, message: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["stream", "send", "--source", source, "--connect", _endpoint(), "--insecure"]
    )
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_cli_unreadable_video(tmp_path) -> None:
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(os.urandom(4000))
    result = runner.invoke(
        app, ["stream", "send", "--source", str(bad), "--connect", _endpoint(), "--insecure"]
    )
    assert result.exit_code == 1 and "clip.mp4" in result.output


def test_cli_source_failing_mid_stream_exits_3(tmp_path, digits, monkeypatch) -> None:
    monkeypatch.setattr(sender, "open_source", lambda *a, **k: _FailingSource(paper_frames(digits[:5])))
    out = tmp_path / "tx.json"
    result = runner.invoke(
        app,
        [
            "stream",
            "send",
            "--insecure",
            "--source",
            "0",
            "--connect",
            _endpoint(),
            "--name",
            "cam",
            "--json",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 3 and "stopped delivering frames" in result.output
    assert json.loads(out.read_text())["status"] == "source-error"


def test_cli_receiver_errors(tmp_path) -> None:
    result = runner.invoke(
        app, ["stream", "receive", "--bind", "tcp://127.0.0.1:*", "--timeout", "0.3", "-q", "--insecure"]
    )
    assert result.exit_code == 4 and "nothing-received" in result.output
    result = runner.invoke(
        app, ["stream", "receive", "--bundle", str(tmp_path / "nope"), "--timeout", "0.3", "--insecure"]
    )
    assert result.exit_code == 1 and "nope" in result.output
    with PullReceiver("tcp://127.0.0.1:*") as busy:
        result = runner.invoke(
            app, ["stream", "receive", "--bind", busy.endpoint, "--timeout", "0.3", "--insecure"]
        )
    assert result.exit_code == 1 and "in use" in result.output


def test_device_side_imports_without_tensorflow() -> None:
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "import cae_edge.wire, cae_edge.device.sender, cae_edge.device.receiver, cae_edge.device.sinks\n"
        "import cae_edge.device.transport, cae_edge.cli.stream\n"
        "from typer.testing import CliRunner; from cae_edge.cli.main import app\n"
        "r = CliRunner().invoke(app, ['stream', 'send', '--help']); assert r.exit_code == 0, r.output\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ------------------------------------------------------------------------------------------- processes


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "stream", *args, "--insecure"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _finish(proc: subprocess.Popen, timeout: float = WAIT_S) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"process did not finish:\n{out}") from None
    return proc.returncode, out


@pytest.mark.slow
def test_processes_stream_a_video_file_bit_exactly(tmp_path, bundle, digits) -> None:
    frames = paper_frames(digits[:30])
    video = tmp_path / "digits.mkv"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 25, (160, 120), isColor=False)
    for f in frames:
        writer.write(f)
    writer.release()
    endpoint = _endpoint()
    rx = _cli(
        "receive", "--bind", endpoint, "--out", str(tmp_path / "rx"), "--max-frames", "30",
        "--timeout", str(WAIT_S), "--json", str(tmp_path / "rx.json"), "--max-age-ms", "0", "-q",
    )  # fmt: skip
    tx = _cli(
        "send", "--source", str(video), "--connect", endpoint, "--name", "cam1", "--queue", "1000",
        "--wait", str(WAIT_S), "--json", str(tmp_path / "tx.json"), "-q",
    )  # fmt: skip
    tx_code, tx_out = _finish(tx)
    rx_code, rx_out = _finish(rx)
    assert tx_code == 0, tx_out
    assert rx_code == 0, rx_out
    sent, got = json.loads((tmp_path / "tx.json").read_text()), json.loads((tmp_path / "rx.json").read_text())
    assert sent["frames"] == 30 and sent["dropped"] == 0 and sent["lost_at_close"] == 0
    assert got["frames"] == 30 and got["senders"]["cam1"]["lost"] == 0 and got["rejected_total"] == 0
    # what arrived is bit-exactly a direct LiteRT decode of the same video frames
    with VideoCaptureSource(str(video), live=False) as src:
        from_file = list(src)
    for seq, want in enumerate(direct(bundle, from_file)):
        png = cv2.imread(str(tmp_path / "rx" / "cam1" / f"{seq:08d}.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(png, want)


@pytest.mark.slow
def test_processes_receiver_killed_and_restarted(tmp_path) -> None:
    endpoint = _endpoint()
    first = tmp_path / "first"
    rx1 = _cli("receive", "--bind", endpoint, "--out", str(first), "-q")
    tx = _cli(
        "send", "--source", "synthetic", "--connect", endpoint, "--name", "cam1", "--fps", "50",
        "--queue", "8", "--json", str(tmp_path / "tx.json"), "-q",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_S
        while len(list(first.glob("cam1/*.png"))) < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list(first.glob("cam1/*.png"))) >= 10, "first receiver got no frames"
        rx1.kill()  # no goodbye: the sender must notice and reconnect by itself
        rx1.communicate()
        last_before = max(int(p.stem) for p in first.glob("cam1/*.png"))
        time.sleep(1.0)
        assert tx.poll() is None, "sender died with its receiver"
        rx2 = _cli(
            "receive", "--bind", endpoint, "--out", str(tmp_path / "second"), "--max-frames", "20",
            "--timeout", str(WAIT_S), "--json", str(tmp_path / "rx2.json"), "-q",
        )  # fmt: skip
        code, out = _finish(rx2)
        assert code == 0, out
        after = json.loads((tmp_path / "rx2.json").read_text())["senders"]["cam1"]
        assert after["frames"] == 20 and after["last_seq"] >= last_before + 20  # all captured after the kill
        assert tx.poll() is None
    finally:
        tx.send_signal(signal.SIGTERM)  # graceful: summary, JSON, exit 0
        code, out = _finish(tx)
        for p in (rx1,):
            if p.poll() is None:
                p.kill()
    assert code == 0, out
    s = json.loads((tmp_path / "tx.json").read_text())
    assert s["status"] == "stopped" and s["connects"] >= 2 and s["disconnects"] >= 1
    assert s["frames"] > after["last_seq"] and s["dropped"] > 0  # frames captured while nobody listened


@pytest.mark.slow
def test_processes_receiver_with_decode_workers(tmp_path) -> None:
    """`stream receive --workers 2` end to end: PNGs written, the worker's pid and CPU in the JSON."""
    endpoint = _endpoint()
    rx = _cli(
        "receive", "--bind", endpoint, "--out", str(tmp_path / "rx"), "--max-frames", "40", "--workers", "2",
        "--timeout", str(WAIT_S), "--json", str(tmp_path / "rx.json"), "--max-age-ms", "0", "-q",
    )  # fmt: skip
    tx = _cli(
        "send", "--source", "synthetic", "--connect", endpoint, "--name", "cam1", "--fps", "100",
        "--queue", "1000", "--wait", str(WAIT_S), "-q",
    )  # fmt: skip
    try:
        rx_code, rx_out = _finish(rx)
    finally:
        tx.send_signal(signal.SIGTERM)
        _finish(tx)
    assert rx_code == 0, rx_out
    got = json.loads((tmp_path / "rx.json").read_text())
    assert got["status"] == "finished" and got["frames"] == 40 and got["workers"] == 2
    assert len(got["worker_pids"]) == 1 and got["worker_restarts"] == 0 and got["worker_cpu_s"] > 0
    assert 0 <= got["decoded_here"] <= 40  # frames the worker process had no room for
    cam = got["senders"]["cam1"]
    assert cam["received"] == cam["frames"] + sum(cam["dropped"].values()) + cam["queued"]
    assert len(list((tmp_path / "rx" / "cam1").glob("*.png"))) == 40
