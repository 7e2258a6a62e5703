"""`cae-edge doctor`: exit 0 on a node that can stream, one actionable FAIL line for each thing that stops it.

Real pieces throughout: the shipped bundles and their selftest.npz, real CURVE key files, a real receiver
socket on 127.0.0.1 (a CURVE PULL socket with an allowed-keys directory), a folder of real MNIST images.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cae_edge.cli.main import app
from cae_edge.device import doctor, security
from cae_edge.device.bundle import available_bundles, load_bundle
from cae_edge.device.selftest import SELFTEST_NAME, run_selftest
from cae_edge.device.transport import PullReceiver, ReceiverOptions

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@pytest.fixture
def node(tmp_path, mnist, monkeypatch):
    """A good node: keys on both ends, a receiver that allows this node, a folder of test images."""
    monkeypatch.setenv(security.KEYS_DIR_ENV, str(tmp_path / "nokeys"))
    rx_keys = security.generate_keypair("receiver", tmp_path / "rx")
    node_keys = security.generate_keypair("cam1", tmp_path / "node")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(node_keys.public_path, allowed)
    shutil.copy(rx_keys.public_path, tmp_path / "node")
    images = tmp_path / "frames"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), mnist.x_test[i])
    curve = security.CurveServer(security.SecurityOptions(key=rx_keys.secret_path, allowed_keys=allowed))
    with PullReceiver("tcp://127.0.0.1:*", ReceiverOptions(security=curve)) as rx:
        yield {
            "connect": rx.endpoint,
            "key": node_keys.secret_path,
            "server_key": tmp_path / "node" / "receiver.key",
            "source": images,
            "tmp": tmp_path,
        }


def _args(n: dict, *extra: str, bundle: str = "mnist") -> list[str]:
    return [
        "doctor", "--bundle", bundle, "--source", str(n["source"]), "--keys", str(n["key"]),
        "--server-key", str(n["server_key"]), "--connect", n["connect"], "--timeout", "5", *extra,
    ]  # fmt: skip


def _fails(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("FAIL")]


def test_a_good_node_exits_0(node):
    r = CliRunner().invoke(app, _args(node, "--json", str(node["tmp"] / "report.json")))
    assert r.exit_code == 0, r.output
    assert _fails(r.output) == []
    assert "this node can stream" in r.output
    lines = r.output.splitlines()
    assert any(line.startswith("ok   interpreter: ai-edge-litert ") for line in lines), r.output
    assert "ok   entropy coder: numba " in r.output  # numba is a dev dependency
    assert any(line.startswith("ok   bundle mnist: self-test 12 images") for line in lines), r.output
    assert any("ok   key: " in line and "mode 0600" in line for line in lines), r.output
    assert any(line.startswith("ok   receiver: ") and "CURVE handshake done" in line for line in lines)
    report = json.loads((node["tmp"] / "report.json").read_text())
    assert report["ok"] is True
    names = [c["name"] for c in report["checks"]]
    for name in (
        "platform",
        "python",
        "entropy coder",
        "interpreter",
        "bundle mnist",
        "source",
        "key",
        "server key",
        "receiver",
    ):
        assert name in names


def test_a_node_config_file_supplies_everything(node):
    cfg = node["tmp"] / "node.toml"
    cfg.write_text(
        f'source = "{node["source"]}"\nconnect = "{node["connect"]}"\nbundle = "mnist-tiny"\n'
        f'[security]\nkey = "{node["key"]}"\nserver_key = "{node["server_key"]}"\n'
    )
    r = CliRunner().invoke(app, ["doctor", "--config", str(cfg), "--bundle", "mnist-tiny"])
    assert r.exit_code == 0, r.output
    assert "ok   config: " in r.output and "CURVE handshake done" in r.output


def test_a_secret_key_readable_by_others_fails_with_the_chmod_fix(node):
    node["key"].chmod(0o644)
    r = CliRunner().invoke(app, _args(node))
    assert r.exit_code == 1, r.output
    fails = _fails(r.output)
    assert len(fails) == 1, r.output
    assert (
        fails[0].startswith("FAIL key: ")
        and "mode 0644" in fails[0]
        and f"chmod 600 {node['key']}" in fails[0]
    )


def test_a_corrupted_bundle_fails_and_says_reinstall(node):
    broken = node["tmp"] / "broken-mnist"
    shutil.copytree(available_bundles()["mnist"], broken)
    data = bytearray((broken / "encoder.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "encoder.tflite").write_bytes(bytes(data))
    r = CliRunner().invoke(app, [*_args(node, bundle=str(broken)), "--bundle", "mnist"])
    assert r.exit_code == 1, r.output
    fails = _fails(r.output)
    assert len(fails) == 1, r.output
    assert fails[0].startswith("FAIL bundle broken-mnist: ") and "sha256" in fails[0]
    assert "reinstall cae-edge" in fails[0]
    assert "ok   bundle mnist: " in r.output  # the good bundle still ran the interpreter check


def test_latents_off_the_reference_fail_the_self_test(node):
    moved = node["tmp"] / "mnist"
    shutil.copytree(available_bundles()["mnist"], moved)
    with np.load(moved / SELFTEST_NAME) as z:
        fields = dict(z)
    lat = fields["latents"].astype(np.int16)
    lat[:, ::8] += 3  # what an interpreter that computes differently would produce
    fields["latents"] = np.clip(lat, -128, 127).astype(np.int8)
    with open(moved / SELFTEST_NAME, "wb") as f:
        np.savez_compressed(f, **fields)
    r = CliRunner().invoke(app, _args(node, bundle=str(moved)))
    assert r.exit_code == 1, r.output
    fails = _fails(r.output)
    assert len(fails) == 1 and fails[0].startswith("FAIL bundle mnist: "), r.output
    assert "max 3 steps" in fails[0] and "encodes differently" in fails[0]
    assert "pip install 'ai-edge-litert==" in fails[0]


def test_an_unreachable_receiver_fails_with_what_to_start(node):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node["connect"] = f"tcp://127.0.0.1:{port}"
    r = CliRunner().invoke(app, _args(node))
    assert r.exit_code == 1, r.output
    fails = _fails(r.output)
    assert len(fails) == 1, r.output
    assert fails[0].startswith(f"FAIL receiver: tcp://127.0.0.1:{port}: TCP connect ")
    assert f"cae-edge stream receive --bind tcp://*:{port}" in fails[0]


def test_a_malformed_receiver_address_is_one_fail_line(node):
    node["connect"] = "tcp://127.0.0.1"
    r = CliRunner().invoke(app, _args(node))
    assert r.exit_code == 1, r.output
    fails = _fails(r.output)
    assert len(fails) == 1 and fails[0].startswith("FAIL receiver: "), r.output
    assert "'tcp://127.0.0.1'" in fails[0] and "tcp://HOST:PORT" in fails[0]


def test_a_receiver_that_refuses_this_node_fails_with_the_allowed_keys_fix(node):
    other = security.generate_keypair("cam2", node["tmp"] / "other")  # not in the receiver's allowed keys
    node["key"] = other.secret_path
    r = CliRunner().invoke(app, _args(node))
    assert r.exit_code == 1, r.output
    fails = _fails(r.output)
    assert len(fails) == 1 and "refused this node's key" in fails[0] and "--allowed-keys" in fails[0], (
        r.output
    )


def test_no_source_and_no_camera_fails(node, monkeypatch):
    monkeypatch.setattr(doctor, "list_cameras", lambda: [])
    args = _args(node)
    i = args.index("--source")
    del args[i : i + 2]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    fails = _fails(r.output)
    assert len(fails) == 1 and fails[0].startswith("FAIL cameras: ") and "python3-picamera2" in fails[0]


@pytest.mark.parametrize(
    "capabilities,device_caps,camera",
    [
        (0x84200001, 0x04200001, True),  # uvcvideo: a USB webcam
        (0x84A00001, 0x04A00001, True),  # a CSI receiver node (unicam / rp1-cfe)
        (0x84204000, 0x04204000, False),  # bcm2835-codec: memory-to-memory, multi-planar
        (0x84208000, 0x04208000, False),  # an M2M converter
        (0x00000001, 0x00000000, True),  # an old driver without device_caps
        (0x84800000, 0x00800000, False),  # metadata only
    ],
)
def test_only_capture_devices_count_as_cameras(capabilities, device_caps, camera):
    assert doctor.is_capture_device(capabilities, device_caps) is camera


def test_32bit_arm_fails_the_platform_check(monkeypatch):
    monkeypatch.setattr(doctor.platform, "machine", lambda: "armv7l")
    c = doctor.check_platform()
    assert c.status == "fail" and "Raspberry Pi OS (64-bit)" in c.fix


def test_entropy_coder_line_names_the_forced_pure_coder(monkeypatch):
    monkeypatch.setenv("CAE_EDGE_PURE_ENTROPY", "1")
    check = doctor.check_entropy_coder()
    assert check.status == "ok"
    assert check.line() == "ok   entropy coder: python (CAE_EDGE_PURE_ENTROPY=1 forces the pure-Python coder)"


def test_every_line_is_one_line():
    c = doctor.Check("x", "fail", "first\nsecond", "do\nthis")
    assert c.line() == "FAIL x: first second -> do this"


@pytest.mark.parametrize("name", sorted(available_bundles()))
def test_shipped_selftest_matches_the_golden_latents(name):
    """The shipped self-test holds the golden images' XNNPACK latents, and this machine reproduces them."""
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    bundle = load_bundle(name)
    with np.load(bundle.path / SELFTEST_NAME) as z:
        assert str(z["pair_id"]) == golden["pair_id"] == bundle.pair_id
        assert [q.tobytes().hex() for q in z["latents"]] == golden["xnnpack"]["latents_hex"]
    r = run_selftest(bundle)
    assert r.ok and r.differing == 0 and r.images == len(golden["indices"])


def test_doctor_runs_with_tensorflow_unimportable():
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "from typer.testing import CliRunner; from cae_edge.cli.main import app\n"
        "r = CliRunner().invoke(app, ['doctor', '-b', 'mnist-tiny', '--source', 'synthetic', '--insecure'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert not [m for m, v in sys.modules.items() if v and m.split('.')[0] in ('tensorflow', 'keras')]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
