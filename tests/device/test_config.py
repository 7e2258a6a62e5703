"""Node config files: strict TOML validation with errors that name the key and quote the value."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cae_edge.cli.stream import node_config
from cae_edge.device import config, security
from cae_edge.errors import ConfigError, KeyFileError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "node.example.toml"


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    """A node directory with keys/ (node pair + receiver public key), as on a Pi."""
    keys = tmp_path / "keys"
    security.generate_keypair("cam-1", keys)
    rx = security.generate_keypair("receiver", tmp_path / "rx")
    shutil.copy(rx.public_path, keys)
    return tmp_path


GOOD = """
name = "cam-1"
source = "synthetic"
bundle = "mnist"
connect = "tcp://127.0.0.1:5555"
fps = 12
max_frames = 100
threads = 2

[preprocess]
invert = true
crop = "letterbox"

[queue]
size = 32
policy = "drop-newest"

[security]
key = "keys/cam-1.key_secret"
server_key = "keys/receiver.key"
"""


def write(node_dir: Path, text: str) -> Path:
    path = node_dir / "node.toml"
    path.write_text(text)
    return path


def test_full_config_loads_with_types_and_relative_paths(node_dir: Path) -> None:
    cfg = config.load_node_config(write(node_dir, GOOD))
    assert cfg.name == "cam-1" and cfg.source == "synthetic" and cfg.bundle == "mnist"
    assert cfg.connect == "tcp://127.0.0.1:5555"
    assert cfg.fps == 12.0 and isinstance(cfg.fps, float)
    assert cfg.max_frames == 100 and cfg.threads == 2
    assert cfg.queue == config.QueueOptions(size=32, policy="drop-newest")
    assert cfg.preprocess.invert is True and cfg.preprocess.crop == "letterbox"
    assert cfg.preprocess.mnist_normalize is None
    assert cfg.security.key == node_dir / "keys" / "cam-1.key_secret"
    assert cfg.security.server_key == node_dir / "keys" / "receiver.key"
    assert cfg.security.insecure is False
    d = cfg.to_dict()
    assert d["security"]["key"].endswith("cam-1.key_secret") and d["queue"]["size"] == 32


def test_minimal_config_gets_defaults(node_dir: Path) -> None:
    cfg = config.load_node_config(
        write(node_dir, 'source = "0"\nconnect = "tcp://rx.local:5555"\n[security]\ninsecure = true\n')
    )
    assert cfg.name == config.default_name()
    assert cfg.bundle == "mnist" and cfg.fps == 0.0 and cfg.max_frames == 0 and cfg.threads == 1
    assert cfg.queue == config.QueueOptions()
    assert cfg.preprocess == config.PreprocessOverrides()
    assert cfg.security.insecure is True
    assert cfg.compact is False and cfg.session_every == 100


def test_compact_frames_are_a_node_setting(node_dir: Path) -> None:
    cfg = config.load_node_config(
        write(node_dir, GOOD.replace("threads = 2", "compact = true\nsession_every = 40"))
    )
    assert cfg.compact is True and cfg.session_every == 40


def test_preprocess_overrides_apply_to_the_manifest_spec() -> None:
    spec = {"size": 28, "grayscale": True, "invert": False, "crop": "center", "mnist_normalize": False}
    out = config.PreprocessOverrides(invert=True).apply(spec)
    assert out == {**spec, "invert": True}
    assert spec["invert"] is False  # not modified in place


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("fps = 12", "fsp = 12"), r"unknown key 'fsp' \(did you mean 'fps'\?\); valid keys: name, source"),
        (('policy = "drop-newest"', 'polcy = "drop-newest"'), r"unknown key 'polcy' in \[queue\].*'policy'"),
        (("invert = true", "invrt = true"), r"unknown key 'invrt' in \[preprocess\]"),
        (
            ('key = "keys', 'secret = "keys'),
            r"unknown key 'secret' in \[security\].*valid keys: key, server_key",
        ),
        (("[queue]", "[queues]"), r"unknown key 'queues' \(did you mean 'queue'\?\)"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key_and_the_valid_ones(
    node_dir: Path, edit: tuple[str, str], message: str
) -> None:
    path = write(node_dir, GOOD.replace(*edit))
    with pytest.raises(ConfigError, match=message) as info:
        config.load_node_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("fps = 12", 'fps = "ten"'), r"fps = 'ten': must be a number"),
        (("fps = 12", "fps = -1"), r"fps = -1.0: must be a number of frames per second"),
        (("fps = 12", "fps = true"), r"fps = True: must be a number"),
        (("max_frames = 100", "max_frames = 1.5"), r"max_frames = 1.5: must be an integer >= 0"),
        (("threads = 2", "threads = 0"), r"threads = 0: must be an integer 1 \.\. 64"),
        (("threads = 2", "threads = 2\ncompact = 1"), r"compact = 1: must be true or false"),
        (
            ("threads = 2", "threads = 2\nsession_every = 0"),
            r"session_every = 0: must be an integer 1 \.\. 10000",
        ),
        (("size = 32", "size = 0"), r"queue.size = 0: must be an integer 1 \.\. 100000"),
        (("size = 32", 'size = "32"'), r"queue.size = '32': must be an integer"),
        (
            ('policy = "drop-newest"', 'policy = "block"'),
            r"queue.policy = 'block': must be one of 'drop-oldest'",
        ),
        (('crop = "letterbox"', 'crop = "centre"'), r"preprocess.crop = 'centre': must be one of 'center'"),
        (("invert = true", 'invert = "yes"'), r"preprocess.invert = 'yes': must be true or false"),
        (('name = "cam-1"', 'name = "cam 1"'), r"name = 'cam 1': sender name"),
        (('name = "cam-1"', "name = 7"), r"name = 7: must be a sender name"),
        (('connect = "tcp://127.0.0.1:5555"', 'connect = "127.0.0.1:5555"'), r"connect = '127.0.0.1:5555'"),
        (
            ('connect = "tcp://127.0.0.1:5555"', 'connect = "tcp://host:99999"'),
            r"connect = 'tcp://host:99999'",
        ),
        (('connect = "tcp://127.0.0.1:5555"', 'connect = "tcp://*:5555"'), r"'\*' is for binding"),
        (('source = "synthetic"', 'source = ""'), r"source = '': must not be empty"),
    ],
)
def test_wrong_types_and_values_are_quoted(node_dir: Path, edit: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*edit)
    assert text != GOOD
    with pytest.raises(ConfigError, match=message):
        config.load_node_config(write(node_dir, text))


def test_section_must_be_a_table(node_dir: Path) -> None:
    text = GOOD.replace("threads = 2", "threads = 2\nqueue = 5").replace(
        '[queue]\nsize = 32\npolicy = "drop-newest"', ""
    )
    with pytest.raises(ConfigError, match=r"queue = 5: must be a \[queue\] table"):
        config.load_node_config(write(node_dir, text))


@pytest.mark.parametrize("key", ["source", "connect"])
def test_missing_required_keys(node_dir: Path, key: str) -> None:
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(f"{key} ="))
    with pytest.raises(ConfigError, match=f"missing '{key}'"):
        config.load_node_config(write(node_dir, text))


def test_security_required_unless_insecure(node_dir: Path) -> None:
    text = GOOD.replace('server_key = "keys/receiver.key"', "")
    with pytest.raises(ConfigError, match=r"\[security\] lacks server_key.*insecure = true"):
        config.load_node_config(write(node_dir, text))
    text = GOOD.split("[security]")[0]
    with pytest.raises(ConfigError, match=r"lacks key and server_key"):
        config.load_node_config(write(node_dir, text))


def test_key_files_are_checked_on_load(node_dir: Path) -> None:
    path = write(node_dir, GOOD)
    os.chmod(node_dir / "keys" / "cam-1.key_secret", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        config.load_node_config(path)
    assert config.load_node_config(path, check_key_files=False).name == "cam-1"
    os.chmod(node_dir / "keys" / "cam-1.key_secret", 0o600)
    (node_dir / "keys" / "receiver.key").write_text("garbage\n")
    with pytest.raises(KeyFileError, match="receiver.key is not a ZeroMQ CURVE certificate"):
        config.load_node_config(path)
    (node_dir / "keys" / "receiver.key").unlink()
    with pytest.raises(KeyFileError, match="receiver.key not found"):
        config.load_node_config(path)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found.*node.example.toml"):
        config.load_node_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('source = "0"\nconnect = \n')
    with pytest.raises(ConfigError, match="TOML syntax error"):
        config.load_node_config(bad)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load_node_config(bad)


def test_relative_source_and_bundle_paths_resolve_against_the_file(node_dir: Path) -> None:
    (node_dir / "clips").mkdir()
    (node_dir / "clips" / "a.mp4").write_bytes(b"")
    (node_dir / "my-bundle").mkdir()
    text = GOOD.replace('source = "synthetic"', 'source = "clips/a.mp4"').replace(
        'bundle = "mnist"', 'bundle = "./my-bundle"'
    )
    cfg = config.load_node_config(write(node_dir, text))
    assert cfg.source == str(node_dir / "clips" / "a.mp4")
    assert Path(cfg.bundle) == node_dir / "my-bundle"
    cfg = config.load_node_config(write(node_dir, GOOD.replace('source = "synthetic"', 'source = "0"')))
    assert cfg.source == "0"


def test_shipped_example_is_valid(tmp_path: Path) -> None:
    """docs/node.example.toml parses and validates (its key paths don't exist here, so skip those)."""
    cfg = config.load_node_config(EXAMPLE, check_key_files=False)
    assert cfg.connect.startswith("tcp://")
    assert cfg.security.key is not None and cfg.security.server_key is not None
    # every valid key is shown in the example, so it documents them all
    text = EXAMPLE.read_text()
    for section, keys in config.config_keys().items():
        if section:
            assert f"[{section}]" in text
        for key in keys:
            assert f"{key} =" in text or f"[{key}]" in text, key


def test_command_line_flags_override_the_file(node_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(node_dir, GOOD)
    monkeypatch.chdir(node_dir)
    cfg = node_config(path, {"fps": 30.0, "queue.size": 8, "connect": "tcp://10.0.0.2:6000", "name": None})
    assert cfg.fps == 30.0 and cfg.queue.size == 8 and cfg.connect == "tcp://10.0.0.2:6000"
    assert cfg.name == "cam-1" and cfg.queue.policy == "drop-newest"  # untouched keys come from the file
    assert cfg.preprocess.overrides() == {"invert": True, "crop": "letterbox"}
    # flags alone, paths relative to the working directory
    cfg = node_config(
        None,
        {
            "source": "synthetic",
            "connect": "tcp://127.0.0.1:5555",
            "security.key": Path("keys/cam-1.key_secret"),
            "security.server_key": Path("keys/receiver.key"),
        },
    )
    assert cfg.path is None and cfg.security.key == node_dir / "keys" / "cam-1.key_secret"
    with pytest.raises(ConfigError, match="--connect required"):
        node_config(None, {"source": "0"})
    with pytest.raises(ConfigError, match="--keys .* --server-key .* or --insecure"):
        node_config(None, {"source": "0", "connect": "tcp://127.0.0.1:5555"})
    cfg = node_config(None, {"source": "0", "connect": "tcp://127.0.0.1:5555", "security.insecure": True})
    assert cfg.security.insecure
    with pytest.raises(ConfigError, match="fps = -2.0"):
        node_config(path, {"fps": -2.0})


@pytest.mark.slow
def test_a_node_runs_from_its_config_file(node_dir: Path) -> None:
    """`cae-edge stream send --config node.toml` streams to a CURVE receiver with the file's settings."""
    import threading

    from typer.testing import CliRunner

    from cae_edge.cli.main import app
    from cae_edge.device.bundle import load_bundle
    from cae_edge.device.receiver import ReceiveOptions, run_receiver
    from cae_edge.device.transport import PullReceiver, ReceiverOptions
    from cae_edge.payload import payload_kind

    allowed = node_dir / "allowed"
    allowed.mkdir()
    shutil.copy(node_dir / "keys" / "cam-1.key", allowed)
    curve = security.CurveServer(
        security.SecurityOptions(key=node_dir / "rx" / "receiver.key_secret", allowed_keys=allowed)
    )
    b = load_bundle("mnist")
    result: dict = {}
    with PullReceiver("tcp://127.0.0.1:*", ReceiverOptions(security=curve)) as rx:
        text = GOOD.replace("tcp://127.0.0.1:5555", rx.endpoint).replace(
            "max_frames = 100", "max_frames = 25"
        )
        text = text.replace("size = 32", "size = 1000")
        path = write(node_dir, text)

        def receive() -> None:
            result["stats"] = run_receiver(
                rx, b.decoder(1), pair_id=b.pair_id, kind=payload_kind(b.coding),
                options=ReceiveOptions(max_frames=25, idle_timeout_s=60.0, max_age_ms=0),
            )  # fmt: skip

        thread = threading.Thread(target=receive)
        thread.start()
        r = CliRunner().invoke(app, ["stream", "send", "--config", str(path), "--wait", "30", "-q"])
        thread.join(90)
    assert r.exit_code == 0, r.output
    assert "as 'cam-1'" in r.output and "WARNING" not in r.output
    stats = result["stats"]
    assert set(stats.senders) == {"cam-1"}
    cam = stats.senders["cam-1"]
    assert cam.frames == 25 and cam.lost == 0 and cam.peer == "cam-1"
