"""Refit the entropy model of an entropy-coded bundle: same int8 models, same latents, new tables.

    bundle (int8 encoder) ─► int8 latents of the training split ─► fit_auto / fit_switched
        └─► entropy.npz, manifest coding (bytes measured on the test split), pair id ─► verified bundle

Needs LiteRT and the bundle's dataset, no TensorFlow. The decoded images do not change (the latents and the
decoder are the bundle's); the payload does, so the pair id of a switched model covers its tables
(:func:`cae_edge.manifest.pair_id`): nodes and receivers must both take the new bundle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .. import __version__, datasets
from ..entropy import ENTROPY_FILE, KIND, write_bundle_coding
from ..errors import ConfigError, ExportError
from ..manifest import file_entry
from .convert import run_int8_encoder
from .writer import staged_bundle


@dataclass
class RecodeOptions:
    """Options of :func:`recode_bundle`."""

    bundle: str | Path
    """Bundle directory (a Path) or shipped bundle name (a str) whose entropy model is refitted."""
    out_dir: Path
    """Bundle directory to write (may be the bundle itself with ``overwrite``)."""
    classes: int | None = None
    """Table sets: ``None`` chooses 1, 2, 4 or 8 on held-out training latents; 1 is one pooled set."""
    data_dir: Path | None = None
    """Directory with the IDX .gz files, tried first by :func:`cae_edge.datasets.load`."""
    overwrite: bool = False
    """Replace an existing output directory."""
    command: str = ""
    """How the refit was invoked, recorded in ``manifest.coding``."""

    def validate(self) -> RecodeOptions:
        if self.classes is not None and not 1 <= int(self.classes) <= 256:
            raise ConfigError(
                f"classes {self.classes}: choose 1 .. 256 table sets (or none: chosen on held-out latents)"
            )
        return self


@dataclass
class RecodeResult:
    """What :func:`recode_bundle` wrote and measured."""

    path: str
    pair_id: str
    coding: dict
    bytes_before: float
    bytes_after: float

    def to_dict(self) -> dict:
        return asdict(self)


def recode_bundle(opts: RecodeOptions, progress=None) -> RecodeResult:
    """Write ``opts.out_dir``: the bundle with its entropy model fitted again (see the module docstring).

    Raises:
        ConfigError: the bundle is not entropy-coded, or bad options.
        ExportError: the output exists (without ``overwrite``).
        BundleError / DataNotFoundError: the bundle or its dataset cannot be read.
    """
    from ..device.bundle import load_bundle, resolve_bundle

    opts.validate()
    step = progress or (lambda what, done, total: None)
    src = resolve_bundle(opts.bundle)
    old = load_bundle(src)
    manifest = old.manifest
    if manifest.coding.get("kind") != KIND:
        raise ConfigError(
            f"{src}: coding {manifest.coding.get('kind')!r}: only entropy-coded bundles have tables to refit "
            "(export a rate-distortion run for one)"
        )
    out = Path(opts.out_dir)
    if out.exists() and not opts.overwrite:
        if out.resolve() == Path(src).resolve():
            raise ExportError(f"{out} is the bundle itself: pass --overwrite to replace it")
        raise ExportError(f"{out}: already exists; choose another --out or pass --overwrite")
    ds = datasets.load(manifest.dataset["name"], opts.data_dir)
    encoder = old.model_bytes("encoder")
    step(f"int8 latents of {len(ds.x_train)} training images", 0, 2)
    q_train = run_int8_encoder(encoder, ds.x_train)
    step(f"int8 latents of {len(ds.x_test)} test images", 1, 2)
    q_test = run_int8_encoder(encoder, ds.x_test)
    before = dict(manifest.coding)
    with staged_bundle(out, copy_from=Path(src), keep_out=(ENTROPY_FILE,)) as tmp:
        step("fitting the entropy model", 0, 1)
        coding, bytes_per_image = write_bundle_coding(tmp, q_train, q_test, opts.classes)
        coding["refit"] = {
            "command": opts.command,
            "before": {k: before[k] for k in ("coder", "bytes_mean", "bits_ideal_mean") if k in before},
        }
        if "refit" in before:
            coding["refit"]["earlier"] = [*before["refit"].pop("earlier", []), before["refit"]]
        manifest.files = {**manifest.files, ENTROPY_FILE: file_entry(tmp / ENTROPY_FILE)}
        manifest.coding = coding
        manifest.bytes_per_image = int(round(bytes_per_image))
        manifest.pair_id = manifest.expected_pair_id()
        manifest.created_by = f"cae-edge {__version__}"
        manifest.write(tmp)
        load_bundle(tmp)  # sha256, pair id, tensors, codec
    return RecodeResult(
        str(out), manifest.pair_id, coding, float(before.get("bytes_mean", 0.0)), bytes_per_image
    )
