"""The bundle manifest: what a bundle contains and how its models must look. Shared, no TensorFlow.

A bundle is a directory::

    manifest.json          this file's content (JSON, UTF-8)
    encoder.tflite         int8 encoder: uint8 pixels (as int8, XOR 0x80) → int8 latent      (camera node)
    decoder.tflite         int8 decoder: int8 latent → int8 image                              (receiver)
    encoder_float.tflite   float32 versions, for comparison only
    decoder_float.tflite
    (+ files a payload coding declares, e.g. an entropy model)

The pair id ties the two int8 models together: ``sha256(enc_sha256_hex + dec_sha256_hex)[:16]``. Both ends
put it in / check it against every packet, so a receiver never decodes latents of another encoder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .entropy import CODER_SWITCHED
from .errors import BundleError, ConfigError, PairMismatchError
from .quant import QuantParams

FORMAT_VERSION = 1
"""Manifest format this code writes and reads."""
MANIFEST_NAME = "manifest.json"
MODEL_KEYS = ("encoder", "decoder", "encoder_float", "decoder_float")
"""Model roles a manifest describes; ``encoder`` and ``decoder`` are the int8 pair."""
DEFAULT_FILES = {k: f"{k}.tflite" for k in MODEL_KEYS}
PAIR_ID_LEN = 16


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's content."""
    return sha256_bytes(Path(path).read_bytes())


def pair_id(encoder_sha256: str, decoder_sha256: str, tables_sha256: str | None = None) -> str:
    """The 16-hex-char id of an int8 encoder/decoder pair, from their sha256 hex digests.

    ``tables_sha256``: the sha256 of a bundle's switched entropy tables (:func:`coding_tables_sha256`): the
    payload depends on them as much as on the models, so a node and a receiver holding the same models with
    other tables do not pair. Bundles coded otherwise keep the id of their two models.
    """
    named = [("encoder", encoder_sha256), ("decoder", decoder_sha256)]
    if tables_sha256 is not None:
        named.append(("entropy tables", tables_sha256))
    for name, h in named:
        if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
            raise ConfigError(f"{name} sha256 {h!r}: expected 64 lowercase hex characters")
    return sha256_bytes("".join(h for _, h in named).encode("ascii"))[:PAIR_ID_LEN]


def coding_tables_sha256(coding: dict, files: dict) -> str | None:
    """The sha256 :func:`pair_id` takes from a bundle's ``coding`` and ``files`` (:class:`FileEntry` by name;
    None unless switched).

    Raises:
        BundleError: switched coding whose file is not in ``files``.
    """
    if not isinstance(coding, dict) or coding.get("coder") != CODER_SWITCHED:
        return None
    name = str(coding.get("file", ""))
    if name not in files:
        raise BundleError(
            f"manifest coding file {name!r} is not in the manifest's files; re-export the bundle"
        )
    return files[name].sha256


@dataclass(frozen=True)
class TensorSpec:
    """dtype, shape and quantization of one model input or output, as the interpreter reports them."""

    dtype: str
    """numpy dtype name: ``int8``, ``uint8`` or ``float32``."""
    shape: tuple[int, ...]
    """Full shape including the batch dimension (always 1)."""
    scale: float = 0.0
    """Quantization scale; 0.0 for float tensors."""
    zero_point: int = 0
    """Quantization zero point; 0 for float tensors."""

    @property
    def quant(self) -> QuantParams:
        """The quantization parameters (only meaningful for int8/uint8 tensors)."""
        return QuantParams(self.scale, self.zero_point, self.dtype)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(
            str(d["dtype"]), tuple(int(s) for s in d["shape"]), float(d["scale"]), int(d["zero_point"])
        )


@dataclass(frozen=True)
class ModelSpec:
    """One .tflite model of the bundle: its file and its single input and output."""

    file: str
    """File name inside the bundle directory."""
    input: TensorSpec
    """The model's only input."""
    output: TensorSpec
    """The model's only output."""

    def to_dict(self) -> dict:
        return {"file": self.file, "input": self.input.to_dict(), "output": self.output.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(str(d["file"]), TensorSpec.from_dict(d["input"]), TensorSpec.from_dict(d["output"]))


@dataclass(frozen=True)
class FileEntry:
    """Integrity record of one bundle file."""

    sha256: str
    """Hex sha256 of the content."""
    bytes: int
    """Size in bytes."""


@dataclass
class Manifest:
    """Everything ``manifest.json`` holds. Item access (``m["coding"]``) works like on the JSON dict."""

    pair_id: str
    """16 hex chars: sha256(encoder sha256 hex + decoder sha256 hex)[:16] of the int8 pair."""
    latent_dim: int
    """Length of the latent vector."""
    latent_quant: QuantParams
    """Quantization of the latent: identical for the encoder's output and the decoder's input."""
    models: dict[str, ModelSpec]
    """``encoder``, ``decoder`` (int8 pair) and ``encoder_float``, ``decoder_float``."""
    files: dict[str, FileEntry]
    """Every file of the bundle except the manifest: name → sha256 and size."""
    preprocess: dict = field(default_factory=dict)
    """What the encoder expects of a camera frame: size, grayscale, invert, crop, mnist_normalize."""
    dataset: dict = field(default_factory=dict)
    """Training data: name, source, split."""
    train: dict = field(default_factory=dict)
    """The training run's config.json (model hyperparameters and training options)."""
    quality: dict = field(default_factory=dict)
    """Test-split quality at export: {keras_float, tflite_float, tflite_int8: {psnr, ssim, ...}, n_images}."""
    bytes_per_image: int = 0
    """Payload bytes per image with this bundle's coding (the latent size for plain int8)."""
    coding: dict = field(default_factory=lambda: {"kind": "int8"})
    """How latents become payload bytes: ``{"kind": "int8"}`` or ``{"kind": "entropy", ...}``."""
    command: str = ""
    """The commands that made the bundle (train + export)."""
    created_by: str = ""
    """cae-edge version that wrote the bundle."""
    format_version: int = FORMAT_VERSION
    """Manifest format version."""

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    # ---- validation -------------------------------------------------------------------------------------

    def validate(self) -> Manifest:
        """Check internal consistency (no file access); return self.

        Raises:
            BundleError: a field is missing, malformed or inconsistent; the message names it.
        """
        if self.format_version != FORMAT_VERSION:
            raise BundleError(
                f"manifest format_version {self.format_version!r}: "
                f"this cae-edge reads version {FORMAT_VERSION}; "
                "re-export the bundle or upgrade cae-edge"
            )
        if int(self.latent_dim) < 1:
            raise BundleError(f"manifest latent_dim {self.latent_dim!r}: must be >= 1")
        try:
            self.latent_quant.validate()
        except ConfigError as e:
            raise BundleError(f"manifest latent_quant: {e}") from None
        for key in ("encoder", "decoder"):
            if key not in self.models:
                raise BundleError(f"manifest models: no {key!r} entry (have {sorted(self.models)})")
        for key, spec in self.models.items():
            if spec.file not in self.files:
                raise BundleError(f"manifest models.{key}.file {spec.file!r} is not listed in manifest files")
        for name, entry in self.files.items():
            if Path(name).name != name or name in ("", ".", "..", MANIFEST_NAME):
                raise BundleError(
                    f"manifest files: bad file name {name!r} (plain names inside the bundle only)"
                )
            if len(entry.sha256) != 64 or entry.bytes < 0:
                raise BundleError(
                    f"manifest files.{name}: bad sha256 {entry.sha256!r} or size {entry.bytes!r}"
                )
        enc, dec = self.models["encoder"], self.models["decoder"]
        if enc.output.shape != (1, self.latent_dim) or dec.input.shape != (1, self.latent_dim):
            raise BundleError(
                f"manifest latent shapes: encoder output {list(enc.output.shape)}, decoder input "
                f"{list(dec.input.shape)}, latent_dim {self.latent_dim}: expected [1, {self.latent_dim}]"
            )
        for role, spec in (("encoder output", enc.output), ("decoder input", dec.input)):
            if not spec.quant.same_as(self.latent_quant):
                raise BundleError(
                    f"manifest {role} quantization (scale {spec.scale!r}, zero point {spec.zero_point}, "
                    f"{spec.dtype}) differs from latent_quant {self.latent_quant.to_dict()}: "
                    "the pair must share it"
                )
        if not isinstance(self.coding, dict) or "kind" not in self.coding:
            raise BundleError(f"manifest coding {self.coding!r}: expected an object with a 'kind'")
        expected = self.expected_pair_id()
        if self.pair_id != expected:
            raise PairMismatchError(
                f"manifest pair_id {self.pair_id!r} does not match the int8 models' (and switched entropy "
                "tables') hashes "
                f"(expected {expected!r}): "
                "encoder and decoder come from different exports"
            )
        return self

    def expected_pair_id(self) -> str:
        """The pair id of the int8 models (and switched entropy tables) that ``files`` lists."""
        enc, dec = self.models["encoder"], self.models["decoder"]
        return pair_id(
            self.files[enc.file].sha256,
            self.files[dec.file].sha256,
            coding_tables_sha256(self.coding, self.files),
        )

    # ---- (de)serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-friendly dict (the content of manifest.json)."""
        return {
            "format_version": self.format_version,
            "pair_id": self.pair_id,
            "latent_dim": self.latent_dim,
            "latent_quant": {
                "scale": float(self.latent_quant.scale),
                "zero_point": int(self.latent_quant.zero_point),
                "dtype": self.latent_quant.dtype,
            },
            "bytes_per_image": self.bytes_per_image,
            "coding": self.coding,
            "models": {k: v.to_dict() for k, v in self.models.items()},
            "files": {k: asdict(v) for k, v in self.files.items()},
            "preprocess": self.preprocess,
            "dataset": self.dataset,
            "quality": self.quality,
            "train": self.train,
            "command": self.command,
            "created_by": self.created_by,
        }

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "manifest") -> Manifest:
        """Build from a parsed manifest.json; validates.

        Raises:
            BundleError: missing or malformed fields (named in the message).
        """
        if not isinstance(d, dict):
            raise BundleError(f"{source}: expected a JSON object, got {type(d).__name__}")
        try:
            m = cls(
                format_version=int(d.get("format_version", -1)),
                pair_id=str(d["pair_id"]),
                latent_dim=int(d["latent_dim"]),
                latent_quant=QuantParams(
                    float(d["latent_quant"]["scale"]),
                    int(d["latent_quant"]["zero_point"]),
                    str(d["latent_quant"].get("dtype", "int8")),
                ),
                models={str(k): ModelSpec.from_dict(v) for k, v in d["models"].items()},
                files={str(k): FileEntry(str(v["sha256"]), int(v["bytes"])) for k, v in d["files"].items()},
                preprocess=dict(d.get("preprocess", {})),
                dataset=dict(d.get("dataset", {})),
                train=dict(d.get("train", {})),
                quality=dict(d.get("quality", {})),
                bytes_per_image=int(d.get("bytes_per_image", 0)),
                coding=d.get("coding", {"kind": "int8"}),
                command=str(d.get("command", "")),
                created_by=str(d.get("created_by", "")),
            )
        except KeyError as e:
            raise BundleError(f"{source}: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"{source}: malformed field ({e})") from None
        try:
            return m.validate()
        except BundleError as e:
            raise type(e)(f"{source}: {e}") from None

    def write(self, directory: str | Path) -> Path:
        """Validate and write ``directory/manifest.json``; return its path."""
        self.validate()
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        """Read and validate ``directory/manifest.json`` (or a manifest file path).

        Raises:
            BundleError: missing file, invalid JSON or invalid content; the message names the file.
        """
        path = Path(directory)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BundleError(
                f"{path}: manifest not found; is this a bundle made by `cae-edge export`?"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise BundleError(f"{path}: cannot read manifest ({e})") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))


def file_entry(path: str | Path) -> FileEntry:
    """The integrity record (sha256, size) of a file."""
    data = Path(path).read_bytes()
    return FileEntry(sha256_bytes(data), len(data))
