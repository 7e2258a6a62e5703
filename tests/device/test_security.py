"""CURVE key files and authenticated links: real sockets on 127.0.0.1, random ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth
from typer.testing import CliRunner
from zmq.utils.monitor import recv_monitor_message

from cae_edge.cli.main import app
from cae_edge.device import security
from cae_edge.errors import ConfigError, KeyFileError

WAIT_S = 10.0  # generous upper bound for events that must happen; never a timing assertion


@pytest.fixture
def keys(tmp_path: Path) -> dict:
    """A receiver pair, two node pairs (one allowed, one not) and an allowed-keys directory."""
    out = {
        "receiver": security.generate_keypair("receiver", tmp_path / "rx"),
        "other-rx": security.generate_keypair("other-rx", tmp_path / "orx"),
        "good": security.generate_keypair("good-node", tmp_path / "good"),
        "rogue": security.generate_keypair("rogue-node", tmp_path / "rogue"),
    }
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(out["good"].public_path, allowed)
    out["allowed"] = allowed
    return out


def server_opts(keys: dict) -> security.SecurityOptions:
    return security.SecurityOptions(key=keys["receiver"].secret_path, allowed_keys=keys["allowed"])


def client_opts(keys: dict, who: str, server: str = "receiver") -> security.SecurityOptions:
    return security.SecurityOptions(key=keys[who].secret_path, server_key=keys[server].public_path)


# ----------------------------------------------------------------------------------------------- key files


def test_generate_writes_a_loadable_pair_with_safe_modes(tmp_path: Path) -> None:
    files = security.generate_keypair("node-1", tmp_path / "k")
    assert files.public_path.name == "node-1.key" and files.secret_path.name == "node-1.key_secret"
    assert files.secret_path.stat().st_mode & 0o777 == 0o600
    assert files.public_path.stat().st_mode & 0o022 == 0  # nobody else may rewrite the public key
    pair = security.load_secret_key(files.secret_path)
    pub = security.load_public_key(files.public_path)
    assert pair.public == pub.public == files.public_key.encode()
    assert zmq.curve_public(pair.secret) == pair.public
    assert pair.name == pub.name == "node-1"
    # zmq's own reader agrees with ours (standard certificate format)
    assert zmq.auth.load_certificate(files.secret_path) == (pair.public, pair.secret)


def test_generate_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = security.generate_keypair("n", tmp_path)
    with pytest.raises(KeyFileError, match="already exists.*--force"):
        security.generate_keypair("n", tmp_path)
    second = security.generate_keypair("n", tmp_path, overwrite=True)
    assert second.public_key != first.public_key
    assert security.load_secret_key(second.secret_path).public == second.public_key.encode()


@pytest.mark.parametrize("name", ["", "has space", "../escape", "-dash-first", "x" * 65, "a/b"])
def test_generate_rejects_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="key name"):
        security.generate_keypair(name, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_secret_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    files = security.generate_keypair("n", tmp_path)
    os.chmod(files.secret_path, mode)
    with pytest.raises(KeyFileError, match=rf"mode {mode:04o}.*chmod 600"):
        security.load_secret_key(files.secret_path)
    os.chmod(files.secret_path, 0o400)  # owner read-only is fine
    assert security.load_secret_key(files.secret_path).secret


def test_public_file_where_secret_expected_and_vice_versa(tmp_path: Path) -> None:
    files = security.generate_keypair("n", tmp_path)
    with pytest.raises(KeyFileError, match="only a public key.*n.key_secret"):
        security.load_secret_key(files.public_path)
    with pytest.raises(KeyFileError, match="contains a secret key"):
        security.load_public_key(files.secret_path)


def _bad_content(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    good = security.generate_keypair("good", tmp_path / "src")
    other = security.generate_keypair("other", tmp_path / "src")
    text = good.secret_path.read_text()
    other_public = other.public_key
    return {
        "empty": (b"", "not a ZeroMQ CURVE certificate"),
        "binary": (bytes(range(256)) * 4, "not a ZeroMQ CURVE certificate"),
        "short key": (b'curve\n    public-key = "abc"\n', "not a 40-character Z85 key"),
        "bad chars": (b'curve\n    public-key = "' + b"\xff" * 40 + b'"\n', "not a 40-character Z85 key"),
        "mismatched pair": (
            text.replace(good.public_key, other_public).encode(),
            "does not belong to secret-key",
        ),
        "bad secret": (
            text.replace(text.split('secret-key = "')[1][:40], "~" * 40).encode(),
            "secret-key is not a 40-character Z85 key",
        ),
    }


@pytest.mark.parametrize(
    "case", ["empty", "binary", "short key", "bad chars", "mismatched pair", "bad secret"]
)
def test_bad_key_content_gives_clear_errors(tmp_path: Path, case: str) -> None:
    content, message = _bad_content(tmp_path)[case]
    path = tmp_path / "broken.key_secret"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match=message) as info:
        security.load_secret_key(path)
    assert str(path) in str(info.value)


def test_missing_and_non_file_key_paths(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found.*cae-edge keys generate"):
        security.load_public_key(tmp_path / "nope.key")
    (tmp_path / "dir.key").mkdir()
    with pytest.raises(KeyFileError, match="not a regular file"):
        security.load_public_key(tmp_path / "dir.key")


def test_allowed_keys_directory_checks(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="allowed-keys directory .* not found"):
        security.load_allowed_keys(tmp_path / "missing")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    with pytest.raises(KeyFileError, match=r"no \*.key public key files"):
        security.load_allowed_keys(allowed)
    a = security.generate_keypair("a", tmp_path / "a")
    shutil.copy(a.public_path, allowed / "a.key")
    assert security.load_allowed_keys(allowed) == {a.public_key.encode(): "a"}
    shutil.copy(a.public_path, allowed / "a-again.key")
    with pytest.raises(KeyFileError, match="repeats the key"):
        security.load_allowed_keys(allowed)
    (allowed / "a-again.key").unlink()
    shutil.copy(a.secret_path, allowed / "leaked.key")
    with pytest.raises(KeyFileError, match="leaked.key contains a secret key"):
        security.load_allowed_keys(allowed)


def test_options_demand_keys_unless_insecure(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--keys and --allowed-keys.*--insecure"):
        security.SecurityOptions().check_server()
    with pytest.raises(ConfigError, match="--server-key.*--insecure"):
        security.SecurityOptions(key=tmp_path / "k.key_secret").check_client()
    assert security.server_security(security.SecurityOptions(insecure=True)) is None
    assert security.client_security(None) is None


# ----------------------------------------------------------------------------------------------- sockets


class Link:
    """A PULL receiver secured by CurveServer, with a monitor on its socket."""

    def __init__(self, opts: security.SecurityOptions) -> None:
        self.ctx = zmq.Context()
        self.curve = security.CurveServer(opts)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.linger = 0
        self.curve.apply(self.pull)
        self.monitor = self.pull.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self.port = self.pull.bind_to_random_port("tcp://127.0.0.1")
        self.pushes: list[zmq.Socket] = []

    def sender(self, opts: security.SecurityOptions | None) -> zmq.Socket:
        push = self.ctx.socket(zmq.PUSH)
        push.linger = 0
        client = security.client_security(opts)
        if client is not None:
            client.apply(push)
        push.connect(f"tcp://127.0.0.1:{self.port}")
        self.pushes.append(push)
        return push

    def wait_event(self, wanted: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.monitor.poll(100):
                if recv_monitor_message(self.monitor)["event"] & wanted:
                    return
        raise AssertionError(f"no handshake event {wanted} within {WAIT_S} s")

    def drain(self, timeout_ms: int = 300) -> list[tuple[bytes, str]]:
        got = []
        while self.pull.poll(timeout_ms):
            f = self.pull.recv(copy=False)
            got.append((f.bytes, f.get("User-Id")))
        return got

    def close(self) -> None:
        for p in self.pushes:
            p.close()
        self.pull.disable_monitor()
        self.monitor.close()
        self.pull.close()
        self.curve.close()
        self.ctx.term()


@pytest.fixture
def link(keys: dict):
    lk = Link(server_opts(keys))
    yield lk
    lk.close()


def test_allowed_sender_is_delivered_with_its_key_name(link: Link, keys: dict) -> None:
    push = link.sender(client_opts(keys, "good"))
    push.send(b"frame-0")
    assert link.pull.poll(int(WAIT_S * 1000))
    frame = link.pull.recv(copy=False)
    assert frame.bytes == b"frame-0"
    assert frame.get("User-Id") == "good-node"
    assert link.curve.stats.accepted == {"good-node": 1}


def test_unknown_key_frames_are_never_delivered(link: Link, keys: dict) -> None:
    rogue = link.sender(client_opts(keys, "rogue"))
    for i in range(20):
        rogue.send(b"rogue-%d" % i, zmq.NOBLOCK)
    link.wait_event(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    assert link.curve.stats.denied >= 1
    assert link.curve.stats.denied_keys[-1] == keys["rogue"].public_key
    # a good sender on the same receiver still gets through, and only its frames arrive
    good = link.sender(client_opts(keys, "good"))
    for i in range(5):
        good.send(b"good-%d" % i)
    got = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < 5 and time.monotonic() < deadline:
        got += link.drain(100)
    got += link.drain()
    assert [g[0] for g in got] == [b"good-%d" % i for i in range(5)]
    assert {g[1] for g in got} == {"good-node"}


def test_sender_pinned_to_the_wrong_server_key_cannot_connect(link: Link, keys: dict) -> None:
    push = link.sender(client_opts(keys, "good", server="other-rx"))
    push.send(b"secret frame", zmq.NOBLOCK)
    link.wait_event(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    assert link.drain() == []
    assert link.curve.stats.accepted == {}


def test_plaintext_sender_is_refused_by_a_curve_receiver(link: Link) -> None:
    push = link.sender(None)
    push.send(b"plain", zmq.NOBLOCK)
    link.wait_event(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    assert link.drain() == []


def test_a_key_added_to_the_allowed_directory_is_accepted_without_restart(link: Link, keys: dict) -> None:
    first = link.sender(client_opts(keys, "rogue"))
    first.send(b"x", zmq.NOBLOCK)
    link.wait_event(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    shutil.copy(keys["rogue"].public_path, keys["allowed"])
    push = link.sender(client_opts(keys, "rogue"))  # a refused socket does not retry; a new one does
    push.send(b"now allowed")
    deadline = time.monotonic() + WAIT_S
    got: list = []
    while not got and time.monotonic() < deadline:
        got = link.drain(100)
    assert (b"now allowed", "rogue-node") in got
    assert link.curve.stats.allowed_keys == 2


def test_refused_push_sender_retries_and_connects_once_its_key_is_allowed(keys: dict) -> None:
    """ZeroMQ gives up after a ZAP refusal; the transport's PushSender starts over until it is let in."""
    from cae_edge.device.transport import PullReceiver, PushSender, ReceiverOptions, SenderOptions

    curve = security.CurveServer(server_opts(keys))
    with PullReceiver("tcp://127.0.0.1:*", ReceiverOptions(security=curve)) as rx:
        client = security.CurveClient(client_opts(keys, "rogue"))
        opts = SenderOptions(security=client, reconnect_ivl_max_ms=200)
        with PushSender(rx.endpoint, opts) as tx:
            deadline = time.monotonic() + WAIT_S
            while tx.stats.refused < 1 and time.monotonic() < deadline:
                tx.send(b"early")
                time.sleep(0.01)
            assert tx.stats.refused >= 1 and not tx.stats.peers
            assert rx.recv_many(timeout_s=0.2) == []
            shutil.copy(keys["rogue"].public_path, keys["allowed"])  # the operator allows the node
            assert tx.wait_connected(WAIT_S)
            tx.send(b"admitted")
            got: list = []
            while not any(m.data == b"admitted" for m in got) and time.monotonic() < deadline:
                got += rx.recv_many(timeout_s=0.1)
    assert any(m.data == b"admitted" and m.peer == "rogue-node" for m in got)
    assert all(m.peer == "rogue-node" for m in got)


def test_bad_key_files_fail_before_any_socket(keys: dict) -> None:
    os.chmod(keys["receiver"].secret_path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        security.CurveServer(server_opts(keys))
    with pytest.raises(KeyFileError, match="contains a secret key"):
        security.CurveClient(
            security.SecurityOptions(key=keys["good"].secret_path, server_key=keys["receiver"].secret_path)
        )


# ----------------------------------------------------------------------------------------------- CLI


def test_keys_cli_generate_and_list(tmp_path: Path) -> None:
    runner = CliRunner()
    d = str(tmp_path / "keys")
    r = runner.invoke(app, ["keys", "generate", "cam-1", "--dir", d])
    assert r.exit_code == 0, r.output
    assert "cam-1.key_secret" in r.output
    r = runner.invoke(app, ["keys", "generate", "cam-1", "--dir", d])
    assert r.exit_code == 1 and "already exists" in r.output
    r = runner.invoke(app, ["keys", "list", "--dir", d, "--json"])
    assert r.exit_code == 0, r.output
    assert '"name": "cam-1"' in r.output and '"problem": null' in r.output
    os.chmod(Path(d) / "cam-1.key_secret", 0o644)
    r = runner.invoke(app, ["keys", "list", "--dir", d, "--json"])
    assert r.exit_code == 1 and "chmod 600" in r.output


def test_keys_cli_default_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(security.KEYS_DIR_ENV, str(tmp_path / "env-keys"))
    r = CliRunner().invoke(app, ["keys", "generate", "receiver"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "env-keys" / "receiver.key").exists()


# ------------------------------------------------------------------------------------ stream CLI processes

CLI = [sys.executable, "-c", "from cae_edge.cli.main import main; main()"]
PROC_WAIT_S = 90.0  # upper bound for process start-up on a busy box; never a timing assertion


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _stream(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "stream", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen, timeout: float = PROC_WAIT_S) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"process did not finish:\n{out}") from None
    return proc.returncode, out


@pytest.mark.slow
def test_stream_processes_decode_only_allowed_senders(keys: dict, tmp_path: Path) -> None:
    """Real `cae-edge stream` processes: a rogue key's frames never decode; the allowed node's all do."""
    endpoint = _free_endpoint()
    status = tmp_path / "status.json"
    rx = _stream(
        "receive", "--bind", endpoint, "--keys", str(keys["receiver"].secret_path),
        "--allowed-keys", str(keys["allowed"]), "--status", str(status), "--max-frames", "30",
        "--timeout", str(PROC_WAIT_S), "--json", str(tmp_path / "rx.json"), "-q",
    )  # fmt: skip
    rogue = good = None
    try:
        rogue = _stream(
            "send", "--source", "synthetic", "--connect", endpoint, "--name", "rogue", "--fps", "50",
            "--keys", str(keys["rogue"].secret_path), "--server-key", str(keys["receiver"].public_path), "-q",
        )  # fmt: skip
        deadline = time.monotonic() + PROC_WAIT_S
        denied = 0
        while denied < 1 and time.monotonic() < deadline and rx.poll() is None:
            if status.exists():
                denied = (json.loads(status.read_text())["auth"] or {}).get("denied", 0)
            time.sleep(0.2)
        assert denied >= 1, "the receiver never saw the rogue key"
        good = _stream(
            "send", "--source", "synthetic", "--connect", endpoint, "--name", "cam1", "--fps", "100",
            "--max-frames", "400", "--keys", str(keys["good"].secret_path),
            "--server-key", str(keys["receiver"].public_path), "-q",
        )  # fmt: skip
        code, out = _finish(rx)
    finally:
        for p in (rogue, good):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                _finish(p)
        if rx.poll() is None:
            rx.kill()
    assert code == 0, out
    assert "refused a sender: its CURVE key is not in --allowed-keys" in out
    assert "key " + keys["rogue"].public_key in out
    got = json.loads((tmp_path / "rx.json").read_text())
    # identity from the key: filed under the key's name; the claimed name is a label, the mismatch counted
    assert set(got["senders"]) == {"good-node"} and got["senders"]["good-node"]["frames"] == 30
    cam = got["senders"]["good-node"]
    assert cam["peer"] == "good-node" and cam["claimed"] == "cam1" and cam["name_mismatch"] >= 1
    assert got["rejected_total"] == 0 and got["refused_by"]["key"] >= 1
    final = json.loads(status.read_text())
    assert final["secured"] is True and set(final["senders"]) == {"good-node"}
    assert final["auth"]["accepted"] == {"good-node": 1} and final["auth"]["denied"] >= 1


def test_stream_cli_requires_keys_or_an_explicit_insecure(keys: dict) -> None:
    runner = CliRunner()
    endpoint = _free_endpoint()
    r = runner.invoke(app, ["stream", "send", "--source", "synthetic", "--connect", endpoint])
    assert r.exit_code == 1 and "--keys" in r.output and "--insecure" in r.output
    r = runner.invoke(app, ["stream", "receive", "--bind", endpoint, "--timeout", "0.2"])
    assert r.exit_code == 1 and "--allowed-keys" in r.output and "--insecure" in r.output
    os.chmod(keys["receiver"].secret_path, 0o644)
    r = runner.invoke(
        app,
        ["stream", "receive", "--bind", endpoint, "--keys", str(keys["receiver"].secret_path),
         "--allowed-keys", str(keys["allowed"]), "--timeout", "0.2"],
    )  # fmt: skip
    assert r.exit_code == 1 and "chmod 600" in r.output
    r = runner.invoke(
        app,
        ["stream", "send", "--source", "synthetic", "--connect", endpoint, "--insecure",
         "--max-frames", "2", "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "WARNING: --insecure" in r.output and "WITHOUT encryption" in r.output


def test_fleet_modules_import_without_tensorflow() -> None:
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "import cae_edge.device.security, cae_edge.device.config\n"
        "import cae_edge.benchmark.soak, cae_edge.device.status\n"
        "from typer.testing import CliRunner; from cae_edge.cli.main import app\n"
        "for args in (['keys', 'list', '--help'], ['stream', 'soak', '--help']):\n"
        "    r = CliRunner().invoke(app, args); assert r.exit_code == 0, r.output\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
