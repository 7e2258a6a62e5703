"""Benchmark library: codec byte counting, latency statistics, model size, RD rows and the JSON schema."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cae_edge import datasets, metrics
from cae_edge.benchmark import (
    SCHEMA,
    BenchmarkOptions,
    codecs,
    curves,
    latency,
    report,
    run_benchmark,
    validate,
)
from cae_edge.device.bundle import load_bundle
from cae_edge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mnist():
    return datasets.load("mnist")


@pytest.fixture(scope="module")
def bundle():
    return load_bundle("mnist")


@pytest.fixture(scope="module")
def tiny_report():
    """A real run on the shipped MNIST bundle: 30 images, 20 runs, one thread, short sweeps."""
    opts = BenchmarkOptions(
        bundles=["mnist"], threads=[1], runs=20, warmup=2, limit=30,
        jpeg_qualities=[10, 50], webp_qualities=[1, 50], jpegxl_distances=[8, 20], pca_dims=[8],
    )  # fmt: skip
    return run_benchmark(opts)


# ---------------------------------------------------------------- codecs


@pytest.mark.parametrize("quality", [5, 50, 90])
def test_jpeg_bytes_are_the_real_buffer(mnist, quality):
    for img in mnist.x_test[:5]:
        enc = codecs.jpeg(img, quality)
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
        assert enc.data == buf.getvalue()
        assert len(enc.data) == len(buf.getvalue())
        # the scan sits between the SOS header and EOI
        assert 0 < enc.payload_bytes < len(enc.data)
        assert enc.data.endswith(b"\xff\xd9")
        decoded = np.asarray(Image.open(io.BytesIO(enc.data)).convert("L"))
        np.testing.assert_array_equal(enc.decoded, decoded)


def test_jpeg_stripped_header_is_the_same_for_every_image(mnist):
    """What header stripping removes must be reconstructible by a receiver that knows the quality."""
    heads, tails = set(), set()
    for img in mnist.x_test[:20]:
        enc = codecs.jpeg(img, 20)
        head_len = len(enc.data) - 2 - enc.payload_bytes
        heads.add(enc.data[:head_len])
        tails.add(enc.data[-2:])
    assert len(heads) == 1 and len(tails) == 1


@pytest.mark.parametrize("quality", [1, 50])
def test_webp_bytes_are_the_real_buffer(mnist, quality):
    for img in mnist.x_test[:5]:
        enc = codecs.webp(img, quality)
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, "WEBP", quality=quality, method=6, lossless=False)
        assert enc.data == buf.getvalue()
        (riff_size,) = np.frombuffer(enc.data[4:8], dtype="<u4")
        assert riff_size == len(enc.data) - 8
        chunks = codecs.riff_chunks(enc.data)
        assert [c[0] for c in chunks] == [b"VP8 "]
        assert enc.payload_bytes == chunks[0][2] - 7


def test_webp_stripped_bytes_are_constant_or_lengths(mnist):
    """Removed bytes: RIFF/chunk headers (sizes follow from the length) + constant start code and size."""
    consts = set()
    for img in mnist.x_test[:20]:
        d = codecs.webp(img, 10).data
        consts.add(d[0:4] + d[8:16] + d[23:30])  # 'RIFF', 'WEBPVP8 ', start code + 28x28
    assert len(consts) == 1


@pytest.mark.parametrize("distance", [4.0, 25.0])
def test_jpegxl_bytes_are_the_real_buffer(mnist, distance):
    import imagecodecs

    for img in mnist.x_test[:5]:
        enc = codecs.jpegxl(img, distance)
        data = imagecodecs.jpegxl_encode(img, distance=distance, effort=codecs.JPEGXL_EFFORT)
        assert enc.data == bytes(data) and enc.data[:2] == b"\xff\x0a"  # a bare codestream
        np.testing.assert_array_equal(enc.decoded, imagecodecs.jpegxl_decode(data))
        # 28x28 8-bit gray: signature 2 + SizeHeader/ImageMetadata/transform data 6 (bit-packed)
        assert enc.payload_bytes == len(enc.data) - 8


def test_jpegxl_stripped_header_is_the_same_for_every_image_and_distance(mnist):
    """A receiver that knows the image size rebuilds the header; the next byte (frame header) may differ."""
    heads, sizes = set(), set()
    for img in (*mnist.x_test[:10], np.zeros((28, 28), np.uint8), np.full((28, 28), 255, np.uint8)):
        for d in (1.0, 8.0, 25.0):
            data = codecs.jpegxl(img, d).data
            head, size = codecs.jpegxl_header_bytes(data)
            heads.add(data[:head])
            sizes.add(size)
    assert len(heads) == 1 and sizes == {(28, 28)}


def test_jpegxl_header_parser_reads_other_sizes_and_refuses_what_it_does_not_know(mnist):
    import imagecodecs

    rng = np.random.default_rng(0)
    for shape in ((32, 40), (100, 37), (256, 256)):  # small (multiple of 8) and U32 sizes, aspect ratios
        data = imagecodecs.jpegxl_encode(rng.integers(0, 256, shape, dtype=np.uint8), distance=2.0)
        assert codecs.jpegxl_header_bytes(data)[1] == shape
    with pytest.raises(ValueError, match="not a bare JPEG XL codestream"):
        codecs.jpegxl_header_bytes(b"\x00\x00\x00\x0cJXL \r\n\x87\n")  # the ISO BMFF container
    data = bytearray(codecs.jpegxl(mnist.x_test[0], 8.0).data)
    with pytest.raises(ValueError, match="runs past the end"):
        codecs.jpegxl_header_bytes(bytes(data[:5]))
    # bit 32: ImageMetadata.extra_fields (after the 16-bit signature, 15-bit SizeHeader, all_default = 0)

    data[4] |= 1
    with pytest.raises(ValueError, match="extra fields"):
        codecs.jpegxl_header_bytes(bytes(data))


def test_png_is_lossless_and_counts_idat(mnist):
    img = mnist.x_test[0]
    enc = codecs.png(img)
    np.testing.assert_array_equal(enc.decoded, img)
    assert 0 < enc.payload_bytes < len(enc.data)
    assert len(enc.data) - enc.payload_bytes == 8 + 25 + 12 + 12  # signature, IHDR, one IDAT header+CRC, IEND


def test_header_parsers_reject_other_formats():
    with pytest.raises(ValueError):
        codecs.jpeg_scan_bytes(b"\x89PNG....")
    with pytest.raises(ValueError):
        codecs.webp_payload_bytes(b"RIFF\x00\x00\x00\x00WAVE")
    with pytest.raises(ValueError):
        codecs.png_idat_bytes(b"\xff\xd8\xff")


def test_codecs_reject_bad_input_and_settings():
    with pytest.raises(ConfigError, match="expected"):
        codecs.jpeg(np.zeros((28, 28), np.float32), 50)
    with pytest.raises(ConfigError, match="quality 0"):
        codecs.jpeg(np.zeros((28, 28), np.uint8), 0)
    with pytest.raises(ConfigError, match="quality 101"):
        codecs.webp(np.zeros((28, 28), np.uint8), 101)
    with pytest.raises(ConfigError, match="JPEG XL distance 30"):
        codecs.jpegxl(np.zeros((28, 28), np.uint8), 30)
    with pytest.raises(ConfigError, match="JPEG XL effort 11"):
        codecs.jpegxl(np.zeros((28, 28), np.uint8), 8, effort=11)


@pytest.mark.slow
def test_pca_int8_uses_k_bytes_and_improves_with_k(mnist):
    pca = codecs.PCA.fit(mnist.x_train[:2000], 64)
    test = mnist.x_test[:200]
    q = pca.quantize(test, 16)
    assert q.dtype == np.int8 and q.shape == (200, 16)
    psnr = [metrics.psnr_per_image(test, pca.roundtrip_int8(test, k)).mean() for k in (4, 16, 64)]
    assert psnr[0] < psnr[1] < psnr[2]
    # int8 coefficients lose little against float ones
    float64 = metrics.psnr_per_image(test, pca.roundtrip_float(test, 64)).mean()
    assert float64 - 1.0 < psnr[2] <= float64 + 0.05
    with pytest.raises(ConfigError, match="PCA dims 65"):
        pca.quantize(test, 65)


# ---------------------------------------------------------------- latency


def test_latency_stats_percentiles_ordered():
    rng = np.random.default_rng(0)
    s = latency.LatencyStats.from_ns(rng.lognormal(10, 1, size=1000).astype(np.int64))
    assert s.min_us <= s.p50_us <= s.p95_us <= s.p99_us <= s.max_us
    assert s.runs == 1000
    assert latency.LatencyStats.from_ns([5000]).p99_us == 5.0
    with pytest.raises(ValueError):
        latency.LatencyStats.from_ns([])


def test_time_model_on_real_encoder(bundle, mnist):
    from cae_edge.quant import pixels_to_int8

    m = latency.time_model(
        bundle.model_bytes("encoder"), pixels_to_int8(mnist.x_test[0]), name="encoder", runs=30, warmup=3
    )
    s = m.stats
    assert m.precision == "int8" and m.threads == 1 and s.runs == 30
    assert 0 < s.min_us <= s.p50_us <= s.p95_us <= s.p99_us <= s.max_us
    assert m.init_us > 0 and m.first_us > 0
    with pytest.raises(ConfigError, match="does not fit"):
        latency.time_model(bundle.model_bytes("encoder"), np.zeros(10, np.int8), name="encoder", runs=1)


def test_model_size_counts_weights(bundle):
    data = bundle.model_bytes("encoder")
    z = latency.model_size(data, "encoder", "encoder.tflite")
    assert z.bytes == len(data)
    assert z.params and z.weight_bytes and z.weight_bytes < z.bytes
    # int8 weights + int32 biases: at least one byte per parameter, at most four
    assert z.params <= z.weight_bytes <= 4 * z.params
    assert z.input["dtype"] == "int8" and z.output["shape"] == [1, bundle.latent_dim]
    assert "CONV_2D" in z.ops or "FULLY_CONNECTED" in z.ops
    zf = latency.model_size(bundle.model_bytes("encoder_float"), "encoder_float")
    assert zf.params == z.params  # same network, different precision


# ---------------------------------------------------------------- RD rows


def test_batched_ssim_equals_scikit_image(mnist):
    rng = np.random.default_rng(1)
    x = mnist.x_test[:40]
    y = np.clip(x + rng.normal(0, 25, x.shape), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(curves.ssim_batch(x, y), metrics.ssim_per_image(x, y), rtol=0, atol=1e-12)
    np.testing.assert_allclose(curves.ssim_batch(x, x), 1.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        curves.ssim_batch(x, y[:3])


def test_identical_images_report_the_cap(mnist):
    imgs = mnist.x_test[:10]
    p = curves.score("mnist", "png", "lossless", imgs, imgs.copy(), 100, 120)
    assert p.psnr == metrics.PSNR_CAP and p.capped == 10 and p.mse == 0.0 and p.ssim == pytest.approx(1.0)
    png = curves.codec_points(
        "mnist", imgs, mnist.x_train[:500], jpeg_qualities=[], webp_qualities=[], pca_dims=[]
    )
    lossless = [r for r in png if r.codec == curves.PNG][0]
    assert lossless.psnr == metrics.PSNR_CAP and lossless.capped == 10
    assert json.loads(json.dumps(report._finite({"psnr": float("inf")}))) == {"psnr": None}


def test_codec_points_bytes_match_encoded_buffers(mnist):
    imgs = mnist.x_test[:8]
    rows = curves.codec_points(
        "mnist", imgs, mnist.x_train[:300], jpeg_qualities=[30], webp_qualities=[30],
        jpegxl_distances=[8], pca_dims=[],
    )  # fmt: skip
    by = {r.codec: r for r in rows}
    assert by["jpegxl"].setting == "d=8"
    jxl = [codecs.jpegxl(i, 8) for i in imgs]
    assert by["jpegxl"].bytes_total == pytest.approx(np.mean([len(e.data) for e in jxl]))
    assert by["jpegxl"].bytes_payload == pytest.approx(np.mean([e.payload_bytes for e in jxl]))
    assert by["jpeg"].bytes_total == pytest.approx(np.mean([len(codecs.jpeg(i, 30).data) for i in imgs]))
    assert by["webp"].bytes_total == pytest.approx(np.mean([len(codecs.webp(i, 30).data) for i in imgs]))
    assert by["jpeg"].bytes_payload < by["jpeg"].bytes_total
    assert all(r.images == 8 for r in rows)


def test_bundle_points_count_payload_and_packet(bundle, mnist):
    from cae_edge import wire

    rows = curves.bundle_points(bundle, "mnist", "mnist", mnist.x_test[:20])
    int8 = [r for r in rows if r.codec == curves.CAE_INT8][0]
    assert int8.bytes_payload == bundle.bytes_per_image
    assert int8.bytes_total == bundle.bytes_per_image + wire.OVERHEAD_BYTES
    # compact frames on a CURVE link: 4 bytes each, a full session packet every 100 frames
    assert int8.bytes_compact == pytest.approx(bundle.bytes_per_image + wire.compact_overhead(frames=100))
    assert bundle.bytes_per_image + 4 < int8.bytes_compact < bundle.bytes_per_image + 5
    q = bundle.manifest.quality["tflite_int8"]["psnr"]
    assert abs(int8.psnr - q) < 3.0  # same model as the export-time check, on a subset
    flt = [r for r in rows if r.codec == curves.CAE_FLOAT][0]
    assert flt.bytes_payload == 4 * bundle.latent_dim
    assert flt.bytes_compact is None


# ---------------------------------------------------------------- report


@pytest.mark.slow
def test_report_json_matches_schema(tiny_report, tmp_path):
    path = tmp_path / "r.json"
    tiny_report.to_json(path)
    d = json.loads(path.read_text())
    assert validate(d) == []
    assert d["schema_version"] == report.SCHEMA_VERSION
    b = d["bundles"][0]
    models = {m["model"] for m in b["latency"]}
    assert {"encoder", "decoder", "encoder_float", "decoder_float"} <= models
    for m in b["latency"] + b["paths"]:
        s = m["stats"]
        assert s["min_us"] <= s["p50_us"] <= s["p95_us"] <= s["p99_us"] <= s["max_us"]
    assert {p["path"] for p in b["paths"]} == {"sender", "receiver"}
    steps = [p["steps"] for p in b["paths"] if p["path"] == "sender"]
    assert any("480x640 BGR" in st for st in steps) and any("480x640 Y plane" in st for st in steps)
    codecs_seen = {r["codec"] for r in d["rd"]}
    assert {"cae-edge int8", "cae-edge tflite-float", "jpeg", "webp", "png", "pca-int8"} <= codecs_seen
    assert {r["setting"] for r in d["rd"] if r["codec"] == "pca-int8"} == {"k=8", f"k={b['latent_dim']}"}
    assert {r["setting"] for r in d["rd"] if r["codec"] == "jpegxl"} == {"d=8", "d=20"}
    # one bundle is one point: no curve, so every delta is undefined and says why
    assert [(x["anchor"], x["bytes_counted"]) for x in d["bd"]] == [
        ("webp", "payload"), ("webp", "total"), ("webp", "wire"),
        ("jpegxl", "payload"), ("jpegxl", "total"), ("jpegxl", "wire"),
    ]  # fmt: skip
    assert all(x["bd_rate"] is None and "1 point(s)" in x["reason"] for x in d["bd"])
    assert d["peak_rss_bytes"] > 0 and d["system"]["cores"] >= 1


@pytest.mark.slow
def test_markdown_summary(tiny_report):
    md = report.markdown(tiny_report.to_dict())
    assert "| mnist | encoder | int8 | 1 |" in md
    assert "**cae-edge int8**" in md and "| jpeg | q=10 |" in md and "| jpegxl | d=8 |" in md
    assert "Bjøntegaard delta of the cae-edge int8 family (mnist; pchip" in md
    assert "| webp | payload | **n/a** |" in md
    assert md.count("\n| ") > 10


@pytest.mark.slow
def test_validate_finds_missing_and_mistyped_fields(tiny_report):
    d = tiny_report.to_dict()
    del d["rd"][0]["psnr"]
    d["bundles"][0]["latency"][0]["stats"]["p50_us"] = "fast"
    d["system"]["cores"] = True
    problems = validate(d)
    assert any("rd[0].psnr: missing" in p for p in problems)
    assert any("stats.p50_us: str" in p for p in problems)
    assert any("system.cores: bool" in p for p in problems)


def test_schema_is_documented():
    doc = (ROOT / "docs" / "benchmark-schema.md").read_text()
    assert (
        f"schema_version` | int | {report.SCHEMA_VERSION}" in doc or f"version {report.SCHEMA_VERSION}" in doc
    )
    for kind, fields in SCHEMA.items():
        for name in fields:
            assert f"`{name}`" in doc, f"{kind}.{name} is not documented in docs/benchmark-schema.md"


@pytest.mark.slow
def test_tables_and_plot(tiny_report, tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200)
    for t in report.tables(tiny_report):
        console.print(t)
    text = console.export_text()
    assert "cae-edge int8" in text and "p50" in text and "encoder.tflite" in text
    assert "Bjøntegaard delta" in text and "jpegxl" in text
    out = report.plot(tiny_report, tmp_path / "rd.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.size[0] > 1000


def test_options_are_validated():
    for bad, match in (
        (dict(bundles=[]), "no bundle"),
        (dict(runs=0), "runs 0"),
        (dict(limit=0), "limit 0"),
        (dict(threads=[0]), "threads"),
        (dict(dataset="cifar"), "cifar"),
    ):
        with pytest.raises(ConfigError, match=match):
            BenchmarkOptions(**bad).validate()
    assert BenchmarkOptions(threads=[1, 1, 2]).thread_counts() == [1, 2]


@pytest.mark.slow
def test_litert_tool_cross_check_runs(bundle, mnist):
    """LiteRT's own benchmark script ships with ai-edge-litert and gives a figure for our file."""
    from cae_edge.quant import pixels_to_int8

    assert latency.litert_tool_available()
    t = latency.compare_with_tool(
        bundle.path / "encoder.tflite", "encoder", 1, pixels_to_int8(mnist.x_test[0]), 50, 5, repeats=1
    )
    assert t.error == ""
    assert t.tool_median_us is not None and t.tool_median_us > 0
    assert t.compiled_model_p50_us is not None and t.compiled_model_p50_us > 0
    assert t.ratio == pytest.approx(t.ours_p50_us / t.tool_median_us)


@pytest.mark.parametrize("name", ["mnist", "mnist-tiny"])  # mnist-tiny: a run config of the older schema
def test_keras_run_is_used_only_when_it_is_the_bundles_run(name, tmp_path, monkeypatch):
    from cae_edge.benchmark.run import _keras_run_dir

    bundle = load_bundle(name)
    run = tmp_path / "run"
    run.mkdir()
    for f in ("encoder.keras", "decoder.keras"):
        (run / f).write_bytes(b"x")
    train = dict(bundle.manifest.train)
    train["train"] = dict(train.get("train") or {}, out_dir=str(run))
    monkeypatch.setattr(bundle.manifest, "train", train)
    (run / "config.json").write_text(json.dumps(train))
    assert _keras_run_dir(bundle, BenchmarkOptions()) == run
    retrained = dict(train, created="2031-01-01T00:00:00+00:00")
    (run / "config.json").write_text(json.dumps(retrained))
    assert _keras_run_dir(bundle, BenchmarkOptions()) is None
    (run / "config.json").write_text("{")
    assert _keras_run_dir(bundle, BenchmarkOptions()) is None
    assert _keras_run_dir(bundle, BenchmarkOptions(keras_run=str(tmp_path))) == tmp_path


def test_coding_paths_time_the_entropy_coder_and_count_escapes(bundle, mnist):
    from cae_edge.benchmark.run import _coding_paths

    coded = load_bundle("mnist-tiny")
    opts = BenchmarkOptions(runs=5, warmup=1)
    test = mnist.x_test[:40]
    rows, escaped = _coding_paths(coded, test, opts)
    # the bundle's coder (compiled: numba is a dev dependency), then the pure one a node without numba uses
    assert [r.path for r in rows] == ["sender", "receiver"] * 2
    impl = coded.codec().impl
    assert impl.startswith("numba ")
    assert f"entropy encode, {impl}:" in rows[0].steps and f"entropy decode, {impl}:" in rows[1].steps
    assert "entropy encode, python:" in rows[2].steps and "entropy decode, python:" in rows[3].steps
    assert all(r.stats.runs == 5 and r.stats.mean_us > 0 for r in rows)
    enc, model = coded.encoder(), coded.codec().model
    assert escaped == sum(model.outside(enc.encode_latent(img)) for img in test)
    assert f"{escaped} values escaped" in rows[0].steps
    assert _coding_paths(bundle, test, opts) == ([], 0)  # raw int8 payloads: nothing to time


def test_y_plane_frame_is_a_picamera2_like_luma_view(mnist):
    """The benchmark's Y-plane frame: 2-D uint8, the top of a YUV420-sized buffer, equal to the BGR frame's
    luma, and preprocessed to the same 28x28 input as that BGR frame."""
    import cv2

    from cae_edge.benchmark.run import _camera_frame, _y_plane
    from cae_edge.device.preprocess import Preprocessor

    bgr = _camera_frame(mnist.x_test[0], (240, 330), invert=True)
    y = _y_plane(bgr)
    assert y.shape == (240, 330) and y.dtype == np.uint8 and y.base.shape == (360, 384)
    np.testing.assert_array_equal(y, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    pre = Preprocessor({"invert": True, "mnist_normalize": True})
    np.testing.assert_array_equal(pre(y), pre(bgr))
