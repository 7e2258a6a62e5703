"""A real mosquitto broker for the MQTT tests: found (or, as root, installed from Debian), configured with
``cae_edge.device.broker`` (TLS, per-client passwords, ACLs) on a free loopback port, started and stopped by
``cae_edge.benchmark.local_broker.LocalBroker`` (the soak's broker runner).

Only where no broker can be had (not installed, not root, or no apt) do the tests skip, and they say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cae_edge.benchmark.local_broker import LocalBroker, mosquitto_path
from cae_edge.device.mqtt import MqttReceiverOptions, MqttSenderOptions

NODES = ["cam1", "cam2"]
RECEIVERS = ["rx1", "rx2"]


def find_mosquitto() -> str:
    """The mosquitto binary; installs the Debian package first when missing and running as root.

    Skips the calling test (with the reason) when there is no broker to be had.
    """
    exe = mosquitto_path()
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
        exe = mosquitto_path()
        if exe is not None:
            return exe
    pytest.skip("no MQTT broker: `apt-get install mosquitto` failed (no package source reachable?)")


def need_openssl() -> None:
    """Skip the calling test when the broker's TLS certificate cannot be made."""
    if shutil.which("openssl") is None:
        pytest.skip(
            "openssl not installed: the broker's TLS certificate cannot be made (apt-get install openssl)"
        )


class Broker(LocalBroker):
    """mosquitto with the generated config (TLS on 127.0.0.1, passwords, ACLs); nodes cam1, cam2 and
    receivers rx1, rx2."""

    def __init__(self, directory: Path) -> None:
        exe = find_mosquitto()
        need_openssl()
        super().__init__(directory, NODES, RECEIVERS, exe=exe)

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
