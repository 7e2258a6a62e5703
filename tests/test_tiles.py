"""Tiled frames: the tiled payload format, split/join, the node's tiled encoder, and the seam metric, on real
photographs (the held-out scenes test photographs)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cae_edge import metrics, scenes, tiles, wire
from cae_edge.device.bundle import load_bundle
from cae_edge.device.sender import send_pipeline
from cae_edge.errors import ConfigError, PacketError


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Eight 112x112 frames cut from the held-out photographs the way the node sees them."""
    photos = [scenes.read_photo(scenes.photo_path(p)) for p in scenes.TEST_PHOTOS[:4]]
    x, _ = scenes.make_frames(photos, 8, seed=0, split=1, size=112)
    return x


def test_grids_parse_and_bad_ones_are_refused() -> None:
    assert tiles.parse_grid(4) == (4, 4)
    assert tiles.parse_grid("2x3") == (2, 3)
    assert tiles.parse_grid(" 5X1 ") == (5, 1)
    for bad in ("0", "256", "2x", "axb", "2x3x4", "-1", ""):
        with pytest.raises(ConfigError, match="use N"):
            tiles.parse_grid(bad)


def test_split_and_join_are_inverse_on_a_photograph(frames) -> None:
    img = frames[0]
    parts = tiles.split_tiles(img, 4, 4)
    assert len(parts) == 16 and all(p.shape == (28, 28) for p in parts)
    np.testing.assert_array_equal(parts[5], img[28:56, 28:56])  # row 1, column 1: row-major
    np.testing.assert_array_equal(tiles.join_tiles(parts, 4, 4), img)
    np.testing.assert_array_equal(tiles.join_tiles(tiles.split_tiles(img[:56], 2, 4), 2, 4), img[:56])
    with pytest.raises(ConfigError, match="needs \\(84, 84\\)"):
        tiles.split_tiles(img, 3, 3)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    data=st.data(),
)
def test_payload_round_trip(rows: int, cols: int, data) -> None:
    parts = [data.draw(st.binary(max_size=200)) for _ in range(rows * cols)]
    packed = tiles.pack_tiles(parts, rows, cols)
    assert tiles.unpack_tiles(packed) == (rows, cols, parts)
    fixed = [data.draw(st.binary(min_size=9, max_size=9)) for _ in range(rows * cols)]
    packed = tiles.pack_tiles(fixed, rows, cols, fixed=9)
    assert len(packed) == 2 + 9 * rows * cols  # int8 tiles: no lengths
    assert tiles.unpack_tiles(packed, fixed=9) == (rows, cols, fixed)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([None, 4, 64]))
def test_garbage_payloads_raise_packet_error_only(data: bytes, fixed: int | None) -> None:
    try:
        rows, cols, parts = tiles.unpack_tiles(data, fixed=fixed)
    except PacketError as e:
        assert e.reason == "tiles"
    else:
        assert rows * cols == len(parts) and rows >= 1 and cols >= 1


def test_bad_payloads_name_what_is_wrong() -> None:
    good = tiles.pack_tiles([b"ab", b"", b"cde", b"f"], 2, 2)
    for bad, match in (
        (b"", "shorter than its 2-byte grid"),
        (b"\x00\x02", "a side of 0"),
        (good[:-1], "add up to"),
        (good + b"x", "add up to"),
        (good[:4], "add up to|truncated"),
        (b"\x01\x01\xff\xff\xff", "bad or truncated tile length"),
        (tiles.pack_tiles([b"abc"] * 4, 2, 2, fixed=3)[:-1], "want 14"),
    ):
        with pytest.raises(PacketError, match=match) as e:
            tiles.unpack_tiles(bad, fixed=3 if match == "want 14" else None)
        assert e.value.reason == "tiles"


def test_packing_refuses_grids_that_do_not_fit() -> None:
    with pytest.raises(PacketError, match="grid 0x2"):
        tiles.pack_tiles([], 0, 2)
    with pytest.raises(PacketError, match="3 payloads for a 2x2 grid"):
        tiles.pack_tiles([b""] * 3, 2, 2)
    with pytest.raises(PacketError, match="all must be 4"):
        tiles.pack_tiles([b"abcd", b"abc"], 1, 2, fixed=4)
    # 256 tiles of 256 bytes: 65,538 bytes, over a packet's payload
    with pytest.raises(PacketError, match="came to 65538 bytes, over a packet's 65535; use fewer tiles"):
        tiles.pack_tiles([bytes(256)] * 256, 16, 16, fixed=256)
    assert len(tiles.pack_tiles([bytes(128)] * 256, 16, 16, fixed=128)) == 2 + 128 * 256  # 16x16 int8 fits


def test_tiled_packets_round_trip_and_untiled_stay_byte_identical() -> None:
    sid = wire.sender_id("cam1")
    plain = wire.Packet(b"\x01\x02\x03\x04", sid, 7, 123, b"payload", wire.PayloadKind.ENTROPY, "cam1", 5)
    packed = wire.pack(plain)
    assert packed[3] == 0x01 | 0x04 | 0x08  # kind, name, epoch: no tiled bit
    tiled = wire.Packet(b"\x01\x02\x03\x04", sid, 7, 123, b"payload", wire.PayloadKind.ENTROPY, tiled=True)
    data = wire.pack(tiled)
    assert data[3] == 0x11 and wire.unpack(data) == tiled and not wire.unpack(packed).tiled
    # a receiver from before tiles treated bit 4 as reserved: it refused these packets (reason "flags")
    assert data[3] & 0xF0


def test_compact_frames_carry_the_sessions_tiling() -> None:
    sid = wire.sender_id("cam1")
    session = wire.Packet(b"abcd", sid, 10, 1000, b"s", wire.PayloadKind.INT8, "cam1", 1, tiled=True)
    p = wire.Packet(b"abcd", sid, 11, 2000, b"frame", wire.PayloadKind.INT8, tiled=True)
    assert wire.compact_fits(p, session, 100)
    back = wire.expand(wire.unpack_compact(wire.pack_compact(p, session, check=True, with_id=True)), session)
    assert back == p and back.tiled
    untiled = wire.Packet(b"abcd", sid, 11, 2000, b"frame", wire.PayloadKind.INT8)
    assert not wire.compact_fits(untiled, session, 100)
    with pytest.raises(PacketError, match="send a full packet"):
        wire.pack_compact(untiled, session, check=True, with_id=True)


@pytest.mark.parametrize("name", ["scenes-small", "scenes-tiny"])
def test_tiled_encoder_codes_each_tile_with_the_bundle(name: str, frames) -> None:
    b = load_bundle(name)
    tx = send_pipeline(b, tiles=4)
    enc, dec = b.encoder(), b.decoder()
    assert tx.preprocess.spec.size == 112 and tx.tiles == 4
    img = frames[1]
    payload = tx.encoder.encode(img)
    rows, cols, parts = tiles.unpack_tiles(payload)
    assert (rows, cols) == (4, 4)
    assert parts == [enc.encode(t) for t in tiles.split_tiles(img, 4, 4)]
    whole = tiles.decode_tiled(dec, payload)
    expect = tiles.join_tiles([dec.decode(p) for p in parts], 4, 4)
    np.testing.assert_array_equal(whole, expect)
    # the decoded frame is this photograph's, not another's
    assert metrics.psnr_per_image(img, whole)[0] > metrics.psnr_per_image(frames[0], whole)[0] + 3


def test_tiles_are_refused_where_they_do_not_apply() -> None:
    with pytest.raises(ConfigError, match="centres one object per frame"):
        send_pipeline("mnist", tiles=4)
    with pytest.raises(ConfigError, match="tiles 17: use N = 1 .. 16"):
        send_pipeline("scenes-tiny", tiles=17)
    assert send_pipeline("mnist", tiles=1).tiles == 1  # no tiles: as before


def test_seam_mask_covers_inner_borders_only() -> None:
    m = tiles.seam_mask(112, 112)
    assert m[26:30, 50].all() and m[50, 82:86].all()  # 2 px either side of borders at 28 and 84
    assert not m[:26, :26].any() and not m[0, 0] and not m[111, 111]  # frame edges are not seams
    assert m.sum() == 112 * 112 - (112 - 12) ** 2  # 3 inner borders x 4 px per axis
    assert not tiles.seam_mask(28, 28).any()


def test_seam_metric_sees_errors_on_the_seams(frames) -> None:
    img = frames[2]
    noisy_seams = img.astype(np.int16)
    mask = tiles.seam_mask(112, 112)
    noisy_seams[mask] += np.where((np.indices(img.shape).sum(0) % 2)[mask] == 0, 20, -20).astype(np.int16)
    noisy_seams = np.clip(noisy_seams, 0, 255).astype(np.uint8)
    seam, interior = tiles.seam_psnr(img, noisy_seams)
    assert interior == metrics.PSNR_CAP and seam < 30  # the damage is on the seams only, and it shows
    seam, interior = tiles.seam_psnr(img, img)
    assert seam == interior == metrics.PSNR_CAP
    with pytest.raises(ValueError, match="no inner tile border"):
        tiles.seam_psnr(img[:28, :28], img[:28, :28])
