"""Exception types a caller may want to catch. Messages quote the bad value and say what to do."""


class CaeEdgeError(Exception):
    """Base class for every error cae-edge raises on purpose."""


class DataNotFoundError(CaeEdgeError):
    """No source could provide the requested dataset."""


class ConfigError(CaeEdgeError, ValueError):
    """A bad option value (latent size, preset name, path, ...)."""


class BundleError(CaeEdgeError):
    """A model bundle is missing, corrupt, tampered with or inconsistent with its manifest."""


class PairMismatchError(BundleError):
    """Encoder and decoder (or sender and receiver) do not belong to the same bundle."""


class PacketError(CaeEdgeError):
    """A wire packet is malformed (bad magic, version, length, CRC, ...).

    ``reason`` is a short stable word (``"magic"``, ``"crc"``, ...) that receivers use as a counter key.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class EntropyError(PacketError):
    """An entropy-coded latent payload does not decode with the bundle's probability model."""


class SourceError(CaeEdgeError):
    """A frame source cannot be opened or stopped delivering frames."""


class KeyFileError(CaeEdgeError):
    """A CURVE key file is missing, unreadable, malformed, or a secret key file has unsafe permissions."""


class LinkRefusedError(CaeEdgeError):
    """The receiver keeps refusing this sender's handshake (key not allowed, wrong pinned key, security
    mismatch); the message says which and what to do."""


class RuntimeMissingError(CaeEdgeError):
    """Neither ai_edge_litert nor tflite_runtime is installed (the device runtime cannot run a model)."""


class ExportError(CaeEdgeError):
    """An export failed its checks (int8 quality loss over the margin, non-builtin op, bad run directory)."""


class RunDirError(ConfigError, ExportError):
    """A training run directory is missing a file, or a file in it is unreadable (bad ``--init-from`` or
    ``cae-edge export`` input): both a :class:`ConfigError` and an :class:`ExportError`."""


class RuntimeCrashError(CaeEdgeError):
    """The TFLite interpreter crashed (killed by a signal) or hung while loading and running a model.

    Found by :func:`cae_edge.device.probe.probe_interpreter` in a child process, so the node reports it
    instead of dying mid-stream.
    """
