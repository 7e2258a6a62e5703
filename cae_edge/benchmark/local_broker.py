"""A local mosquitto for the MQTT soak and the tests: the generated broker config (TLS, per-client passwords,
ACLs, from :func:`cae_edge.device.broker.write_broker_config`) on a free loopback port, started, stopped and
restarted on the same port.

::

    LocalBroker(dir, nodes, receivers).start()   → mqtts://127.0.0.1:PORT, DIR/mosquitto.log
        .restart()                               SIGTERM, wait, start again (same port, same files)
        .stop()

It never installs anything: :func:`mosquitto_path` finds the binary or returns ``None`` (the tests' fixture
installs the Debian package where it may; the soak tells the user to).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ..device.broker import BrokerFiles, write_broker_config
from ..errors import ConfigError

LOOPBACK = "127.0.0.1"
START_S = 30.0
"""Upper bound for mosquitto to listen (a slow, shared machine)."""


def mosquitto_path() -> str | None:
    """The mosquitto binary (on ``PATH`` or in ``/usr/sbin``), or ``None``."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    """A TCP port free on the loopback address now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class LocalBroker:
    """mosquitto with the generated config on ``127.0.0.1``: ``nodes`` may publish under their own topics,
    ``receivers`` read every node's. ``max_queued`` sets the config's ``max_queued_messages`` (what the
    broker holds for a receiver beyond its in-flight window before it discards messages).

    Raises:
        ConfigError: no mosquitto binary (the message says how to install it), no openssl, bad names.
    """

    def __init__(
        self,
        directory: Path,
        nodes: list[str],
        receivers: list[str],
        *,
        exe: str | None = None,
        max_queued: int | None = None,
    ) -> None:
        self.exe = exe or mosquitto_path()
        if self.exe is None:
            raise ConfigError(
                "no MQTT broker: mosquitto is not installed; install the Debian package "
                "(apt-get install mosquitto) or use --transport zmq"
            )
        self.dir = Path(directory)
        self.port = free_port()
        self.files: BrokerFiles = write_broker_config(
            self.dir,
            nodes,
            receivers,
            hosts=[LOOPBACK, "localhost"],
            port=self.port,
            bind=LOOPBACK,
            max_queued=max_queued,
        )
        if os.geteuid() == 0:  # as root mosquitto switches to user mosquitto, who cannot read our files
            with self.files.conf.open("a") as f:
                f.write("user root\n")
        self.url = f"mqtts://{LOOPBACK}:{self.port}"
        self.log = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout_s: float = START_S) -> LocalBroker:
        """Start mosquitto and wait until it accepts connections.

        Raises:
            ConfigError: it exited or did not listen in time (the log's tail is quoted).
        """
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.files.conf)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise ConfigError(f"mosquitto exited {code}: {self.log_tail()}")
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise ConfigError(
            f"mosquitto did not listen on port {self.port} within {timeout_s:g} s: {self.log_tail()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (then SIGKILL after ``timeout_s``) and wait (idempotent)."""
        p, self.proc = self.proc, None
        if p is None:
            return
        p.terminate()
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout_s)

    def restart(self) -> tuple[float, float]:
        """Stop and start again on the same port; returns (Unix time it was stopped, time it listened)."""
        down = time.time()
        self.stop()
        self.start()
        return down, time.time()

    def password_file(self, name: str) -> Path:
        """Client ``name``'s password file (mode 0600)."""
        return self.files.passwords[name]

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
