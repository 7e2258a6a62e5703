"""The int8 decoder's logits (export/convert.py: tighten_logistic_inputs) on a shipped linear-path bundle and
real held-out images: where an ADD of the linear path's and the convolutions' logits feeds the sigmoid, both
halves of the sum get only the range that can still move an output pixel, and the int8 decoder gets closer to
the float one."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def raw_decoder():
    """fashion-xl's float decoder converted to int8 by plain PTQ (nothing cut yet), the int8 encoder's latents
    of real test images (calibration from the training split) and those images."""
    from cae_edge import datasets
    from cae_edge.device.bundle import load_bundle
    from cae_edge.export.convert import convert_int8, rebuild_batch1, run_int8_encoder, set_io_quant
    from cae_edge.quant import dequantize
    from cae_edge.train.from_bundle import models_from_bundle, read_start
    from cae_edge.train.model import build_decoder

    bundle = load_bundle("fashion-xl")
    start = read_start("fashion-xl")
    _, decoder = models_from_bundle(start)
    ds = datasets.load("fashion")
    enc = bundle.model_bytes("encoder")
    lq = bundle.manifest.latent_quant
    calib = dequantize(run_int8_encoder(enc, ds.x_train[:300]), lq)
    raw = convert_int8(rebuild_batch1(decoder, build_decoder, start.model), calib)
    raw = set_io_quant(raw, "input", lq)
    test = ds.x_test[:300]
    return raw, bundle.model_bytes("decoder_float"), run_int8_encoder(enc, test), test


def _decode(tflite: bytes, latents: np.ndarray) -> np.ndarray:
    from cae_edge.device.litert import make_interpreter

    it = make_interpreter(tflite, kernels="builtin")
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for q in latents:
        if i["dtype"] == np.float32:
            it.set_tensor(i["index"], q[None].astype(np.float32))
        else:
            it.set_tensor(i["index"], q[None].astype(i["dtype"]))
        it.invoke()
        r = it.get_tensor(o["index"])[0].astype(np.float32)
        if o["dtype"] != np.float32:
            scale, zp = o["quantization"]
            r = (r - zp) * scale
        out.append(np.clip(np.rint(r * 255), 0, 255))
    return np.asarray(out).reshape(len(latents), 28, 28)


def _spans(tflite: bytes) -> dict[str, tuple[float, float]]:
    """Real range of the sigmoid's input, of the ADD's two inputs and of the tensors behind them."""
    from cae_edge.device.litert import make_interpreter

    it = make_interpreter(tflite, kernels="builtin")
    det = {d["index"]: d for d in it.get_tensor_details()}
    ops = it._get_ops_details()

    def span(t: int) -> tuple[float, float]:
        scale, zp = det[t]["quantization"]
        return scale * (-128 - zp), scale * (127 - zp)

    sig = next(op for op in ops if op["op_name"] == "LOGISTIC")
    add = next(op for op in ops if op["op_name"] == "ADD" and sig["inputs"][0] in op["outputs"])
    out = {"sum": span(sig["inputs"][0]), "a": span(add["inputs"][0]), "b": span(add["inputs"][1])}
    reshape = next(op for op in ops if op["op_name"] == "RESHAPE" and set(op["outputs"]) & set(add["inputs"]))
    out["before reshape"] = span(reshape["inputs"][0])
    out["after reshape"] = span(reshape["outputs"][0])
    return out


def test_the_halves_of_the_logit_sum_get_only_the_range_that_moves_a_pixel(raw_decoder):
    from cae_edge.export.convert import logistic_saturation, tighten_logistic_inputs

    raw, _, _, _ = raw_decoder
    old = _spans(raw)
    cut, changed = tighten_logistic_inputs(raw)
    new = _spans(cut)
    assert changed == 3  # the sum and both halves
    (lo_s, hi_s), (lo_a, hi_a), (lo_b, hi_b) = new["sum"], old["a"], old["b"]
    lo_cut, hi_cut = logistic_saturation(1 / 256, -128)
    step = (hi_s - lo_s) / 255
    assert lo_cut - step <= lo_s < 0 < hi_s <= hi_cut + step  # the sum: where the sigmoid's output can move
    for half, other in (("a", (lo_b, hi_b)), ("b", (lo_a, hi_a))):
        lo, hi = new[half]
        assert lo <= 0 <= hi and hi - lo < old[half][1] - old[half][0]  # narrower, 0 kept
        step = (hi - lo) / 255
        assert lo >= max(old[half][0], lo_s - other[1]) - 2 * step  # not wider than the formula
        assert hi <= min(old[half][1], hi_s - other[0]) + 2 * step
    assert new["before reshape"] == new["after reshape"]  # RESHAPE does not requantize: both ends agree
    again, n = tighten_logistic_inputs(cut)
    assert n == 0 and again == cut


def test_cut_logit_halves_bring_the_int8_decoder_closer_to_float(raw_decoder):
    from cae_edge.export.convert import tighten_logistic_inputs
    from cae_edge.metrics import psnr_per_image

    raw, dec_float, latents, test = raw_decoder
    cut, _ = tighten_logistic_inputs(raw)
    ref = _decode(dec_float, latents)
    err_raw = np.mean((_decode(raw, latents) - ref) ** 2)
    err_cut = np.mean((_decode(cut, latents) - ref) ** 2)
    assert err_cut < 0.8 * err_raw  # the int8 pair's own error against the float decoder, clearly smaller
    assert (
        psnr_per_image(test, _decode(cut, latents)).mean()
        > psnr_per_image(test, _decode(raw, latents)).mean()
    )


def test_logistic_saturation_is_where_the_int8_sigmoid_output_stops_moving():
    from cae_edge.export.convert import LOGIT_CLIP, LOGIT_MARGIN, logistic_saturation

    lo, hi = logistic_saturation(1 / 256, -128)  # TFLite's fixed int8 LOGISTIC output quantization
    assert -6.4 < lo < -6.2 and 5.1 < hi < 5.3  # not the symmetric [-8, 8]

    def q(x: float) -> int:  # the int8 output level of logit x
        return int(np.clip(np.rint(256 / (1 + np.exp(-x))) - 128, -128, 127))

    assert q(lo) == -128 and q(hi) == 127  # the cut ends give the saturated levels ...
    assert q(lo + 2 * LOGIT_MARGIN) > -128 and q(hi - 2 * LOGIT_MARGIN) < 127  # ... and just inside, not
    assert all(q(x) == -128 for x in np.linspace(lo - 10, lo, 50))
    assert all(q(x) == 127 for x in np.linspace(hi, hi + 10, 50))
    assert logistic_saturation(2.0, 0) == (-LOGIT_CLIP, LOGIT_CLIP)  # not a sigmoid's output range: fall back
