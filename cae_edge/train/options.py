"""Options of a training run, plain or rate-distortion: one dataclass, checked before TensorFlow is imported.

A plain run (:func:`cae_edge.train.train.train`) minimises MSE with a float latent; a rate-distortion run
(:func:`cae_edge.train.ratedistortion.train_rd`) is the same options with :attr:`TrainOptions.rd` set. Values
left ``None`` take the defaults of the kind of run, and for a ``--preset`` run the preset's
(:mod:`cae_edge.presets`): explicitly given values always win.

The data is MNIST, Fashion-MNIST, or a user's own frames (``device/recording.py``: a recording directory,
a folder of images or a video file, split by time). ``init_from`` starts from an earlier run or a bundle
(:mod:`cae_edge.train.from_bundle`): the run takes its architecture, is rate-distortion when it was, and
takes its rate weight and byte target, with short fine-tuning defaults (:data:`FINETUNE_DEFAULTS`).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

from .. import datasets
from .. import presets as presets_mod
from ..device import recording
from ..errors import ConfigError
from ..rundir import ModelConfig
from .from_bundle import StartPoint, read_start
from .noise import DEFAULT_AMOUNT, NoiseKind, check_amount, noise_kind

INITS = ("he", "keras")
"""Accepted values of :attr:`TrainOptions.init`."""

RD_LATENT_GAIN = 8.0
"""Initial latent spread (see ``ModelConfig.latent_gain``) of rate-distortion runs without a preset."""


class LrDecay(str, Enum):
    """Learning-rate schedule over the whole run."""

    COSINE = "cosine"
    EXPONENTIAL = "exponential"
    NONE = "none"


@dataclass(frozen=True)
class Defaults:
    """Values a run takes for options left ``None`` (a preset's values come first)."""

    latent_dim: int
    epochs: int
    batch_size: int
    learning_rate: float


PLAIN_DEFAULTS = Defaults(latent_dim=128, epochs=10, batch_size=128, learning_rate=3e-3)
"""Plain runs. 3e-3 with the cosine decay: 10 MNIST epochs at latent 128 reach ~22 dB test PSNR
(1e-3: ~20.4 dB; 5e-3: ~22.3 dB)."""
RD_DEFAULTS = Defaults(latent_dim=64, epochs=20, batch_size=64, learning_rate=2e-3)
"""Rate-distortion runs without a preset."""
FINETUNE_DEFAULTS = Defaults(latent_dim=0, epochs=5, batch_size=64, learning_rate=5e-4)
"""Runs that start from ``init_from`` (the latent dim is the start's): a few epochs at a small rate, so a
shipped bundle adapts to a user's own frames in minutes on a CPU."""


DISTORTIONS = ("mse", "psnr")
"""Distortion terms of the rate-distortion loss (:attr:`RDOptions.distortion`)."""


@dataclass
class RDOptions:
    """What makes a run rate-distortion (integer latent, learned prior, entropy-coded bundle)."""

    preset: str | None = None
    """Preset name (``tiny``, ``small``, ``hq``): fills model, lam, target, epochs, batch and learning
    rate; explicitly given values override it."""
    lam: float | None = None
    """Rate weight (loss = MSE on the 0-255 scale + lam * bits/image); larger = fewer bytes.
    None: the preset's, else 1."""
    target_bytes: float | None = None
    """Steer ``lam`` during training so the rounded latent costs about this many bytes per image under the
    learned prior (a multiplicative controller on ``lam``); None: the preset's; 0 keeps ``lam`` fixed."""
    latent_jitter: float = 0.0
    """Std of Gaussian noise added to the latent before rounding on the decoder's path (latent units). About
    0.2 mimics the int8 encoder, which moves ~30 % of latent values by +-1, so the decoder learns to
    tolerate it."""
    max_test: int | None = None
    """Evaluate on at most this many test images (None: the full test split)."""
    latent_scale: float = 1.0
    """With ``init_from``: multiply the start's latent by this before training (the encoder's last Dense
    layers and the prior scaled up, the decoder's first Dense layers down: the same float pair, a finer
    integer grid). Above 1 the latent costs about ``latent_dim * log2(latent_scale)`` more bits and rounds
    with less error: a start moved up the rate-distortion curve, where lowering ``lam`` no longer raises
    the rate."""
    distortion: str = "mse"
    """What the rate-distortion loss counts as distortion: ``mse``, the MSE of all the batch's pixels
    together; or ``psnr``, each image's own log MSE (the same gradient scale on average), which is what the
    benchmark's figure, the mean over images of each one's PSNR, rewards: an image already reconstructed
    well weighs as much in dB as a hard one, instead of less in squared error."""
    qat: bool = False
    """Quantization-aware fine-tuning (:mod:`cae_edge.train.qat`): train through the int8 model's weight and
    activation rounding so the int8 encoder's latents are the ones the decoder learned. Needs ``init_from``
    (a trained run or bundle); not for ``linear_skip`` (scenes) models."""


@dataclass
class TrainOptions:
    """Everything that defines a training run. ``to_command()`` gives the CLI line that reproduces it."""

    dataset: str = "mnist"
    """``mnist`` or ``fashion`` (aliases like ``fashion-mnist`` accepted), or the path of a user's own frames:
    a recording directory (``cae-edge data record``), a folder of images or a video file."""
    latent_dim: int | None = None
    """Length of the latent vector, >= 1 (bytes per image as plain int8; an upper bound for rate-distortion).
    None: 128; rate-distortion: the preset's, else 64."""
    enc_widths: tuple[int, int, int] | None = None
    """Encoder filter counts (see :class:`ModelConfig`); None keeps the preset's or the model's default."""
    dec_widths: tuple[int, int, int] | None = None
    """Decoder filter counts (see :class:`ModelConfig`); None keeps the preset's or the model's default."""
    head: str | None = None
    """Decoder output head, ``convt`` or ``d2s`` (see :class:`ModelConfig`); None keeps the start's (with
    its head width ``dec_widths[2]``, also under a preset: ``--preset hq --init-from mnist-hq``), else the
    preset's or the model's default (``convt``)."""
    epochs: int | None = None
    """Passes over the training images, >= 1. None: 10; rate-distortion: the preset's, else 20."""
    batch_size: int | None = None
    """Images per Adam step, >= 1. None: 128; rate-distortion: the preset's, else 64."""
    learning_rate: float | None = None
    """Initial Adam learning rate, > 0. None: 3e-3 (cosine decay to 5 %); rate-distortion: the preset's,
    else 2e-3 (cosine decay to 2 %)."""
    lr_decay: str = "cosine"
    """``cosine``, ``exponential`` (both end at 5 % of the initial rate) or ``none``. Plain runs only."""
    noise: str = "none"
    """Denoising: ``none``, ``gaussian`` or ``salt-pepper``; input corrupted, target kept clean. Plain runs
    only."""
    noise_amount: float | None = None
    """Gaussian sigma (0-1 scale) or salt-and-pepper pixel fraction; None picks 0.2 / 0.05."""
    augment: bool | None = None
    """Random small shifts/rotations of training images; None = on for small sets (the 8,000 MNIST digits)."""
    seed: int = 0
    """Seeds numpy, Python and TensorFlow (data split, augmentation, noise, initial weights)."""
    out_dir: str | None = None
    """Run directory; None means ``runs/<dataset>-latent<latent_dim>`` (rate-distortion:
    ``runs/<dataset>-<preset or rd>``)."""
    max_samples: int | None = None
    """Use at most this many training-split images (before the validation hold-out), for quick runs."""
    data_dir: str | None = None
    """Directory with the IDX ``.gz`` files, tried before the standard places."""
    val_fraction: float = 0.1
    """Fraction of the training images held out for validation loss, in [0, 0.5]. Plain runs only."""
    init: str = "he"
    """Conv kernel initialisation: ``he`` (He-normal, re-drawn after building) or ``keras`` (as built).
    With the builder's Glorot kernels the signal shrinks ~1000x through the decoder and Adam drives the
    sigmoid output to all-black within an epoch (test PSNR stuck near 10 dB); He-normal trains. Plain
    runs only."""
    threads: int | None = None
    """TensorFlow threads (intra-op and inter-op pools), >= 1; None: every core this process may use.
    Set it lower to train several runs side by side. Fixed for the life of the process once TensorFlow
    has started (a second run in the same process keeps the first run's pools)."""
    rd: RDOptions | None = None
    """Rate-distortion training (:mod:`cae_edge.train.ratedistortion`); None for a plain run."""
    init_from: str | None = None
    """Start from the weights of an earlier run directory or of a bundle (shipped name or directory), same
    architecture: fine-tuning. A rate-distortion start makes a rate-distortion run and carries its prior."""
    test_fraction: float = recording.TEST_FRACTION
    """User datasets: share of the frames, the latest by time, held out as the test split."""
    gap: int = recording.GAP_FRAMES
    """User datasets: frames dropped between the training and the test split."""

    # ---- the data and the starting point ------------------------------------------------------------

    @property
    def user_data(self) -> bool:
        """True when :attr:`dataset` is a path (a user's own frames), not a dataset name."""
        return recording.is_user_dataset(self.dataset)

    def start(self) -> StartPoint | None:
        """What :attr:`init_from` names (read from JSON, no Keras), or None.

        Raises:
            ConfigError: it is neither a run directory nor a bundle.
        """
        return None if self.init_from is None else read_start(self.init_from)

    def _family(self) -> str:
        """The dataset whose preset values apply: the named one; a user's frames: the start's, else mnist."""
        if not self.user_data:
            return datasets.canonical_name(self.dataset)
        start = self.start()
        if start is not None and not recording.is_user_dataset(start.dataset):
            return datasets.canonical_name(start.dataset)
        return "mnist"

    # ---- resolution ---------------------------------------------------------------------------------

    def _preset(self) -> presets_mod.Preset | None:
        return presets_mod.resolve(self.rd.preset) if self.rd is not None and self.rd.preset else None

    def _defaults(self) -> Defaults:
        """The values of unset options: the preset's, else those of the kind of run."""
        preset = self._preset()
        if self.init_from is not None and preset is None:
            return FINETUNE_DEFAULTS
        if self.rd is None:
            return PLAIN_DEFAULTS
        if preset is None:
            return RD_DEFAULTS
        name = self._family()
        return Defaults(
            preset.model_for(name).latent_dim,
            preset.epochs_for(name),
            preset.batch_size,
            preset.learning_rate,
        )

    def model_config(self) -> ModelConfig:
        """The :class:`ModelConfig` these options describe (validated).

        Raises:
            ConfigError: latent dim < 1 or bad widths.
        """
        start = self.start()
        preset = self._preset()
        if start is not None and preset is None:
            base = start.model
        elif self.rd is None:
            base = ModelConfig()
        else:
            base = preset.model_for(self._family()) if preset else ModelConfig(latent_gain=RD_LATENT_GAIN)
        dflt = base.latent_dim if start is not None and preset is None else self._defaults().latent_dim
        latent = dflt if self.latent_dim is None else self.latent_dim
        kw: dict[str, Any] = {"latent_dim": _as_int(latent, "latent dim")}
        if self.enc_widths is not None:
            kw["enc_widths"] = tuple(int(w) for w in self.enc_widths)
        if self.dec_widths is not None:
            kw["dec_widths"] = tuple(int(w) for w in self.dec_widths)
        if self.head is not None:
            kw["head"] = str(getattr(self.head, "value", self.head))
        elif start is not None and preset is not None and start.model.head != base.head:
            # a preset names the architecture but not the head a start was given later (`readapt --head`)
            kw["head"] = start.model.head
            if self.dec_widths is None:
                kw["dec_widths"] = (*base.dec_widths[:2], start.model.dec_widths[2])
        return replace(base, **kw).validate()

    def validated(self) -> TrainOptions:
        """A copy with names canonicalised, unset values filled in and every value checked.

        ``augment=None`` stays None here (it depends on the data); training resolves it. A rate-distortion
        start (``init_from``) makes a rate-distortion run.

        Raises:
            ConfigError: with the bad value and what is allowed (a user dataset path must exist here; its
                content is checked when the data is loaded).
        """
        start = self.start()
        if start is not None and start.rd and self.rd is None:
            return replace(self, rd=RDOptions()).validated()
        name = str(self.dataset) if self.user_data else datasets.canonical_name(self.dataset)
        if self.user_data and not Path(name).expanduser().exists():
            raise ConfigError(
                f"unknown dataset {name!r}: use one of {', '.join(datasets.DATASETS)}, or the path of a "
                "recording (`cae-edge data record`), a folder of images or a video file"
            )
        cfg = self.model_config()
        if start is not None and cfg != start.model:
            raise ConfigError(
                f"--init-from {start.name}: its model {start.model.to_dict()} is not {cfg.to_dict()}; "
                "leave out --latent / --enc-widths / --dec-widths / --head / --preset to take the start's "
                "(a new head on a bundle's decoder: `cae-edge readapt BUNDLE --head ...`)"
            )
        frac = float(self.test_fraction)
        if not 0.0 < frac <= 0.9:
            raise ConfigError(f"test fraction {self.test_fraction}: must be in (0, 0.9], e.g. 0.2")
        gap = _as_int(self.gap, "gap")
        if gap < 0:
            raise ConfigError(f"gap {self.gap}: must be >= 0 frames")
        dflt = self._defaults()
        epochs = _as_int(dflt.epochs if self.epochs is None else self.epochs, "epochs")
        if epochs < 1:
            raise ConfigError(f"epochs {self.epochs}: must be >= 1")
        batch = _as_int(dflt.batch_size if self.batch_size is None else self.batch_size, "batch size")
        if batch < 1:
            raise ConfigError(f"batch size {self.batch_size}: must be >= 1")
        lr = float(dflt.learning_rate if self.learning_rate is None else self.learning_rate)
        if not (math.isfinite(lr) and lr > 0):
            hint = "3e-3" if self.rd is None else "2e-3"
            raise ConfigError(f"learning rate {self.learning_rate}: must be > 0, e.g. {hint}")
        try:
            decay = LrDecay(str(getattr(self.lr_decay, "value", self.lr_decay)).lower())
        except ValueError:
            choices = ", ".join(d.value for d in LrDecay)
            raise ConfigError(f"unknown lr decay {self.lr_decay!r}: use one of {choices}") from None
        kind = noise_kind(self.noise)
        amount = DEFAULT_AMOUNT[kind] if self.noise_amount is None else float(self.noise_amount)
        if kind is not NoiseKind.NONE:
            amount = check_amount(kind, amount)
        cap = None if self.max_samples is None else _as_int(self.max_samples, "max samples")
        if cap is not None and cap < 1:
            raise ConfigError(f"max samples {self.max_samples}: must be >= 1 (or omit it to use all images)")
        val = float(self.val_fraction)
        if not 0.0 <= val <= 0.5:
            raise ConfigError(f"validation fraction {self.val_fraction}: must be in [0, 0.5]")
        threads = None if self.threads is None else _as_int(self.threads, "threads")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads {self.threads}: must be >= 1 (or omit it to use every core)")
        init = str(self.init).strip().lower()
        if init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}: use one of {', '.join(INITS)}")
        rd = None if self.rd is None else self._validated_rd(start)
        stem = Path(name).stem if self.user_data else name
        if self.out_dir is not None:
            out = str(self.out_dir)
        elif rd is None:
            out = str(Path("runs") / f"{stem}-latent{cfg.latent_dim}")
        else:
            out = str(Path("runs") / f"{stem}-{rd.preset or 'rd'}")
        keep = rd is not None  # rate-distortion runs record their widths (the preset's or the model's)
        return replace(
            self,
            dataset=name,
            latent_dim=cfg.latent_dim,
            enc_widths=cfg.enc_widths if self.enc_widths is not None or keep else None,
            dec_widths=cfg.dec_widths if self.dec_widths is not None or keep else None,
            head=None if self.head is None else cfg.head,
            epochs=epochs,
            batch_size=batch,
            learning_rate=lr,
            lr_decay=decay.value,
            noise=kind.value,
            noise_amount=amount if kind is not NoiseKind.NONE else None,
            augment=None if self.augment is None else bool(self.augment),
            seed=_as_int(self.seed, "seed"),
            out_dir=out,
            max_samples=cap,
            data_dir=None if self.data_dir is None else str(self.data_dir),
            val_fraction=val,
            init=init,
            threads=threads,
            rd=rd,
            init_from=None if self.init_from is None else str(self.init_from),
            test_fraction=frac,
            gap=gap,
        )

    def _validated_rd(self, start: StartPoint | None) -> RDOptions:
        rd = self.rd
        assert rd is not None
        preset = self._preset()
        begun = (start.rd or {}) if start is not None else {}
        if rd.lam is not None:
            lam = rd.lam
        elif preset:
            lam = preset.lam_for(self._family())
        else:
            lam = begun.get("lam_final", begun.get("lam", 1.0))
        if rd.target_bytes is not None:
            target = rd.target_bytes
        else:
            target = preset.target_for(self._family()) if preset else begun.get("target_bytes", 0.0)
        if not (math.isfinite(float(target)) and float(target) >= 0):
            raise ConfigError(f"target bytes {target}: must be >= 0 (0 = fixed lam)")
        if not (math.isfinite(float(lam)) and float(lam) >= 0):
            raise ConfigError(f"lam {lam}: must be >= 0 (0 = no rate term)")
        max_test = None if rd.max_test is None else _as_int(rd.max_test, "max test")
        if max_test is not None and max_test < 1:
            raise ConfigError(f"max test {rd.max_test}: must be >= 1 (or omit it)")
        jitter = float(rd.latent_jitter)
        if not (math.isfinite(jitter) and jitter >= 0):
            raise ConfigError(f"latent jitter {rd.latent_jitter}: must be >= 0 (0 = off)")
        scale = float(rd.latent_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"latent scale {rd.latent_scale}: must be > 0 (1 = as trained)")
        if scale != 1.0 and start is None:
            raise ConfigError(
                f"--latent-scale {rd.latent_scale} rescales a trained model's latent: add --init-from "
                "RUN_OR_BUNDLE (e.g. --init-from mnist-xl)"
            )
        if rd.distortion not in DISTORTIONS:
            raise ConfigError(
                f"distortion {rd.distortion!r}: must be one of {', '.join(DISTORTIONS)} "
                "(psnr: each image's log MSE, the benchmark's mean per-image PSNR)"
            )
        if rd.qat and start is None:
            raise ConfigError(
                "--qat fine-tunes a trained model through int8 rounding: add --init-from RUN_OR_BUNDLE "
                "(e.g. --init-from mnist-hq)"
            )
        return replace(
            rd,
            preset=preset.name if preset else None,
            lam=float(lam),
            target_bytes=float(target),
            latent_jitter=jitter,
            max_test=max_test,
            latent_scale=scale,
            qat=bool(rd.qat),
            distortion=str(rd.distortion),
        )

    # ---- (de)serialisation --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-friendly dict of all fields (tuples become lists; ``rd`` a dict or None)."""
        d = asdict(self)
        for k in ("enc_widths", "dec_widths"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainOptions:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        known = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for k in ("enc_widths", "dec_widths"):
            if known.get(k) is not None:
                known[k] = tuple(int(w) for w in known[k])
        if isinstance(known.get("rd"), dict):
            if known["rd"].get("init_from") and not known.get("init_from"):  # recorded there before
                known["init_from"] = known["rd"]["init_from"]
            known["rd"] = RDOptions(
                **{f.name: known["rd"][f.name] for f in fields(RDOptions) if f.name in known["rd"]}
            )
        return cls(**known)

    def to_command(self) -> str:
        """The ``cae-edge train`` command line that reproduces these options."""
        return shlex.join(self._rd_args() if self.rd is not None else self._plain_args())

    def _plain_args(self) -> list[str]:
        args = ["cae-edge", "train", "--dataset", self.dataset, "--latent", str(self.latent_dim)]
        args += ["--epochs", str(self.epochs), "--batch-size", str(self.batch_size)]
        args += ["--lr", f"{self.learning_rate:g}", "--lr-decay", _value(self.lr_decay)]
        args += ["--noise", _value(self.noise)]
        if self.noise_amount is not None and _value(self.noise) != "none":
            args += ["--noise-amount", f"{self.noise_amount:g}"]
        if self.augment is not None:
            args.append("--augment" if self.augment else "--no-augment")
        if self.enc_widths is not None:
            args += ["--enc-widths", ",".join(str(w) for w in self.enc_widths)]
        if self.dec_widths is not None:
            args += ["--dec-widths", ",".join(str(w) for w in self.dec_widths)]
        if self.head is not None:
            args += ["--head", str(self.head)]
        args += [
            "--seed",
            str(self.seed),
            "--val-fraction",
            f"{self.val_fraction:g}",
            "--init",
            str(self.init),
        ]
        if self.max_samples is not None:
            args += ["--max-samples", str(self.max_samples)]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        args += self._data_args()
        if self.out_dir is not None:
            args += ["--out", str(self.out_dir)]
        return args

    def _data_args(self) -> list[str]:
        """``--init-from``, the time split of a user dataset and ``--data-dir``."""
        args = []
        if self.init_from:
            args += ["--init-from", str(self.init_from)]
        if self.user_data:
            args += ["--test-fraction", f"{self.test_fraction:g}", "--gap", str(self.gap)]
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        return args

    def _rd_args(self) -> list[str]:
        rd = self.rd
        assert rd is not None
        args = ["cae-edge", "train", "--dataset", self.dataset]
        if rd.preset:
            args += ["--preset", rd.preset]
        args += ["--latent", str(self.latent_dim), "--lam", repr(rd.lam), "--epochs", str(self.epochs)]
        if rd.target_bytes:
            args += ["--target-bytes", repr(rd.target_bytes)]
        args += ["--enc-widths", ",".join(map(str, self.enc_widths or ()))]
        args += ["--dec-widths", ",".join(map(str, self.dec_widths or ()))]
        if self.head is not None:
            args += ["--head", str(self.head)]
        args += [
            "--batch-size",
            str(self.batch_size),
            "--lr",
            repr(self.learning_rate),
            "--seed",
            str(self.seed),
        ]
        if self.augment is not None:
            args.append("--augment" if self.augment else "--no-augment")
        if self.max_samples is not None:
            args += ["--max-samples", str(self.max_samples)]
        if rd.latent_jitter:
            args += ["--latent-jitter", repr(rd.latent_jitter)]
        if rd.latent_scale != 1.0:
            args += ["--latent-scale", repr(rd.latent_scale)]
        if rd.qat:
            args.append("--qat")
        if rd.distortion != "mse":
            args += ["--distortion", rd.distortion]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        args += self._data_args()
        args += ["--out", str(self.out_dir)]
        return args


def _value(choice: Any) -> str:
    return str(getattr(choice, "value", choice))


def _as_int(value: Any, what: str) -> int:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r}: must be an integer") from None
    if not as_float.is_integer():
        raise ConfigError(f"{what} {value!r}: must be an integer")
    return int(as_float)
