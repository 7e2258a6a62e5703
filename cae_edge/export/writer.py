"""``cae-edge export``: a training run directory → a verified bundle directory.

Four steps, one function each (:func:`export` runs them)::

    RUN/{encoder,decoder}.keras, config.json (cae_edge.rundir.load_run)
      ─ calibrate: convert_pair (PTQ on training images) ─► 4 .tflite
      ─ write: .tflite (+ entropy model) + manifest.json ─► BUNDLE.tmp/
        (--adapt-decoder N: after the int8 encoder exists, the decoder is fine-tuned N epochs on that
         encoder's int8 training latents before it is converted; see cae_edge.export.adapt)
      ─ verify: load_bundle (the device runtime) ─ int8 + float pair over the test split ─ quality in manifest
      ─ int8 loses ≤ margin dB vs Keras float? ─ yes ─► commit: rename to BUNDLE
                                               no ─► ExportError, nothing written

The verification runs through :mod:`cae_edge.device.bundle`, the same code a camera node and receiver use.

A run trained on a user's own frames (``config.json["data"]["user"]``: a recording, image folder or video,
``device/recording.py``) is calibrated and verified on those frames (same time split), and its manifest's
``preprocess`` block is the preprocessing those frames went through, so the node prepares its camera's
frames the same way.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, datasets
from ..errors import ConfigError, ExportError
from ..manifest import (
    DEFAULT_FILES,
    MANIFEST_NAME,
    Manifest,
    ModelSpec,
    TensorSpec,
    file_entry,
)
from ..metrics import quality, to_uint8
from ..quant import QuantParams, dequantize
from ..rundir import RunConfig, load_run
from ..scenes import SCENE_PREPROCESS

Progress = Callable[[str, int, int], None]

PREPROCESS = {
    "mnist": {"size": 28, "grayscale": True, "invert": True, "crop": "center", "mnist_normalize": True},
    "fashion": {"size": 28, "grayscale": True, "invert": True, "crop": "center", "mnist_normalize": False},
    "scenes": dict(SCENE_PREPROCESS),
}
"""What a camera frame needs to look like the training data. Both datasets show a bright object on a black
background, so a photo of dark ink / an object on light paper is inverted; MNIST digits are also size- and
mass-normalised (20x20 box centred by centre of mass in 28x28). Scenes were cut from photographs with the
node's own preprocessing, plain grayscale (:data:`cae_edge.scenes.SCENE_PREPROCESS`)."""


@dataclass
class ExportOptions:
    """Options of :func:`export`."""

    run_dir: Path
    """Training run directory (``encoder.keras``, ``decoder.keras``, ``config.json``)."""
    out_dir: Path
    """Bundle directory to write (must not exist unless ``overwrite``)."""
    margin_db: float = 0.5
    """Fail when the int8 pair's test PSNR is more than this many dB below the Keras float model."""
    calib: int = 300
    """Number of training images used to calibrate the int8 quantization."""
    latent_scale: float | None = None
    """Force the latent quantization scale (with ``latent_zero_point``), e.g. 1.0 for integer latents."""
    latent_zero_point: int = 0
    """Zero point of a forced latent quantization."""
    verify_limit: int | None = None
    """Verify on the first N test images only (``None``: the whole test split, the default)."""
    data_dir: Path | None = None
    """Directory with IDX .gz files, tried first by :func:`cae_edge.datasets.load`."""
    overwrite: bool = False
    """Replace an existing bundle directory."""
    seed: int = 0
    """Seed of the calibration subset (and of the adaptation's shuffling)."""
    adapt_epochs: int = 0
    """Fine-tune the decoder this many epochs on the int8 encoder's training latents (0: off)."""
    adapt_lr: float = 2e-4
    """Starting learning rate of that fine-tuning."""
    bias_correction: bool = True
    """Remove the int8 encoder's per-channel mean latent shift measured on the calibration images."""
    calib_percentile: float = 99.99
    """Cut int8 activation ranges to this percentile of the calibration values (100: plain min/max)."""
    equalize: bool = True
    """Channel-equalize both models before PTQ (:mod:`cae_edge.export.equalize`): same float function,
    less int8 rounding noise."""
    range_search: bool = False
    """Search both int8 models' activation ranges on the calibration images (:mod:`cae_edge.export.
    rangesearch`: the decoder's for the best decoded images, the encoder's for latents closest to the float
    encoder's) instead of keeping the percentile ranges."""
    command: str = ""
    """How this export was invoked, recorded in the manifest."""

    def validate(self) -> ExportOptions:
        if self.margin_db < 0:
            raise ConfigError(f"margin {self.margin_db} dB: must be >= 0")
        if not 50 < float(self.calib_percentile) <= 100:
            raise ConfigError(
                f"calibration percentile {self.calib_percentile}: must be in (50, 100], e.g. 99.99 "
                "(100 keeps min/max calibration)"
            )
        if self.calib < 1:
            raise ConfigError(
                f"calib {self.calib}: need at least 1 calibration image (a few hundred is good)"
            )
        if self.verify_limit is not None and self.verify_limit < 1:
            raise ConfigError(
                f"verify limit {self.verify_limit}: must be >= 1 or None for the whole test split"
            )
        if self.latent_scale is not None:
            QuantParams(self.latent_scale, self.latent_zero_point).validate()
        self.adapt_options.validate()
        return self

    @property
    def adapt_options(self):
        from .adapt import AdaptOptions

        return AdaptOptions(epochs=self.adapt_epochs, learning_rate=self.adapt_lr, seed=self.seed)

    @property
    def latent_quant(self) -> QuantParams | None:
        if self.latent_scale is None:
            return None
        return QuantParams(float(self.latent_scale), int(self.latent_zero_point))


@dataclass
class ExportResult:
    """What :func:`export` wrote and measured."""

    path: str
    """The bundle directory."""
    pair_id: str
    """Pair id of the int8 models."""
    quality: dict
    """{keras_float, tflite_float, tflite_int8: {psnr, ssim, mse}, n_images, split}."""
    int8_loss_db: float
    """Keras float PSNR minus int8 PSNR."""
    sizes: dict[str, int] = field(default_factory=dict)
    """File name → bytes."""
    latent_quant: dict = field(default_factory=dict)
    """Shared latent (scale, zero_point)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _tensor_spec(detail: dict) -> TensorSpec:
    scale, zp = detail["quantization"]
    return TensorSpec(
        np.dtype(detail["dtype"]).name, tuple(int(s) for s in detail["shape"]), float(scale), int(zp)
    )


def _model_spec(file: str, data: bytes) -> ModelSpec:
    from ..device.litert import make_interpreter

    it = make_interpreter(data)
    return ModelSpec(file, _tensor_spec(it.get_input_details()[0]), _tensor_spec(it.get_output_details()[0]))


def reconstruct(bundle, images_u8: np.ndarray, precision: str = "int8") -> np.ndarray:
    """Encode and decode every image through a loaded bundle (the device runtime).

    The int8 pair goes through the wire payload (``encode`` → bytes → ``decode``, so the bundle's payload
    codec is part of what is verified); the float pair goes latent to latent.
    """
    enc, dec = bundle.encoder(precision=precision), bundle.decoder(precision=precision)
    out = np.empty_like(images_u8)
    wire = precision == "int8"
    for i, img in enumerate(images_u8):
        out[i] = dec.decode(enc.encode(img)) if wire else dec.decode_latent(enc.encode_latent(img))
    return out


@dataclass
class _Inputs:
    """What the export steps share: the run, the data, and the int8 encoder's training latents."""

    encoder: Any
    decoder: Any
    config: RunConfig
    ds: datasets.Dataset
    calib: np.ndarray
    test: np.ndarray
    step: Progress
    latents: dict[bytes, np.ndarray] = field(default_factory=dict)
    """int8 encoder bytes → its latents of every training image (computed once per encoder)."""

    @property
    def qat(self) -> bool:
        """A ``train --qat`` run: trained through a simulation of PTQ without channel equalization."""
        return bool((self.config.train.get("rd") or {}).get("qat"))

    def equalize(self, opts: ExportOptions) -> bool:
        """Whether the conversion equalizes channels: as asked, except for a QAT run (its int8 model is
        the one its training simulated)."""
        return bool(opts.equalize) and not self.qat

    @property
    def round_latent(self) -> bool:
        """Rate-distortion models deploy a rounded latent: their float reference rounds too."""
        return self.config.rate_distortion

    def int8_train_latents(self, enc_q: bytes) -> np.ndarray:
        """The int8 encoder's latents of every training image, computed once per encoder."""
        from .convert import run_int8_encoder

        if enc_q not in self.latents:
            self.step(f"int8 latents of {len(self.ds.x_train)} training images", 0, 1)
            self.latents[enc_q] = run_int8_encoder(enc_q, self.ds.x_train)
        return self.latents[enc_q]


def export(opts: ExportOptions, progress: Progress | None = None) -> ExportResult:
    """Convert a training run into a verified bundle directory: calibrate, write, verify, commit.

    Args:
        opts: Export options.
        progress: Optional callback ``(what, done, total)``.

    Returns:
        The :class:`ExportResult`; the bundle is at ``opts.out_dir``.

    Raises:
        ExportError: bad run directory, output exists, non-int8 conversion, or int8 loss over the margin
            (then nothing is left at ``out_dir``).
        ConfigError: bad options.
    """
    opts.validate()
    out = Path(opts.out_dir)
    if out.exists() and not opts.overwrite:
        raise ExportError(f"{out}: already exists; choose another --out or pass --overwrite")
    inputs = _read_inputs(opts, progress or (lambda what, done, total: None))
    pair, adapted = calibrate(inputs, opts, progress)
    with staged_bundle(out) as tmp:
        manifest = write(tmp, inputs, pair, opts)
        loss = verify(tmp, manifest, inputs, pair, adapted, opts)
    return ExportResult(
        path=str(out),
        pair_id=manifest.pair_id,
        quality=manifest.quality,
        int8_loss_db=float(loss),
        sizes={name: e.bytes for name, e in manifest.files.items()},
        latent_quant=manifest.latent_quant.to_dict(),
    )


def _read_inputs(opts: ExportOptions, step: Progress) -> _Inputs:
    """Load the run and its dataset; draw the calibration images; pick the verification images."""
    step("loading run", 0, 1)
    encoder, decoder, config = load_run(opts.run_dir)
    user = config.data.get("user")
    if user:
        ds = _load_user_data(opts.run_dir, user)
    elif config.dataset not in PREPROCESS:
        raise ExportError(
            f"{opts.run_dir}/config.json: dataset {config.dataset!r} is not one of {sorted(PREPROCESS)}"
        )
    else:
        ds = datasets.load(config.dataset, opts.data_dir)
    rng = np.random.default_rng(opts.seed)
    calib = ds.x_train[
        np.sort(rng.choice(len(ds.x_train), size=min(opts.calib, len(ds.x_train)), replace=False))
    ]
    test = ds.x_test if opts.verify_limit is None else ds.x_test[: opts.verify_limit]
    return _Inputs(encoder, decoder, config, ds, calib, test, step)


def _load_user_data(run_dir: Path, user: dict) -> datasets.Dataset:
    """A user's frames, loaded as the run recorded (path, preprocessing, time split)."""
    from ..device.recording import load_user_dataset

    path = Path(str(user.get("path", "")))
    if not path.exists():
        raise ExportError(
            f"{run_dir}/config.json: the run was trained on {str(path)!r}, which is not there; export where "
            "the recording / images / video are, at the same path"
        )
    return load_user_dataset(
        path,
        preprocess=None if user.get("kind") == "recording" else user.get("preprocess"),
        test_fraction=float(user.get("test_fraction", 0.2)),
        gap=int(user.get("gap", 5)),
    )


def preprocess_block(ds: datasets.Dataset) -> dict:
    """The manifest's ``preprocess``: what the training frames went through (see :data:`PREPROCESS`)."""
    return dict(ds.user.preprocess) if ds.user is not None else dict(PREPROCESS[ds.name])


def calibrate(inputs: _Inputs, opts: ExportOptions, progress: Progress | None = None):
    """Full-integer PTQ of the pair (optionally adapting the decoder to the int8 encoder's latents).

    A rate-distortion run's latent is integer: its quantization is forced to scale 1, zero point 0.

    Returns:
        ``(pair, adaptation)``: the :class:`~cae_edge.export.convert.ConvertedPair` and the adaptation's
        result as a dict (empty without ``--adapt-decoder``).
    """
    from .convert import convert_pair

    latent_quant = opts.latent_quant or (QuantParams(1.0, 0) if inputs.config.rate_distortion else None)
    adapted: dict = {}

    def adapt(enc_q: bytes, lq: QuantParams):
        from .adapt import adapt_decoder

        latents = dequantize(inputs.int8_train_latents(enc_q), lq)
        model, res = adapt_decoder(inputs.decoder, latents, inputs.ds.x_train, opts.adapt_options, progress)
        adapted.update(res.to_dict())
        return model

    pair = convert_pair(
        inputs.encoder,
        inputs.decoder,
        inputs.config.model,
        inputs.calib,
        latent_quant,
        progress,
        adapt if opts.adapt_epochs else None,
        bias_correction=opts.bias_correction,
        percentile=opts.calib_percentile,
        equalize=inputs.equalize(opts),
        range_search=opts.range_search,
    )
    return pair, adapted


def write(tmp: Path, inputs: _Inputs, pair, opts: ExportOptions) -> Manifest:
    """Write the four .tflite files, the entropy model of an entropy-coded run, and the manifest."""
    cfg, ds = inputs.config.model, inputs.ds
    blobs = {
        "encoder": pair.encoder,
        "decoder": pair.decoder,
        "encoder_float": pair.encoder_float,
        "decoder_float": pair.decoder_float,
    }
    for key, data in blobs.items():
        (tmp / DEFAULT_FILES[key]).write_bytes(data)
    files = {DEFAULT_FILES[k]: file_entry(tmp / DEFAULT_FILES[k]) for k in blobs}
    coding, bytes_per_image = {"kind": "int8"}, float(cfg.latent_dim)
    if (inputs.config.rd or {}).get("coding") == "entropy":
        from ..entropy import ENTROPY_FILE, write_bundle_coding
        from .convert import run_int8_encoder

        inputs.step("fitting the entropy model on int8 training latents", 0, 1)
        q_train = inputs.int8_train_latents(pair.encoder)
        coding, bytes_per_image = write_bundle_coding(
            tmp, q_train, run_int8_encoder(pair.encoder, inputs.test)
        )
        files[ENTROPY_FILE] = file_entry(tmp / ENTROPY_FILE)
    manifest = Manifest(
        pair_id="",  # from the files, below
        latent_dim=cfg.latent_dim,
        latent_quant=pair.latent_quant,
        models={k: _model_spec(DEFAULT_FILES[k], d) for k, d in blobs.items()},
        files=files,
        preprocess=preprocess_block(ds),
        dataset={
            "name": ds.name,
            "source": ds.source_name,
            "split": ds.split,
            "calibration": f"{len(inputs.calib)} training images of {ds.source_name}, seed {opts.seed}",
            **({"photographs": ds.credits} if ds.credits else {}),
        },
        train=inputs.config.to_dict(),
        bytes_per_image=int(round(bytes_per_image)),  # exact mean: coding["bytes_mean"]
        coding=coding,
        command=opts.command,
        created_by=f"cae-edge {__version__}",
    )
    manifest.pair_id = manifest.expected_pair_id()
    manifest.write(tmp)
    return manifest


def verify(tmp: Path, manifest: Manifest, inputs: _Inputs, pair, adapted: dict, opts: ExportOptions) -> float:
    """Run the written bundle with the device runtime over the test images; record the quality.

    Returns:
        The int8 pair's PSNR loss (dB) against the Keras float models; ``manifest.quality`` is set and
        the manifest rewritten.

    Raises:
        ExportError: the loss is over ``opts.margin_db``.
    """
    from ..device.bundle import load_bundle

    step, test = inputs.step, inputs.test
    step(f"verifying on {len(test)} test images", 0, 3)
    rounded = inputs.round_latent
    keras_rec = to_uint8(
        encoder_decoder_predict(inputs.encoder, pair.decoder_model, test, round_latent=rounded)
    )
    bundle = load_bundle(tmp)
    q: dict[str, Any] = {"keras_float": quality(test, keras_rec)}
    if adapted:  # the float pair before adaptation, so the note can say what adaptation cost float
        before = to_uint8(encoder_decoder_predict(inputs.encoder, inputs.decoder, test, round_latent=rounded))
        q["decoder_adaptation"] = {**adapted, "keras_float_before": quality(test, before)}
    step("TFLite float pair", 1, 3)
    q["tflite_float"] = quality(test, reconstruct(bundle, test, "float"))
    step("TFLite int8 pair", 2, 3)
    q["tflite_int8"] = quality(test, reconstruct(bundle, test, "int8"))
    if pair.bias_correction:
        q["encoder_bias_correction"] = pair.bias_correction
    q["channel_equalization"] = inputs.equalize(opts)
    if pair.range_search:
        q["range_search"] = pair.range_search
    q["n_images"] = int(len(test))
    q["split"] = "test" if opts.verify_limit is None else f"test[:{len(test)}]"
    step("verified", 3, 3)
    loss = q["keras_float"]["psnr"] - q["tflite_int8"]["psnr"]
    q["int8_loss_db"] = float(loss)
    q["margin_db"] = float(opts.margin_db)
    if loss > opts.margin_db:
        raise ExportError(
            f"int8 pair loses {loss:.2f} dB PSNR vs Keras float ({q['tflite_int8']['psnr']:.2f} vs "
            f"{q['keras_float']['psnr']:.2f} dB on {len(test)} test images), "
            f"over the {opts.margin_db} dB margin; "
            "try more calibration images (--calib) or a larger --margin"
        )
    manifest.quality = q
    manifest.write(tmp)
    load_bundle(tmp)  # the final manifest verifies too
    return float(loss)


@contextmanager
def staged_bundle(out: Path, copy_from: Path | None = None, keep_out: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write a bundle into ``OUT.tmp`` and move it to ``out`` (replacing an older one) only if the block
    finishes; on any error the staging directory is removed and ``out`` is left as it was.

    Args:
        out: the bundle directory to write.
        copy_from: a bundle directory whose files (except ``manifest.json`` and ``keep_out``) are copied into
            the staging directory first: a rewrite that replaces only some files (``readapt``, ``recode``).
        keep_out: file names not to copy.
    """
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if copy_from is not None:
            for path in sorted(Path(copy_from).iterdir()):
                if path.is_file() and path.name not in (MANIFEST_NAME, *keep_out):
                    shutil.copyfile(path, tmp / path.name)
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def encoder_decoder_predict(
    encoder, decoder, images_u8: np.ndarray, batch_size: int = 500, round_latent: bool = False
) -> np.ndarray:
    """Keras float reconstruction of uint8 images → float images in [0, 1], shape (N, 28, 28).

    ``round_latent`` rounds the latent to integers in int8 range first (rate-distortion models, whose
    decoder was trained on exactly that)."""
    x = (np.asarray(images_u8, np.float32) / 255.0)[..., None]
    z = encoder.predict(x, batch_size=batch_size, verbose=0)
    if round_latent:
        z = np.clip(np.rint(z), -128, 127).astype(np.float32)
    return decoder.predict(z, batch_size=batch_size, verbose=0)[..., 0]
