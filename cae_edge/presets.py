"""Named operating points of the codec: a small table mapping a preset name to everything that makes it.

No TensorFlow, and nothing from ``train/``: the table is data (the model config comes from
:mod:`cae_edge.rundir`); :mod:`cae_edge.train.options` reads it to fill a ``--preset`` run's options.

A preset fixes the architecture (:class:`~cae_edge.rundir.ModelConfig`), the rate-distortion weight
``lam`` of :mod:`cae_edge.train.ratedistortion` (per dataset: digits and clothes need different weights
for the same bytes), the training length, and the payload coding the bundle declares. The shipped bundle
of dataset ``D`` and preset ``P`` is ``cae_edge/bundles/D-P/``.

=======  ==============  ===========================================================
preset   byte budget     what it is for
=======  ==============  ===========================================================
tiny     <= 8 B/image    telemetry-grade thumbnails, a few bytes per frame
small    <= 32 B/image   4x fewer bytes than WebP's lowest quality, similar PSNR
hq       <= 128 B/image  WebP q1's bytes, several dB better
xl       <= 256 B/image  real scenes: WebP's low qualities (q10-q40) at fewer bytes;
                         digits and clothes: <= 128 B a frame on the wire (compact)
xxl      <= 256 B/image  digits and clothes: ~190 B, WebP q25-q50's quality at fewer bytes
=======  ==============  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import datasets
from .errors import ConfigError
from .rundir import ModelConfig


@dataclass(frozen=True)
class Preset:
    """One operating point (architecture + rate weight + schedule + coding)."""

    name: str
    """Preset name (``tiny``, ``small``, ``hq``)."""
    model: ModelConfig
    """Architecture; ``latent_dim`` is an upper bound, the rate term decides how many dimensions carry
    bits."""
    lam: dict[str, float]
    """Rate weight per dataset: loss = MSE (0-255 scale) + lam * bits per image."""
    epochs: dict[str, int]
    """Training epochs per dataset."""
    max_bytes: float
    """Byte budget per image this preset is tuned to stay under (mean over the test split)."""
    target_bytes: float = 0.0
    """Rate target the training steers ``lam`` to (bytes per image under the learned prior); 0 = fixed lam."""
    coding: str = "entropy"
    """Payload coding declared in the bundle manifest (``entropy`` or ``int8``)."""
    batch_size: int = 64
    """Images per Adam step."""
    learning_rate: float = 2e-3
    """Initial Adam learning rate (cosine decay to 2 %)."""
    description: str = ""
    """One line for ``--help`` and the README."""
    notes: dict[str, str] = field(default_factory=dict)
    """Free-form notes (where the numbers came from)."""
    models: dict[str, ModelConfig] = field(default_factory=dict)
    """Architecture per dataset where it differs from :attr:`model` (real scenes need more latent values)."""
    targets: dict[str, float] = field(default_factory=dict)
    """Rate target per dataset where it differs from :attr:`target_bytes`."""

    def model_for(self, dataset: str) -> ModelConfig:
        """Architecture for ``dataset`` (aliases accepted)."""
        return self.models.get(datasets.canonical_name(dataset), self.model)

    def target_for(self, dataset: str) -> float:
        """Rate target in bytes per image for ``dataset`` (aliases accepted)."""
        return self.targets.get(datasets.canonical_name(dataset), self.target_bytes)

    def lam_for(self, dataset: str) -> float:
        """Rate weight for ``dataset`` (aliases accepted)."""
        return self.lam[datasets.canonical_name(dataset)]

    def epochs_for(self, dataset: str) -> int:
        """Training epochs for ``dataset`` (aliases accepted)."""
        return self.epochs[datasets.canonical_name(dataset)]

    def to_dict(self) -> dict:
        """JSON-friendly description (for config.json and the manifest)."""
        return {
            "name": self.name,
            "model": self.model.to_dict(),
            "lam": dict(self.lam),
            "epochs": dict(self.epochs),
            "max_bytes": self.max_bytes,
            "target_bytes": self.target_bytes,
            "models": {k: m.to_dict() for k, m in self.models.items()},
            "targets": dict(self.targets),
            "coding": self.coding,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
        }


def _scenes(
    latent: int, enc: tuple[int, int, int], dec: tuple[int, int, int], head: str = "convt"
) -> ModelConfig:
    """A real-scenes architecture: the linear path around the convolutions learns a PCA-like code at once."""
    return ModelConfig(
        latent_dim=latent, enc_widths=enc, dec_widths=dec, latent_gain=8.0, linear_skip=True, head=head
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="tiny",
            model=ModelConfig(
                latent_dim=16, enc_widths=(32, 32, 16), dec_widths=(48, 48, 24), latent_gain=8.0
            ),
            lam={"mnist": 20.0, "fashion": 20.0, "scenes": 20.0},
            epochs={"mnist": 30, "fashion": 2, "scenes": 2},
            max_bytes=8.0,
            target_bytes=4.3,
            description="<= 8 bytes per image (MNIST target: >= 21.6 dB at <= 4.5 B)",
            models={"scenes": _scenes(16, (32, 32, 16), (48, 48, 24))},
        ),
        Preset(
            name="small",
            model=ModelConfig(
                latent_dim=48, enc_widths=(32, 32, 16), dec_widths=(48, 48, 24), latent_gain=8.0
            ),
            lam={"mnist": 4.0, "fashion": 4.0, "scenes": 4.0},
            epochs={"mnist": 30, "fashion": 3, "scenes": 3},
            max_bytes=32.0,
            target_bytes=31.0,
            description="<= 32 bytes per image",
            models={
                "scenes": _scenes(64, (32, 32, 16), (48, 48, 24)),
                # Clothes: the linear path too (14 + 14 more epochs: 24.00 dB int8 at 28.4 B against 23.02 at
                # 30.2 B without), aimed at <= 32 B a frame on the wire with --compact; wider convolutions
                # (48, 48, 32 / 64, 48, 48: 24.36 dB float at 27.4 B after 31 epochs where the narrower
                # 32, 32, 16 / 48, 48, 48 gave 24.14 at 28.4 B) and a target under 28 B.
                "fashion": _scenes(64, (48, 48, 32), (64, 48, 48), head="d2s"),
            },
            targets={"fashion": 27.6},
        ),
        Preset(
            name="hq",
            model=ModelConfig(
                latent_dim=96, enc_widths=(32, 32, 16), dec_widths=(48, 48, 24), latent_gain=8.0
            ),
            lam={"mnist": 1.0, "fashion": 1.0, "scenes": 1.0},
            epochs={"mnist": 30, "fashion": 4, "scenes": 3},
            max_bytes=128.0,
            target_bytes=124.0,
            description="<= 128 bytes per image",
            models={
                "scenes": _scenes(160, (32, 32, 32), (48, 48, 24)),
                # Clothes: the linear path (14 epochs: 26.15 dB int8 at 63 B against 24.51 at 69 B without).
                "fashion": _scenes(160, (32, 32, 32), (48, 48, 24), head="d2s"),
                # Digits too (4 x 60 epochs: 30.34 dB int8 at 69.8 B, int8 loss 0.07 dB, against 29.14 at
                # 72.8 B and 0.51 dB for the convolution-only model), for larger models (245 / 285 KB int8
                # against 63 / 125).
                "mnist": _scenes(160, (32, 32, 32), (48, 48, 24), head="d2s"),
            },
            # scenes + the 24-byte packet header: <= 128 B
            targets={"scenes": 100.0, "fashion": 66.0, "mnist": 73.0},
        ),
        Preset(
            name="xl",
            model=ModelConfig(
                latent_dim=256, enc_widths=(48, 48, 32), dec_widths=(64, 48, 24), latent_gain=8.0
            ),
            lam={"mnist": 0.25, "fashion": 0.25, "scenes": 0.25},
            epochs={"mnist": 10, "fashion": 24, "scenes": 3},
            max_bytes=256.0,
            target_bytes=190.0,
            description="<= 256 bytes per image (real scenes: WebP's low qualities at fewer bytes)",
            notes={"why": "natural scenes need more bits than digits or clothes for WebP-like PSNR"},
            models={
                "scenes": _scenes(256, (48, 48, 32), (64, 48, 24)),
                # Digits and clothes above hq: the linear path and its PCA start as for scenes (Fashion, 2
                # epochs: 27.1 dB at 102 B with it, 22.4 dB at 110 B without), depth-to-space head.
                "mnist": _scenes(256, (48, 48, 32), (64, 48, 24), head="d2s"),
                "fashion": _scenes(256, (48, 48, 32), (64, 48, 24), head="d2s"),
            },
            # 116 B under the prior: ~112 B coded, <= 120 B a frame on the wire with --compact (<= 8 B).
            targets={"mnist": 116.0, "fashion": 116.0},
        ),
        Preset(
            name="xxl",
            model=_scenes(512, (48, 48, 32), (64, 48, 24), head="d2s"),
            lam={"mnist": 0.25, "fashion": 0.25, "scenes": 0.25},
            epochs={"mnist": 20, "fashion": 12, "scenes": 3},
            max_bytes=256.0,
            target_bytes=192.0,
            description="<= 256 bytes per image (digits and clothes: WebP q25-q50's quality at fewer bytes)",
            notes={"why": "the curve above xl up to 200 B: the xl architecture with twice the latent"},
        ),
    )
}
"""All presets by name."""


def names() -> tuple[str, ...]:
    """Preset names, smallest budget first."""
    return tuple(PRESETS)


def resolve(name: str) -> Preset:
    """Look a preset up by name (case-insensitive).

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    key = str(name).strip().lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[key]
