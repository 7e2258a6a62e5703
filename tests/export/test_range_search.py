"""The activation-range search (export/rangesearch.py) on the shipped mnist-small pair and real digits: the
refine hook leaves the conversion alone when it changes nothing, ranges are scaled end by end as asked, the
coordinate descent finds a planted optimum and moves nothing else, and on real digits the searched int8
decoder is the model whose error the search reported, closer to the calibration images than the percentile
one and no worse on held-out test digits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest


@pytest.fixture(scope="module")
def small(mnist):
    """mnist-small's float decoder (batch 1), its int8 encoder's latents of 300 training and 300 test digits
    (dequantized) and those digits, and its latent quantization."""
    from cae_edge.device.bundle import load_bundle
    from cae_edge.export.convert import rebuild_batch1, run_int8_encoder
    from cae_edge.quant import dequantize
    from cae_edge.train.from_bundle import models_from_bundle, read_start
    from cae_edge.train.model import build_decoder

    bundle = load_bundle("mnist-small")
    start = read_start("mnist-small")
    _, decoder = models_from_bundle(start)
    lq = bundle.manifest.latent_quant
    enc = bundle.model_bytes("encoder")
    rng = np.random.default_rng(0)
    calib_u8 = mnist.x_train[rng.choice(len(mnist.x_train), 300, replace=False)]
    test_u8 = mnist.x_test[:300]
    return {
        "decoder": rebuild_batch1(decoder, build_decoder, start.model),
        "lq": lq,
        "calib": dequantize(run_int8_encoder(enc, calib_u8), lq),
        "calib_u8": calib_u8,
        "test": dequantize(run_int8_encoder(enc, test_u8), lq),
        "test_u8": test_u8,
    }


@pytest.fixture(scope="module")
def calibrated(small):
    """The decoder's calibrate-only model (tensors carrying min/max after the percentile cut) and the
    quantize function convert_int8 hands to its refine hook; plus the model convert_int8 makes without one."""
    from cae_edge.export.convert import convert_int8

    seen = {}

    def capture(c: bytes, quantize):
        seen["calibrated"], seen["quantize"] = c, quantize
        return c

    hooked = convert_int8(small["decoder"], small["calib"], refine=capture)
    plain = convert_int8(small["decoder"], small["calib"])
    return seen["calibrated"], seen["quantize"], hooked, plain


def _min_max(calibrated: bytes) -> dict[str, tuple[float, float]]:
    from cae_edge.export.convert import _schema
    from cae_edge.export.rangesearch import range_tensors

    sg = _schema().Model.GetRootAs(calibrated, 0).Subgraphs(0)
    out = {}
    for t in range_tensors(calibrated):
        q = sg.Tensors(t).Quantization()
        out[sg.Tensors(t).Name().decode()] = (float(q.MinAsNumpy()[0]), float(q.MaxAsNumpy()[0]))
    return out


def _scales(tflite: bytes) -> dict[str, float]:
    from cae_edge.device.litert import make_interpreter

    it = make_interpreter(tflite, kernels="builtin")
    return {d["name"]: float(d["quantization"][0]) for d in it.get_tensor_details()}


def test_an_identity_refine_hook_leaves_the_conversion_as_it_was(calibrated):
    c, _, hooked, plain = calibrated
    assert hooked == plain
    ranges = _min_max(c)
    # the decoder's Dense, three (transposed) convolutions and their LeakyReLUs, the head's conv: each
    # carries a range
    assert len(ranges) >= 8
    assert all(hi > lo for lo, hi in ranges.values())


def test_scaled_moves_each_end_of_the_named_tensors_only(calibrated):
    from cae_edge.export.rangesearch import range_tensors, scaled

    c = calibrated[0]
    tensors = range_tensors(c)
    before = _min_max(c)
    names = list(before)
    base = {t: before[n] for t, n in zip(tensors, names, strict=True)}
    after = _min_max(scaled(c, base, {tensors[1]: (0.5, 0.8), tensors[3]: (1.25, 1.25)}))
    for k, name in enumerate(names):
        lo, hi = before[name]
        want = {1: (0.5 * lo, 0.8 * hi), 3: (1.25 * lo, 1.25 * hi)}.get(k, (lo, hi))
        assert after[name] == pytest.approx(want, rel=1e-6)


def test_the_search_finds_a_planted_optimum_and_moves_nothing_else(calibrated):
    """An error that only depends on one tensor's int8 step, least at 0.6 of its percentile range: that
    tensor ends at (0.6, 0.6), every other tensor keeps its range (its moves change nothing, so none is
    kept), and the error reported is the error of the model returned."""
    from cae_edge.export.rangesearch import RangeSearch, search_ranges

    c, quantize, _, plain = calibrated
    start = _scales(plain)
    name = next(n for n in start if "leakyrelu" in n.lower())  # the first LeakyReLU output
    want = 0.6 * start[name]
    report = RangeSearch(objective="planted")

    def error(model: bytes) -> float:
        return abs(_scales(model)[name] - want) / want

    found = search_ranges(c, quantize, error, report=report)
    moved = {n: f for n, f in report.factors.items()}
    assert list(moved) == [name]
    assert moved[name] == pytest.approx((0.6, 0.6))
    assert report.after == pytest.approx(error(quantize(found))) and report.after < 1e-3 < report.before


def test_searched_decoder_is_closer_on_calibration_and_not_worse_on_test_digits(small):
    from cae_edge.export.convert import convert_decoder
    from cae_edge.export.rangesearch import FACTORS, FINE, RangeSearch, decode_error
    from cae_edge.quant import quantize

    report = RangeSearch()
    args = (small["decoder"], small["calib"], small["lq"])
    plain, _ = convert_decoder(*args)
    searched, _ = convert_decoder(*args, search_targets=small["calib_u8"], search_report=report)
    cq, tq = quantize(small["calib"], small["lq"]), quantize(small["test"], small["lq"])
    assert decode_error(plain, cq, small["calib_u8"]) == pytest.approx(report.before)
    assert decode_error(searched, cq, small["calib_u8"]) == pytest.approx(report.after)
    assert report.after < report.before - 0.01  # dB of mean per-image PSNR on the calibration digits
    assert report.factors and report.evaluations > len(report.factors)
    grid = {1.0, *FACTORS}
    allowed = {a * b for a, b in itertools.product(grid, (1.0, *FINE))}
    assert all(min(abs(f - a) for a in allowed) < 1e-9 for fs in report.factors.values() for f in fs)
    gain = decode_error(plain, tq, small["test_u8"]) - decode_error(searched, tq, small["test_u8"])
    assert gain > -0.02, f"searched ranges lost {-gain:.3f} dB on held-out digits"
