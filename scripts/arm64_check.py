"""Helper of scripts/test-arm64.sh: inputs, latents and the x86-vs-aarch64 comparison, one step per command.

Runs on both ends: ``latents`` under emulation in an aarch64 userland (node packages only, no TensorFlow, no
scikit-image), everything else on the x86 host. ``latents`` does all of a userland's bundles in one
(emulated) process; ``compare`` one bundle::

    x86      inputs   → inputs-<dataset>/<i>.png (the bundle's dataset, first N test images, as camera frames)
    aarch64  cae-edge stream send --save-inputs ──(loopback)──► x86 cae-edge stream receive --out
    aarch64  latents  (every bundle's encoder on the inputs the node saved) → <bundle>/latents-arm64.npz
    x86      compare  (x86 encoder on the same inputs; decode both) → result.json ("ok": false says why)
    x86      table    → the per-bundle table; exit 1 if any row failed
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

PSNR_IDENTICAL = 100.0  # cae_edge.metrics.PSNR_CAP: identical frames


def _read_pngs(folder: Path) -> tuple[list[str], np.ndarray]:
    import cv2

    files = sorted(folder.glob("*.png"))
    if not files:
        raise SystemExit(f"{folder}: no PNG files")
    images = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in files]
    return [p.name for p in files], np.stack(images)


def cmd_inputs(a: argparse.Namespace) -> None:
    """Camera frames from the bundle's dataset (first N test images), written once; prints their folder.

    Each image is drawn as the bundle's camera sees it (dark ink on light paper when the bundle inverts)
    and enlarged 3x, so the node's preprocessing (crop, resize, inversion) runs on aarch64 as on a Pi.
    """
    import cv2

    from cae_edge import datasets
    from cae_edge.device.bundle import load_bundle

    pre = load_bundle(a.bundle).preprocess
    name = load_bundle(a.bundle).manifest.dataset.get("name") or "mnist"
    out = a.root / f"inputs-{name}{'-paper' if pre.get('invert') else ''}"
    if not out.is_dir():
        x = datasets.load(name).x_test[: a.count]
        tmp = out.with_suffix(".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(x):
            frame = cv2.resize(255 - img if pre.get("invert") else img, None, fx=3, fy=3)
            cv2.imwrite(str(tmp / f"{i:05d}.png"), frame)
        tmp.rename(out)
    print(out)


def _encode(enc, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 latents (N, latent_dim) and wire payload sizes of a stack of 28x28 uint8 inputs."""
    latents = np.stack([enc.encode_latent(img).copy() for img in images])
    return latents, np.array([len(enc.encode(img)) for img in images])


def cmd_latents(a: argparse.Namespace) -> None:
    """The node's int8 latents for the inputs it saved, for every bundle folder of one userland's run.

    One process for all bundles (an emulated start costs seconds). A bundle that fails is written down in
    its folder (latents-error.txt) and the others go on.
    """
    import platform
    import traceback

    from cae_edge.device.bundle import load_bundle

    for d in sorted(p.parent.parent for p in a.dir.glob(f"*/sent/{a.name}")):
        try:
            _, images = _read_pngs(d / "sent" / a.name)
            latents, payload = _encode(load_bundle(d.name).encoder(), images)
            np.savez(d / "latents-arm64.npz", latents=latents, payload_bytes=payload)
            print(f"{d.name}: {latents.shape} {latents.dtype} latents on {platform.machine()}")
        except Exception:  # one broken bundle must not hide the others
            (d / "latents-error.txt").write_text(traceback.format_exc())
            print(f"{d.name}: FAILED (see {d / 'latents-error.txt'})")


def _x86_inputs(bundle, source: Path, n: int) -> np.ndarray:
    """The first ``n`` frames of ``source`` preprocessed here, as the node should have."""
    import cv2

    from cae_edge.device.preprocess import Preprocessor

    pre = Preprocessor(bundle.preprocess)
    files = sorted(source.glob("*.png"))[:n]
    return np.stack([pre(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)) for p in files])


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(values that differ, largest absolute difference) of two integer arrays."""
    step = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int((step != 0).sum()), int(step.max(initial=0))


def cmd_compare(a: argparse.Namespace) -> None:
    """One table row: what crossed the wire, how the aarch64 latents differ, and what that does to frames.

    Latents are compared twice: the x86 encoder on the very inputs the node encoded (the encoders alone), and
    the whole x86 pipeline (preprocessing included) on the same camera frames.
    """
    from cae_edge.device.bundle import load_bundle
    from cae_edge.metrics import psnr_per_image

    d: Path = a.dir
    row: dict = {"userland": a.userland, "cpu": a.cpu, "bundle": a.bundle, "expected": a.frames, "ok": False}
    problems: list[str] = []
    sender = json.loads((d / "sender.json").read_text()) if (d / "sender.json").is_file() else {}
    receiver = json.loads((d / "receiver.json").read_text()) if (d / "receiver.json").is_file() else {}
    row["sent"] = int(sender.get("sent", 0))
    row["decoded"] = int(receiver.get("frames", 0))
    if not sender:
        err = (d / "sender.log").read_text().strip().splitlines() if (d / "sender.log").is_file() else []
        problems.append("sender failed: " + (err[-1] if err else "no output"))
    if row["sent"] != a.frames or row["decoded"] != a.frames:
        problems.append(f"{row['sent']} sent, {row['decoded']} decoded of {a.frames}")
    arm_file = d / "latents-arm64.npz"
    if arm_file.is_file():
        arm = np.load(arm_file)
        names, sent = _read_pngs(d / "sent" / a.name)
        bundle = load_bundle(a.bundle)
        enc, dec = bundle.encoder(), bundle.decoder()
        q_arm = arm["latents"]
        q_x86, payload_x86 = _encode(enc, sent)
        row["latent_values"] = int(q_arm.size)
        row["latent_diff"], row["latent_max_step"] = _diff(q_arm, q_x86)
        row["payload_bytes_arm64"] = round(float(arm["payload_bytes"].mean()), 2)
        row["payload_bytes_x86"] = round(float(payload_x86.mean()), 2)
        from_arm = np.stack([dec.decode_latent(q) for q in q_arm])
        from_x86 = np.stack([dec.decode_latent(q) for q in q_x86])
        row["psnr_arm_vs_x86"] = round(float(psnr_per_image(from_x86, from_arm).mean()), 2)
        row["psnr_vs_input_arm64"] = round(float(psnr_per_image(sent, from_arm).mean()), 2)
        row["psnr_vs_input_x86"] = round(float(psnr_per_image(sent, from_x86).mean()), 2)
        # the whole pipeline on x86: same camera frames, preprocessed here
        x86_in = _x86_inputs(bundle, a.source, len(sent))
        row["input_px_diff"], row["input_max_step"] = _diff(sent, x86_in)
        q_pipe, _ = _encode(enc, x86_in)
        row["pipeline_latent_diff"], row["pipeline_latent_max_step"] = _diff(q_arm, q_pipe)
        from_pipe = np.stack([dec.decode_latent(q) for q in q_pipe])
        row["pipeline_psnr_arm_vs_x86"] = round(float(psnr_per_image(from_pipe, from_arm).mean()), 2)
        # the receiver decoded what crossed the wire: each frame must be the node's latent decoded here
        recv_dir = d / "received" / a.name
        got = sorted(p.name for p in recv_dir.glob("*.png")) if recv_dir.is_dir() else []
        if got != names:
            problems.append(f"received frames {got[:2]}... are not the sent ones {names[:2]}...")
        else:
            _, received = _read_pngs(recv_dir)
            row["received_mismatch"] = int((received != from_arm).any(axis=(1, 2)).sum())
            if row["received_mismatch"]:
                problems.append(
                    f"{row['received_mismatch']} received frames are not the node's latents decoded"
                )
        if row["input_max_step"] > a.max_step:
            problems.append(f"preprocessed pixels differ from x86 by up to {row['input_max_step']}")
        if row["latent_max_step"] > a.max_step:
            problems.append(f"int8 latent step {row['latent_max_step']} > {a.max_step}")
        if row["psnr_arm_vs_x86"] < a.min_psnr:
            problems.append(f"PSNR of aarch64 vs x86 frames {row['psnr_arm_vs_x86']} dB < {a.min_psnr}")
    elif sender:
        err = d / "latents-error.txt"
        problems.append(
            "no aarch64 latents: " + (err.read_text().strip().splitlines()[-1] if err.is_file() else "?")
        )
    row["ok"] = not problems
    row["problems"] = problems
    (d / "result.json").write_text(json.dumps(row, indent=2) + "\n")
    print(_line(row))


def _psnr(db: float) -> str:
    return "identical" if db >= PSNR_IDENTICAL else f"{db:.2f} dB"


def _line(r: dict) -> str:
    head = f"| {r['userland']} | {r['cpu']} | {r['bundle']} | {r['sent']}/{r['decoded']} | "
    verdict = "ok" if r["ok"] else "FAIL"
    if "latent_values" not in r:
        return head + f"- | - | - | - | - | {verdict} |"
    return head + (
        f"{r['input_px_diff']} (max {r['input_max_step']}) | "
        f"{r['latent_diff']}/{r['latent_values']} (max {r['latent_max_step']}) | "
        f"{r['pipeline_latent_diff']}/{r['latent_values']} (max {r['pipeline_latent_max_step']}) | "
        f"{_psnr(r['psnr_arm_vs_x86'])} / {_psnr(r['pipeline_psnr_arm_vs_x86'])} | "
        f"{r['psnr_vs_input_arm64']:.2f} / {r['psnr_vs_input_x86']:.2f} | {verdict} |"
    )


def cmd_table(a: argparse.Namespace) -> None:
    """Every result.json under the folder as one Markdown table; exit 1 if a row failed or none exists."""
    rows = [json.loads(p.read_text()) for p in sorted(a.dir.glob("*/*/result.json"))]
    print(
        "| userland | CPU | bundle | frames sent/decoded | preprocessed pixels differing (max step) | "
        "int8 latents differing, same inputs (max step) | "
        "int8 latents differing, whole pipeline (max step) | "
        "PSNR of frames from aarch64 vs x86 latents: same inputs / whole pipeline | "
        "PSNR vs input, aarch64 / x86 (dB) | |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(_line(r))
    failed = [r for r in rows if not r["ok"]]
    for r in failed:
        print(f"FAIL {r['userland']} {r['bundle']}: {'; '.join(r['problems'])}", file=sys.stderr)
    if len(rows) != a.expect:
        print(f"FAIL {len(rows)} results for {a.expect} userland/bundle pairs", file=sys.stderr)
    if len(rows) != a.expect or failed:
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("inputs", help=cmd_inputs.__doc__)
    s.add_argument("--bundle", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--root", type=Path, required=True, help="Folder to write inputs-<dataset>[-paper] in.")
    s.set_defaults(fn=cmd_inputs)
    s = sub.add_parser("latents", help=cmd_latents.__doc__)
    s.add_argument(
        "--dir", type=Path, required=True, help="One userland's run folder (<bundle>/sent/<name>)."
    )
    s.add_argument("--name", required=True, help="The node's sender name.")
    s.set_defaults(fn=cmd_latents)
    s = sub.add_parser("compare", help=cmd_compare.__doc__)
    s.add_argument("--dir", type=Path, required=True, help="This bundle's run folder.")
    s.add_argument("--bundle", required=True)
    s.add_argument("--source", type=Path, required=True, help="The image folder the node streamed.")
    s.add_argument("--name", required=True, help="The node's sender name.")
    s.add_argument("--userland", required=True)
    s.add_argument("--cpu", required=True)
    s.add_argument("--frames", type=int, required=True)
    s.add_argument("--max-step", type=int, default=1, help="Largest pixel or int8 latent step (default 1).")
    s.add_argument("--min-psnr", type=float, default=30.0, help="Frames from both latents, dB (default 30).")
    s.set_defaults(fn=cmd_compare)
    s = sub.add_parser("table", help=cmd_table.__doc__)
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--expect", type=int, required=True, help="Rows there must be (userlands x bundles).")
    s.set_defaults(fn=cmd_table)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
