"""Payload codecs: how a bundle's int8 latent becomes the payload bytes of a packet, and back.

Shared by the node and the receiver (and the benchmark); no device, TensorFlow or LiteRT imports::

    manifest["coding"] ─► payload_kind() ─► wire.PayloadKind (the packet's kind flag)
                       └► make_codec(bundle) ─► PayloadCodec: int8 latent (D,) ⇄ payload bytes

``coding.kind`` picks the codec factory from :data:`CODECS`:

* ``int8``: the raw latent bytes, one per latent value (:class:`Int8Codec`).
* ``entropy``: the range coder of :mod:`cae_edge.entropy`, its probability model parsed from the bundle
  file bytes the bundle loader already read and checked against the manifest's sha256.

Other kinds can be added with :func:`register_codec` (and a wire kind in :data:`WIRE_KINDS`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from . import entropy
from .errors import BundleError, ConfigError, PacketError
from .manifest import MANIFEST_NAME
from .wire import PayloadKind


class PayloadCodec(Protocol):
    """Turns an int8 latent into the payload bytes sent on the wire, and back."""

    kind: str
    """The ``coding.kind`` it implements."""

    def encode(self, q: np.ndarray) -> bytes:
        """int8 latent (latent_dim,) → payload bytes."""
        ...

    def decode(self, payload: bytes) -> np.ndarray:
        """Payload bytes → int8 latent (latent_dim,). Raises PacketError on a malformed payload."""
        ...


class BundleFiles(Protocol):
    """What a codec factory may read from a loaded bundle (:class:`cae_edge.device.bundle.Bundle`)."""

    path: Path

    @property
    def coding(self) -> dict: ...

    @property
    def latent_dim(self) -> int: ...

    def read_file(self, name: str) -> bytes:
        """A file listed in the manifest, as verified at load."""
        ...


CodecFactory = Callable[[BundleFiles], PayloadCodec]

WIRE_KINDS: dict[str, PayloadKind] = {"int8": PayloadKind.INT8, entropy.KIND: PayloadKind.ENTROPY}
"""``coding.kind`` → the packet's payload kind."""


def payload_kind(coding: dict | None) -> PayloadKind:
    """The wire payload kind for a bundle's ``coding`` block (no block: ``int8``).

    Raises:
        ConfigError: a coding kind the wire format has no code for.
    """
    kind = str((coding or {}).get("kind", "int8"))
    try:
        return WIRE_KINDS[kind]
    except KeyError:
        raise ConfigError(
            f"coding kind {kind!r}: the wire format knows {', '.join(sorted(WIRE_KINDS))}; "
            "upgrade cae-edge or re-export the bundle"
        ) from None


class Int8Codec:
    """Payload = the int8 latent bytes, one byte per latent value."""

    kind = "int8"

    def __init__(self, latent_dim: int) -> None:
        self.latent_dim = int(latent_dim)

    def encode(self, q: np.ndarray) -> bytes:
        return q.tobytes()

    def decode(self, payload: bytes) -> np.ndarray:
        if len(payload) != self.latent_dim:
            raise PacketError(
                f"int8 payload of {len(payload)} bytes: this bundle's latent is {self.latent_dim} bytes",
                reason="payload",
            )
        return np.frombuffer(payload, dtype=np.int8)


def entropy_codec(bundle: BundleFiles) -> entropy.EntropyCoder | entropy.SwitchedCoder:
    """The range coder of an entropy-coded bundle, from the model file's verified bytes.

    Raises:
        BundleError: the manifest names an unknown stream format, or the model file is missing from the
            manifest, malformed or does not fit the bundle's latent.
    """
    coding = bundle.coding
    name = str(coding.get("file", entropy.ENTROPY_FILE))
    where = Path(bundle.path) / name
    coder = str(coding.get("coder", entropy.CODER_CLAMP))
    if coder not in entropy.READABLE:
        raise BundleError(
            f"{Path(bundle.path) / MANIFEST_NAME}: entropy coder {coder!r} is not one this cae-edge reads "
            f"({', '.join(entropy.READABLE)}); upgrade cae-edge or re-export the bundle"
        )
    model = entropy.from_bytes(bundle.read_file(name), str(where))
    if model.latent_dim != int(bundle.latent_dim):
        raise BundleError(
            f"{where}: entropy model codes {model.latent_dim} dimensions, the bundle's latent has "
            f"{bundle.latent_dim}; re-export the bundle"
        )
    if (coder == entropy.CODER_SWITCHED) != isinstance(model, entropy.SwitchedModel):
        raise BundleError(
            f"{where}: the manifest's stream format {coder!r} does not fit the file's model "
            f"({type(model).__name__}); re-export the bundle"
        )
    return entropy.make_coder(model, coder)


CODECS: dict[str, CodecFactory] = {
    "int8": lambda bundle: Int8Codec(bundle.latent_dim),
    entropy.KIND: entropy_codec,
}
"""Payload codec factories by ``coding.kind``."""


def register_codec(kind: str, factory: CodecFactory) -> None:
    """Make ``coding.kind == kind`` usable; ``factory(bundle)`` builds the codec (may read bundle files)."""
    CODECS[kind] = factory


def make_codec(bundle: BundleFiles) -> PayloadCodec:
    """The payload codec a loaded bundle's ``coding`` selects.

    Raises:
        BundleError: an unknown coding kind, or the codec's own files do not fit the bundle.
    """
    kind = str(bundle.coding.get("kind", ""))
    if kind not in CODECS:
        raise BundleError(
            f"{Path(bundle.path) / MANIFEST_NAME}: unknown coding kind {kind!r} (known: {sorted(CODECS)}); "
            "upgrade cae-edge or re-export the bundle"
        )
    return CODECS[kind](bundle)
