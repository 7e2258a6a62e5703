"""Re-adapt a bundle's decoder to the int8 latents of several kernel families; encoder and entropy model kept.

::

    BUNDLE/encoder.tflite ─ LiteRT XNNPACK ─┐
                          ─ LiteRT builtin ─┼─► int8 latents of the training images, one set per family
                          ─ tflite-micro   ─┘
    BUNDLE/decoder_float.tflite ─ weights ─► Keras decoder (cae_edge.train.model.build_decoder)
        ─ adapt_decoder on all sets at once (cae_edge.export.adapt) ─► convert_decoder (int8 PTQ, as export)
        ─► OUT/ = BUNDLE's encoder.tflite, encoder_float.tflite, entropy model (bytes unchanged)
                  + new decoder.tflite, decoder_float.tflite + manifest (files, pair id, quality)

Why: the int8 encoder's latents depend on the kernels that run it. XNNPACK's int8 LEAKY_RELU rounds
differently from the TFLite reference kernels (LiteRT builtin, tflite-micro), so 80 % of a rate-distortion
model's integer latents move by one or more steps between the two. A decoder adapted to XNNPACK's latents
only (``cae-edge export --adapt-decoder``) loses about 0.4 dB on a node that runs the reference kernels. A
decoder fine-tuned on the latents of every family decodes all of them about equally well. Only the decoder
changes: latents, payloads and the entropy model stay valid; the pair id changes (it hashes both models).

Works from the bundle alone (no training run directory): the float decoder's weights are read back from
``decoder_float.tflite``, whose numbers are the Keras decoder's.

With ``head`` the new decoder also gets another output head (``ModelConfig.head``; ``d2s``: the int8
decoder in 20 µs instead of 32, docs/latency.md)::

    old decoder: Dense ─ ConvT 3→7 ─ ConvT 7→14 ─ [convt head] ─► image
                   │ weights copied │          │
    new decoder: Dense ─ ConvT 3→7 ─ ConvT 7→14 ─ [d2s head, fresh] ─► image
        ─ head_epochs on the latents with the shared layers frozen (head_lr), then ``epochs`` on everything

The manifest's ``train.model`` then records the new head, which is how everything that reads the decoder
back (this module, ``train --init-from``) builds it.

TensorFlow is imported inside the functions only.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__, datasets
from ..errors import ConfigError, ExportError
from ..manifest import DEFAULT_FILES, Manifest, file_entry
from ..metrics import quality, to_uint8
from ..quant import dequantize
from ..rundir import HEADS, ModelConfig

Progress = Callable[[str, int, int], None]


@dataclass
class ReadaptOptions:
    """Options of :func:`readapt_bundle`."""

    bundle: Path
    """Bundle directory (or shipped bundle name) whose decoder is re-adapted."""
    out_dir: Path
    """Bundle directory to write (may be ``bundle`` itself with ``overwrite``)."""
    kernels: tuple[str, ...] = ("xnnpack", "builtin")
    """Kernel families whose encoder latents the decoder is fine-tuned on (each set weighs the same). The
    default leaves out ``micro``: tflite-micro's latents are close to LiteRT builtin's (mnist-hq: 15 % of
    values differ, by at most 3 steps, against 83 % and up to 13 steps from XNNPACK's; both follow the TFLite
    reference arithmetic), so adding it would weigh the reference kernels twice and cost XNNPACK quality
    (mnist-hq, 6 epochs: XNNPACK 28.55 dB with micro, 28.61 without; micro within 0.05 dB either way)."""
    epochs: int = 6
    """Passes over (training images x kernel families). 0: no fine-tuning; the bundle's float decoder is
    converted to int8 again by this version's export (same calibration), e.g. to take a better conversion."""
    learning_rate: float = 1e-4
    """Starting Adam learning rate (cosine decay to a tenth); the decoder is already adapted once."""
    train_limit: int | None = None
    """Fine-tune on the first N training images only (``None``: all)."""
    augment_copies: int = 0
    """Also fine-tune on this many randomly shifted and rotated copies of the training images (their own
    int8 latents; :func:`cae_edge.train.augment.random_affine`, every copy transformed): more pairs for a
    decoder that learns a new head, which overfits the 8,000 MNIST digits otherwise."""
    calib: int | None = None
    """Decoder calibration images; ``None``: what the manifest's ``dataset.calibration`` records."""
    calib_seed: int | None = None
    """Seed of the calibration subset; ``None``: from the manifest."""
    calib_percentile: float | None = None
    """Activation-range percentile; ``None``: the manifest's export command (99.99 when it has none)."""
    equalize: bool = True
    """Channel-equalize the decoder before PTQ (:mod:`cae_edge.export.equalize`)."""
    range_search: bool = False
    """Search the int8 decoder's activation ranges on the calibration images
    (:mod:`cae_edge.export.rangesearch`, as ``export --range-search`` does for the decoder)."""
    qat: bool = False
    """Fine-tune through the int8 decoder's rounding (:attr:`cae_edge.export.adapt.AdaptOptions.qat`)."""
    verify_limit: int | None = None
    """Verify on the first N test images only (``None``: the whole test split)."""
    margin_db: float | None = None
    """Fail when int8 loses more than this vs the float pair; ``None``: the manifest's margin."""
    data_dir: Path | None = None
    """Directory with IDX .gz files, tried first by :func:`cae_edge.datasets.load`."""
    overwrite: bool = False
    """Replace an existing output directory."""
    seed: int = 0
    """Seed of the fine-tuning's shuffling."""
    head: str | None = None
    """Decoder head of the new decoder (``convt``, ``d2s``); ``None``: the bundle's. A new head starts fresh
    and the layers before it keep the bundle's weights."""
    head_width: int | None = None
    """With a new head: filters of its hidden layer (``dec_widths[2]``: the d2s head's 14x14 conv, the convt
    head's 28x28 ConvT); ``None``: the bundle's ``dec_widths[2]``."""
    head_epochs: int = 3
    """With a new head: epochs that train the head alone (the shared layers frozen) before ``epochs``."""
    head_lr: float = 1e-3
    """Starting learning rate of those head-only epochs (cosine decay to a tenth)."""
    command: str = ""
    """How this re-adaptation was invoked, recorded in the manifest."""

    def validate(self) -> ReadaptOptions:
        from ..device.litert import KERNELS

        bad = [k for k in self.kernels if k not in KERNELS]
        if not self.kernels or bad:
            raise ConfigError(f"kernels {list(self.kernels)}: each must be one of {', '.join(KERNELS)}")
        if int(self.epochs) < 0:
            raise ConfigError(f"epochs {self.epochs}: must be >= 0 (0 = convert the float decoder again)")
        if int(self.epochs) == 0 and self.head is not None:
            raise ConfigError(
                "epochs 0 converts the bundle's own decoder again: a new head needs epochs >= 1"
            )
        if self.qat and int(self.epochs) == 0:
            raise ConfigError("qat fine-tunes the decoder through its int8 rounding: it needs epochs >= 1")
        if self.head is not None and self.head not in HEADS:
            raise ConfigError(f"decoder head {self.head!r}: must be one of {', '.join(HEADS)} (or omitted)")
        if self.head_width is not None and (self.head is None or int(self.head_width) < 1):
            raise ConfigError(f"head width {self.head_width}: must be >= 1, and needs a new head (--head)")
        if int(self.head_epochs) < 0:
            raise ConfigError(f"head epochs {self.head_epochs}: must be >= 0")
        if int(self.augment_copies) < 0:
            raise ConfigError(
                f"augment copies {self.augment_copies}: must be >= 0 (0 = the images as they are)"
            )
        for name, v in (("train limit", self.train_limit), ("verify limit", self.verify_limit)):
            if v is not None and int(v) < 1:
                raise ConfigError(f"{name} {v}: must be >= 1 (or omitted for the whole split)")
        return self


@dataclass
class ReadaptResult:
    """What :func:`readapt_bundle` wrote and measured."""

    path: str
    pair_id: str
    quality: dict
    """The new manifest's quality (``kernels`` holds the per-family PSNR before and after)."""
    sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def keras_decoder_from_tflite(decoder_float: bytes, cfg: ModelConfig):
    """Rebuild the Keras decoder whose float32 conversion is ``decoder_float`` (weights copied back).

    The builder makes the layers (``cfg.head`` says which head); the float .tflite holds their weights in its
    FULLY_CONNECTED, TRANSPOSE_CONV and CONV_2D ops, paired with the layers by place in the data flow
    (:func:`cae_edge.train.from_bundle.load_tflite_weights`).

    Raises:
        ExportError: the model's ops or weight shapes do not match ``cfg``'s decoder.
    """
    from ..errors import BundleError
    from ..train.from_bundle import load_tflite_weights
    from ..train.model import build_decoder

    decoder = build_decoder(cfg)
    try:
        load_tflite_weights(decoder, bytes(decoder_float), "decoder_float.tflite")
    except BundleError as e:
        raise ExportError(
            f"decoder_float.tflite weights do not fit the manifest's model {cfg.to_dict()}: {e}"
        ) from None
    return decoder


def new_head_decoder(decoder, cfg: ModelConfig, head: str, width: int | None = None):
    """A decoder of ``cfg`` with ``head`` (whose hidden layer has ``width`` filters; ``None``: ``cfg``'s
    ``dec_widths[2]``), the layers before the head copied from ``decoder`` (built for ``cfg``) and frozen,
    the head fresh. A ``linear_skip`` decoder's Dense(784) is copied (and frozen) too, its columns put in the
    order the head adds it in (:func:`cae_edge.train.model.logit_pixels`).

    Returns:
        ``(new decoder, its ModelConfig)``.
    """
    from dataclasses import replace

    from ..train.model import build_decoder, logit_pixels

    d0, d1, d2 = cfg.dec_widths
    new_cfg = replace(cfg, head=head, dec_widths=(d0, d1, d2 if width is None else int(width))).validate()
    new = build_decoder(new_cfg)

    def split(model):  # (the chain's weight layers in data-flow order, the linear path's Dense or None)
        layers = [la for la in model.layers if la.weights]
        lin = [la for la in layers if cfg.linear_skip and la.weights[0].shape == (cfg.latent_dim, 28 * 28)]
        return [la for la in layers if la not in lin], (lin[0] if lin else None)

    (old_chain, old_lin), (new_chain, new_lin) = split(decoder), split(new)
    for old, la in zip(old_chain[:3], new_chain[:3], strict=True):  # Dense, ConvT 3→7, ConvT 7→14
        la.set_weights(old.get_weights())
        la.trainable = False
    if old_lin is not None:
        kernel, bias = old_lin.get_weights()
        to_new = np.argsort(logit_pixels(cfg.head))[logit_pixels(head)]  # new column -> old column
        new_lin.set_weights([kernel[:, to_new], bias[to_new]])
        new_lin.trainable = False
    return new, new_cfg


def kernel_latents(
    encoder: bytes, images_u8: np.ndarray, kernels: tuple[str, ...], progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """The int8 encoder's latents of ``images_u8`` with each kernel family: ``{family: (N, D) int8}``."""
    from .convert import run_int8_encoder

    out = {}
    for i, k in enumerate(kernels):
        if progress:
            progress(f"int8 latents of {len(images_u8)} images with {k} kernels", i, len(kernels))
        out[k] = run_int8_encoder(encoder, images_u8, kernels=k)
    return out


def _calibration(manifest: Manifest, opts: ReadaptOptions) -> tuple[int, int, float]:
    """(images, seed, percentile) of the decoder's int8 calibration, as the bundle was exported."""
    calibration = str(
        manifest.dataset.get("calibration", "")
    )  # export writes "N training images of SRC, seed S"
    m = re.fullmatch(r"(\d+) training images(?: of .+)?, seed (\d+)", calibration)
    calib = opts.calib if opts.calib is not None else (int(m.group(1)) if m else None)
    seed = opts.calib_seed if opts.calib_seed is not None else (int(m.group(2)) if m else None)
    if calib is None or seed is None:
        raise ConfigError(
            f"manifest dataset.calibration {manifest.dataset.get('calibration')!r} does not say how many "
            "images and which seed calibrated the bundle; pass --calib and --calib-seed"
        )
    percentile = opts.calib_percentile
    if percentile is None:
        args = shlex.split(manifest.command or "")
        percentile = (
            float(args[args.index("--calib-percentile") + 1]) if "--calib-percentile" in args else 100.0
        )
    return calib, seed, percentile


def readapt_bundle(opts: ReadaptOptions, progress: Progress | None = None) -> ReadaptResult:
    """Fine-tune a bundle's decoder on the latents of several kernel families; write a verified bundle.

    Args:
        opts: Options.
        progress: Optional callback ``(what, done, total)``.

    Returns:
        The :class:`ReadaptResult`; the bundle is at ``opts.out_dir``.

    Raises:
        ExportError: output exists, weights that do not fit the manifest's model, or an int8 loss over the
            margin (then nothing is written).
        ConfigError: bad options.
    """
    from ..benchmark.kernels import DEFAULT_KERNELS, kernel_quality
    from ..device.bundle import load_bundle, resolve_bundle
    from ..train.model import build_decoder
    from .adapt import AdaptOptions, adapt_decoder
    from .convert import convert_decoder, rebuild_batch1, run_int8_encoder
    from .rangesearch import RangeSearch
    from .writer import _model_spec, staged_bundle

    opts.validate()
    step = progress or (lambda what, done, total: None)
    src = resolve_bundle(opts.bundle)
    out = Path(opts.out_dir)
    if out.exists() and not opts.overwrite:
        raise ExportError(f"{out}: already exists; choose another --out or pass --overwrite")
    old = load_bundle(src)
    manifest = old.manifest
    cfg = ModelConfig.from_dict(manifest.train.get("model") or {})
    if opts.head_width is not None and opts.head == cfg.head:
        raise ConfigError(
            f"head width {opts.head_width}: {src.name} already has the {cfg.head} head, whose layers keep "
            "their weights; a new width needs a new head (or `cae-edge train` from scratch)"
        )
    # an integer latent: the run's rd block (its train options said "rate_distortion" in older manifests)
    rate_distortion = bool(manifest.train.get("rd")) or bool(
        (manifest.train.get("train") or {}).get("rate_distortion")
    )
    lq = manifest.latent_quant
    calib_n, calib_seed, percentile = _calibration(manifest, opts)
    ds = datasets.load(manifest.dataset["name"], opts.data_dir)
    test = ds.x_test if opts.verify_limit is None else ds.x_test[: opts.verify_limit]
    train = ds.x_train if opts.train_limit is None else ds.x_train[: opts.train_limit]
    encoder = old.model_bytes("encoder")
    old_quality = dict(manifest.quality)

    step("quality before, per kernel family", 0, 1)
    before = kernel_quality(old, test, DEFAULT_KERNELS, name=src.name)

    decoder = keras_decoder_from_tflite(old.model_bytes("decoder_float"), cfg)
    if opts.epochs:  # the fine-tuning set (epochs 0 trains nothing and needs none)
        if opts.augment_copies:
            from ..train.augment import AugmentOptions, random_affine

            rng = np.random.default_rng(opts.seed)
            moved = AugmentOptions(probability=1.0)
            copies = [to_uint8(random_affine(train / 255.0, rng, moved)) for _ in range(opts.augment_copies)]
            train = np.concatenate([train, *copies])
        latents = kernel_latents(encoder, train, tuple(opts.kernels), step)
        q_all = np.concatenate([dequantize(latents[k], lq) for k in opts.kernels])
        x_all = np.concatenate([train] * len(opts.kernels))
    head_change = None
    if opts.head is not None and opts.head != cfg.head:
        decoder, new_cfg = new_head_decoder(decoder, cfg, opts.head, opts.head_width)
        head_change = {"from": cfg.head, "to": new_cfg.head, "width": new_cfg.dec_widths[2]}
        if opts.head_epochs:
            warm = AdaptOptions(epochs=opts.head_epochs, learning_rate=opts.head_lr, seed=opts.seed + 1)
            decoder, warm_res = adapt_decoder(decoder, q_all, x_all, warm, progress)
            head_change["head_only"] = warm_res.to_dict()
        for layer in decoder.layers:
            layer.trainable = True
        cfg = new_cfg
        manifest.train["model"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()
        }
    adapted, trained = decoder, {"epochs": 0}
    if opts.epochs:
        adapt_opts = AdaptOptions(
            epochs=opts.epochs, learning_rate=opts.learning_rate, seed=opts.seed, qat=opts.qat
        )
        adapted, res = adapt_decoder(decoder, q_all, x_all, adapt_opts, progress, latent_scale=lq.scale)
        trained = res.to_dict()

    rng = np.random.default_rng(calib_seed)
    calib = ds.x_train[
        np.sort(rng.choice(len(ds.x_train), size=min(calib_n, len(ds.x_train)), replace=False))
    ]
    calib_latents = dequantize(run_int8_encoder(encoder, calib), lq)
    step("int8 decoder (PTQ)", 0, 1)
    searched = RangeSearch() if opts.range_search else None
    dec_q, dec_float = convert_decoder(
        rebuild_batch1(adapted, build_decoder, cfg),
        calib_latents,
        lq,
        percentile,
        opts.equalize,
        search_targets=calib if opts.range_search else None,
        search_report=searched,
        progress=progress,
    )

    new_files = {DEFAULT_FILES["decoder"]: dec_q, DEFAULT_FILES["decoder_float"]: dec_float}
    # every other file of the bundle (encoder, entropy model, files the manifest does not list) as is
    with staged_bundle(out, copy_from=Path(src), keep_out=tuple(new_files)) as tmp:
        for name, data in new_files.items():
            (tmp / name).write_bytes(data)
        files = {name: file_entry(tmp / name) for name in manifest.files}
        manifest.files = files
        manifest.pair_id = manifest.expected_pair_id()
        manifest.models["decoder"] = _model_spec(DEFAULT_FILES["decoder"], dec_q)
        manifest.models["decoder_float"] = _model_spec(DEFAULT_FILES["decoder_float"], dec_float)
        manifest.created_by = f"cae-edge {__version__}"
        manifest.write(tmp)
        q = _verify(tmp, manifest, adapted, test, rate_distortion, opts, step)
        q["decoder_readaptation"] = {
            **trained,
            **({"qat": True} if opts.qat else {}),
            "kernels": list(opts.kernels),
            **({"head": head_change} if head_change else {}),
            "command": opts.command,
            "calibration": f"{len(calib)} training images, seed {calib_seed}, percentile {percentile:g}",
            "channel_equalization": opts.equalize,
            **({"range_search": searched.to_dict()} if searched else {}),
        }
        if "decoder_readaptation" in old_quality:  # the bundle's own readaptations, oldest first
            earlier = dict(old_quality["decoder_readaptation"])
            q["decoder_readaptation"]["earlier"] = [*earlier.pop("earlier", []), earlier]
        bundle = load_bundle(tmp)
        after = kernel_quality(bundle, test, DEFAULT_KERNELS, name=out.name)
        q["kernels"] = {
            "decoder_kernels": "xnnpack",
            "n_images": int(len(test)),
            "before": before.to_dict(),
            "after": after.to_dict(),
        }
        manifest.quality = q
        manifest.write(tmp)
        load_bundle(tmp)
    return ReadaptResult(
        str(out), manifest.pair_id, manifest.quality, {n: e.bytes for n, e in manifest.files.items()}
    )


def _verify(tmp: Path, manifest: Manifest, decoder, test, rate_distortion: bool, opts, step) -> dict:
    """Quality of the written bundle over the test images, as :func:`cae_edge.export.writer.verify` records
    it; the float reference is the float encoder (``encoder_float.tflite``) and the new Keras decoder."""
    from ..device.bundle import load_bundle
    from .writer import reconstruct

    old_q = dict(manifest.quality)
    bundle = load_bundle(tmp)
    step(f"verifying on {len(test)} test images", 0, 3)
    enc = bundle.encoder(precision="float")
    z = np.stack([enc.encode_latent(img) for img in test])
    if rate_distortion:
        z = np.clip(np.rint(z), -128, 127).astype(np.float32)
    keras_rec = to_uint8(decoder.predict(z, batch_size=500, verbose=0)[..., 0])
    q: dict = {"keras_float": quality(test, keras_rec)}
    if "decoder_adaptation" in old_q:
        q["decoder_adaptation"] = old_q["decoder_adaptation"]
    q["tflite_float"] = quality(test, reconstruct(bundle, test, "float"))
    q["tflite_int8"] = quality(test, reconstruct(bundle, test, "int8"))
    if "encoder_bias_correction" in old_q:
        q["encoder_bias_correction"] = old_q["encoder_bias_correction"]
    # the export's range search of the encoder, which stays (its decoder half went with the old decoder)
    encoder_search = old_q.get("encoder_range_search") or (old_q.get("range_search") or {}).get("encoder")
    if encoder_search:
        q["encoder_range_search"] = encoder_search
    q["n_images"] = int(len(test))
    q["split"] = "test" if opts.verify_limit is None else f"test[:{len(test)}]"
    margin = opts.margin_db if opts.margin_db is not None else float(old_q.get("margin_db", 0.5))
    loss = q["keras_float"]["psnr"] - q["tflite_int8"]["psnr"]
    q["int8_loss_db"], q["margin_db"] = float(loss), float(margin)
    if loss > margin:
        raise ExportError(
            f"int8 pair loses {loss:.2f} dB PSNR vs the float pair ({q['tflite_int8']['psnr']:.2f} vs "
            f"{q['keras_float']['psnr']:.2f} dB on {len(test)} test images), over the {margin} dB margin"
        )
    return q
