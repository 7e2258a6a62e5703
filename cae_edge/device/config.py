"""A camera node's config file: every ``cae-edge stream send`` option in one TOML file, checked on load.

One file per node (see ``docs/node.example.toml``)::

    name = "kitchen-cam"                 # sender name; default: the hostname
    source = "0"                         # camera index, /dev/videoN, video file, URL, image folder, ...
    bundle = "mnist"                     # shipped bundle name or a bundle directory
    connect = "tcp://192.168.1.10:5555"  # the receiver
    fps = 10.0                           # 0 = as fast as the source delivers

    [preprocess]                         # overrides of the bundle manifest's preprocessing
    invert = true

    [queue]
    size = 64
    policy = "drop-oldest"

    [security]
    key = "keys/kitchen-cam.key_secret"  # relative paths are relative to this file
    server_key = "keys/receiver.key"

Or through an MQTT broker (``transport = "mqtt"``; ``connect`` and ``[security]`` keys are then not needed)::

    transport = "mqtt"
    [mqtt]
    broker = "mqtts://broker.lan:8883"
    password_file = "kitchen-cam.password"  # user name: the node name unless ``username`` is set
    ca_file = "ca.crt"

Loading is strict: an unknown key (a typo) is an error naming it and listing the valid keys; a value of the
wrong type or out of range is an error quoting the value; missing keys files, unsafe key permissions and
bad key content fail at load, not at the first frame. All errors are :class:`~cae_edge.errors.ConfigError`
(key-file problems: :class:`~cae_edge.errors.KeyFileError`) and start with the file name.
"""

from __future__ import annotations

import difflib
import re
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..tiles import MAX_NODE_TILES
from ..wire import check_sender_name
from .security import SecurityOptions, client_security

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

QUEUE_POLICIES = ("drop-oldest", "drop-newest")
"""What a full send queue does with a new frame: drop the oldest queued frame (live video) or the new one."""
CROP_MODES = ("center", "letterbox")
TRANSPORTS = ("zmq", "mqtt")
"""``zmq``: ZeroMQ straight to the receiver (``connect``); ``mqtt``: through an MQTT broker (``[mqtt]``)."""
MIN_FPS = 1 / 3600
"""The lowest frame-rate cap: one frame an hour (a cap of 1e-9 would wait 31 years between frames)."""
MAX_FPS = 10_000.0
"""The highest frame-rate cap."""
_ENDPOINT_RE = re.compile(r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})|ipc://.+|inproc://.+)$")


def default_name() -> str:
    """The sender name used when the config has none: the host name, cut to a valid sender name."""
    host = socket.gethostname().split(".")[0]
    host = re.sub(r"[^A-Za-z0-9._-]", "-", host).lstrip("._-")[:64]
    return host or "node"


@dataclass
class PreprocessOverrides:
    """Overrides of the bundle manifest's ``preprocess`` block; ``None`` keeps the manifest's value."""

    invert: bool | None = None
    """Invert gray levels (dark ink on light paper -> MNIST's white on black)."""
    crop: str | None = None
    """``center`` (crop to a centred square) or ``letterbox`` (pad to a square)."""
    mnist_normalize: bool | None = None
    """Fit the object into 20x20 and centre it by mass, like MNIST."""

    def overrides(self) -> dict:
        """Only the keys that are set, as ``stream_send(preprocess=...)`` takes them."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def apply(self, spec: dict) -> dict:
        """The manifest's preprocess ``spec`` with these overrides applied (a new dict)."""
        out = dict(spec)
        out.update({k: v for k, v in asdict(self).items() if v is not None})
        return out


@dataclass
class QueueOptions:
    """The sender's bounded queue between capture and network."""

    size: int = 64
    """Frames held while the receiver is slow or away (1 .. 100000)."""
    policy: str = "drop-oldest"
    """``drop-oldest`` (live video: keep the newest frames) or ``drop-newest``."""


@dataclass
class MqttNodeOptions:
    """The ``[mqtt]`` table: how the node reaches the broker when ``transport = "mqtt"``."""

    broker: str | None = None
    """The broker, ``mqtts://HOST:PORT`` (``mqtt://`` only with ``[security] insecure = true``)."""
    username: str | None = None
    """Broker user name; default: the node name."""
    password_file: Path | None = None
    """File holding the broker password (mode 0600)."""
    ca_file: Path | None = None
    """CA certificate of the broker's TLS certificate; default: the system's CAs."""
    topic_prefix: str = "cae-edge"
    """First topic level(s); frames go to ``PREFIX/<name>/frames``."""


@dataclass
class NodeConfig:
    """Everything a camera node needs to stream: the contents of one node config file."""

    source: str
    """Frame source: camera index, ``/dev/videoN``, video file, RTSP/HTTP URL, image folder, ``synthetic``."""
    connect: str
    """The receiver's ZeroMQ endpoint, e.g. ``tcp://192.168.1.10:5555`` (``""`` with the MQTT transport)."""
    name: str = field(default_factory=default_name)
    """Sender name in receiver stats, logs and output paths (default: the host name)."""
    bundle: str = "mnist"
    """Bundle name (``mnist``, ``fashion``) or a bundle directory."""
    fps: float = 0.0
    """Frame rate cap; 0 = as fast as the source delivers."""
    max_frames: int = 0
    """Stop after this many frames; 0 = run until stopped."""
    threads: int = 1
    """Interpreter threads for the encoder."""
    compact: bool = False
    """Send compact frames (4 bytes of overhead on a CURVE link instead of 24) between full session
    packets; receivers must be new enough to read them (see ``cae_edge.wire``)."""
    session_every: int = 100
    """With ``compact``: a full session packet at least every this many frames."""
    tiles: int = 1
    """N > 1: frames of 28N x 28N pixels go out as NxN tiles of 28x28 in one packet (scenes-style bundles;
    receivers must be new enough to read them, see ``cae_edge.tiles``); 1 = one 28x28 frame."""
    preprocess: PreprocessOverrides = field(default_factory=PreprocessOverrides)
    """Overrides of the bundle's preprocessing."""
    queue: QueueOptions = field(default_factory=QueueOptions)
    """Send queue size and drop policy."""
    security: SecurityOptions = field(default_factory=SecurityOptions)
    """CURVE keys (``key``, ``server_key``) or ``insecure = true``."""
    transport: str = "zmq"
    """``zmq`` (straight to the receiver at ``connect``) or ``mqtt`` (through the ``[mqtt]`` broker)."""
    mqtt: MqttNodeOptions = field(default_factory=MqttNodeOptions)
    """The broker, credentials and CA for ``transport = "mqtt"``."""
    path: Path | None = None
    """The file this was loaded from (not a config key)."""

    def to_dict(self) -> dict:
        """JSON-friendly form (paths as strings)."""
        d = asdict(self)
        d["security"] = self.security.to_dict()
        d["mqtt"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.mqtt).items()}
        d["path"] = str(self.path) if self.path else None
        return d


# ----------------------------------------------------------------------------------------------- checks

_TOP_KEYS = (
    "name",
    "source",
    "bundle",
    "connect",
    "fps",
    "max_frames",
    "threads",
    "compact",
    "session_every",
    "tiles",
    "preprocess",
    "queue",
    "security",
    "transport",
    "mqtt",
)
_SECTIONS = {
    "preprocess": ("invert", "crop", "mnist_normalize"),
    "queue": ("size", "policy"),
    "security": ("key", "server_key", "insecure"),
    "mqtt": ("broker", "username", "password_file", "ca_file", "topic_prefix"),
}
_REQUIRED = {
    "source": 'the frame source, e.g. source = "0" (first camera) or source = "video.mp4"',
    "connect": 'the receiver address, e.g. connect = "tcp://192.168.1.10:5555" (or transport = "mqtt")',
}


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: {msg}")

    def keys(self, table: dict, valid: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in valid:
                near = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                place = f" in [{where}]" if where else ""
                raise self.fail(f"unknown key {key!r}{place}{hint}; valid keys: {', '.join(valid)}")

    def typed(self, key: str, value: Any, kind: type, what: str) -> Any:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise self.fail(f"{key} = {value!r}: must be {what}")
        return value

    def string(self, key: str, value: Any, what: str = "a string") -> str:
        value = self.typed(key, value, str, what)
        if not value.strip():
            raise self.fail(f"{key} = {value!r}: must not be empty ({what})")
        return value

    def ranged(self, key: str, value: Any, kind: type, lo: float, hi: float, what: str) -> Any:
        value = self.typed(key, value, kind, what)
        if not lo <= value <= hi:
            raise self.fail(f"{key} = {value!r}: must be {what}")
        return value

    def choice(self, key: str, value: Any, choices: tuple[str, ...]) -> str:
        what = "one of " + ", ".join(repr(c) for c in choices)
        value = self.typed(key, value, str, what)
        if value not in choices:
            raise self.fail(f"{key} = {value!r}: must be {what}")
        return value

    def table(self, key: str, value: Any) -> dict:
        if not isinstance(value, dict):
            raise self.fail(f"{key} = {value!r}: must be a [{key}] table")
        return value

    def local_path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.path.parent / p)


def _looks_like_path(value: str) -> bool:
    return "://" not in value and not value.isdigit() and ("/" in value or "\\" in value or "." in value)


def parse_node_config(
    data: dict, path: str | Path = "<config>", *, check_key_files: bool = True
) -> NodeConfig:
    """Validate an already-parsed TOML table and build a :class:`NodeConfig`.

    Args:
        data: The parsed TOML document.
        path: Used in messages and as the base of relative paths.
        check_key_files: Load the key files now (content and permissions), as :func:`load_node_config` does.

    Raises:
        ConfigError: unknown key, missing required key, wrong type or bad value (all quoted).
        KeyFileError: a key file is missing, has bad content or unsafe permissions.
    """
    path = Path(path)
    c = _Checker(path)
    c.keys(data, _TOP_KEYS, "")
    transport = c.choice("transport", data.get("transport", "zmq"), TRANSPORTS)
    for key, what in _REQUIRED.items():
        if key not in data and not (key == "connect" and transport == "mqtt"):
            raise c.fail(f"missing {key!r}: {what}")

    source = c.string("source", data["source"], "a camera index, device, file, URL or folder as a string")
    if _looks_like_path(source) and (c.local_path(source)).exists():
        source = str(c.local_path(source))
    connect = ""
    if "connect" in data:
        connect = c.string("connect", data["connect"], 'a ZeroMQ endpoint like "tcp://HOST:PORT"')
        if "*" in connect:
            raise c.fail(f"connect = {connect!r}: a sender connects to one host; '*' is for binding")
        m = _ENDPOINT_RE.match(connect)
        if not m or (m.group(3) and not 1 <= int(m.group(3)) <= 65535):
            raise c.fail(f'connect = {connect!r}: must be a ZeroMQ endpoint like "tcp://192.168.1.10:5555"')

    cfg = NodeConfig(source=source, connect=connect, transport=transport, path=path)
    if "name" in data:
        name = c.string("name", data["name"], "a sender name")
        try:
            cfg.name = check_sender_name(name)
        except ConfigError as e:
            raise c.fail(f"name = {name!r}: {e}") from None
    if "bundle" in data:
        bundle = c.string("bundle", data["bundle"], "a bundle name (mnist, fashion) or directory")
        cfg.bundle = str(c.local_path(bundle)) if _looks_like_path(bundle) else bundle
    if "fps" in data:
        fps_what = f"a number of frames per second, 0 (no cap) or {MIN_FPS:.6f} (one an hour) .. 10000"
        cfg.fps = c.ranged("fps", data["fps"], float, 0.0, MAX_FPS, fps_what)
        if 0 < cfg.fps < MIN_FPS:
            raise c.fail(f"fps = {cfg.fps!r}: must be {fps_what}")
    if "max_frames" in data:
        what = "an integer >= 0 (0 = no limit)"
        cfg.max_frames = c.ranged("max_frames", data["max_frames"], int, 0, 2**62, what)
    if "threads" in data:
        cfg.threads = c.ranged("threads", data["threads"], int, 1, 64, "an integer 1 .. 64")
    if "compact" in data:
        cfg.compact = c.typed("compact", data["compact"], bool, "true or false")
    if "session_every" in data:
        what = "an integer 1 .. 10000 (frames)"
        cfg.session_every = c.ranged("session_every", data["session_every"], int, 1, 10_000, what)
    if "tiles" in data:
        what = f"an integer 1 .. {MAX_NODE_TILES} (an NxN grid of 28x28 tiles; 1 = no tiles)"
        cfg.tiles = c.ranged("tiles", data["tiles"], int, 1, MAX_NODE_TILES, what)

    if "preprocess" in data:
        t = c.table("preprocess", data["preprocess"])
        c.keys(t, _SECTIONS["preprocess"], "preprocess")
        p = cfg.preprocess
        if "invert" in t:
            p.invert = c.typed("preprocess.invert", t["invert"], bool, "true or false")
        if "mnist_normalize" in t:
            value = t["mnist_normalize"]
            p.mnist_normalize = c.typed("preprocess.mnist_normalize", value, bool, "true or false")
        if "crop" in t:
            p.crop = c.choice("preprocess.crop", t["crop"], CROP_MODES)

    if "queue" in data:
        t = c.table("queue", data["queue"])
        c.keys(t, _SECTIONS["queue"], "queue")
        if "size" in t:
            cfg.queue.size = c.ranged("queue.size", t["size"], int, 1, 100_000, "an integer 1 .. 100000")
        if "policy" in t:
            cfg.queue.policy = c.choice("queue.policy", t["policy"], QUEUE_POLICIES)

    sec = c.table("security", data.get("security", {}))
    c.keys(sec, _SECTIONS["security"], "security")
    s = cfg.security
    if "insecure" in sec:
        s.insecure = c.typed("security.insecure", sec["insecure"], bool, "true or false")
    for key in ("key", "server_key"):
        if key in sec:
            setattr(s, key, c.local_path(c.string(f"security.{key}", sec[key], "a key file path")))
    _parse_mqtt(c, data, cfg, check_key_files)
    if not s.insecure and transport == "zmq":
        missing = [k for k in ("key", "server_key") if getattr(s, k) is None]
        if missing:
            raise c.fail(
                f"[security] lacks {' and '.join(missing)}: set key = this node's NAME.key_secret and "
                "server_key = the receiver's public .key (`cae-edge keys generate NAME`), "
                "or insecure = true to stream unencrypted and unauthenticated"
            )
        if check_key_files:
            client_security(s)  # loads both files: content + permissions
    return cfg


def _parse_mqtt(c: _Checker, data: dict, cfg: NodeConfig, check_files: bool) -> None:
    """The ``[mqtt]`` table; with ``transport = "mqtt"`` the broker and (unless insecure) the password."""
    from .mqtt import MqttOptions

    t = c.table("mqtt", data.get("mqtt", {}))
    c.keys(t, _SECTIONS["mqtt"], "mqtt")
    m = cfg.mqtt
    for key in ("broker", "username", "topic_prefix"):
        if key in t:
            setattr(m, key, c.string(f"mqtt.{key}", t[key], f"a {key.replace('_', ' ')} string"))
    for key in ("password_file", "ca_file"):
        if key in t:
            setattr(m, key, c.local_path(c.string(f"mqtt.{key}", t[key], "a file path")))
    if m.username is not None:
        try:
            check_sender_name(m.username)
        except ConfigError as e:
            raise c.fail(f"mqtt.username = {m.username!r}: {e}") from None
    if cfg.transport != "mqtt":
        return
    if m.broker is None:
        raise c.fail('transport = "mqtt" needs [mqtt] broker = "mqtts://HOST:8883" (the MQTT broker)')
    ca = m.ca_file if check_files else None  # the CA file is looked at with the key files
    opts = MqttOptions(m.username, m.password_file, ca, cfg.security.insecure, m.topic_prefix)
    try:
        opts.check(m.broker)
        if check_files and m.password_file is not None:
            from .mqtt import read_password_file

            read_password_file(m.password_file)
    except ConfigError as e:
        raise c.fail(f"[mqtt] {e}") from None


def load_node_config(path: str | Path, *, check_key_files: bool = True) -> NodeConfig:
    """Read and validate a node config file.

    Args:
        path: The TOML file.
        check_key_files: Also load the CURVE key files (content, permissions) now.

    Returns:
        The validated config; relative paths in it are resolved against the file's directory.

    Raises:
        ConfigError: missing/unreadable file, TOML syntax error, unknown key, wrong type or bad value.
        KeyFileError: a key file is missing, has bad content or unsafe permissions.
    """
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"node config {path} not found: start from docs/node.example.toml") from None
    except OSError as e:
        raise ConfigError(f"cannot read node config {path}: {e.strerror or e}") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; a node config is a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: TOML syntax error: {e}") from None
    return parse_node_config(data, path, check_key_files=check_key_files)


def resolve_node_config(
    path: str | Path | None,
    overrides: dict[str, Any],
    *,
    origin: str = "(overrides)",
    check_key_files: bool = True,
) -> NodeConfig:
    """The node config from a file (if any), with some keys overridden (by command-line flags, say).

    Args:
        path: The TOML file, or ``None`` to build the config from the overrides alone.
        overrides: Dotted config keys (``"fps"``, ``"queue.size"``, ``"security.key"``, ...) to values;
            ``None`` values are ignored. Relative paths are taken relative to the working directory.
        origin: Without a file, what messages name as the source of the keys (in the working directory).
        check_key_files: Load the CURVE key files now.

    Raises:
        ConfigError: as :func:`load_node_config` (messages name ``origin`` when there is no file).
        KeyFileError: a key file is missing, has bad content or unsafe permissions.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path).expanduser()
        load_node_config(path, check_key_files=False)  # validates the file on its own first
        data = _read_toml(path)
    for dotted, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value.expanduser().resolve())
        table = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            table = table.setdefault(part, {})
        table[leaf] = value
    where = path if path is not None else Path.cwd() / origin
    cfg = parse_node_config(data, where, check_key_files=check_key_files)
    if path is None:
        cfg.path = None
    return cfg


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:  # pragma: no cover - checked before
        raise ConfigError(f"{path}: {e}") from None


def config_keys() -> dict[str, tuple[str, ...]]:
    """Every valid key, by section (``""`` = top level); for docs and error messages."""
    return {"": _TOP_KEYS, **_SECTIONS}


__all__ = [
    "NodeConfig",
    "PreprocessOverrides",
    "QueueOptions",
    "QUEUE_POLICIES",
    "CROP_MODES",
    "MqttNodeOptions",
    "TRANSPORTS",
    "config_keys",
    "default_name",
    "load_node_config",
    "parse_node_config",
    "resolve_node_config",
]
