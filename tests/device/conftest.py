"""Fixtures the device tests share."""

from __future__ import annotations

import shutil

import numpy as np
import pytest


@pytest.fixture(scope="session")
def narrow_alphabet(tmp_path_factory):
    """``make(bundle, images)``: a copy of ``bundle`` whose entropy model (one table set) is fitted on its
    int8 latents of ``images`` clipped to their 1st-99th percentiles — the same models, an alphabet that real
    frames overflow, so their payloads carry escaped values. The pair id is the copy's own (recomputed)."""
    from cae_edge import entropy
    from cae_edge.device.bundle import load_bundle
    from cae_edge.manifest import Manifest, file_entry

    def make(bundle, images: np.ndarray):
        path = tmp_path_factory.mktemp("bundles") / f"{bundle.path.name}-narrow"
        shutil.copytree(bundle.path, path)
        enc = bundle.encoder()
        latents = np.stack([enc.encode_latent(im) for im in images])
        lo, hi = np.percentile(latents, [1, 99]).astype(int)
        coding, _ = entropy.write_bundle_coding(path, np.clip(latents, lo, hi), classes=1)
        manifest = Manifest.read(path)
        manifest.coding = coding
        manifest.files[entropy.ENTROPY_FILE] = file_entry(path / entropy.ENTROPY_FILE)
        manifest.pair_id = manifest.expected_pair_id()
        manifest.write(path)
        return load_bundle(path)

    return make
