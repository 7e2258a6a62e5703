"""The training run directory: the one contract between ``cae-edge train`` and what reads its output.

No TensorFlow at import: export and presets use the model config, the file names and the ``config.json``
schema without it; only :func:`load_run` imports Keras (and :func:`write_run` calls ``.save`` on the models).

::

    cae-edge train ──► write_run ──► RUN/encoder.keras   RUN/decoder.keras   RUN/config.json
                                     RUN/history.json    RUN/metrics.json    RUN/loss.png   RUN/recon.png
    cae-edge export, train --init-from ──► load_run (models + RunConfig) / read_config (RunConfig only)

``config.json`` has one schema (:class:`RunConfig`) for plain and rate-distortion runs::

    dataset    "mnist" | "fashion"
    model      ModelConfig (the architecture)
    train      the resolved TrainOptions; a rate-distortion run has them under train["rd"]
    command    the `cae-edge train` line that reproduces the run
    data       dataset name, source (a name, no machine paths), split and the image counts used
    device     where TensorFlow trained
    versions   cae_edge, keras, tensorflow
    created    UTC time stamp
    rd         rate-distortion runs only: lam, lam_final, target_bytes, preset, distortion,
               latent_quantization, coding, prior (the learned factorized prior)

Run directories written before this schema are read too: a rate-distortion run recorded ``dataset_source``,
``dataset_split``, ``version``, ``tensorflow`` at the top and its options under ``rd.options`` (shipped
manifests and ``scripts/make-bundles.sh`` refer to such runs).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .datasets import source_name
from .errors import ConfigError, RunDirError

ENCODER_FILE = "encoder.keras"
DECODER_FILE = "decoder.keras"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
LOSS_PLOT = "loss.png"
RECON_PLOT = "recon.png"

RUN_FILES = (ENCODER_FILE, DECODER_FILE, CONFIG_FILE, HISTORY_FILE, METRICS_FILE, LOSS_PLOT, RECON_PLOT)
"""Files every run directory holds."""

MODEL_FILES = (CONFIG_FILE, ENCODER_FILE, DECODER_FILE)
"""Files :func:`load_run` needs."""

HEADS = ("convt", "d2s")
"""Decoder output heads (:attr:`ModelConfig.head`)."""


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of the autoencoder. Everything the builders need, nothing about training."""

    latent_dim: int = 128
    """Length of the latent vector (bytes per image for a plain int8 latent). Any size >= 1."""
    enc_widths: tuple[int, int, int] = (32, 32, 16)
    """Filters of encoder conv layers 2-3 (w1), 4 (w2) and the 1x1 bottleneck conv (b)."""
    dec_widths: tuple[int, int, int] = (32, 32, 16)
    """Filters of decoder transposed convs d0 (3x3 seed), d1 (14x14) and d2 (28x28)."""
    leaky_alpha: float = 0.2
    """Negative slope of LeakyReLU."""
    latent_gain: float = 1.0
    """Initial scale of the latent: the encoder's last Dense layer starts ``latent_gain`` times larger than
    Glorot and the decoder's first Dense layer that much smaller. Rate-distortion models use an integer
    latent (rounded during training), which needs a spread of several units from the first step."""
    linear_skip: bool = False
    """Add a linear path around the convolutions on both sides (pixels → latent, latent → image logits)."""
    head: str = "convt"
    """Decoder output head. ``convt``: ConvT d2 14→28, then ConvT 1 at 28x28 (the first bundles). ``d2s``:
    Conv d2 (3x3) at 14x14, Conv 4 (3x3), sigmoid, depth-to-space 2 → 28x28x1: no 1-channel tensor next to a
    conv, the int8 preset decoders in 20 µs instead of 32 (docs/latency.md, :mod:`cae_edge.train.model`)."""

    def validate(self) -> ModelConfig:
        """Check every field; return self.

        Raises:
            ConfigError: latent dim < 1, latent gain <= 0, widths that are not three positive counts, or an
                unknown decoder head.
        """
        if int(self.latent_dim) < 1:
            raise ConfigError(f"latent dim {self.latent_dim}: must be >= 1")
        if not float(self.latent_gain) > 0:
            raise ConfigError(f"latent gain {self.latent_gain}: must be > 0")
        for name, widths in (("enc_widths", self.enc_widths), ("dec_widths", self.dec_widths)):
            if len(widths) != 3 or any(int(w) < 1 for w in widths):
                raise ConfigError(f"{name} {widths!r}: need three positive filter counts")
        if self.head not in HEADS:
            raise ConfigError(f"decoder head {self.head!r}: must be one of {', '.join(HEADS)}")
        return self

    def to_dict(self) -> dict:
        """JSON form; ``linear_skip`` only when set and ``head`` only when not ``convt``, so configs of models
        without them read (and hash) as before."""
        d = asdict(self)
        if not d["linear_skip"]:
            del d["linear_skip"]
        if d["head"] == "convt":
            del d["head"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict` (unknown keys ignored); validated."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("enc_widths", "dec_widths"):
            if k in known:
                known[k] = tuple(int(v) for v in known[k])
        return cls(**known).validate()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunConfig:
    """The content of ``config.json``. Item access (``config["model"]``) reads the JSON form."""

    dataset: str
    """Canonical dataset name."""
    model: ModelConfig
    """The architecture of ``encoder.keras`` / ``decoder.keras``."""
    train: dict = field(default_factory=dict)
    """The resolved training options (``TrainOptions.to_dict()``)."""
    command: str = ""
    """The ``cae-edge train`` line that reproduces the run."""
    data: dict = field(default_factory=dict)
    """Dataset name, source name, split and the image counts actually used."""
    device: str = ""
    """Where TensorFlow trained: ``GPU (<name>)`` or ``CPU``."""
    versions: dict = field(default_factory=dict)
    """Versions of cae_edge, keras and tensorflow that trained the run."""
    created: str = field(default_factory=_now)
    """UTC ISO time stamp."""
    rd: dict | None = None
    """Rate-distortion runs: lam, lam_final, target_bytes, preset, latent_quantization, coding, prior."""

    @property
    def rate_distortion(self) -> bool:
        """True for a rate-distortion run (integer latent, entropy-coded bundle)."""
        return bool(self.rd)

    def to_dict(self) -> dict:
        """The JSON form (``rd`` only for rate-distortion runs)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model.to_dict().items()}
        if self.rd is None:
            del d["rd"]
        return d

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    @classmethod
    def from_dict(cls, d: dict, where: str = CONFIG_FILE) -> RunConfig:
        """Parse ``config.json`` content, this schema or the older rate-distortion one.

        Raises:
            RunDirError: not an object, no ``dataset``, or a bad ``model`` (``where`` names the file).
        """
        if not isinstance(d, dict) or not d.get("dataset"):
            raise RunDirError(f"{where}: not a run config (no 'dataset'); train a run with `cae-edge train`")
        try:
            model = ModelConfig.from_dict(d.get("model") or {})
        except (ConfigError, TypeError, ValueError) as e:
            raise RunDirError(f"{where}: bad 'model' {d.get('model')!r} ({e})") from None
        rd = dict(d["rd"]) if isinstance(d.get("rd"), dict) and d["rd"] else None
        train = dict(d.get("train") or {})
        data = dict(d.get("data") or {})
        versions = dict(d.get("versions") or {})
        if rd is not None and "options" in rd:  # the rate-distortion schema before this one
            train["rd"] = rd.pop("options")
            data.setdefault("name", d["dataset"])
            for old, new in (("dataset_source", "source"), ("dataset_split", "split")):
                if old in d:
                    data.setdefault(new, d[old])
            for old, new in (("version", "cae_edge"), ("tensorflow", "tensorflow")):
                if old in d:
                    versions.setdefault(new, d[old])
        if "source" in data:
            data["source"] = source_name(data["source"])
        return cls(
            dataset=str(d["dataset"]),
            model=model,
            train=train,
            command=str(d.get("command", "")),
            data=data,
            device=str(d.get("device", "")),
            versions=versions,
            created=str(d.get("created", "")),
            rd=rd,
        )


# ---------------------------------------------------------------- the output directory


def check_out_dir(path: str | os.PathLike) -> Path:
    """Check that ``path`` is, or can become, a writable directory, without creating anything.

    Raises:
        ConfigError: the path is a file, sits under a file, or its nearest existing parent is not writable.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output dir {str(path)!r} is a file: choose a directory path for --out")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(
            f"output dir {str(path)!r}: {str(probe)!r} is not a directory; choose another --out"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output dir {str(path)!r}: {str(probe)!r} is not writable; choose another --out")
    return path


def make_out_dir(path: str | os.PathLike) -> Path:
    """Create the run directory (and parents) and prove it is writable.

    Raises:
        ConfigError: it cannot be created or written.
    """
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"output dir {str(path)!r} is not writable ({e.strerror}); choose another --out"
        ) from e
    return path


# ---------------------------------------------------------------- write and read


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_run(
    run_dir: str | os.PathLike, config: RunConfig, encoder, decoder, history: dict, metrics: dict
) -> Path:
    """Write the Keras models, ``config.json``, ``history.json`` and ``metrics.json`` (plots: train/plots).

    Returns:
        The run directory.
    """
    run = Path(run_dir)
    encoder.save(run / ENCODER_FILE)
    decoder.save(run / DECODER_FILE)
    _write_json(run / CONFIG_FILE, config.to_dict())
    _write_json(run / HISTORY_FILE, history)
    _write_json(run / METRICS_FILE, metrics)
    return run


def read_config(run_dir: str | os.PathLike) -> RunConfig:
    """Read and parse a run's ``config.json`` (no TensorFlow).

    Raises:
        RunDirError: the file is missing, unreadable or not a run config.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir}: missing {CONFIG_FILE}; make a run with `cae-edge train ... --out RUN`")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path}: unreadable ({e})") from None
    return RunConfig.from_dict(raw, str(path))


def load_run(run_dir: str | os.PathLike) -> tuple[Any, Any, RunConfig]:
    """Load a run directory's ``(encoder, decoder, config)``; imports Keras (models loaded uncompiled).

    Raises:
        RunDirError: a file of :data:`MODEL_FILES` is missing, or a file is unreadable.
    """
    run = Path(run_dir)
    missing = [n for n in MODEL_FILES if not (run / n).is_file()]
    if missing:
        raise RunDirError(
            f"{run}: missing {', '.join(missing)}; make a run with `cae-edge train ... --out RUN`"
        )
    config = read_config(run)
    import keras

    try:
        encoder = keras.models.load_model(run / ENCODER_FILE, compile=False)
        decoder = keras.models.load_model(run / DECODER_FILE, compile=False)
    except Exception as e:  # keras raises many types for a bad archive
        raise RunDirError(f"{run}: cannot load the Keras models ({type(e).__name__}: {e})") from None
    return encoder, decoder, config
