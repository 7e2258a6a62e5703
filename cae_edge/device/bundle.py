"""Load a model bundle on a camera node or receiver and run it. LiteRT only, never TensorFlow.

::

    frame ─ Preprocessor ─► 28x28 uint8 ─ Encoder.encode_latent ─► int8 latent ─ codec.encode ─► payload
    payload ─ codec.decode ─► int8 latent ─ Decoder.decode_latent ─► 28x28 uint8

Everything that can be wrong with a bundle is found once, in :func:`load_bundle`: missing files, sizes and
sha256 against the manifest, the flatbuffer identifier, the pair id, and each interpreter's input/output
dtype, shape, scale and zero point against the manifest. The hot path (``encode``/``decode``) only copies
bytes: pixels become int8 by one XOR (scale 1/255, zero point -128), output bytes become pixels through a
256-entry table.

Payload codecs: ``manifest["coding"]`` picks how a latent becomes payload bytes (:mod:`cae_edge.payload`:
raw int8 or the entropy coder); :meth:`Bundle.codec` builds it once from the files verified here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, ConfigError, PairMismatchError
from ..manifest import MANIFEST_NAME, Manifest, ModelSpec, TensorSpec, sha256_bytes
from ..payload import PayloadCodec, make_codec
from ..quant import PIXEL_SCALE, PIXEL_ZERO_POINT, QuantParams, output_to_pixel_lut
from .litert import check_model_bytes, make_interpreter

BUNDLES_DIR = Path(__file__).resolve().parent.parent / "bundles"
"""Shipped bundles: every ``cae_edge/bundles/<name>/manifest.json`` is addressable by ``<name>``."""
IMAGE_SHAPE = (28, 28)
_PIXEL_ZERO_POINTS = {"int8": PIXEL_ZERO_POINT, "uint8": 0}
"""Zero point that makes a quantized encoder input take raw pixel bytes (with scale 1/255)."""

# ---- interpreter checks ---------------------------------------------------------------------------------


def _tensor_spec(detail: dict) -> TensorSpec:
    scale, zp = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        np.dtype(detail["dtype"]).name, tuple(int(s) for s in detail["shape"]), float(scale), int(zp)
    )


def _check_tensor(name: str, role: str, actual: TensorSpec, expected: TensorSpec) -> None:
    problems = []
    if actual.dtype != expected.dtype:
        problems.append(f"dtype {actual.dtype} (manifest: {expected.dtype})")
    if actual.shape != expected.shape:
        problems.append(f"shape {list(actual.shape)} (manifest: {list(expected.shape)})")
    if np.float32(actual.scale) != np.float32(expected.scale):
        problems.append(f"scale {actual.scale!r} (manifest: {expected.scale!r})")
    if actual.zero_point != expected.zero_point:
        problems.append(f"zero point {actual.zero_point} (manifest: {expected.zero_point})")
    if problems:
        raise BundleError(f"{name}: {role} " + ", ".join(problems) + "; the file does not match its manifest")


def _open_checked(
    data: bytes, name: str, spec: ModelSpec, num_threads: int, xnnpack: bool, kernels: str | None = None
) -> tuple[Any, int, int]:
    interp = make_interpreter(data, num_threads, xnnpack=xnnpack, name=name, kernels=kernels)
    ins, outs = interp.get_input_details(), interp.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise BundleError(f"{name}: {len(ins)} inputs / {len(outs)} outputs, expected exactly one of each")
    _check_tensor(name, "input", _tensor_spec(ins[0]), spec.input)
    _check_tensor(name, "output", _tensor_spec(outs[0]), spec.output)
    return interp, int(ins[0]["index"]), int(outs[0]["index"])


# ---- encoder / decoder ----------------------------------------------------------------------------------


class _Model:
    """What the encoder and the decoder share: model ``key`` of the bundle opened and checked against its
    manifest entry, the interpreter's hot-path calls bound once, and the bundle's payload codec when the
    latent tensor is int8; then :meth:`_prepare` does what is the role's own."""

    _latent_side = ""
    """``output`` (encoder) or ``input`` (decoder): the tensor that holds the latent."""

    def __init__(
        self,
        bundle: Bundle,
        key: str,
        num_threads: int = 1,
        xnnpack: bool = True,
        kernels: str | None = None,
    ) -> None:
        spec = bundle.manifest.models[key]
        self.name = str(bundle.path / spec.file)
        self.spec = spec
        self._interp, self._in_idx, self._out_idx = _open_checked(
            bundle.model_bytes(key), self.name, spec, num_threads, xnnpack, kernels
        )
        latent: TensorSpec = getattr(spec, self._latent_side)
        self._codec = bundle.codec() if latent.dtype == "int8" else None
        self._set = self._interp.set_tensor
        self._invoke = self._interp.invoke
        self._get = self._interp.get_tensor
        self._prepare(spec)

    def _prepare(self, spec: ModelSpec) -> None:
        """The role's own checks and buffers, once the interpreter is open."""

    @property
    def latent_dim(self) -> int:
        return int(getattr(self.spec, self._latent_side).shape[-1])

    @property
    def codec(self) -> PayloadCodec | None:
        """The bundle's payload codec (``None`` for a float model)."""
        return self._codec


class Encoder(_Model):
    """Runs the encoder model on 28x28 uint8 images. Create with :meth:`Bundle.encoder`.

    Not thread-safe: one Encoder per thread.
    """

    _latent_side = "output"

    def _prepare(self, spec: ModelSpec) -> None:
        self._in = np.zeros(spec.input.shape, dtype=spec.input.dtype)
        self._in2d = self._in.reshape(IMAGE_SHAPE)
        dtype = spec.input.dtype
        zp = _PIXEL_ZERO_POINTS.get(dtype)
        if zp is not None and (np.float32(spec.input.scale) != PIXEL_SCALE or spec.input.zero_point != zp):
            raise BundleError(
                f"{self.name}: input quantization (scale {spec.input.scale!r}, zero point "
                f"{spec.input.zero_point}) is not raw pixels (scale 1/255, zero point {zp} for {dtype}); "
                "re-export the bundle"
            )
        self._mode = dtype

    def encode_latent(self, image_u8: np.ndarray) -> np.ndarray:
        """One 28x28 uint8 image → the latent (int8 (latent_dim,) for the int8 model, float32 for float).

        Raises:
            ConfigError: wrong shape or dtype.
        """
        if image_u8.shape != IMAGE_SHAPE or image_u8.dtype != np.uint8:
            raise ConfigError(
                f"image of shape {image_u8.shape} and dtype {image_u8.dtype}: expected (28, 28) uint8; "
                "preprocess camera frames with cae_edge.device.preprocess.Preprocessor"
            )
        if self._mode == "int8":
            np.bitwise_xor(image_u8.view(np.int8), np.int8(-128), out=self._in2d)
        elif self._mode == "uint8":
            self._in2d[...] = image_u8
        else:
            np.multiply(image_u8, np.float32(1.0 / 255.0), out=self._in2d)
        self._set(self._in_idx, self._in)
        self._invoke()
        return self._get(self._out_idx)[0]

    def encode(self, image_u8: np.ndarray) -> bytes:
        """One 28x28 uint8 image → the payload, exactly as sent on the wire (int8 models only)."""
        if self._codec is None:
            raise ConfigError(f"{self.name}: a float encoder has no wire payload; use encode_latent")
        return self._codec.encode(self.encode_latent(image_u8))


class Decoder(_Model):
    """Runs the decoder model: latent → 28x28 uint8 image. Create with :meth:`Bundle.decoder`.

    Not thread-safe: one Decoder per thread.
    """

    _latent_side = "input"

    def _prepare(self, spec: ModelSpec) -> None:
        self._in_shape = spec.input.shape
        self._in_dtype = np.dtype(spec.input.dtype)
        self._latent_shape = (self.latent_dim,)
        prepare = getattr(self._codec, "prepare_decode", None)  # the entropy coder's decoder tables
        if prepare is not None:
            prepare()
        out = spec.output
        self._lut = (
            output_to_pixel_lut(QuantParams(out.scale, out.zero_point, out.dtype))
            if out.dtype != "float32"
            else None
        )

    def decode_latent(self, q: np.ndarray) -> np.ndarray:
        """Latent (int8 (latent_dim,), float32 for a float decoder) → 28x28 uint8 image.

        Raises:
            ConfigError: wrong shape or dtype.
        """
        if q.shape != self._latent_shape or q.dtype != self._in_dtype:
            raise ConfigError(
                f"latent of shape {q.shape} and dtype {q.dtype}: "
                f"expected {self._latent_shape} {self._in_dtype}"
            )
        self._set(self._in_idx, q.reshape(self._in_shape))
        self._invoke()
        out = self._get(self._out_idx).reshape(IMAGE_SHAPE)
        if self._lut is None:
            return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
        return self._lut[out.view(np.uint8)]

    def decode(self, payload: bytes) -> np.ndarray:
        """Payload bytes as received → 28x28 uint8 image (int8 models only).

        Raises:
            PacketError: the payload does not decode to a latent of this bundle.
        """
        if self._codec is None:
            raise ConfigError(f"{self.name}: a float decoder has no wire payload; use decode_latent")
        return self.decode_latent(self._codec.decode(payload))


# ---- bundle ---------------------------------------------------------------------------------------------


class Bundle:
    """A verified bundle directory. Create with :func:`load_bundle`."""

    def __init__(self, path: Path, manifest: Manifest, blobs: dict[str, bytes]) -> None:
        self.path = path
        """The bundle directory."""
        self.manifest = manifest
        """The validated manifest (item access like the JSON dict: ``manifest["coding"]``)."""
        self._blobs = blobs
        self._codec: PayloadCodec | None = None

    @property
    def pair_id(self) -> str:
        """16 hex chars identifying the int8 encoder/decoder pair."""
        return self.manifest.pair_id

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    @property
    def preprocess(self) -> dict:
        """Preprocessing spec for :class:`cae_edge.device.preprocess.Preprocessor`."""
        return self.manifest.preprocess

    @property
    def coding(self) -> dict:
        return self.manifest.coding

    @property
    def latent_quant(self) -> QuantParams:
        """Quantization of the int8 latent (shared by encoder output and decoder input)."""
        return self.manifest.latent_quant

    @property
    def bytes_per_image(self) -> int:
        return self.manifest.bytes_per_image

    def read_file(self, name: str) -> bytes:
        """Content of a bundle file listed in the manifest (verified at load, cached)."""
        if name not in self._blobs:
            raise BundleError(f"{self.path}: no file {name!r} in the manifest (have {sorted(self._blobs)})")
        return self._blobs[name]

    def model_bytes(self, key: str) -> bytes:
        """The .tflite bytes of model ``key`` (``encoder``, ``decoder`` or their ``_float`` twins)."""
        if key not in self.manifest.models:
            raise BundleError(
                f"{self.path}: no model {key!r} in the manifest (have {sorted(self.manifest.models)})"
            )
        return self.read_file(self.manifest.models[key].file)

    def codec(self) -> PayloadCodec:
        """The payload codec the manifest's ``coding`` selects (built once)."""
        if self._codec is None:
            self._codec = make_codec(self)
        return self._codec

    def encoder(
        self,
        num_threads: int = 1,
        *,
        precision: str = "int8",
        xnnpack: bool = True,
        kernels: str | None = None,
    ) -> Encoder:
        """A new encoder. ``precision="float"`` runs ``encoder_float.tflite`` (comparison only).

        ``kernels`` (``"xnnpack"``, ``"builtin"`` or ``"micro"``, see :mod:`cae_edge.device.litert`)
        overrides ``xnnpack`` when given.
        """
        return Encoder(self, _model_key("encoder", precision), num_threads, xnnpack, kernels)

    def decoder(
        self,
        num_threads: int = 1,
        *,
        precision: str = "int8",
        xnnpack: bool = True,
        kernels: str | None = None,
    ) -> Decoder:
        """A new decoder. ``precision="float"`` runs ``decoder_float.tflite`` (comparison only).

        ``kernels`` overrides ``xnnpack`` when given, as for :meth:`encoder`.
        """
        return Decoder(self, _model_key("decoder", precision), num_threads, xnnpack, kernels)

    def check_pair(self, other_pair_id: str) -> None:
        """Raise :class:`PairMismatchError` unless ``other_pair_id`` is this bundle's pair id."""
        if other_pair_id != self.pair_id:
            raise PairMismatchError(
                f"pair id {other_pair_id!r} does not match bundle {self.path} ({self.pair_id!r}): "
                "sender and receiver must use the same bundle"
            )

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, pair_id={self.pair_id!r}, latent_dim={self.latent_dim})"


def _model_key(role: str, precision: str) -> str:
    if precision == "int8":
        return role
    if precision == "float":
        return f"{role}_float"
    raise ConfigError(f"precision {precision!r}: must be 'int8' or 'float'")


def available_bundles() -> dict[str, Path]:
    """Shipped bundles: name → directory, for every ``cae_edge/bundles/<name>/manifest.json``."""
    if not BUNDLES_DIR.is_dir():
        return {}
    return {p.parent.name: p.parent for p in sorted(BUNDLES_DIR.glob(f"*/{MANIFEST_NAME}"))}


def resolve_bundle(name_or_path: str | Path) -> Path:
    """A shipped bundle name (no ``/`` in it) or a bundle directory → the directory.

    Raises:
        BundleError: neither a shipped name nor a directory.
    """
    s = str(name_or_path)
    shipped = available_bundles()
    if isinstance(name_or_path, str) and "/" not in s and s in shipped:
        return shipped[s]
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.name == MANIFEST_NAME:
        path = path.parent
    if path.is_dir():
        return path.resolve()
    raise BundleError(
        f"bundle {s!r}: not a shipped bundle name ({', '.join(shipped) or 'none installed'}) "
        "and not a directory; make one with `cae-edge export RUN --out DIR`"
    )


def load_bundle(name_or_path: str | Path, *, verify: bool = True) -> Bundle:
    """Load and verify a bundle.

    Checks, in this order, before any byte reaches an interpreter: the manifest (fields, pair id against the
    listed hashes, latent quantization shared by the pair); every listed file exists and has the listed
    size and (``verify=True``) sha256; each model is a TFLite flatbuffer. Then it opens each model once and
    compares the interpreter's input/output dtype, shape, scale and zero point with the manifest.

    Args:
        name_or_path: ``"mnist"``, ``"fashion"`` (any shipped name) or a bundle directory.
        verify: Check sha256 of every file (sizes, identifiers and tensor details are always checked).

    Returns:
        The verified :class:`Bundle`.

    Raises:
        BundleError: missing/corrupt/truncated/tampered file or inconsistent manifest (names the file).
        PairMismatchError: the int8 encoder and decoder are not the pair the manifest's pair id names.
    """
    path = resolve_bundle(name_or_path)
    manifest = Manifest.read(path)
    blobs: dict[str, bytes] = {}
    for name, entry in manifest.files.items():
        fpath = path / name
        try:
            data = fpath.read_bytes()
        except FileNotFoundError:
            raise BundleError(
                f"{fpath}: missing (listed in {MANIFEST_NAME}); re-copy or re-export the bundle"
            ) from None
        except OSError as e:
            raise BundleError(f"{fpath}: cannot read ({e.strerror or e})") from None
        if len(data) != entry.bytes:
            what = "truncated" if len(data) < entry.bytes else "too long"
            raise BundleError(f"{fpath}: {what}: {len(data)} bytes, manifest says {entry.bytes}")
        if verify:
            digest = sha256_bytes(data)
            if digest != entry.sha256:
                raise BundleError(
                    f"{fpath}: sha256 {digest[:16]}... does not match the manifest ({entry.sha256[:16]}...): "
                    "file corrupt or tampered with"
                )
        blobs[name] = data
    # The pair id was checked against the listed hashes by Manifest.read, and the files against those hashes.
    for spec in manifest.models.values():
        check_model_bytes(blobs[spec.file], str(path / spec.file))
    bundle = Bundle(path, manifest, blobs)
    # Open every model once: tensor details against the manifest, pixel-compatible input, known coding.
    bundle.codec()
    for key in manifest.models:
        role = "encoder" if key.startswith("encoder") else "decoder"
        (Encoder if role == "encoder" else Decoder)(bundle, key)
    return bundle
