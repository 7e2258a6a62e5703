"""A real mosquitto broker for the MQTT tests: found (or, as root, installed from Debian), configured with
``cae_edge.device.broker`` (TLS, per-client passwords, ACLs) on a free loopback port, started and stopped.

Only where no broker can be had (not installed, not root, or no apt) do the tests skip, and they say why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cae_edge.device.broker import write_broker_config
from cae_edge.device.mqtt import MqttReceiverOptions, MqttSenderOptions

NODES = ["cam1", "cam2"]
RECEIVERS = ["rx1", "rx2"]
START_S = 30.0  # upper bound for the broker to listen (slow shared box); not a timing assertion


def _which() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.access(p, os.X_OK)), None
    )


def find_mosquitto() -> str:
    """The mosquitto binary; installs the Debian package first when missing and running as root.

    Skips the calling test (with the reason) when there is no broker to be had.
    """
    exe = _which()
    if exe is not None:
        return exe
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            "no MQTT broker: mosquitto is not installed and cannot be installed here (needs root and apt); "
            "install the Debian package `mosquitto` (or run `make setup` as root)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "mosquitto"]
    for cmd in (install, ["apt-get", "update", "-qq"], install):  # the package lists may be missing
        subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        exe = _which()
        if exe is not None:
            return exe
    pytest.skip("no MQTT broker: `apt-get install mosquitto` failed (no package source reachable?)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto with the generated config (TLS on 127.0.0.1, passwords, ACLs); nodes cam1, cam2 and
    receivers rx1, rx2."""

    def __init__(self, directory: Path) -> None:
        self.exe = find_mosquitto()
        if shutil.which("openssl") is None:
            pytest.skip(
                "openssl not installed: the broker's TLS certificate cannot be made (apt-get install openssl)"
            )
        self.dir = directory
        self.port = free_port()
        self.files = write_broker_config(
            directory, NODES, RECEIVERS, hosts=["127.0.0.1", "localhost"], port=self.port, bind="127.0.0.1"
        )
        if os.geteuid() == 0:  # as root mosquitto switches to user mosquitto, who cannot read our tmp dir
            with self.files.conf.open("a") as f:
                f.write("user root\n")
        self.url = f"mqtts://127.0.0.1:{self.port}"
        self.log = directory / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.files.conf), "-v"], stdout=log,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen within {START_S} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def password_file(self, name: str) -> Path:
        return self.files.passwords[name]

    def sender_options(self, name: str, **kw) -> MqttSenderOptions:
        kw.setdefault("password_file", self.password_file(name))
        kw.setdefault("ca_file", self.files.ca)
        return MqttSenderOptions(**kw)

    def receiver_options(self, name: str, **kw) -> MqttReceiverOptions:
        pw = self.password_file(name)
        return MqttReceiverOptions(username=name, password_file=pw, ca_file=self.files.ca, **kw)

    def cli_args(self, name: str) -> list[str]:
        """``stream send/receive`` flags for client ``name``."""
        pw, ca = str(self.password_file(name)), str(self.files.ca)
        return ["--transport", "mqtt", "--broker", self.url, "--username", name,
                "--password-file", pw, "--ca-file", ca]  # fmt: skip
