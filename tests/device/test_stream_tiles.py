"""Tiled frames end to end: a node sending 112x112 frames of real photographs as 4x4 tiles in one packet per
frame, a receiver putting them back together (real sockets on 127.0.0.1, random ports)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
import zmq

from cae_edge import metrics, scenes, tiles, wire
from cae_edge.device.capture import ArraySource
from cae_edge.device.receiver import ReceiveOptions, receive_pipeline
from cae_edge.device.sender import SendOptions, send_pipeline
from cae_edge.device.sinks import MemorySink
from cae_edge.device.transport import PullReceiver, PushSender, SenderOptions
from cae_edge.wire import Packet, PayloadKind

WAIT_S = 60.0  # upper bound for things that must happen (slow shared machine); never a timing assertion
BUNDLE = "scenes-small"
CLI = [sys.executable, "-c", "from cae_edge.cli.main import main; main()"]


@pytest.fixture(scope="module")
def camera_frames() -> np.ndarray:
    """Twelve 240x320 BGR camera frames: windows of the held-out photographs (coffee, chelsea, astronaut)."""
    out = []
    for i, photo in enumerate(scenes.TEST_PHOTOS[:3]):
        img = scenes.read_photo(scenes.photo_path(photo))
        h, w = img.shape[:2]
        for j in range(4):
            y, x = (h - 240) * j // 4, (w - 320) * (3 - j) // 4 if i % 2 else (w - 320) * j // 4
            out.append(np.ascontiguousarray(img[y : y + 240, x : x + 320]))
    return np.stack(out)


def direct(pipe, frames) -> list[np.ndarray]:
    """What the receiver must show: preprocess to 112x112, decode each tile's payload, no network."""
    dec = pipe.bundle.decoder()
    return [
        tiles.join_tiles(
            [dec.decode(p) for p in tiles.unpack_tiles(pipe.encoder.encode(pipe.preprocess(f)))[2]], 4, 4
        )
        for f in frames
    ]


class _Receiver:
    def __init__(self, options: ReceiveOptions) -> None:
        self.pipe = receive_pipeline(BUNDLE)
        self.link = PullReceiver("tcp://127.0.0.1:*")
        self.sink = MemorySink()
        self.logs: list[str] = []
        self.stats = None

        def run() -> None:
            self.stats = self.pipe.run(self.link, [self.sink], options, on_log=self.logs.append)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, tx: PushSender) -> None:
        assert tx.flush(WAIT_S) == 0
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "receiver did not finish"
        self.link.close()


@pytest.mark.parametrize(("compact", "workers"), [(False, 1), (True, 1), (False, 2)])
def test_tiled_stream_reassembles_photographs(camera_frames, compact: bool, workers: int) -> None:
    pipe = send_pipeline(BUNDLE, tiles=4)
    n = len(camera_frames)
    pair, sid = wire.pair_prefix(pipe.pair_id), wire.sender_id("raw")
    good = pipe.encoder.encode(pipe.preprocess(camera_frames[0]))
    bad = [
        Packet(pair, sid, 0, 1, b"\x04", PayloadKind.ENTROPY, "raw", tiled=True),  # tiles: no grid
        Packet(pair, sid, 1, 2, good[:-3], PayloadKind.ENTROPY, "raw", tiled=True),  # tiles: truncated
        Packet(pair, sid, 2, 3, good, PayloadKind.INT8, "raw", tiled=True),  # coding
        Packet(pair, sid, 3, 4, good, PayloadKind.ENTROPY, "raw", tiled=True),  # a good one on this link
    ]
    opts = ReceiveOptions(max_age_ms=0, idle_timeout_s=WAIT_S, max_frames=n + 1, workers=workers)
    rx = _Receiver(opts)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 1000)
    raw.connect(rx.link.endpoint)
    try:
        with PushSender(rx.link.endpoint, SenderOptions(queue_size=1000)) as tx:
            for p in bad:
                raw.send(wire.pack(p))
            s = pipe.run(
                ArraySource(camera_frames),
                tx,
                SendOptions(name="cam-t", wait_connected_s=WAIT_S, compact=compact, session_every=5),
            )
            rx.join(tx)
    finally:
        raw.close()
        ctx.term()
    assert s.status == "finished" and s.frames == n and s.dropped == 0
    assert (s.compact > 0) == compact
    assert s.payload_bytes > 16 * 10  # 16 tiles of a photograph in each packet
    r = rx.stats
    assert r.rejected == {"tiles": 2, "coding": 1}, r.rejected
    assert r.senders["cam-t"].frames == n and r.senders["cam-t"].lost == 0
    assert r.senders["raw"].frames == 1
    want = direct(pipe, camera_frames)
    truth = [pipe.preprocess(f) for f in camera_frames]
    for seq in range(n):
        got = rx.sink.frames[("cam-t", seq)]
        assert got.shape == (112, 112)
        np.testing.assert_array_equal(got, want[seq])
    # the stream's frame PSNR is the PSNR of decoding the tiles directly, and it is the photograph's
    got = np.stack([rx.sink.frames[("cam-t", i)] for i in range(n)])
    psnr = metrics.psnr_per_image(np.stack(truth), got)
    np.testing.assert_allclose(psnr, metrics.psnr_per_image(np.stack(truth), np.stack(want)))
    assert psnr.mean() > metrics.psnr_per_image(np.stack(truth)[::-1], got).mean() + 3
    assert any("refused a frame from raw" in line and "tiled payload" in line for line in rx.logs)


@pytest.mark.slow
def test_cli_sends_tiles_and_the_receiver_writes_big_pngs(tmp_path, camera_frames) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(camera_frames[:6]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)
    with PullReceiver("tcp://127.0.0.1:*") as probe:
        endpoint = probe.endpoint

    def cli(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*CLI, "stream", *args, "--insecure"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    rx = cli(
        "receive", "--bind", endpoint, "--bundle", BUNDLE, "--out", str(tmp_path / "rx"), "--max-frames", "6",
        "--timeout", str(WAIT_S), "--json", str(tmp_path / "rx.json"), "--max-age-ms", "0", "-q",
    )  # fmt: skip
    tx = cli(
        "send", "--source", str(folder), "--connect", endpoint, "--bundle", BUNDLE, "--tiles", "4",
        "--name", "cam1", "--wait", str(WAIT_S), "--json", str(tmp_path / "tx.json"), "-q",
    )  # fmt: skip
    tx_out, _ = tx.communicate(timeout=WAIT_S * 2)
    rx_out, _ = rx.communicate(timeout=WAIT_S * 2)
    assert tx.returncode == 0, tx_out
    assert rx.returncode == 0, rx_out
    assert "4x4 tiles" in tx_out
    sent, got = json.loads((tmp_path / "tx.json").read_text()), json.loads((tmp_path / "rx.json").read_text())
    assert sent["frames"] == 6 and got["frames"] == 6 and got["rejected_total"] == 0
    pipe = send_pipeline(BUNDLE, tiles=4)
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted(folder.iterdir())]
    for seq, want in enumerate(direct(pipe, frames)):
        png = cv2.imread(str(tmp_path / "rx" / "cam1" / f"{seq:08d}.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(png, want)


def test_cli_refuses_tiles_for_an_mnist_bundle(tmp_path) -> None:
    from typer.testing import CliRunner

    from cae_edge.cli.main import app

    res = CliRunner().invoke(
        app,
        ["stream", "send", "--source", "synthetic", "--connect", "tcp://127.0.0.1:9", "--insecure",
         "--bundle", "mnist", "--tiles", "4", "--max-frames", "1"],
    )  # fmt: skip
    assert res.exit_code == 1
    assert "centres one object per frame" in res.output


def test_node_config_takes_tiles(tmp_path) -> None:
    from cae_edge.device.config import parse_node_config
    from cae_edge.errors import ConfigError

    base = {"source": "0", "connect": "tcp://127.0.0.1:5555", "bundle": "scenes-hq"}
    base["security"] = {"insecure": True}
    assert parse_node_config(base, tmp_path / "n.toml").tiles == 1
    assert parse_node_config({**base, "tiles": 4}, tmp_path / "n.toml").tiles == 4
    for bad in (0, 17, "4", 2.5, True):
        with pytest.raises(ConfigError, match=r"tiles = .*: must be an integer 1 \.\. 16"):
            parse_node_config({**base, "tiles": bad}, tmp_path / "n.toml")


def test_video_sink_takes_its_size_from_the_first_frame(tmp_path, camera_frames) -> None:
    from cae_edge.device.sinks import SinkError, VideoSink

    pipe = send_pipeline(BUNDLE, tiles=4)
    big = [pipe.preprocess(f) for f in camera_frames[:3]]
    sink = VideoSink(tmp_path / "v.avi", scale=2)
    for i, img in enumerate(big):
        sink.write("cam1", i, img)
    with pytest.raises(SinkError, match="a 28x28 frame of cam1 in its video of 112x112 frames"):
        sink.write("cam1", 3, big[0][:28, :28])
    sink.close()
    cap = cv2.VideoCapture(str(tmp_path / "v.avi"))
    try:
        size = (cap.get(cv2.CAP_PROP_FRAME_HEIGHT), cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    assert size == (224, 224) and count == 3


def test_drift_watch_counts_a_tiled_payload_as_its_tiles(camera_frames) -> None:
    """A tiled payload holds N*N tiles: the watch compares it with N*N typical tiles, so scenes-small on the
    photographs it is made for stays quiet; compared with one tile's typical size it would cry drift."""
    from cae_edge.device.drift import DriftWatch

    pipe = send_pipeline(BUNDLE, tiles=4)
    sizes = [len(pipe.encoder.encode(pipe.preprocess(f))) for f in camera_frames]
    tiled = DriftWatch.for_bundle(pipe.bundle, window=len(sizes), tiles=4)
    single = DriftWatch.for_bundle(pipe.bundle, window=len(sizes))
    assert tiled is not None and single is not None
    assert [tiled.add(s) for s in sizes] == [None] * len(sizes) and tiled.warning is None
    assert any(single.add(s) for s in sizes) and single.warning is not None
