"""Can this machine stream? The checks behind ``cae-edge doctor``, each one a :class:`Check` result.

::

    platform ─ python ─ interpreter (child-process probe) ─ bundles (load + self-test) ─ cameras / source
             ─ keys (content, modes) ─ receiver (TCP connect, then a ZeroMQ/CURVE handshake)
               or, for a node config with ``transport = "mqtt"``: broker (TLS + credentials, MQTT connect)

Every check yields one :class:`Check`: ``ok``, ``warn`` (works, but look at it), ``skip`` (nothing to check,
or an earlier failure makes it moot) or ``fail`` with a ``fix`` that says what to do. The node can stream
when no check failed (:attr:`DoctorReport.ok`). Nothing here prints or exits: the CLI does.
"""

from __future__ import annotations

import glob
import importlib.util
import platform
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CaeEdgeError
from .probe import DEFAULT_TIMEOUT_S

if TYPE_CHECKING:
    from .config import NodeConfig

STATUSES = ("ok", "warn", "skip", "fail")
MIN_PYTHON = (3, 10)


@dataclass
class DoctorOptions:
    """What to check. Flags override the node config file; without either, a check is skipped or generic."""

    bundles: list[str] = field(default_factory=list)
    """Bundle names or directories to self-test; empty = every installed bundle (and the config's)."""
    source: str | None = None
    """Frame source to open and read one frame from (``open_source`` spec)."""
    key: Path | None = None
    """This node's secret key file (``NAME.key_secret``)."""
    server_key: Path | None = None
    """The receiver's public key file."""
    insecure: bool = False
    """The node streams without CURVE (the handshake check then goes in the clear)."""
    connect: str | None = None
    """The receiver endpoint to try, e.g. ``tcp://192.168.1.10:5555``."""
    config: Path | None = None
    """A node config file (``cae-edge stream send --config``): source, connect, bundle and keys from it."""
    connect_timeout_s: float = 3.0
    """How long the receiver gets to accept the TCP connection and finish the handshake."""
    probe_timeout_s: float = DEFAULT_TIMEOUT_S
    """How long the interpreter probe may take in its child process."""


@dataclass
class Check:
    """One finding."""

    name: str
    """What was checked (``platform``, ``interpreter``, ``bundle mnist``, ``key``, ``receiver``, ...)."""
    status: str
    """``ok``, ``warn``, ``skip`` or ``fail``."""
    detail: str
    """What was found."""
    fix: str = ""
    """What to do (for ``fail`` and ``warn``)."""

    def line(self) -> str:
        """The finding on one line: ``STATUS name: detail -> fix``."""
        text = f"{self.name}: {self.detail}" + (f" -> {self.fix}" if self.fix else "")
        status = self.status.upper() if self.status == "fail" else self.status
        return f"{status:<4} " + " ".join(text.split())  # one line, whatever the messages held

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DoctorReport:
    """Every check, in the order run."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed: the node can stream."""
        return not any(c.status == "fail" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


# ---- individual checks ------------------------------------------------------------------------------------


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def check_platform() -> Check:
    """Machine, OS and word size; 32-bit ARM fails (no interpreter wheel for it)."""
    from .litert import is_32bit_arm

    bits = 64 if sys.maxsize > 2**32 else 32
    detail = f"{platform.system()} {platform.machine()}, {bits}-bit, {_os_name()}"
    if is_32bit_arm():
        return Check(
            "platform",
            "fail",
            detail + ": no TFLite interpreter wheel exists for 32-bit ARM",
            "install Raspberry Pi OS (64-bit) and reinstall cae-edge with `pip install 'cae-edge[node]'`",
        )
    return Check("platform", "ok", detail)


def check_python() -> Check:
    """The running Python, and whether cae-edge supports it."""
    detail = f"Python {platform.python_version()} ({sys.executable})"
    if sys.version_info[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return Check("python", "fail", detail + f": cae-edge needs {need} or newer", f"use Python >= {need}")
    return Check("python", "ok", detail)


def check_entropy_coder() -> Check:
    """Which range coder entropy-coded bundles use here: compiled (numba) or pure Python (always works)."""
    from ..entropy import jit_status

    return Check("entropy coder", "ok", jit_status())


def check_interpreter(bundle_dirs: list[Path], timeout_s: float = DEFAULT_TIMEOUT_S) -> Check:
    """Load and run an encoder in a child process (:func:`~cae_edge.device.probe.probe_interpreter`).

    Tries the bundles in order until one loads: a broken bundle is the bundle check's finding, not this one's.
    """
    from ..errors import BundleError
    from .probe import probe_interpreter

    if not bundle_dirs:
        return Check("interpreter", "skip", "no bundle to run", "install cae-edge with its bundles")
    last: Exception | None = None
    for path in bundle_dirs:
        try:
            r = probe_interpreter(path, timeout_s=timeout_s)
        except BundleError as e:
            last = e
            continue
        except CaeEdgeError as e:
            return Check("interpreter", "fail", str(e))
        return Check(
            "interpreter",
            "ok",
            f"{r.package} {r.version} ({r.module}) ran the encoder of {path.name} in a child process "
            f"({r.seconds:.1f} s)",
        )
    return Check(
        "interpreter", "skip", f"no bundle loads to run it with (last: {last})", "see the bundle checks"
    )


def check_bundle(path: Path, name: str) -> Check:
    """Load and verify a bundle (sha256, tensors), then run its self-test against the reference latents."""
    from .bundle import load_bundle
    from .selftest import MAX_DB, MAX_STEPS, SELFTEST_NAME, run_selftest

    label = f"bundle {name}"
    try:
        bundle = load_bundle(path)
    except CaeEdgeError as e:
        return Check(
            label,
            "fail",
            str(e),
            "reinstall cae-edge (`pip install --force-reinstall 'cae-edge[node]'`) or copy the bundle again",
        )
    if not (bundle.path / SELFTEST_NAME).is_file():
        return Check(
            label,
            "warn",
            f"{bundle.latent_dim}-byte latent, files verified; no {SELFTEST_NAME} to compare latents with",
            "only the shipped bundles carry a self-test; compare this one with its exporter's output",
        )
    try:
        r = run_selftest(bundle)
    except CaeEdgeError as e:
        return Check(label, "fail", str(e), "reinstall cae-edge or copy the bundle again")
    detail = (
        f"self-test {r.images} images: {r.differing} of {r.values} latent values differ from the reference "
        f"(max {r.max_steps} step{'s' if r.max_steps != 1 else ''}), decoded PSNR {r.psnr_db:.2f} dB vs "
        f"{r.reference_psnr_db:.2f} dB"
    )
    if not r.ok:
        return Check(
            label,
            "fail",
            detail + f" (allowed: {MAX_STEPS} step, {MAX_DB} dB): this interpreter encodes differently",
            f"install the interpreter the reference was made with ({r.reference_runtime}): "
            f"`pip install '{r.reference_runtime.replace(' ', '==')}'`",
        )
    return Check(label, "ok", detail)


_VIDIOC_QUERYCAP = 0x80685600
"""``_IOR('V', 0, struct v4l2_capability)``: the 104-byte capability struct of a V4L2 device."""
_CAP_VIDEO_CAPTURE, _CAP_VIDEO_CAPTURE_MPLANE = 0x1, 0x1000
_CAP_M2M = 0x4000 | 0x8000  # memory-to-memory (codec, ISP): capture *and* output, not a camera
_CAP_DEVICE_CAPS = 0x80000000


def is_capture_device(capabilities: int, device_caps: int) -> bool:
    """From ``VIDIOC_QUERYCAP``: does this node capture video (a camera), rather than convert it (a codec)?"""
    caps = device_caps if capabilities & _CAP_DEVICE_CAPS else capabilities
    return bool(caps & (_CAP_VIDEO_CAPTURE | _CAP_VIDEO_CAPTURE_MPLANE)) and not caps & _CAP_M2M


def _v4l2_camera(path: str) -> str | None:
    """``path`` described if it is a capture device; ``None`` for codecs, ISPs and vanished nodes."""
    import fcntl
    import os
    import struct

    name = Path(f"/sys/class/video4linux/{Path(path).name}/name")
    label = name.read_text().strip() if name.is_file() else "?"
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except PermissionError:
        return f"{path} ({label}, no access: add this user to the video group)"
    except OSError:
        return None
    try:
        buf = bytearray(104)
        fcntl.ioctl(fd, _VIDIOC_QUERYCAP, buf)
    except OSError:
        return None
    finally:
        os.close(fd)
    capabilities, device_caps = struct.unpack_from("<II", buf, 84)
    return f"{path} ({label})" if is_capture_device(capabilities, device_caps) else None


def list_cameras() -> list[str]:
    """Camera sources present: V4L2 capture devices (not the Pi's codec/ISP nodes) and picamera2 cameras."""
    found = []
    for path in sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p)):
        described = _v4l2_camera(path)
        if described is not None:
            found.append(described)
    if importlib.util.find_spec("picamera2") is not None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]

            for i, info in enumerate(Picamera2.global_camera_info()):
                found.append(f"picamera2 camera {i} ({info.get('Model', '?')})")
        except Exception:  # noqa: BLE001 - picamera2 raises many kinds; a camera we cannot list is absent
            pass
    return found


def check_cameras(source_given: bool = False) -> Check:
    """Which camera sources this machine has; none and no other source given fails."""
    found = list_cameras()
    picam = "picamera2 installed" if importlib.util.find_spec("picamera2") else "picamera2 not installed"
    if not found:
        return Check(
            "cameras",
            "warn" if source_given else "fail",
            f"no /dev/video* device and no picamera2 camera ({picam})",
            "plug in a USB camera, or for a CSI camera `sudo apt install python3-picamera2` in a venv made "
            "with --system-site-packages; a video file, folder or URL also works as --source",
        )
    return Check("cameras", "ok", f"{', '.join(found)} ({picam})")


def check_source(spec: str) -> Check:
    """Open the frame source and read one frame from it."""
    from .capture import open_source

    label = "source"
    try:
        with open_source(spec, limit=1) as src:
            frame = src.read()
    except CaeEdgeError as e:
        return Check(label, "fail", str(e))
    if frame is None:
        return Check(label, "fail", f"{spec}: opened but gave no frame", "check the camera, file or folder")
    return Check(label, "ok", f"{spec}: one {frame.shape[1]}x{frame.shape[0]} frame read")


def _mode(path: Path) -> str:
    try:
        return f"{stat.S_IMODE(path.stat().st_mode):04o}"
    except OSError:
        return "?"


def check_keys(key: Path | None, server_key: Path | None, insecure: bool) -> list[Check]:
    """The node's secret key and the receiver's public key: content, pair and file modes."""
    from .security import SECRET_SUFFIX, default_keys_dir, load_public_key, load_secret_key

    if insecure:
        return [
            Check(
                "keys",
                "warn",
                "insecure: frames go unencrypted and unauthenticated",
                "make keys with `cae-edge keys generate NAME` and stream with --keys/--server-key",
            )
        ]
    if key is None and server_key is None:
        directory = default_keys_dir()
        secrets = sorted(directory.glob(f"*{SECRET_SUFFIX}")) if directory.is_dir() else []
        if not secrets:
            return [
                Check(
                    "keys",
                    "fail",
                    f"no --keys/--server-key given and no key pair in {directory}",
                    "run `cae-edge keys generate NAME` and copy the receiver's receiver.key here "
                    "(or stream with --insecure)",
                )
            ]
        checks = []
        for path in secrets:
            try:
                load_secret_key(path)
            except CaeEdgeError as e:
                checks.append(Check("key", "fail", str(e)))
            else:
                checks.append(Check("key", "ok", f"{path} (mode {_mode(path)}); pass it with --keys"))
        return checks
    checks = []
    for label, path, load in (("key", key, load_secret_key), ("server key", server_key, load_public_key)):
        if path is None:
            flag = "--keys (this node's NAME.key_secret)" if label == "key" else "--server-key (receiver.key)"
            checks.append(Check(label, "fail", "not given", f"pass {flag}"))
            continue
        try:
            pair = load(path)
        except CaeEdgeError as e:
            checks.append(Check(label, "fail", str(e)))
            continue
        checks.append(Check(label, "ok", f"{path} ({pair.name}, mode {_mode(Path(path).expanduser())})"))
    return checks


def _tcp_address(endpoint: str) -> tuple[str, int] | None:
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if not host or not port.isdigit():
        return None  # not HOST:PORT: the socket below refuses it with the fix
    return host.strip("[]"), int(port)


def check_receiver(
    endpoint: str, key: Path | None, server_key: Path | None, insecure: bool, timeout_s: float
) -> Check:
    """TCP connect to the receiver, then a ZeroMQ handshake (CURVE with this node's keys, or in the clear)."""
    from .security import SecurityOptions, client_security
    from .transport import PushSender, SenderOptions

    label = "receiver"
    address = _tcp_address(endpoint)
    if address is not None:
        try:
            with socket.create_connection(address, timeout=timeout_s):
                pass
        except OSError as e:
            why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
            return Check(
                label,
                "fail",
                f"{endpoint}: TCP connect {why}",
                f"start `cae-edge stream receive --bind tcp://*:{address[1]}` there, and check the address, "
                "the network and the receiver's firewall",
            )
    if not insecure and (key is None or server_key is None):
        return Check(label, "warn", f"{endpoint}: TCP port open; no keys given, so no handshake was tried")
    try:
        security = client_security(SecurityOptions(key=key, server_key=server_key, insecure=insecure))
        with PushSender(endpoint, SenderOptions(security=security, close_flush_s=0)) as link:
            connected = link.wait_connected(timeout_s)
            refused = link.stats.refused
    except CaeEdgeError as e:
        return Check(label, "fail", str(e))
    how = "in the clear" if insecure else "CURVE"
    if connected:
        return Check(label, "ok", f"{endpoint}: answers ({how} handshake done)")
    if refused:
        return Check(
            label,
            "fail",
            f"{endpoint}: the receiver refused this node's key",
            "copy this node's NAME.key into the receiver's --allowed-keys directory",
        )
    return Check(
        label,
        "fail",
        f"{endpoint}: TCP port open but no {how} handshake within {timeout_s:g} s",
        "check that it is `cae-edge stream receive`, that --server-key is that receiver's key, and that "
        "both ends agree on --insecure",
    )


def check_broker(cfg: NodeConfig, timeout_s: float) -> Check:
    """Connect to an MQTT node config's broker as that node: TLS, its credentials, then MQTT's CONNACK."""
    from .mqtt import MqttSender, MqttSenderOptions

    label, m = "broker", cfg.mqtt
    url = m.broker or ""
    opts = MqttSenderOptions(
        username=m.username, password_file=m.password_file, ca_file=m.ca_file, insecure=cfg.security.insecure,
        topic_prefix=m.topic_prefix, close_flush_s=0, client_id=f"{cfg.name}-doctor",
    )  # fmt: skip
    try:
        with MqttSender(url, cfg.name, opts) as link:
            deadline = time.monotonic() + timeout_s
            stats = link.stats  # stop at the first answer: connected, refused, or the connect failed
            while (
                not (link.connected or stats.refused or stats.connect_failures)
                and time.monotonic() < deadline
            ):
                link.wait_connected(0.02)
            connected = link.connected
    except CaeEdgeError as e:
        return Check(label, "fail", str(e))
    if connected:
        return Check(label, "ok", f"{url}: connected as {m.username or cfg.name!r}")
    if stats.refused:
        fix = "check password_file against the broker's passwd entry for this user (see docs/fleet.md)"
        return Check(label, "fail", f"{url}: {stats.refused_reason}", fix)
    why = stats.last_error or "no answer"
    return Check(
        label,
        "fail",
        f"{url}: no MQTT connection within {timeout_s:g} s ({why})",
        "check the broker address and port, that mosquitto runs there, the firewall, and ca_file",
    )


# ---- all together -----------------------------------------------------------------------------------------


def _bundle_dirs(opts: DoctorOptions, config_bundle: str | None) -> list[tuple[str, Path | None, str]]:
    """(name, directory or None, error) for each bundle to check."""
    from .bundle import available_bundles, resolve_bundle

    names = list(opts.bundles)
    if not names:
        names = list(available_bundles())
        if config_bundle and config_bundle not in names:
            names.insert(0, config_bundle)
    out = []
    for name in names:
        try:
            out.append((Path(name).name if "/" in name else name, resolve_bundle(name), ""))
        except CaeEdgeError as e:
            out.append((name, None, str(e)))
    return out


def run_doctor(opts: DoctorOptions, on_check: Callable[[Check], None] | None = None) -> DoctorReport:
    """Run every check; ``on_check`` sees each result as it comes (the CLI prints it).

    Never raises for a finding: a bad config, bundle, key or receiver is a failed :class:`Check`.
    """
    report = DoctorReport()

    def add(check: Check) -> None:
        report.checks.append(check)
        if on_check is not None:
            on_check(check)

    source, connect = opts.source, opts.connect
    key, server_key, insecure = opts.key, opts.server_key, opts.insecure
    config_bundle = None
    mqtt_cfg = None
    if opts.config is not None:
        from .config import load_node_config

        try:
            cfg = load_node_config(opts.config, check_key_files=False)
        except CaeEdgeError as e:
            add(Check("config", "fail", str(e)))
        else:
            add(
                Check("config", "ok", f"{cfg.path} (sender {cfg.name!r}, mode {_mode(Path(cfg.path or ''))})")
            )
            source = source or cfg.source
            if cfg.transport == "mqtt":
                mqtt_cfg = cfg  # the broker replaces the receiver and CURVE keys
            else:
                connect = connect or cfg.connect
            config_bundle = cfg.bundle
            if key is None and server_key is None and not insecure:
                key, server_key, insecure = cfg.security.key, cfg.security.server_key, cfg.security.insecure

    add(check_platform())
    add(check_python())
    add(check_entropy_coder())
    bundles = _bundle_dirs(opts, config_bundle)
    interp = check_interpreter([p for _, p, _ in bundles if p is not None], opts.probe_timeout_s)
    add(interp)
    for name, path, error in bundles:
        if path is None:
            add(Check(f"bundle {name}", "fail", error))
        elif interp.status == "fail":
            add(Check(f"bundle {name}", "skip", "not run: the interpreter check failed"))
        else:
            add(check_bundle(path, name))
    add(check_cameras(source_given=source is not None))
    if source is not None:
        add(check_source(source))
    else:
        add(Check("source", "skip", "none given", "pass --source (or --config) to read a frame from it"))
    if mqtt_cfg is not None and connect is None:
        add(check_broker(mqtt_cfg, opts.connect_timeout_s))
        return report
    for check in check_keys(key, server_key, insecure):
        add(check)
    if connect is not None:
        keys_ok = all(c.status != "fail" for c in report.checks if c.name in ("key", "server key"))
        add(
            check_receiver(
                connect,
                key if keys_ok else None,
                server_key if keys_ok else None,
                insecure,
                opts.connect_timeout_s,
            )
        )
    else:
        add(Check("receiver", "skip", "none given", "pass --connect (or --config) to check that it answers"))
    return report
