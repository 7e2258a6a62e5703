"""What the sender says about its inputs: the drift warning (payloads well above the bundle's typical size),
escaped latent values, and `--save-inputs` as a recording that `train --dataset` takes.

Real frames only: photographs (scikit-image / matplotlib test pictures, as the node sees a scene) and MNIST
digits; the loopback test streams camera frames panned over photographs to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from cae_edge import datasets, photos, scenes, wire
from cae_edge.cli.main import app
from cae_edge.device import recording
from cae_edge.device.bundle import load_bundle
from cae_edge.device.capture import ArraySource
from cae_edge.device.drift import DriftWatch
from cae_edge.device.preprocess import Preprocessor
from cae_edge.device.receiver import ReceiveOptions, run_receiver
from cae_edge.device.sender import SendOptions, run_sender, stream_send
from cae_edge.device.sinks import PngSink
from cae_edge.device.transport import LinkStats, PullReceiver
from cae_edge.errors import ConfigError
from cae_edge.payload import payload_kind

WAIT_S = 60.0  # upper bound for things that must happen on a loaded box; never a timing assertion
runner = CliRunner()


class MemoryLink:
    """A link that keeps every packet (the drift watch needs no network)."""

    endpoint = "memory"
    closed = False

    def __init__(self) -> None:
        self.stats = LinkStats()
        self.packets: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.packets.append(data)
        self.stats.sent += 1
        return True

    def wait_connected(self, timeout_s: float) -> bool:
        return True


@pytest.fixture(scope="module")
def scene_windows() -> list[np.ndarray]:
    """240 camera windows (BGR, 4:3, random scale) of the 11 held-out test photographs."""
    pictures = [scenes.read_photo(scenes.photo_path(p)) for p in scenes.TEST_PHOTOS]
    return [
        scenes.scene_frame(pictures[i % len(pictures)], np.random.default_rng([0, 1, i]), lambda w: w)
        for i in range(240)
    ]


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return datasets.load("mnist").x_test[:240]


@pytest.fixture(scope="module")
def mnist_hq():
    return load_bundle("mnist-hq")


def send(bundle, frames, preprocess, **opts):
    """run_sender over a memory link; (stats, log lines)."""
    logs: list[str] = []
    options = SendOptions(name="cam", **opts)
    stats = run_sender(
        ArraySource(frames),
        preprocess,
        bundle.encoder(),
        MemoryLink(),
        pair_id=bundle.pair_id,
        options=options,
        kind=payload_kind(bundle.coding),
        drift=DriftWatch.for_bundle(bundle, options.drift_factor, options.drift_window),
        on_log=logs.append,
    )
    return stats, logs


# ---------------------------------------------------------------- drift


def test_drift_watch_speaks_once_per_change_and_waits_for_a_full_window():
    w = DriftWatch(50.0, factor=1.5, window=10, bundle="bundle b", trained_on="mnist")
    said = [w.add(100) for _ in range(9)]
    assert said == [None] * 9 and w.warning is None  # window not full yet: no verdict on 9 frames
    first = w.add(100)
    assert first is not None and w.warning == first and w.warnings == 1
    assert "100.0 B, 2.0× bundle b's typical 50.0 B" in first and "(mnist)" in first
    assert "a scenes bundle" in first and "cae-edge train --dataset" in first
    assert [w.add(100) for _ in range(20)] == [None] * 20  # said once, not once per frame
    # back down: 75 B is the threshold itself, not under 0.9 of it: still drifting
    assert [w.add(75) for _ in range(10)] == [None] * 10 and w.warning is not None
    out = [w.add(60) for _ in range(10)]
    cleared = [m for m in out if m]
    assert len(cleared) == 1 and "cleared" in cleared[0] and w.warning is None
    assert w.mean == pytest.approx(60.0)
    for _ in range(10):
        w.add(120)
    assert w.warnings == 2 and w.warning is not None
    scenes_bundle = DriftWatch(20.0, window=1, trained_on="scenes")
    assert "a scenes bundle" not in scenes_bundle.add(100)  # it is one: train on your own frames


def test_mnist_hq_fed_photographs_says_the_scene_drifted(mnist_hq, scene_windows, digits, narrow_alphabet):
    """As the node sees a scene (grayscale, no inversion, no MNIST normalisation), photographs cost
    mnist-hq far more than its typical 70 B per image."""
    stats, logs = send(mnist_hq, scene_windows, Preprocessor(scenes.SCENE_PREPROCESS))
    typical = mnist_hq.coding["bytes_mean"]
    assert stats.payload_bytes_typical == typical
    assert stats.payload_bytes_recent > 1.3 * typical
    assert stats.drift is not None and stats.drift_warnings == 1
    assert "mnist-hq" in stats.drift and "(mnist)" in stats.drift and "scenes bundle" in stats.drift
    assert [line for line in logs if "payloads average" in line] == [f"cam: {stats.drift}"]
    # escaped values, counted against an independent count of the latents: the shipped bundles keep these
    # photographs in their alphabets, so mnist-hq's models with an alphabet fitted narrow on digits
    narrow = narrow_alphabet(mnist_hq, digits)
    stats, _ = send(narrow, scene_windows, Preprocessor(scenes.SCENE_PREPROCESS))
    enc, pre = narrow.encoder(), Preprocessor(scenes.SCENE_PREPROCESS)
    model = enc.codec.model
    q = np.stack([enc.encode_latent(pre(w)) for w in scene_windows])
    outside = int(((q < model.lo) | (q > model.hi)).sum())
    assert outside > 0 and stats.escaped == outside
    assert stats.to_dict()["drift"] == stats.drift  # in the --json statistics too


def test_mnist_hq_fed_digits_stays_quiet(mnist_hq, digits):
    stats, logs = send(mnist_hq, digits, lambda image: image)
    typical = mnist_hq.coding["bytes_mean"]
    assert stats.frames == len(digits)
    assert stats.payload_bytes_recent == pytest.approx(typical, rel=0.1)
    assert stats.drift is None and stats.drift_warnings == 0 and not logs


def test_fixed_size_payloads_and_factor_zero_are_not_watched(mnist_hq, scene_windows):
    int8 = load_bundle("mnist")
    assert DriftWatch.for_bundle(int8) is None
    assert DriftWatch.for_bundle(mnist_hq, factor=0) is None
    stats, logs = send(int8, scene_windows[:120], Preprocessor(scenes.SCENE_PREPROCESS))
    assert stats.payload_bytes_typical == 0 and stats.drift is None and stats.escaped == 0 and not logs


@pytest.mark.parametrize(
    "opts, needle",
    [
        ({"drift_factor": 1.0}, "drift factor 1.0"),
        ({"drift_factor": -2}, "drift factor -2"),
        ({"drift_window": 0}, "drift window 0"),
        ({"save_inputs_format": "jpeg"}, "format 'jpeg'"),
    ],
)
def test_bad_sender_options(opts, needle):
    with pytest.raises(ConfigError, match=needle):
        SendOptions(**opts).check()


# ---------------------------------------------------------------- --save-inputs as a recording


@pytest.fixture(scope="module")
def camera_frames() -> np.ndarray:
    """60 camera frames (160x120 BGR) panning over three photographs."""
    paths = photos.photo_paths()[:3]
    return np.concatenate([photos.pan_frames(photos.load_photo(p), 20, (160, 120)) for p in paths])


def test_loopback_send_records_its_inputs_for_training(camera_frames, tmp_path):
    bundle = load_bundle("mnist-small")
    rec_dir, received = tmp_path / "rec", tmp_path / "received"
    link = PullReceiver("tcp://127.0.0.1:*")
    stop = threading.Event()

    # the receiver as a user runs it, on its own thread
    rx_stats: list = []

    def run_rx() -> None:
        rx_stats.append(
            run_receiver(
                link,
                bundle.decoder(),
                pair_id=bundle.pair_id,
                kind=payload_kind(bundle.coding),
                sinks=[PngSink(received)],
                options=ReceiveOptions(max_age_ms=0, idle_timeout_s=WAIT_S, max_frames=len(camera_frames)),
                on_log=lambda _m: None,
                stop=stop,
            )
        )

    thread = threading.Thread(target=run_rx, daemon=True)
    thread.start()
    try:
        stats = stream_send(
            ArraySource(camera_frames),
            link.endpoint,
            bundle,
            SendOptions(name="cam-1", save_inputs=rec_dir, wait_connected_s=WAIT_S),
        )
        thread.join(WAIT_S)
        assert not thread.is_alive(), "receiver did not finish"
    finally:
        stop.set()
        link.close()
    assert stats.frames == stats.sent == len(camera_frames)
    assert rx_stats[0].frames == len(camera_frames)

    rec = recording.read_recording(rec_dir)
    pre = Preprocessor(bundle.preprocess)
    assert rec.frames.shape == (len(camera_frames), 28, 28)
    assert np.array_equal(rec.frames, np.stack([pre(f) for f in camera_frames]))  # the inputs it encoded
    assert rec.meta["complete"] is True and rec.meta["count"] == len(camera_frames)
    assert rec.meta["sender"] == "cam-1" and rec.meta["pair_id"] == bundle.pair_id
    assert rec.meta["clock"] == "wall" and rec.preprocess == pre.spec.to_dict()
    ts = rec.timestamps
    assert np.all(np.diff(ts) >= 0) and rec.meta["seconds"] == pytest.approx(ts[-1] - ts[0])
    assert json.loads((rec_dir / "meta.json").read_text())["format"] == recording.FORMAT

    # `train --dataset` takes it as it is: a time split of exactly these frames
    data = recording.load_user_dataset(rec_dir)
    assert data.name == "recording"
    assert len(data.x_train) + len(data.x_test) + recording.GAP_FRAMES == len(camera_frames)
    assert np.array_equal(data.x_test, rec.frames[-len(data.x_test) :])

    # `stream compare` matches frame i of the recording with the receiver's <name>/<i>.png
    r = runner.invoke(
        app, ["stream", "compare", str(rec_dir), str(received), "--out", str(tmp_path / "s.png")]
    )
    assert r.exit_code == 0, r.output
    assert f"{len(camera_frames)} frames matched" in r.output


def test_recording_timestamps_are_the_packets_capture_times(camera_frames, tmp_path):
    bundle = load_bundle("mnist-small")
    link = MemoryLink()
    stats = run_sender(
        ArraySource(camera_frames[:30]),
        Preprocessor(bundle.preprocess),
        bundle.encoder(),
        link,
        pair_id=bundle.pair_id,
        options=SendOptions(name="cam-2", save_inputs=tmp_path / "rec"),
        kind=payload_kind(bundle.coding),
    )
    rec = recording.read_recording(tmp_path / "rec")
    assert stats.frames == len(rec.frames) == len(link.packets) == 30
    for i, data in enumerate(link.packets):
        p = wire.unpack(data)
        assert p.seq == i
        assert abs((round(rec.timestamps[i] * 1e6) & wire.MASK32) - p.t_us) <= 1


def test_save_inputs_refuses_an_existing_recording_and_png_keeps_the_old_layout(camera_frames, tmp_path):
    bundle = load_bundle("mnist-small")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        SendOptions(save_inputs=tmp_path / "taken").check()
    run_sender(
        ArraySource(camera_frames[:5]),
        Preprocessor(bundle.preprocess),
        bundle.encoder(),
        MemoryLink(),
        pair_id=bundle.pair_id,
        options=SendOptions(name="cam-3", save_inputs=tmp_path / "png", save_inputs_format="png"),
        kind=payload_kind(bundle.coding),
    )
    assert sorted(p.name for p in (tmp_path / "png" / "cam-3").iterdir()) == [
        f"{i:08d}.png" for i in range(5)
    ]


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from cae_edge import datasets
from cae_edge.device.recording import RecordingWriter
digits = datasets.load("mnist").x_test[:150]
w = RecordingWriter(sys.argv[1], {"source": "mnist test digits"}, flush_frames=100, flush_s=3600)
for i, d in enumerate(digits):
    w.write(d, 1000.0 + i / 10)
os.kill(os.getpid(), signal.SIGKILL)  # killed mid-chunk: 50 frames written since the last flush
"""


KILLED_BETWEEN_HEADERS = """
import os, signal, sys
from cae_edge import datasets
from cae_edge.device import recording
digits = datasets.load("mnist").x_test[:150]
w = recording.RecordingWriter(sys.argv[1], {"source": "mnist test digits"}, flush_frames=100, flush_s=3600)
for i, d in enumerate(digits[:100]):
    w.write(d, 1000.0 + i / 10)
for i, d in enumerate(digits[100:], 100):
    w._frames.write(d.tobytes()); w._stamps.write(__import__("numpy").float64(1000.0 + i / 10).tobytes())
    w.count += 1
header, calls = recording._npy_header, []
def dying_header(descr, shape):  # the flush of frame 150: killed after the timestamps' header
    calls.append(descr)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return header(descr, shape)
recording._npy_header = dying_header
w.flush()
"""


@pytest.mark.parametrize("script", [KILLED_WRITER, KILLED_BETWEEN_HEADERS], ids=["mid-chunk", "mid-flush"])
def test_a_killed_writer_leaves_a_recording_up_to_its_last_flush(tmp_path, script):
    out = tmp_path / "rec"
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    rec = recording.read_recording(out)
    assert rec.meta["complete"] is False and rec.meta["count"] == 100
    assert np.array_equal(rec.frames, datasets.load("mnist").x_test[:100])
    assert np.allclose(rec.timestamps, 1000.0 + np.arange(100) / 10)


def test_writer_rejects_bad_frames(tmp_path, digits):
    with recording.RecordingWriter(tmp_path / "rec") as w:
        w.write(digits[0], 1.0)
        with pytest.raises(ConfigError, match="28x28"):
            w.write(np.zeros((14, 14), np.uint8) + digits[0][::2, ::2], 2.0)
        with pytest.raises(ConfigError, match="float64"):
            w.write(digits[1].astype(np.float64), 2.0)
        with pytest.raises(ConfigError, match="timestamp nan"):
            w.write(digits[1], float("nan"))
    assert len(recording.read_recording(tmp_path / "rec").frames) == 1
    with pytest.raises(ConfigError, match="already exists"):
        recording.RecordingWriter(tmp_path / "rec")
