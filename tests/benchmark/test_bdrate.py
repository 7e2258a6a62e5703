"""Bjøntegaard delta rate / PSNR: known cases, analytic values, refusals, and the per-family rows."""

from __future__ import annotations

import numpy as np
import pytest

from cae_edge.benchmark import bdrate, curves
from cae_edge.benchmark.bdrate import bd_psnr, bd_rate

# a WebP-like anchor: bytes rising with PSNR, not a straight line in (PSNR, log bytes)
ANCHOR = ([87.0, 102.6, 115.2, 135.0, 167.2], [25.3, 27.4, 28.8, 32.3, 36.4])


def test_a_curve_against_itself_is_zero():
    for method in bdrate.METHODS:
        assert bd_rate(ANCHOR, ANCHOR, method).value == pytest.approx(0.0, abs=1e-9)
        assert bd_psnr(ANCHOR, ANCHOR, method).value == pytest.approx(0.0, abs=1e-9)


def test_half_the_bytes_is_minus_50_percent():
    rates, psnr = ANCHOR
    half = ([r * 0.5 for r in rates], psnr)
    for method in bdrate.METHODS:
        res = bd_rate(ANCHOR, half, method)
        assert res.value == pytest.approx(-50.0, abs=1e-9)
        assert (res.lo, res.hi) == (psnr[0], psnr[-1])
        assert bd_rate(half, ANCHOR, method).value == pytest.approx(100.0, abs=1e-9)


def test_one_db_more_is_plus_one_db_bd_psnr():
    rates, psnr = ANCHOR
    better = (rates, [p + 1.0 for p in psnr])
    for method in bdrate.METHODS:
        res = bd_psnr(ANCHOR, better, method)
        assert res.value == pytest.approx(1.0, abs=1e-9)
        assert (res.lo, res.hi) == pytest.approx((rates[0], rates[-1]))
        assert bd_rate(ANCHOR, better, method).value < 0  # fewer bytes for the same PSNR


def test_disjoint_ranges_give_none_and_say_why():
    low = ([4.0, 30.0, 70.0], [17.0, 22.0, 24.0])  # below the anchor in PSNR and in bytes
    res = bd_rate(ANCHOR, low)
    assert res.value is None and "PSNR ranges do not overlap" in res.reason and "extrapolation" in res.reason
    res = bd_psnr(ANCHOR, low)
    assert res.value is None and "byte ranges do not overlap" in res.reason
    # touching at one value is no range either
    assert bd_rate(ANCHOR, ([50.0, 80.0], [20.0, 25.3])).value is None


def test_bd_rate_without_bd_psnr_when_only_psnr_overlaps():
    """A family entirely below the anchor's smallest file: BD-rate over the shared PSNRs, no BD-PSNR."""
    fam = ([4.1, 30.7, 73.5], [17.85, 26.14, 28.61])
    rate, dpsnr = bd_rate(ANCHOR, fam), bd_psnr(ANCHOR, fam)
    assert rate.value is not None and rate.value < -30
    assert (rate.lo, rate.hi) == (25.3, 28.61)
    assert dpsnr.value is None


def test_too_few_or_unordered_points_give_none():
    one = ([100.0], [30.0])
    assert "1 point(s): pchip needs >= 2" in bd_rate(ANCHOR, one).reason
    three = ANCHOR[0][:3], ANCHOR[1][:3]
    assert "cubic needs >= 4" in bd_rate(ANCHOR, three, "cubic").reason
    assert bd_rate(ANCHOR, three, "pchip").value is not None  # 3 points are enough for PCHIP
    dominated = ([90.0, 100.0, 128.0], [25.5, 28.0, 22.0])  # more bytes, less PSNR: not one curve
    assert "not strictly increasing" in bd_rate(ANCHOR, dominated).reason
    assert "rate <= 0" in bd_rate(ANCHOR, ([0.0, 10.0], [20.0, 26.0])).reason
    assert "non-finite" in bd_psnr(ANCHOR, ([10.0, 20.0], [20.0, float("nan")])).reason
    with pytest.raises(ValueError, match="BD method 'spline'"):
        bd_rate(ANCHOR, ANCHOR, "spline")
    with pytest.raises(ValueError, match="equal-length"):
        bd_rate(ANCHOR, ([1.0, 2.0], [1.0]))


def test_analytic_value_for_straight_lines_in_log_bytes():
    """ln R = a + b·D: the log-rate gap is linear, so its mean over [D0, D1] is its value at the middle, and
    BD-rate = exp(Δa + Δb·(D0+D1)/2) - 1, whatever the sample points. Both methods fit lines exactly."""
    da = np.array([20.0, 24.0, 29.0, 33.0, 38.0])
    dt = np.array([18.0, 22.5, 27.0, 31.0, 35.0])
    a0, b0, a1, b1 = 1.0, 0.12, 0.4, 0.14
    anchor = (np.exp(a0 + b0 * da), da)
    test = (np.exp(a1 + b1 * dt), dt)
    lo, hi = 20.0, 35.0
    expected = np.expm1((a1 - a0) + (b1 - b0) * (lo + hi) / 2) * 100
    for method in bdrate.METHODS:
        res = bd_rate(anchor, test, method)
        assert res.value == pytest.approx(expected, rel=1e-9)
        assert (res.lo, res.hi) == (lo, hi)


def test_analytic_value_for_cubic_curves():
    """VCEG-M33's cubic fit is exact for cubic log-rate curves: ln R_t - ln R_a = 0.1·D - 2, whose mean over
    the overlap [22, 34] is 0.1·28 - 2 = 0.8, so BD-rate = e^0.8 - 1 = +122.55 %."""
    da = np.array([20.0, 23.0, 27.0, 31.0, 34.0, 36.0])
    dt = np.array([22.0, 25.0, 28.0, 30.0, 34.0])

    def lnr(d):
        return 0.0005 * d**3 - 0.02 * d**2 + 0.3 * d

    res = bd_rate((np.exp(lnr(da)), da), (np.exp(lnr(dt) + 0.1 * dt - 2), dt), "cubic")
    assert res.value == pytest.approx(np.expm1(0.8) * 100, rel=1e-9)
    assert res.value == pytest.approx(122.554, abs=1e-3)


def test_pchip_converges_to_the_continuous_bd_rate():
    """Densely sampled smooth curves: PCHIP's BD-rate approaches the integral of the true curves.

    ln R_a = e^(D/10), ln R_t = e^(D/10) - D/20 on [20, 30]: mean gap -25/20 = -1.25, BD-rate e^-1.25 - 1."""
    d = np.linspace(20, 30, 60)
    res = bd_rate((np.exp(np.exp(d / 10)), d), (np.exp(np.exp(d / 10) - d / 20), d))
    assert res.value == pytest.approx(np.expm1(-1.25) * 100, abs=1e-4)


def test_pchip_integral_matches_scipy():
    from scipy.interpolate import PchipInterpolator

    rng = np.random.default_rng(7)
    for n in (2, 3, 4, 6):
        for _ in range(50):
            x = np.sort(rng.uniform(0, 10, n))
            y = rng.normal(size=n) * 3
            lo, hi = np.sort(rng.uniform(x[0], x[-1], 2))
            ours = bdrate._pchip_integral(x, y, lo, hi)
            assert ours == pytest.approx(PchipInterpolator(x, y).integrate(lo, hi), rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- rows of a benchmark run


def _row(codec, setting, payload, total, psnr, dataset="mnist", compact=None):
    return curves.RDPoint(
        dataset, codec, setting, 100, payload, total, psnr, 0.9, 1.0, 0, bytes_compact=compact
    )


def test_pareto_drops_dominated_and_lossless_points():
    rows = [
        _row(curves.CAE_INT8, "mnist-hq", 73.5, 97.5, 28.6),
        _row(curves.CAE_INT8, "mnist", 128.0, 152.0, 22.0),  # more bytes, less PSNR than hq
        _row(curves.CAE_INT8, "mnist-tiny", 4.1, 28.1, 17.9),
        _row(curves.PNG, "lossless", 217.0, 274.0, 100.0),
    ]
    front, rest = bdrate.pareto(rows, "payload")
    assert [r.setting for r in front] == ["mnist-tiny", "mnist-hq"]
    assert {r.setting for r in rest} == {"mnist", "lossless"}


def test_family_deltas_for_each_anchor_and_byte_count():
    webp = [(q, 80.0 + 10 * i, 25.0 + 2 * i) for i, q in enumerate((1, 5, 10, 25))]
    rows = [_row(curves.WEBP, f"q={q}", b, b + 27, p) for q, b, p in webp]
    # the family needs half WebP's payload at the same PSNR; with headers (24 B vs 27 B) less is saved
    rows += [_row(curves.CAE_INT8, f"b{i}", b / 2, b / 2 + 24, p) for i, (_, b, p) in enumerate(webp)]
    rows.append(_row(curves.CAE_INT8, "plain", 128.0, 152.0, 22.0))
    rows.append(_row(curves.WEBP, "q=1", 90.0, 117.0, 26.0, dataset="fashion"))  # no family on fashion
    out = bdrate.family_deltas(rows)
    assert [(d.dataset, d.anchor, d.bytes_counted) for d in out] == [
        ("mnist", "webp", "payload"),
        ("mnist", "webp", "total"),
        ("mnist", "jpegxl", "payload"),
        ("mnist", "jpegxl", "total"),
    ]
    pay, tot, jxl = out[0], out[1], out[2]
    assert pay.bd_rate == pytest.approx(-50.0) and pay.family == ["b0", "b1", "b2", "b3"]
    assert pay.psnr_range == [25.0, 31.0] and pay.points == 4 and pay.anchor_points == 4
    assert pay.dropped == [f"{curves.CAE_INT8}: plain"]
    assert pay.bd_psnr is None and pay.bytes_range is None  # 40-55 B against 80-110 B
    assert pay.reason.startswith("BD-PSNR: byte ranges do not overlap") and "BD-rate" not in pay.reason
    assert -50.0 < tot.bd_rate < 0  # 24 B of packet header vs 27 B of file header on half the data
    assert jxl.bd_rate is None and jxl.bd_psnr is None and jxl.reason == "no jpegxl rows on mnist"


def test_narrow_overlap_gets_a_caveat_in_tables():
    from cae_edge.benchmark.report import bd_note

    assert bd_note([23.90, 24.03], "").startswith("narrow overlap (0.13 dB)")
    assert bd_note([25.3, 28.6], "") == ""
    assert bd_note(None, "BD-rate: no webp rows") == "BD-rate: no webp rows"


def test_wire_count_uses_compact_frames_against_whole_files():
    """``wire``: the family's compact frames (payload + 4 B) against WebP's whole files; between payload and
    total, and absent when a family row has no compact figure."""
    webp = [(q, 80.0 + 10 * i, 25.0 + 2 * i) for i, q in enumerate((1, 5, 10, 25))]
    rows = [_row(curves.WEBP, f"q={q}", b, b + 27, p) for q, b, p in webp]
    fam = [
        _row(curves.CAE_INT8, f"b{i}", b / 2, b / 2 + 24, p, compact=b / 2 + 4)
        for i, (_, b, p) in enumerate(webp)
    ]
    by = {d.bytes_counted: d for d in bdrate.family_deltas(rows + fam, anchors=(curves.WEBP,))}
    assert list(by) == ["payload", "total", "wire"]
    # 4 B per frame against 27 B of file header saves more than the payloads alone; 24 B saves less
    assert by["payload"].bd_rate == pytest.approx(-50.0)
    assert by["wire"].bd_rate < by["payload"].bd_rate < by["total"].bd_rate < 0
    assert bdrate.row_bytes(fam[0], "wire") == fam[0].bytes_compact
    assert bdrate.row_bytes(rows[0], "wire") == rows[0].bytes_total
    fam[0] = _row(curves.CAE_INT8, "b0", 40.0, 64.0, 25.0)  # no compact figure: no wire row
    assert [d.bytes_counted for d in bdrate.family_deltas(rows + fam, anchors=(curves.WEBP,))] == [
        "payload",
        "total",
    ]
