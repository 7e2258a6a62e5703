"""Frames bigger than 28x28: a grid of 28x28 tiles, each coded with the same bundle, sent as ONE packet.

Pure functions on bytes and numpy arrays (no device, LiteRT or TensorFlow imports); the node and the receiver
plug in their own per-tile encoder and decoder::

    node:      (28R)x(28C) u8 ─ split_tiles ─► R*C tiles ─ Encoder.encode each ─► pack_tiles ─► one payload
    receiver:  payload ─ unpack_tiles ─► R*C tile payloads ─ Decoder.decode each ─► join_tiles ─► one image

A tiled payload rides in a packet whose flag bit 4 is set (:attr:`cae_edge.wire.Packet.tiled`); receivers
older than it refuse such packets (reason ``flags``), and untiled packets are byte-identical to before.
Tiled payload layout, version 1::

    size      field
    1         rows     tile rows, 1..255
    1         cols     tile columns, 1..255
    [varint]  lengths  one per tile (row-major), LEB128 like the compact frames; absent for int8 payloads,
                       whose tiles are all ``latent_dim`` bytes (the receiver knows it from its bundle)
    ...       tiles    the tile payloads, row-major, each exactly what the bundle's codec makes of one 28x28
                       tile (int8 latent or entropy-coded); nothing follows the last one

A packet's payload holds at most 65,535 bytes (:data:`cae_edge.wire.MAX_PAYLOAD`): a 16x16 grid of
128-byte int8 latents (32 KB) fits, and :func:`pack_tiles` says so with the grid and the size when a grid
does not.

:func:`unpack_tiles` raises :class:`~cae_edge.errors.PacketError` with reason ``tiles`` for every malformed
payload (a receiver counts it, as any refused payload).

Seam visibility (:func:`seam_mask`, :func:`seam_psnr`): tiles are coded independently, so errors can jump
at tile borders; the benchmark compares PSNR over the pixels within ``width`` pixels of an inner tile border
(the seams) with PSNR over the rest (the tile interiors).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .errors import ConfigError, PacketError
from .metrics import PSNR_CAP
from .wire import read_varint, varint

TILE = 28
"""Tile side in pixels (the bundles' input)."""
MAX_SIDE = 255
"""Most tiles per grid side the payload header can say (one byte each)."""
MAX_PAYLOAD = 0xFFFF
"""A packet's payload limit (``wire.MAX_PAYLOAD``)."""
MAX_NODE_TILES = 16
"""Largest N a node accepts for an NxN grid (448x448 pixels; 256 tiles of up to 128 bytes fit a packet)."""
SEAM_WIDTH = 2
"""Pixels either side of an inner tile border that count as seam."""


class TileEncoder(Protocol):
    """Encodes one 28x28 uint8 tile to its payload (:class:`cae_edge.device.bundle.Encoder`)."""

    def encode(self, image_u8: np.ndarray) -> bytes: ...


class TileDecoder(Protocol):
    """Decodes one tile payload to a 28x28 uint8 tile (:class:`cae_edge.device.bundle.Decoder`)."""

    def decode(self, payload: bytes) -> np.ndarray: ...


def parse_grid(text: str | int) -> tuple[int, int]:
    """``4`` or ``"4"`` -> (4, 4); ``"2x3"`` -> (2, 3) (rows x columns).

    Raises:
        ConfigError: anything else, or a side outside 1..255.
    """
    s = str(text).strip().lower()
    parts = s.split("x") if "x" in s else [s, s]
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        rows = cols = -1
    if len(parts) != 2 or not (1 <= rows <= MAX_SIDE and 1 <= cols <= MAX_SIDE):
        raise ConfigError(
            f"tiles {text!r}: use N (an NxN grid) or RxC, each side 1..{MAX_SIDE}, e.g. 4 or 2x3"
        )
    return rows, cols


def pack_tiles(payloads: Sequence[bytes], rows: int, cols: int, *, fixed: int | None = None) -> bytes:
    """The tiled payload of ``rows`` x ``cols`` tile payloads (row-major).

    Args:
        payloads: one payload per tile, row-major.
        rows: tile rows (1..255).
        cols: tile columns (1..255).
        fixed: every tile payload has this length (int8 latents): lengths are left out.

    Raises:
        PacketError: reason ``field`` for a bad grid, a payload count or length that does not fit it, or a
            result over the packet's 65,535-byte payload limit (the message says how big it came out).
    """
    if not (1 <= rows <= MAX_SIDE and 1 <= cols <= MAX_SIDE):
        raise PacketError(f"cannot pack tiles: grid {rows}x{cols} (each side 1..{MAX_SIDE})", "field")
    if len(payloads) != rows * cols:
        raise PacketError(f"cannot pack tiles: {len(payloads)} payloads for a {rows}x{cols} grid", "field")
    if fixed is not None:
        bad = [len(p) for p in payloads if len(p) != fixed]
        if bad:
            raise PacketError(f"cannot pack tiles: payloads of {bad[0]} bytes, all must be {fixed}", "field")
        head = bytes((rows, cols))
    else:
        head = bytes((rows, cols)) + b"".join(varint(len(p)) for p in payloads)
    out = head + b"".join(payloads)
    if len(out) > MAX_PAYLOAD:
        raise PacketError(
            f"cannot pack tiles: a {rows}x{cols} grid came to {len(out)} bytes, over a packet's "
            f"{MAX_PAYLOAD}; use fewer tiles",
            "field",
        )
    return out


def unpack_tiles(payload: bytes, *, fixed: int | None = None) -> tuple[int, int, list[bytes]]:
    """Split a tiled payload: (rows, cols, tile payloads row-major).

    Args:
        payload: the packet's payload.
        fixed: the tile payload length when lengths are left out (int8 latents), else None.

    Raises:
        PacketError: reason ``tiles`` for a zero-sided grid, a truncated length, lengths that do not add up
            to the payload, or trailing bytes.
    """
    data = bytes(payload)
    n = len(data)
    if n < 2:
        raise PacketError(f"tiled payload of {n} bytes: shorter than its 2-byte grid", "tiles")
    rows, cols = data[0], data[1]
    if not rows or not cols:
        raise PacketError(f"tiled payload says grid {rows}x{cols}: a side of 0", "tiles")
    count = rows * cols
    pos = 2
    if fixed is not None:
        if n - pos != count * fixed:
            raise PacketError(
                f"tiled payload of {n} bytes for a {rows}x{cols} grid of {fixed}-byte tiles: want "
                f"{2 + count * fixed}",
                "tiles",
            )
        return rows, cols, [data[pos + i * fixed : pos + (i + 1) * fixed] for i in range(count)]
    lengths = []
    for _ in range(count):
        length, pos = read_varint(
            data, pos, limit=MAX_PAYLOAD, what="tiled payload: bad or truncated tile length", reason="tiles"
        )
        lengths.append(length)
    if pos + sum(lengths) != n:
        raise PacketError(
            f"tiled payload of {n} bytes: its {rows}x{cols} tile lengths add up to {pos + sum(lengths)}",
            "tiles",
        )
    tiles = []
    for length in lengths:
        tiles.append(data[pos : pos + length])
        pos += length
    return rows, cols, tiles


def split_tiles(image: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
    """A (28 rows) x (28 cols) image -> its 28x28 tiles, row-major (contiguous copies).

    Raises:
        ConfigError: an image of another shape.
    """
    if image.ndim != 2 or image.shape != (TILE * rows, TILE * cols):
        raise ConfigError(
            f"image of shape {image.shape}: a {rows}x{cols} grid of tiles needs "
            f"({TILE * rows}, {TILE * cols}); preprocess with size {TILE} x tiles"
        )
    return [
        np.ascontiguousarray(image[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE])
        for r in range(rows)
        for c in range(cols)
    ]


def join_tiles(tiles: Sequence[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """28x28 tiles, row-major -> one (28 rows) x (28 cols) image."""
    if len(tiles) != rows * cols:
        raise ConfigError(f"{len(tiles)} tiles for a {rows}x{cols} grid")
    return np.vstack([np.hstack(tiles[r * cols : (r + 1) * cols]) for r in range(rows)])


class TiledEncoder:
    """A frame of ``rows`` x ``cols`` tiles -> one tiled payload, each tile through ``encoder``.

    The bundles' encoders take one image per call, so the tiles are encoded in a loop, each then
    entropy-coded (or not) by the encoder's own codec. (One call for all tiles would need a batch dimension:
    resizing the shipped encoders' input to 16 images fails in XNNPACK, their graph reshapes to batch 1.)

    Args:
        encoder: the per-tile encoder.
        rows: tile rows.
        cols: tile columns.
        fixed: the payload length of every tile (int8 coding: the latent size), else None.
    """

    def __init__(self, encoder: TileEncoder, rows: int, cols: int, fixed: int | None = None) -> None:
        self.encoder, self.rows, self.cols, self.fixed = encoder, rows, cols, fixed

    def encode(self, image_u8: np.ndarray) -> bytes:
        """One (28 rows) x (28 cols) uint8 image -> its tiled payload.

        Raises:
            ConfigError: a wrong image shape.
            PacketError: the payload would not fit a packet.
        """
        enc = self.encoder.encode
        tiles = split_tiles(image_u8, self.rows, self.cols)
        return pack_tiles([enc(t) for t in tiles], self.rows, self.cols, fixed=self.fixed)


def decode_tiled(decoder: TileDecoder, payload: bytes, *, fixed: int | None = None) -> np.ndarray:
    """A tiled payload -> the whole image, each tile through ``decoder``.

    Raises:
        PacketError: a malformed tiled payload (reason ``tiles``) or a tile the decoder refuses.
    """
    rows, cols, parts = unpack_tiles(payload, fixed=fixed)
    return join_tiles([decoder.decode(p) for p in parts], rows, cols)


# ---------------------------------------------------------------------------------------- seam metrics


def seam_mask(height: int, width: int, tile: int = TILE, width_px: int = SEAM_WIDTH) -> np.ndarray:
    """Boolean (height, width) mask of the pixels within ``width_px`` of an inner tile border.

    The pixels ``width_px`` either side of each border between two tiles (not the frame's own edges) are
    seam; the rest, tile interiors. With 28-pixel tiles and 2 pixels, 4 of every 28 rows and columns are seam.
    """
    mask = np.zeros((height, width), bool)
    for b in range(tile, height, tile):
        mask[max(0, b - width_px) : b + width_px, :] = True
    for b in range(tile, width, tile):
        mask[:, max(0, b - width_px) : b + width_px] = True
    return mask


def masked_psnr(
    original: np.ndarray, recon: np.ndarray, mask: np.ndarray, cap: float = PSNR_CAP
) -> np.ndarray:
    """PSNR (dB, peak 255, capped) of each image over the pixels where ``mask`` is true.

    Args:
        original: (N, H, W) or (H, W) uint8.
        recon: same shape.
        mask: (H, W) bool, not empty.
    """
    a = np.asarray(original, np.float64)
    b = np.asarray(recon, np.float64)
    a, b = (x[None] if x.ndim == 2 else x for x in (a, b))
    if a.shape != b.shape or a.shape[1:] != mask.shape or not mask.any():
        raise ValueError(
            f"masked PSNR: images {a.shape} / {b.shape}, mask {mask.shape} ({mask.sum()} pixels)"
        )
    mse = ((a - b) ** 2)[:, mask].mean(axis=1)
    with np.errstate(divide="ignore"):
        return np.minimum(10.0 * np.log10(255.0**2 / mse), cap)


def seam_psnr(
    original: np.ndarray, recon: np.ndarray, tile: int = TILE, width_px: int = SEAM_WIDTH
) -> tuple[float, float]:
    """Mean per-image PSNR along the tile seams and inside the tiles: ``(seam dB, interior dB)``.

    A seam PSNR well below the interior's means the tile borders are visible.

    Raises:
        ValueError: images without an inner border (smaller than two tiles a side) or of different shapes.
    """
    h, w = np.asarray(original).shape[-2:]
    mask = seam_mask(h, w, tile, width_px)
    if not mask.any():
        raise ValueError(f"images of {h}x{w}: no inner tile border with {tile}-pixel tiles")
    return float(masked_psnr(original, recon, mask).mean()), float(masked_psnr(original, recon, ~mask).mean())
