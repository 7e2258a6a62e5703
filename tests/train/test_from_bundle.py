"""``--init-from BUNDLE``: every shipped bundle's float TFLite pair back as Keras models computing the same.

Real test images of each bundle's own dataset (the cached MNIST, Fashion-MNIST and scenes test splits),
through the bundle's float TFLite pair (the device-side reader) and through the rebuilt Keras pair.
"""

from __future__ import annotations

import numpy as np
import pytest

from cae_edge import datasets
from cae_edge.device.bundle import available_bundles, load_bundle
from cae_edge.errors import BundleError

SHIPPED = sorted(available_bundles())


@pytest.fixture(scope="module")
def test_images():
    """16 real test images per dataset, spread over its test split."""
    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            x = datasets.load(name).x_test
            cache[name] = np.ascontiguousarray(x[:: len(x) // 16][:16])
        return cache[name]

    return get


def test_every_family_is_shipped():
    families = {"mnist", "fashion", "scenes"}
    assert {"mnist", "fashion", "scenes-xl"} | {
        f"{f}-{p}" for f in families for p in ("tiny", "small", "hq")
    } <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_keras_pair_from_a_bundle_reproduces_its_float_tflite_pair(name, test_images):
    """Before any training, the rebuilt Keras pair computes what the bundle's float TFLite pair computes."""
    from cae_edge.train.from_bundle import models_from_bundle, read_start

    start = read_start(name)
    images = test_images(start.dataset)
    encoder, decoder = models_from_bundle(start)
    bundle = load_bundle(name)
    enc_f, dec_f = bundle.encoder(precision="float"), bundle.decoder(precision="float")
    z_tflite = np.stack([enc_f.encode_latent(img) for img in images])
    z_keras = encoder.predict((images / 255.0).astype(np.float32)[..., None], verbose=0)
    assert np.abs(z_tflite).max() > 1.0 and z_tflite.std(axis=0).max() > 0.5  # real latents, not a constant
    np.testing.assert_allclose(z_keras, z_tflite, atol=1e-4 * np.abs(z_tflite).max())
    x_tflite = np.stack([dec_f.decode_latent(z) for z in z_tflite]).astype(np.int16)
    x_keras = np.clip(np.rint(decoder.predict(z_tflite, verbose=0)[..., 0] * 255), 0, 255).astype(np.int16)
    assert np.abs(x_keras - x_tflite).max() <= 1
    assert x_tflite.std() > 10  # real pictures came back, not a flat grey


@pytest.fixture(scope="module")
def scenes_small():
    from cae_edge.train.from_bundle import models_from_bundle, read_start

    start = read_start("scenes-small")
    return start, *models_from_bundle(start)


def test_load_checks_the_pair_on_the_bundles_own_images(scenes_small):
    from cae_edge.train.from_bundle import MAX_DIFF, check_against_tflite, selftest_images

    start, encoder, decoder = scenes_small
    assert selftest_images(start).std() > 10
    diffs = check_against_tflite(start, encoder, decoder)
    assert set(diffs) == {"encoder", "decoder"} and max(diffs.values()) < MAX_DIFF


def test_a_mis_mapped_layer_is_caught_and_named(scenes_small):
    """Swap two equally shaped convolutions (what an order-based mapping could do): the check names one."""
    from cae_edge.train.from_bundle import check_against_tflite

    start, encoder, decoder = scenes_small
    convs = [la for la in encoder.layers if type(la).__name__ == "Conv2D"]
    a, b = convs[1], convs[2]
    assert [w.shape for w in a.weights] == [w.shape for w in b.weights]
    wa, wb = a.get_weights(), b.get_weights()
    try:
        a.set_weights(wb)
        b.set_weights(wa)
        with pytest.raises(BundleError, match=rf"scenes-small.*encoder.*at layer {a.name}:.*--preset small"):
            check_against_tflite(start, encoder, decoder)
    finally:
        a.set_weights(wa)
        b.set_weights(wb)
    check_against_tflite(start, encoder, decoder)  # restored


def test_a_model_config_without_the_linear_path_says_which_op_is_left(scenes_small):
    from dataclasses import replace

    from cae_edge.train.from_bundle import load_start
    from cae_edge.train.model import build_decoder, build_encoder

    start, _, _ = scenes_small
    wrong = replace(start.model, linear_skip=False)
    with pytest.raises(
        BundleError,
        match=r"--init-from scenes-small: .*encoder_float.tflite: 1 weight ops .*"
        r"dense.* no layer .*--init-from RUN.*--preset small",
    ):
        load_start(start, build_encoder(wrong), build_decoder(wrong))
