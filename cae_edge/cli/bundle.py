"""`cae-edge bundle`: inspect model bundles, shipped or exported, with the device runtime (no TensorFlow)."""

from __future__ import annotations

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
    typer.echo(f"payload  {m.bytes_per_image} bytes/image, coding {m.coding.get('kind')}")
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
    if m.train.get("command"):
        typer.echo(f"trained  {m.train['command']}")


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
