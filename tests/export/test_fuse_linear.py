"""The int8 layout of a linear_skip encoder (export/convert.py: fuse_linear_path), on a shipped scenes bundle
and real held-out frames: the same float function, one FULLY_CONNECTED instead of two Dense and an ADD, and
int8 latents that round like the float encoder's far more often."""

from __future__ import annotations

import numpy as np
import pytest

from cae_edge.errors import ExportError


@pytest.fixture(scope="module")
def scenes_pair():
    from cae_edge import datasets
    from cae_edge.export.convert import rebuild_batch1
    from cae_edge.train.from_bundle import models_from_bundle, read_start
    from cae_edge.train.model import build_encoder

    start = read_start("scenes-small")
    encoder, _ = models_from_bundle(start)
    ds = datasets.load("scenes")
    calib = (ds.x_train[:: max(1, len(ds.x_train) // 300)][:300].astype(np.float32) / 255.0)[..., None]
    return start, rebuild_batch1(encoder, build_encoder, start.model), calib, ds.x_test[:400]


def _ops(tflite: bytes) -> list[str]:
    from cae_edge.device.litert import make_interpreter

    return [op["op_name"] for op in make_interpreter(tflite, xnnpack=False)._get_ops_details()]


def _changed(enc_q: bytes, encoder, images_u8) -> float:
    """Fraction of latent values the int8 encoder rounds unlike the float one."""
    from cae_edge.export.convert import run_int8_encoder

    want = np.clip(np.rint(np.asarray(encoder((images_u8.astype(np.float32) / 255.0)[..., None]))), -127, 127)
    return float(np.mean(run_int8_encoder(enc_q, images_u8) != want))


def test_fused_linear_path_is_the_same_function_and_rounds_like_float(scenes_pair):
    from cae_edge.export.convert import convert_encoder, fuse_linear_path
    from cae_edge.quant import QuantParams

    start, encoder, calib, test_u8 = scenes_pair
    fused = fuse_linear_path(encoder, start.model, calib)
    x = (test_u8.astype(np.float32) / 255.0)[..., None]
    want = np.asarray(encoder(x))
    np.testing.assert_allclose(np.asarray(fused(x)), want, atol=1e-3 * np.abs(want).max())

    plain, one = (convert_encoder(m, calib, QuantParams(1.0, 0)) for m in (encoder, fused))
    assert "ADD" in _ops(plain) and _ops(plain).count("FULLY_CONNECTED") == 2
    assert "ADD" not in _ops(one) and _ops(one).count("FULLY_CONNECTED") == 1 and "CONCATENATION" in _ops(one)
    changed_plain, changed_one = _changed(plain, encoder, test_u8), _changed(one, encoder, test_u8)
    assert changed_one < 0.5 * changed_plain, (changed_plain, changed_one)


def test_fuse_refuses_an_encoder_without_the_linear_path(mnist):
    from cae_edge.train.from_bundle import models_from_bundle, read_start

    start = read_start("mnist-small")
    encoder, _ = models_from_bundle(start)
    with pytest.raises(ExportError, match="linear_skip=False"):
        from cae_edge.export.convert import fuse_linear_path

        fuse_linear_path(encoder, start.model, (mnist.x_train[:8, ..., None] / 255.0).astype(np.float32))
