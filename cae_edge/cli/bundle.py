"""`cae-edge bundle`: inspect model bundles, shipped or exported, and refit their entropy tables, with the
device runtime (no TensorFlow)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from ..errors import CaeEdgeError
from .common import fail, print_json

app = typer.Typer(
    help="Inspect model bundles (shipped or exported); needs no TensorFlow.", no_args_is_help=True
)


@app.command("info")
def info(
    bundle: Annotated[
        str, typer.Argument(help="Shipped bundle name (mnist, fashion, ...) or bundle directory.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full manifest as JSON.")] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the sha256 checks.")] = False,
) -> None:
    """Load and verify a bundle with the device runtime (LiteRT only) and summarise its manifest."""
    from ..device.bundle import load_bundle
    from ..device.litert import backend_name

    try:
        b = load_bundle(bundle, verify=not no_verify)
    except CaeEdgeError as e:
        raise fail(e) from None
    m = b.manifest
    if as_json:
        print_json(m.to_dict())
        return
    typer.echo(f"bundle   {b.path}")
    typer.echo(
        f"verified {'sizes, identifiers, tensor details' if no_verify else 'sha256, pair id, tensor details'}"
    )
    typer.echo(f"runtime  {backend_name()}")
    typer.echo(f"pair id  {m.pair_id}")
    typer.echo(f"dataset  {m.dataset.get('name')} ({m.dataset.get('split', '')})")
    typer.echo(
        f"latent   {m.latent_dim} x int8, scale {m.latent_quant.scale:.6g}, "
        f"zero point {m.latent_quant.zero_point}"
    )
    classes = m.coding.get("classes")
    sets = f", {classes} table sets" if classes else ""
    typer.echo(f"payload  {m.bytes_per_image} bytes/image, coding {m.coding.get('kind')}{sets}")
    for key, spec in m.models.items():
        size = m.files[spec.file].bytes
        typer.echo(
            f"{key:14s} {spec.file:22s} {size / 1024:7.1f} KiB  in {spec.input.dtype}{list(spec.input.shape)}"
            f"  out {spec.output.dtype}{list(spec.output.shape)}"
        )
    q = m.quality
    for key in ("keras_float", "tflite_float", "tflite_int8"):
        if key in q:
            typer.echo(f"{key:14s} PSNR {q[key]['psnr']:.2f} dB  SSIM {q[key]['ssim']:.4f}")
    if "decoder_adaptation" in q:
        a = q["decoder_adaptation"]
        typer.echo(
            f"decoder adapted to the int8 encoder's latents ({a['epochs']} epochs); "
            f"Keras float before: PSNR {a['keras_float_before']['psnr']:.2f} dB"
        )
    if "kernels" in q:
        k = q["kernels"]["after"]
        per = ", ".join(f"{fam} {v:.2f}" for fam, v in k["psnr"].items())
        typer.echo(f"int8 PSNR by encoder kernels: {per} dB (spread {k['spread_db']:.2f})")
    if m.command:
        typer.echo(f"made by  {m.command}")
    if "decoder_readaptation" in q:
        for r in [*q["decoder_readaptation"].get("earlier", []), q["decoder_readaptation"]]:
            typer.echo(f"then     {r['command']}")
    refit = m.coding.get("refit")
    if refit:
        for r in [*refit.get("earlier", []), refit]:
            typer.echo(f"then     {r['command']}")
    if m.train.get("command"):
        typer.echo(f"trained  {m.train['command']}")


@app.command("recode")
def recode(
    bundle: Annotated[str, typer.Argument(help="Shipped bundle name or bundle directory (entropy-coded).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")],
    classes: Annotated[
        int | None,
        typer.Option(
            "--classes",
            min=1,
            max=256,
            help="Table sets: each image is coded with the set that codes it shortest (its class first). "
            "Default: 1, 2, 4 or 8, chosen on a held-out fifth of the training latents.",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Directory with the IDX .gz files, tried first.", file_okay=False),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Refit a bundle's entropy tables on its int8 training latents (LiteRT, no TensorFlow).

    The models, the latents and the decoded images stay the same; the payload bytes change, and with more
    than one table set so does the pair id: give nodes and receivers the new bundle together.
    """
    from ..export.recode import RecodeOptions, recode_bundle

    args = ["cae-edge", "bundle", "recode", bundle, "--out", str(out)]
    if classes is not None:
        args += ["--classes", str(classes)]
    opts = RecodeOptions(
        bundle=bundle,
        out_dir=out,
        classes=classes,
        data_dir=data_dir,
        overwrite=overwrite,
        command=shlex.join(args),
    )
    try:
        res = recode_bundle(opts, lambda what, done, total: typer.echo(f"  {what}", err=True))
    except CaeEdgeError as e:
        raise fail(e) from None
    if as_json:
        print_json(res.to_dict())
        return
    c = res.coding
    typer.echo(
        f"{res.path}: {c.get('classes', 1)} table set(s), {res.bytes_before:.2f} -> {res.bytes_after:.2f} "
        f"bytes/image on {c['measured_on']} test images, pair id {res.pair_id}"
    )
    if "classes_held_out_bits" in c:
        typer.echo(
            "held-out bits by sets: " + ", ".join(f"{k}: {v}" for k, v in c["classes_held_out_bits"].items())
        )


@app.command("list")
def list_bundles() -> None:
    """List the bundles shipped with this install (addressable by name)."""
    from ..device.bundle import available_bundles
    from ..manifest import Manifest

    for name, path in available_bundles().items():
        try:
            m = Manifest.read(path)
            psnr = m.quality.get("tflite_int8", {}).get("psnr")
            psnr_s = f"{psnr:.2f} dB" if psnr is not None else "-"
            typer.echo(
                f"{name:16s} {m.dataset.get('name', '?'):8s} {m.bytes_per_image:4d} B/image  int8 {psnr_s}"
            )
        except CaeEdgeError as e:
            typer.echo(f"{name:16s} broken: {e}")
