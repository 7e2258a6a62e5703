"""A user's own frames: the demo video of real photographs, `data record`, the format, the time split.

No TensorFlow here (training on recordings: tests/train/test_user_training.py).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cae_edge import photos
from cae_edge.cli.main import app
from cae_edge.device import recording
from cae_edge.device.capture import ArraySource
from cae_edge.device.preprocess import Preprocessor
from cae_edge.device.record import RecordOptions, record
from cae_edge.errors import ConfigError, DataNotFoundError, SourceError
from cae_edge.manifest import Manifest

runner = CliRunner()

VIDEO_SECONDS, VIDEO_FPS, VIDEO_SIZE = 10.0, 10.0, (160, 120)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A real video: a camera panning across the five installed photographs (100 frames, 160x120)."""
    path = tmp_path_factory.mktemp("video") / "pan.avi"
    photos.write_pan_video(path, seconds=VIDEO_SECONDS, fps=VIDEO_FPS, size=VIDEO_SIZE)
    return path


def decoded(path: Path) -> list[np.ndarray]:
    """Every frame of a video as OpenCV decodes it."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


# ---------------------------------------------------------------- the photographs and the demo video


def test_installed_photographs_are_real_colour_photos():
    paths = photos.photo_paths()
    assert [p.name for p in paths] == [p.file for p in photos.PHOTOS]
    for p in paths:
        img = photos.load_photo(p)
        assert img.ndim == 3 and min(img.shape[:2]) >= 300, (p, img.shape)
        assert img.std() > 30, p  # a scene, not a flat card
    assert all(p.licence in ("CC0", "public domain") for p in photos.PHOTOS)


def test_pan_video_shows_the_photographs_with_small_motion(video):
    frames = decoded(video)
    assert len(frames) == int(VIDEO_SECONDS * VIDEO_FPS)
    assert frames[0].shape == (VIDEO_SIZE[1], VIDEO_SIZE[0], 3)
    # the first frame is the first view of the first photograph (up to the Motion-JPEG loss)
    want = photos.pan_frames(photos.load_photo(photos.photo_paths(["astronaut"])[0]), 20, VIDEO_SIZE)[0]
    assert cv2.PSNR(frames[0], want) > 25
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.float64) for f in frames])
    steps = np.abs(np.diff(gray, axis=0)).mean(axis=(1, 2))
    cuts = [19, 39, 59, 79]  # 20 frames per photograph
    within = np.delete(steps, cuts)
    # neighbouring frames of one photograph are closer than any two photographs across a cut
    assert within.max() < steps[cuts].min(), (within.max(), steps[cuts])
    assert within.min() > 0.5  # and the camera does move


def test_pan_video_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match=r"\.avi or \.mp4"):
        photos.write_pan_video(tmp_path / "x.gif")
    with pytest.raises(ConfigError, match="no frame"):
        photos.write_pan_video(tmp_path / "x.avi", seconds=0)
    with pytest.raises(ConfigError, match="photo 'lena'"):
        photos.write_pan_video(tmp_path / "x.avi", photos=["lena"])


def test_missing_scikit_image_says_how_to_get_the_photographs(monkeypatch):
    monkeypatch.setattr(photos.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataNotFoundError, match="scikit-image"):
        photos.photo_paths()


def test_cli_demo_video(tmp_path):
    out = tmp_path / "demo.mp4"
    result = runner.invoke(app, ["data", "demo-video", "--out", str(out), "--seconds", "2", "--fps", "5"])
    assert result.exit_code == 0, result.output
    assert "10 frames" in result.output and "CC0" in result.output
    assert len(decoded(out)) == 10


# ---------------------------------------------------------------- recording


def test_record_from_a_video_keeps_its_time_line_and_preprocessing(video, tmp_path):
    result = record(RecordOptions(tmp_path / "rec", fps=5.0), str(video))
    rec = recording.read_recording(result.path)
    assert result.clock == "media" and rec.meta["clock"] == "media"
    assert rec.frames.dtype == np.uint8 and rec.frames.shape == (50, 28, 28)
    np.testing.assert_allclose(rec.timestamps, np.arange(50) * 0.2, atol=1e-9)  # every 2nd frame at 10 fps
    pre = Preprocessor(recording.DEFAULT_PREPROCESS)
    want = np.stack([pre(f) for f in decoded(video)[::2]])
    np.testing.assert_array_equal(rec.frames, want)
    assert rec.meta["preprocess"] == recording.DEFAULT_PREPROCESS and rec.meta["count"] == 50
    assert rec.meta["format"] == recording.FORMAT and rec.meta["source"].endswith("pan.avi")
    assert rec.meta["complete"] is True and rec.meta["ended"] == "finished"
    assert rec.meta["seconds"] == pytest.approx(9.8) == result.seconds


def test_record_stops_at_frames_or_seconds(video, tmp_path):
    assert record(RecordOptions(tmp_path / "a", frames=7), str(video)).frames == 7
    by_time = record(RecordOptions(tmp_path / "b", seconds=2.0), str(video))
    assert by_time.frames == 20 and by_time.seconds == pytest.approx(1.9)


def test_cli_record_with_a_bundles_preprocessing(video, tmp_path):
    out = tmp_path / "rec"
    args = [
        "data",
        "record",
        "--source",
        str(video),
        "--bundle",
        "mnist",
        "--out",
        str(out),
        "--frames",
        "12",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "recorded 12 frames" in result.output
    rec = recording.read_recording(out)
    spec = Manifest.read(Path(__file__).parents[2] / "cae_edge" / "bundles" / "mnist").preprocess
    assert rec.meta["preprocess"] == spec and rec.meta["bundle"] == "mnist"
    want = np.stack([Preprocessor(spec)(f) for f in decoded(video)[:12]])
    np.testing.assert_array_equal(rec.frames, want)
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.stderr and "--overwrite" in again.stderr


class _Camera(ArraySource):
    """Real photo frames delivered like a camera (live: stamped with the wall clock)."""

    live = True


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        self.now += 0.01  # reading a frame takes 10 ms
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


@pytest.fixture(scope="module")
def photo_frames(video) -> np.ndarray:
    return np.stack(decoded(video)[:20])


def test_record_a_live_source_paces_to_fps_on_the_wall_clock(photo_frames, tmp_path):
    clock = _Clock()
    result = record(
        RecordOptions(tmp_path / "cam", frames=5, fps=4.0),
        _Camera(photo_frames, loop=True),
        clock=clock,
        sleep=clock.sleep,
    )
    rec = recording.read_recording(result.path)
    assert result.clock == "wall" and len(rec.frames) == 5
    assert rec.timestamps[0] > 1000 and np.all(np.diff(rec.timestamps) >= 0.25 - 1e-9)
    assert len(clock.slept) == 4


def test_a_camera_needs_a_limit(photo_frames, tmp_path):
    with pytest.raises(ConfigError, match="--seconds or --frames"):
        record(RecordOptions(tmp_path / "cam"), _Camera(photo_frames, loop=True))
    with pytest.raises(ConfigError, match="synthetic source never ends"):
        record(RecordOptions(tmp_path / "cam"), "synthetic")
    assert not (tmp_path / "cam").exists()


def test_ctrl_c_keeps_what_was_recorded(photo_frames, tmp_path):
    class Interrupted(_Camera):
        def read(self):
            if self._i == 3:
                raise KeyboardInterrupt
            return super().read()

    clock = _Clock()
    result = record(
        RecordOptions(tmp_path / "cam", seconds=60), Interrupted(photo_frames), clock=clock, sleep=clock.sleep
    )
    assert result.interrupted and result.frames == 3
    assert len(recording.read_recording(result.path).frames) == 3
    stop = threading.Event()
    stop.set()  # SIGTERM before the first frame
    with pytest.raises(ConfigError, match="before the first frame"):
        record(RecordOptions(tmp_path / "none", seconds=60), _Camera(photo_frames), stop=stop)
    assert not (tmp_path / "none").exists()


class _Unplugged(_Camera):
    """A camera that disappears after ``frames_before`` frames, as VideoCaptureSource says it."""

    frames_before = 6

    def read(self):
        if self._i == self.frames_before:
            raise SourceError(
                "camera 0: stopped delivering frames (10 reads failed in a row); is it unplugged?"
            )
        return super().read()


def test_a_camera_that_disappears_ends_the_recording_and_keeps_its_frames(photo_frames, tmp_path):
    clock = _Clock()
    result = record(
        RecordOptions(tmp_path / "cam", seconds=60), _Unplugged(photo_frames), clock=clock, sleep=clock.sleep
    )
    assert result.frames == 6 and "stopped delivering" in result.error and not result.interrupted
    rec = recording.read_recording(result.path)
    assert rec.meta["complete"] is True and rec.meta["count"] == 6
    assert rec.meta["ended"].startswith("source error: camera 0: stopped delivering")
    pre = Preprocessor(recording.DEFAULT_PREPROCESS)
    np.testing.assert_array_equal(rec.frames, np.stack([pre(f) for f in photo_frames[:6]]))
    assert np.all(np.diff(rec.timestamps) > 0) and rec.timestamps[0] > 1000
    # gone before its first frame: the error itself, and no recording left behind
    _Unplugged.frames_before = 0
    try:
        with pytest.raises(SourceError, match="stopped delivering"):
            record(RecordOptions(tmp_path / "none", seconds=60), _Unplugged(photo_frames))
    finally:
        _Unplugged.frames_before = 6
    assert not (tmp_path / "none").exists()


def test_cli_record_from_a_camera_that_disappears(photo_frames, tmp_path, monkeypatch):
    from cae_edge.device import record as record_module

    monkeypatch.setattr(record_module, "open_source", lambda spec: _Unplugged(photo_frames))
    out = tmp_path / "cam"
    result = runner.invoke(app, ["data", "record", "--source", "0", "--out", str(out), "--seconds", "60"])
    assert result.exit_code == 3, result.output
    assert "recorded 6 frames" in result.stdout
    assert "stopped delivering" in result.stderr and "keeps the 6 frames" in result.stderr
    assert len(recording.read_recording(out).frames) == 6


def test_cli_record_on_a_full_disk_says_so_and_keeps_the_flushed_frames(video, tmp_path, monkeypatch):
    import errno

    write = recording.RecordingWriter.write

    def full_after_12(self, frame, t):
        if self.count == 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, frame, t)

    monkeypatch.setattr(recording.RecordingWriter, "write", full_after_12)
    out = tmp_path / "rec"
    result = runner.invoke(app, ["data", "record", "--source", str(video), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.stderr and "another --out" in result.stderr
    rec = recording.read_recording(out)  # closed on the way out: every frame before the error
    assert (
        len(rec.frames) == 12 and rec.meta["ended"] == "failed: OSError: [Errno 28] No space left on device"
    )


KILLED_RECORDER = """
import os, signal, sys
from cae_edge.device.record import RecordOptions, record

def die_at(n, t):
    if n == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # mid-chunk: frames since the last flush are lost

record(RecordOptions(sys.argv[2], flush_frames=int(sys.argv[4]), flush_s=3600), sys.argv[1], progress=die_at)
"""


@pytest.mark.parametrize("kind", ["video", "images"])
def test_a_killed_recorder_leaves_a_recording_up_to_its_last_flush(video, tmp_path, kind):
    import subprocess
    import sys

    frames = decoded(video)
    source = video
    if kind == "images":  # a folder of 30 video frames, read in name order
        source = tmp_path / "images"
        source.mkdir()
        for i, frame in enumerate(frames[:30]):
            cv2.imwrite(str(source / f"{i:03d}.png"), frame)
        frames = [cv2.imread(str(source / f"{i:03d}.png")) for i in range(30)]
    kill_at, chunk = (90, 40) if kind == "video" else (25, 10)
    kept = kill_at // chunk * chunk
    out = tmp_path / "rec"
    args = [sys.executable, "-c", KILLED_RECORDER, str(source), str(out), str(kill_at), str(chunk)]
    proc = subprocess.run(args, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    rec = recording.read_recording(out)
    assert rec.meta["complete"] is False and rec.meta["count"] == kept == len(rec.frames)
    assert rec.meta["clock"] == "media" and str(source) in rec.meta["source"]
    assert rec.meta["recorded_by"] == "cae-edge data record"
    pre = Preprocessor(recording.DEFAULT_PREPROCESS)
    np.testing.assert_array_equal(rec.frames, np.stack([pre(f) for f in frames[:kept]]))
    np.testing.assert_allclose(rec.timestamps, np.arange(kept) / 10.0, atol=1e-9)  # both at 10 frames/s
    ds = recording.load_user_dataset(out, test_fraction=0.25, gap=0)  # what `train --dataset` reads
    assert len(ds.x_train) + len(ds.x_test) == kept


def test_sigterm_ends_cli_record_cleanly(tmp_path):
    """`data record` of an endless source (MNIST test digits moving over a canvas) stopped by SIGTERM."""
    import json as _json
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "rec"
    args = ["data", "record", "--source", "synthetic", "--out", str(out), "--seconds", "1000000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cae_edge.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 120  # an upper bound on a loaded machine, not a timing assertion
        while time.monotonic() < deadline and proc.poll() is None:
            meta = out / recording.META_FILE
            if meta.is_file() and _json.loads(meta.read_text()).get("count", 0) >= 100:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "stopped by Ctrl-C / SIGTERM" in stdout
    rec = recording.read_recording(out)
    n = len(rec.frames)
    assert n >= 100 and rec.meta["complete"] is True and rec.meta["count"] == n
    assert rec.meta["ended"] == "stopped" and f"recorded {n} frames" in stdout
    np.testing.assert_allclose(rec.timestamps, np.arange(n) / 10.0, atol=1e-9)
    assert rec.frames.std() > 10  # digits on a canvas, not a blank frame


@pytest.mark.parametrize(
    ("opts", "needle"),
    [
        ({"fps": 0}, "--fps 0"),
        ({"frames": 0}, "--frames 0"),
        ({"seconds": -1.0}, "--seconds -1"),
        ({"preprocess": {"crop": "zoom"}}, "crop 'zoom'"),
    ],
)
def test_bad_record_options(video, tmp_path, opts, needle):
    with pytest.raises(ConfigError, match=needle):
        record(RecordOptions(tmp_path / "r", **opts), str(video))


def test_record_from_a_missing_source(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        record(RecordOptions(tmp_path / "r", frames=1), str(tmp_path / "nope.avi"))


# ---------------------------------------------------------------- the format


@pytest.fixture
def rec_dir(video, tmp_path) -> Path:
    return Path(record(RecordOptions(tmp_path / "rec", frames=20), str(video)).path)


def test_read_recording_rejects_damaged_recordings(rec_dir):
    (rec_dir / recording.TIMESTAMPS_FILE).unlink()
    with pytest.raises(DataNotFoundError, match="timestamps.npy"):
        recording.read_recording(rec_dir)
    np.save(rec_dir / recording.TIMESTAMPS_FILE, np.zeros(19))
    with pytest.raises(ConfigError, match="19"):
        recording.read_recording(rec_dir)
    np.save(rec_dir / recording.TIMESTAMPS_FILE, np.full(20, np.nan))
    with pytest.raises(ConfigError, match="finite"):
        recording.read_recording(rec_dir)
    (rec_dir / recording.META_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ConfigError, match="something-else"):
        recording.read_recording(rec_dir)
    np.save(rec_dir / recording.FRAMES_FILE, np.zeros((20, 28, 28), np.float32))
    (rec_dir / recording.META_FILE).write_text(json.dumps({"format": recording.FORMAT}))
    with pytest.raises(ConfigError, match="float32"):
        recording.read_recording(rec_dir)


# ---------------------------------------------------------------- the time split


def test_time_split_puts_the_latest_frames_in_test_with_a_gap():
    ts = np.random.default_rng(0).permutation(100).astype(np.float64)  # stored out of order
    split = recording.time_split(ts, 0.2, gap=5)
    assert len(split.test) == 20 and len(split.train) == 75
    assert ts[split.train].max() < ts[split.test].min()
    assert ts[split.test].min() - ts[split.train].max() == 6  # five frames between them dropped
    assert set(split.train) | set(split.test) | set(np.argsort(ts)[75:80]) == set(range(100))


@pytest.mark.parametrize(
    ("n", "fraction", "gap", "needle"),
    [
        (10, 0.0, 1, "test fraction 0.0"),
        (10, 0.95, 1, "test fraction 0.95"),
        (10, 0.2, -1, "gap -1"),
        (6, 0.2, 5, "too few"),
    ],
)
def test_time_split_errors(n, fraction, gap, needle):
    with pytest.raises(ConfigError, match=needle):
        recording.time_split(np.arange(n, dtype=np.float64), fraction, gap)


def test_user_datasets_from_a_recording_a_video_and_a_folder_split_by_time(video, rec_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, frame in enumerate(decoded(video)[:30]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    for path, kind, n in ((rec_dir, "recording", 20), (video, "video", 100), (folder, "images", 30)):
        ds = recording.load_user_dataset(path, test_fraction=0.25, gap=2)
        assert ds.name == kind and ds.user.kind == kind
        assert len(ds.x_train) + len(ds.x_test) + 2 == n
        assert ds.x_train.dtype == np.uint8 and ds.x_train.shape[1:] == (28, 28)
        assert ds.t_test.min() > ds.t_train.max(), kind
        assert "by time" in ds.split and "/" not in ds.source_name
    # a video's frames keep its own time line; the frames are the preprocessed video frames
    ds = recording.load_user_dataset(video, test_fraction=0.25, gap=2)
    assert ds.t_test.max() == pytest.approx(9.9)
    pre = Preprocessor(recording.DEFAULT_PREPROCESS)
    np.testing.assert_array_equal(ds.x_test[-1], pre(decoded(video)[-1]))


def test_user_dataset_errors(rec_dir, tmp_path):
    with pytest.raises(DataNotFoundError, match="no such file or folder"):
        recording.load_user_dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a recording"):
        recording.load_user_dataset(tmp_path / "empty")
    with pytest.raises(ConfigError, match="recorded with preprocessing"):
        recording.load_user_dataset(rec_dir, preprocess={"invert": True})
    assert recording.is_user_dataset(str(rec_dir)) and not recording.is_user_dataset("fashion-mnist")


def test_a_node_records_with_tensorflow_unimportable(video, tmp_path):
    """`data record` is the node's side: it runs where there is no TensorFlow."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import sys

        class _BlockTF:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                    raise ImportError(f"{{name}} is blocked: the device side must not import it")

        sys.meta_path.insert(0, _BlockTF())
        from typer.testing import CliRunner
        from cae_edge.cli.main import app
        from cae_edge.device import recording
        out = {str(tmp_path / "r")!r}
        args = ["data", "record", "--source", {str(video)!r}, "--bundle", "mnist-small", "--out", out]
        r = CliRunner().invoke(app, args + ["--frames", "5"])
        assert r.exit_code == 0, r.output
        assert len(recording.load_user_dataset(out, test_fraction=0.2, gap=0).x_train) == 4
        bad = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
        assert not bad, bad
        print("OK")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr
