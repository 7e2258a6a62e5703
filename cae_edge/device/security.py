"""ZeroMQ CURVE for the stream links: authenticated, encrypted, and only our nodes may send.

Each end has a key pair in the ZeroMQ certificate format (the files ``zmq.auth`` reads)::

    NAME.key          public key, safe to copy around          (mode 0644)
    NAME.key_secret   public + secret key, never leaves the box (mode 0600, refused if group/world readable)

The receiver (CURVE server) holds its own secret key and an *allowed-keys directory* of the senders'
public ``*.key`` files; a ZAP handler (pyzmq's :class:`~zmq.auth.thread.ThreadAuthenticator`) refuses every
other key during the handshake, so frames from an unknown key never reach the receiving socket. Each
sender (CURVE client) holds its own secret key and *pins* the receiver's public key: a receiver with any
other key never completes the handshake, so nothing is sent to it.

::

    node: NAME.key_secret + receiver.key ──CURVE──▶ receiver: receiver.key_secret + allowed/*.key
                                                    └─ ZAP: key in allowed/? else refused before any frame

The allowed-keys directory is re-read when it changes (at each handshake, and about once a second through
:meth:`CurveServer.poll_revoked`), failing closed: a removed key, an emptied or vanished directory trusts no
one for new handshakes; a damaged file is skipped (and reported), never a reason to keep an old key. A key
removed while its node is connected is *revoked*: ZeroMQ cannot drop one peer of a bound socket, so the
transport (``PullReceiver``) closes and reopens its listening endpoint; every node reconnects, and the ZAP
handler refuses the revoked one.

Everything here is pure pyzmq (libzmq's built-in CURVE); no TensorFlow.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ..errors import ConfigError, KeyFileError

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
KEYS_DIR_ENV = "CAE_EDGE_KEYS_DIR"
ZAP_DOMAIN = "cae-edge"

_Z85_ALPHABET = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_PUBLIC_BANNER = """#   ****  Generated on {now} by cae-edge  ****
#   ZeroMQ CURVE Public Certificate for "{name}"
#   Copy it to the receiver's allowed-keys directory (sender keys) or to every node (receiver key).

"""
_SECRET_BANNER = """#   ****  Generated on {now} by cae-edge  ****
#   ZeroMQ CURVE **Secret** Certificate for "{name}"
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions (must stay 0600).

"""


def default_keys_dir() -> Path:
    """Where ``cae-edge keys`` reads and writes key files when no ``--dir`` is given.

    ``$CAE_EDGE_KEYS_DIR`` if set, else the user config directory (``~/.config/cae-edge/keys`` on Linux).
    """
    env = os.environ.get(KEYS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("cae-edge")) / "keys"


# ---------------------------------------------------------------------------------------------- key files


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair (or only its public half) loaded from a certificate file."""

    name: str
    """File stem (the name given to ``cae-edge keys generate``)."""
    public: bytes
    """Z85-encoded public key (40 bytes)."""
    secret: bytes | None
    """Z85-encoded secret key (40 bytes); ``None`` for a public key file."""
    path: Path
    """The file it was read from."""


@dataclass
class KeyFiles:
    """The two files :func:`generate_keypair` wrote."""

    name: str
    """Key name (file stem)."""
    public_path: Path
    """``NAME.key``: copy it to the other end."""
    secret_path: Path
    """``NAME.key_secret``: stays on this machine, mode 0600."""
    public_key: str
    """Z85 public key, for logs and ``keys list``."""


def check_key_name(name: str) -> str:
    """Return ``name`` if it is usable as a key file stem, else raise.

    Raises:
        ConfigError: empty, too long, or with characters other than letters, digits, ``.``, ``_``, ``-``.
    """
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(e.g. the node's hostname)"
        )
    return name


def _is_z85_key(value: bytes) -> bool:
    return len(value) == 40 and all(c in _Z85_ALPHABET for c in value)


def generate_keypair(name: str, directory: str | Path, *, overwrite: bool = False) -> KeyFiles:
    """Write a new CURVE key pair as ``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret`` (mode 0600).

    The secret file is created with mode 0600 from the start (never briefly world readable).
    The directory is created with mode 0700 when missing.

    Args:
        name: Key name, e.g. the node's hostname or ``receiver``.
        directory: Directory for both files.
        overwrite: Replace existing files of that name (their old key stops working everywhere).

    Returns:
        The paths written and the new public key.

    Raises:
        ConfigError: bad name.
        KeyFileError: files exist (and ``overwrite`` is false) or cannot be written.
    """
    check_key_name(name)
    directory = Path(directory).expanduser()
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    secret_path = directory / f"{name}{SECRET_SUFFIX}"
    if not overwrite:
        for p in (public_path, secret_path):
            if p.exists():
                raise KeyFileError(
                    f"{p} already exists: pick another name, or pass --force to replace the key pair "
                    "(the old key then stops working on every machine that trusts it)"
                )
    public, secret = zmq.curve_keypair()
    now = datetime.datetime.now().isoformat(timespec="seconds")
    body_public = f'metadata\n    name = "{name}"\ncurve\n    public-key = "{public.decode()}"\n'
    body_secret = body_public + f'    secret-key = "{secret.decode()}"\n'
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for p in (public_path, secret_path):
            if overwrite and p.exists():
                p.unlink()
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.chmod(secret_path, 0o600)
            f.write(_SECRET_BANNER.format(now=now, name=name) + body_secret)
        fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_PUBLIC_BANNER.format(now=now, name=name) + body_public)
    except OSError as e:
        raise KeyFileError(f"cannot write key pair {name!r} in {directory}: {e.strerror or e}") from e
    return KeyFiles(name=name, public_path=public_path, secret_path=secret_path, public_key=public.decode())


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (SECRET_SUFFIX, PUBLIC_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    if not path.exists():
        raise KeyFileError(
            f"key file {path} not found: create one with `cae-edge keys generate NAME --dir DIR`"
        )
    if not path.is_file():
        raise KeyFileError(f"key file {path} is not a regular file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        raise KeyFileError(
            f"{path} is not a ZeroMQ CURVE certificate (no 'public-key = \"...\"' line): "
            "use a file written by `cae-edge keys generate`"
        ) from None
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror or e}") from e
    if not _is_z85_key(public):
        raise KeyFileError(
            f"{path}: public-key {public[:48].decode('latin-1')!r} is not a 40-character Z85 key: "
            "the file is damaged; copy it again or regenerate it"
        )
    if secret is not None:
        if not _is_z85_key(secret):
            raise KeyFileError(
                f"{path}: secret-key is not a 40-character Z85 key: the file is damaged; regenerate it"
            )
        if zmq.curve_public(secret) != public:
            raise KeyFileError(
                f"{path}: public-key does not belong to secret-key (edited or mixed-up file); regenerate it"
            )
    return public, secret


def check_secret_permissions(path: str | Path) -> None:
    """Raise if a secret key file can be read or written by anyone but its owner (POSIX only).

    Raises:
        KeyFileError: the mode has any group/other bit set; the message gives the ``chmod`` fix.
    """
    path = Path(path)
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as e:
        raise KeyFileError(f"cannot stat key file {path}: {e.strerror or e}") from e
    if mode & 0o077:
        raise KeyFileError(
            f"secret key file {path} has mode {mode:04o} (group/world can access it): "
            f"run `chmod 600 {path}` — and if others could read it, regenerate the key pair"
        )


def load_secret_key(path: str | Path) -> KeyPair:
    """Load this end's key pair from a ``NAME.key_secret`` file, refusing unsafe permissions.

    Raises:
        KeyFileError: missing/unreadable file, bad content, no secret key in it, or mode not 0600/0400.
    """
    path = Path(path).expanduser()
    public, secret = _read_certificate(path)
    if secret is None:
        raise KeyFileError(
            f"{path} holds only a public key: pass this end's secret file "
            f"({_stem(path)}{SECRET_SUFFIX}), written next to it by `cae-edge keys generate`"
        )
    check_secret_permissions(path)
    return KeyPair(name=_stem(path), public=public, secret=secret, path=path)


def load_public_key(path: str | Path) -> KeyPair:
    """Load a public key file (``NAME.key``): the receiver's pinned key, or an allowed sender's key.

    Raises:
        KeyFileError: missing/unreadable file, bad content, or a file that also holds a secret key
            (secret keys must never be copied to another machine).
    """
    path = Path(path).expanduser()
    public, secret = _read_certificate(path)
    if secret is not None:
        raise KeyFileError(
            f"{path} contains a secret key: give the public file ({_stem(path)}{PUBLIC_SUFFIX}) instead, "
            "and never copy secret keys to another machine"
        )
    return KeyPair(name=_stem(path), public=public, secret=None, path=path)


def _check_allowed_name(pair: KeyPair) -> None:
    """The file name of an allowed key is the sender's identity (folders, stats): it must be a valid name."""
    try:
        check_key_name(pair.name)
    except ConfigError:
        raise KeyFileError(
            f"{pair.path}: {pair.name!r} is not a usable sender name (the file name is the node's identity "
            "at the receiver): rename it NAME.key with 1-64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit"
        ) from None


def scan_allowed_keys(directory: str | Path) -> tuple[dict[bytes, str], list[str]]:
    """Read the usable ``*.key`` files of ``directory`` without raising: the receiver's reload (fail closed).

    Returns:
        ``({z85 public key: name}, problems)``: a missing or empty directory gives no keys; a bad file or a
        repeated key is left out and described in ``problems``.
    """
    directory = Path(directory).expanduser()
    keys: dict[bytes, str] = {}
    problems: list[str] = []
    try:
        paths = sorted(directory.glob(f"*{PUBLIC_SUFFIX}")) if directory.is_dir() else None
    except OSError as e:
        paths, problems = None, [f"cannot list {directory}: {e.strerror or e}"]
    if paths is None:
        problems = problems or [f"allowed-keys directory {directory} not found: no sender is trusted"]
        return keys, problems
    for path in paths:
        try:
            pair = load_public_key(path)
            _check_allowed_name(pair)
        except (KeyFileError, ConfigError) as e:
            problems.append(str(e))
            continue
        if pair.public in keys:
            problems.append(f"{path} repeats the key of {keys[pair.public]}{PUBLIC_SUFFIX}: ignored")
            continue
        keys[pair.public] = pair.name
    return keys, problems


def load_allowed_keys(directory: str | Path) -> dict[bytes, str]:
    """Read every ``*.key`` public key file in ``directory``.

    Returns:
        ``{z85 public key: name}``, name being the file stem.

    Raises:
        KeyFileError: directory missing, no ``*.key`` file in it, or any bad key file (names the file).
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise KeyFileError(
            f"allowed-keys directory {directory} not found: create it and copy each sender's NAME.key into it"
        )
    keys: dict[bytes, str] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        pair = load_public_key(path)
        _check_allowed_name(pair)
        if pair.public in keys:
            other = f"{keys[pair.public]}{PUBLIC_SUFFIX}"
            raise KeyFileError(f"{path} repeats the key of {other}: remove one of them")
        keys[pair.public] = pair.name
    if not keys:
        raise KeyFileError(
            f"no *{PUBLIC_SUFFIX} public key files in {directory}: copy each sender's NAME{PUBLIC_SUFFIX} "
            "there (made on the node by `cae-edge keys generate NAME`)"
        )
    return keys


@dataclass
class KeyInfo:
    """One key name found in a directory, for ``cae-edge keys list``."""

    name: str
    """File stem."""
    public_key: str | None
    """Z85 public key, ``None`` if no file of the pair could be read."""
    public_file: str | None
    """Path of ``NAME.key`` if present."""
    secret_file: str | None
    """Path of ``NAME.key_secret`` if present."""
    problem: str | None = None
    """Why this entry is unusable (bad content, unsafe permissions, mismatched pair), else ``None``."""


def list_keys(directory: str | Path) -> list[KeyInfo]:
    """Describe every key pair / public key in ``directory`` (never raises on a bad file; reports it).

    Raises:
        KeyFileError: the directory does not exist.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise KeyFileError(
            f"keys directory {directory} not found: `cae-edge keys generate NAME --dir {directory}`"
        )
    names = sorted({_stem(p) for p in directory.iterdir() if p.name.endswith((PUBLIC_SUFFIX, SECRET_SUFFIX))})
    out = []
    for name in names:
        pub_path = directory / f"{name}{PUBLIC_SUFFIX}"
        sec_path = directory / f"{name}{SECRET_SUFFIX}"
        info = KeyInfo(
            name=name,
            public_key=None,
            public_file=str(pub_path) if pub_path.exists() else None,
            secret_file=str(sec_path) if sec_path.exists() else None,
        )
        problems = []
        pub = sec = None
        if info.public_file:
            try:
                pub = load_public_key(pub_path).public
            except KeyFileError as e:
                problems.append(str(e))
        if info.secret_file:
            try:
                sec = load_secret_key(sec_path).public
            except KeyFileError as e:
                problems.append(str(e))
        if pub and sec and pub != sec:
            problems.append(f"{pub_path.name} and {sec_path.name} hold different public keys")
        key = pub or sec
        info.public_key = key.decode() if key else None
        info.problem = "; ".join(problems) or None
        out.append(info)
    return out


# ---------------------------------------------------------------------------------------------- options


@dataclass
class SecurityOptions:
    """How a stream link is secured. CURVE is on unless ``insecure`` is set explicitly.

    Receiver (server) needs ``key`` + ``allowed_keys``; sender (client) needs ``key`` + ``server_key``.
    """

    key: Path | None = None
    """This end's secret key file (``NAME.key_secret``, mode 0600)."""
    server_key: Path | None = None
    """Sender only: the receiver's public key file (``receiver.key``), pinned."""
    allowed_keys: Path | None = None
    """Receiver only: directory of the senders' public ``*.key`` files; every other key is refused."""
    insecure: bool = False
    """No authentication, no encryption: anyone on the network may read and inject frames."""

    def to_dict(self) -> dict:
        """JSON-friendly form (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def _missing(self, role: str, needed: dict[str, Path | None]) -> None:
        if self.insecure:
            return
        missing = [flag for flag, value in needed.items() if value is None]
        if missing:
            raise ConfigError(
                f"{role} needs {' and '.join(missing)} for an encrypted, authenticated link "
                "(make keys with `cae-edge keys generate NAME`), or --insecure to stream in the clear"
            )

    def check_server(self) -> None:
        """Raise :class:`ConfigError` if a receiver cannot be secured with these options."""
        self._missing("the receiver", {"--keys": self.key, "--allowed-keys": self.allowed_keys})

    def check_client(self) -> None:
        """Raise :class:`ConfigError` if a sender cannot be secured with these options."""
        self._missing("the sender", {"--keys": self.key, "--server-key": self.server_key})


# ---------------------------------------------------------------------------------------------- sockets


@dataclass
class AuthStats:
    """What the receiver's ZAP handler decided so far (handshakes, not frames)."""

    allowed_keys: int = 0
    """Number of public keys currently trusted."""
    accepted: dict[str, int] = field(default_factory=dict)
    """Handshakes accepted per key name (names of the keys trusted now or revoked while running)."""
    denied: int = 0
    """Handshakes refused (unknown or revoked key)."""
    denied_keys: list[str] = field(default_factory=list)
    """The last few refused public keys (Z85), newest last."""
    revoked: list[str] = field(default_factory=list)
    """Names of keys removed from the directory while they had connected (the last few, newest last)."""
    reload_error: str | None = None
    """What the last read of the allowed-keys directory could not use (bad files; a missing directory)."""


class _AllowedKeys:
    """ZAP credentials provider: the allowed-keys directory, reloaded (fail closed) when it changes.

    Called from the ZAP thread (:meth:`callback`) and from the receiving socket's thread
    (:meth:`take_revoked`); a lock keeps the two consistent.
    """

    def __init__(self, directory: Path, on_deny: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.keys = load_allowed_keys(directory)  # at start: an empty or bad directory is an error
        self._stamp_value = self._stamp()
        self.stats = AuthStats(allowed_keys=len(self.keys))
        self._on_deny = on_deny
        self._lock = threading.Lock()
        self._accepted_keys: set[bytes] = set()
        self._revoked: list[str] = []
        self.last_name = "unknown"
        """Name of the key the last :meth:`callback` admitted (the ZAP User-Id of that handshake)."""

    def _stamp(self) -> tuple:
        try:
            files = sorted(self.directory.glob(f"*{PUBLIC_SUFFIX}"))
            return (self.directory.stat().st_mtime_ns, *((p.name, p.stat().st_mtime_ns) for p in files))
        except OSError:
            return ()

    def reload(self) -> None:
        """Re-read the directory if it changed; a key that connected and is gone is queued as revoked."""
        with self._lock:
            stamp = self._stamp()
            if stamp == self._stamp_value:
                return
            self._stamp_value = stamp
            keys, problems = scan_allowed_keys(self.directory)
            for key, name in self.keys.items():
                if keys.get(key) is None and key in self._accepted_keys:
                    self._accepted_keys.discard(key)
                    self._revoked.append(name)
                    self.stats.revoked = [*self.stats.revoked[-7:], name]
            self.keys = keys
            self.stats.allowed_keys = len(keys)
            self.stats.reload_error = "; ".join(problems) or None

    def take_revoked(self) -> list[str]:
        """Reload if changed; return (and forget) the names of connected keys revoked since the last call."""
        self.reload()
        with self._lock:
            out, self._revoked = self._revoked, []
        return out

    def callback(self, domain: str, key: bytes) -> bool:
        self.reload()
        with self._lock:
            name = self.keys.get(key)
            if name is None:
                self.stats.denied += 1
                self.stats.denied_keys = [*self.stats.denied_keys[-7:], key.decode("ascii", "replace")]
            else:
                self._accepted_keys.add(key)
                self.stats.accepted[name] = self.stats.accepted.get(name, 0) + 1
                self.last_name = name
        if name is None and self._on_deny is not None:
            self._on_deny(key.decode("ascii", "replace"))
        return name is not None


class _NamedAuthenticator(ThreadAuthenticator):
    """ThreadAuthenticator whose ZAP User-Id is the sender's key name (frames carry it as ``User-Id``)."""

    provider: _AllowedKeys

    def curve_user_id(self, client_public_key: bytes) -> str:
        # called right after a successful callback() for the same request, in the same thread
        return self.provider.last_name


class CurveServer:
    """The receiver's side: its key pair plus a ZAP handler that admits only the allowed keys.

    Use as a context manager, or call :meth:`close` *before* terminating the zmq context (the ZAP thread
    holds a socket on it)::

        with CurveServer(opts) as curve:
            sock = ctx.socket(zmq.PULL)
            curve.apply(sock)          # before bind
            sock.bind("tcp://*:5555")

    Frames received with ``copy=False`` carry the sender's key name: ``frame.get("User-Id")``.
    """

    def __init__(self, opts: SecurityOptions, on_deny: Callable[[str], None] | None = None) -> None:
        """Load and check the key files now, so a bad file fails before any socket exists.

        Args:
            opts: Needs ``key`` and ``allowed_keys``.
            on_deny: Called (in the ZAP thread) with the Z85 key of each refused handshake.

        Raises:
            ConfigError: options lack a key or the directory.
            KeyFileError: a key file is bad (content or permissions).
        """
        opts.check_server()
        assert opts.key is not None and opts.allowed_keys is not None
        self.pair = load_secret_key(opts.key)
        self.provider = _AllowedKeys(Path(opts.allowed_keys).expanduser(), on_deny)
        self._auth: _NamedAuthenticator | None = None
        self._next_revoke_check = 0.0

    @property
    def stats(self) -> AuthStats:
        """Handshakes accepted/denied so far."""
        return self.provider.stats

    def poll_revoked(self, every_s: float = 1.0) -> list[str]:
        """Names of keys removed from the allowed directory while connected, since the last call.

        Re-reads the directory at most every ``every_s`` (the transport calls this from its receive loop and
        drops every connection when the list is not empty, so the revoked nodes are refused on reconnect).
        """
        now = time.monotonic()
        if now < self._next_revoke_check:
            return []
        self._next_revoke_check = now + every_s
        return self.provider.take_revoked()

    @property
    def last_denied_key(self) -> str | None:
        """The Z85 public key of the last refused handshake, if any."""
        keys = self.provider.stats.denied_keys
        return keys[-1] if keys else None

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server (call before ``bind``); starts the ZAP handler on its context."""
        if self._auth is None:
            auth = _NamedAuthenticator(sock.context)
            auth.provider = self.provider
            auth.start()
            auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self.provider)
            self._auth = auth
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.curve_secretkey = self.pair.secret
        sock.curve_publickey = self.pair.public
        sock.curve_server = True

    def close(self) -> None:
        """Stop the ZAP thread (idempotent)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def __enter__(self) -> CurveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CurveClient:
    """The sender's side: its key pair and the receiver's pinned public key."""

    def __init__(self, opts: SecurityOptions) -> None:
        """Load and check the key files now.

        Raises:
            ConfigError: options lack ``key`` or ``server_key``.
            KeyFileError: a key file is bad (content or permissions).
        """
        opts.check_client()
        assert opts.key is not None and opts.server_key is not None
        self.pair = load_secret_key(opts.key)
        self.server = load_public_key(opts.server_key)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client pinned to the receiver's key (call before ``connect``)."""
        sock.curve_secretkey = self.pair.secret
        sock.curve_publickey = self.pair.public
        sock.curve_serverkey = self.server.public

    def close(self) -> None:
        """Nothing to release; present so both ends close the same way."""

    def __enter__(self) -> CurveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def server_security(opts: SecurityOptions | None) -> CurveServer | None:
    """A :class:`CurveServer` for these options, or ``None`` when ``opts`` is ``None`` or insecure."""
    if opts is None or opts.insecure:
        return None
    return CurveServer(opts)


def client_security(opts: SecurityOptions | None) -> CurveClient | None:
    """A :class:`CurveClient` for these options, or ``None`` when ``opts`` is ``None`` or insecure."""
    if opts is None or opts.insecure:
        return None
    return CurveClient(opts)
