"""edgert's interleaved weight layout ("x8"): eight rows side by side, block by block.

The file stores a matrix row by row, so a kernel walking one row at a time loads each
activation block once per row and turns every 32-value block into one scalar. Here the
rows of a 32-value format (Q4_0, Q5_0, Q8_0) are taken eight at a time, and for each
block column of such a group one *tile* holds what the eight blocks held:

    scales  16 bytes   the eight rows' f16 scales, row 0 first
    masks   32 bytes   (Q5_0 only) the fifth bits, as four pairs of 32-bit lane masks
    values  S x 32     sub-vector L puts each row's bytes 4L..4L+3 side by side:
                       byte 4r + j is row r's byte 4L + j

One 32-byte load then holds four values of eight rows, and an integer dot product that
sums groups of four bytes (VNNI's vpdpbusd, ARM's sdot) gives the eight rows' partial
dots in eight lanes against one broadcast word of activations: one activation load
serves eight rows, and the stream of weights stays linear. The bytes are the file's own,
moved, never requantized: a tile has exactly the bytes of its eight blocks (or, for Q5_0's
and Q5_1's fifth bits and Q3_K's values, exactly their bits), so the layout costs no memory,
and `unpack` gives the file's bytes back.

Which activations a sub-vector meets follows from the block formats (quant.formats):
- Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL (S = 4): the low nibbles of sub-vector L are values
  4L..4L+3 and the high nibbles values 16+4L..16+4L+3, because the file puts value j in the
  low nibble of byte j and value j + 16 in its high nibble (IQ4_NL's nibbles index its levels);
- Q8_0 (S = 8): sub-vector L is values 4L..4L+3.
- Q4_1's and Q5_1's mins follow the scales, as eight more f16 (row 0 first).
- Q5_0's and Q5_1's masks: pair L is (low, high), bit 4r + j of `low` is the fifth bit of
  row r's value 4L + j, of `high` that of value 16 + 4L + j, so that a mask expands to a byte
  per lane with no shuffles.

The 256-value formats are tiled the same way, a super-block column of eight rows at a time;
their tiles are a fixed permutation of the eight blocks' bytes (base.SuperTileFormat.source,
made by base.super_source): the rows' f16 scales side by side, their scale bytes transposed
(byte k of row r at 8k + r), then every run of value bytes as sub-vectors, so that a
sub-vector gives eight rows' values with shifts and masks only. Each format's module in
quant.formats says what its tile holds where. One format's values are rewritten, bit by bit
(SuperTileFormat.pack_values): Q3_K's, whose file keeps each value's third bit 32-96 bytes
from its two low ones; its tile holds a value's three bits together (quant.formats.q3_k).

Counterpart: llama.cpp's block_q4_0x8 (ggml-cpu/repack.cpp), which interleaves eight
blocks the same way but rewrites the nibbles; this layout keeps them and so needs no
per-format repacking code in the kernels beyond the byte moves (and Q3_K's bits).
"""

from __future__ import annotations

import numpy as np

from quant.formats import BLOCKS, FORMATS, QType, SuperTileFormat, TileFormat
from quant.ir import ROWS

VERSION = 3  # bump when a tile's bytes change: cached layouts of another version are rebuilt

_CHUNK = 4096  # tiles a rewrite of values (SuperTileFormat.pack_values) takes at once

TILES: dict[QType, TileFormat] = {q: f.tile for q, f in FORMATS.items() if isinstance(f.tile, TileFormat)}
SUPER_TILES: dict[QType, SuperTileFormat] = {q: f.tile for q, f in FORMATS.items()
                                             if isinstance(f.tile, SuperTileFormat)}
for _q, _t in TILES.items():
    assert _t.tile_bytes == ROWS * BLOCKS[_q].nbytes, _q  # the layout costs no memory
for _q, _t in SUPER_TILES.items():
    assert sorted(_t.source) == list(range(ROWS * BLOCKS[_q].nbytes)), _q  # a permutation: no memory added


def packable(qtype: QType, shape: tuple[int, ...]) -> bool:
    """Whether a (rows, cols) matrix of `qtype` has an x8 layout: a tiled format and whole groups."""
    return (QType(qtype) in TILES or QType(qtype) in SUPER_TILES) and len(shape) == 2 and shape[0] % ROWS == 0


def pack(raw: np.ndarray, qtype: QType) -> np.ndarray:
    """(rows, row_bytes) file blocks -> (rows / 8, row_bytes * 8) tiles, group by group."""
    if QType(qtype) in SUPER_TILES:
        return _pack_super(raw, qtype)
    fmt, block = TILES[QType(qtype)], BLOCKS[QType(qtype)]
    rows = raw.shape[0]
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows // ROWS, ROWS, -1, block.nbytes)  # (g, r, b, bytes)
    g, _, nb, _ = blocks.shape
    by_block = blocks.transpose(0, 2, 1, 3)  # (g, b, r, bytes)
    parts = [by_block[..., 0:2].reshape(g, nb, 2 * ROWS)]
    if fmt.m is not None:
        parts.append(by_block[..., fmt.m:fmt.m + 2].reshape(g, nb, 2 * ROWS))
    if fmt.qh is not None:
        parts.append(_masks(by_block[..., fmt.qh:fmt.qh + 4]))
    values = by_block[..., fmt.qs:fmt.qs + 4 * fmt.sub_vectors].reshape(g, nb, ROWS, fmt.sub_vectors, 4)
    parts.append(values.transpose(0, 1, 3, 2, 4).reshape(g, nb, 32 * fmt.sub_vectors))  # (g, b, L, r, 4)
    return np.concatenate(parts, axis=-1).reshape(g, nb * fmt.tile_bytes)


def unpack(tiles: np.ndarray, qtype: QType, row_bytes: int) -> np.ndarray:
    """The inverse of `pack`: (groups, group bytes) tiles -> (rows, row_bytes) file blocks."""
    if QType(qtype) in SUPER_TILES:
        return _unpack_super(tiles, qtype, row_bytes)
    fmt, block = TILES[QType(qtype)], BLOCKS[QType(qtype)]
    g = tiles.shape[0]
    nb = row_bytes // block.nbytes
    t = np.asarray(tiles, dtype=np.uint8).reshape(g, nb, fmt.tile_bytes)
    out = np.zeros((g, nb, ROWS, block.nbytes), dtype=np.uint8)  # (g, b, r, bytes)
    out[..., 0:2] = t[..., :2 * ROWS].reshape(g, nb, ROWS, 2)
    if fmt.m is not None:
        out[..., fmt.m:fmt.m + 2] = t[..., 2 * ROWS:4 * ROWS].reshape(g, nb, ROWS, 2)
    if fmt.qh is not None:
        out[..., fmt.qh:fmt.qh + 4] = _fifth_bits(t[..., fmt.masks:fmt.masks + 32])
    values = t[..., fmt.header:].reshape(g, nb, fmt.sub_vectors, ROWS, 4).transpose(0, 1, 3, 2, 4)
    out[..., fmt.qs:fmt.qs + 4 * fmt.sub_vectors] = values.reshape(g, nb, ROWS, 4 * fmt.sub_vectors)
    return out.transpose(0, 2, 1, 3).reshape(g * ROWS, row_bytes)


def _masks(qh: np.ndarray) -> np.ndarray:
    """(g, b, r, 4) bytes of Q5_0 fifth bits -> (g, b, 32): per L, the low and high lane masks."""
    bits = np.unpackbits(qh, axis=-1, bitorder="little")  # (g, b, r, 32): bit v of row r
    g, nb = qh.shape[:2]
    by_value = bits.reshape(g, nb, ROWS, 2, 4, 4)  # (g, b, r, high?, L, j): value 16 high + 4L + j
    lanes = by_value.transpose(0, 1, 4, 3, 2, 5)  # (g, b, L, high?, r, j): lane 4r + j
    return np.packbits(lanes.reshape(g, nb, 4, 2, 32), axis=-1, bitorder="little").reshape(g, nb, 32)


def _fifth_bits(masks: np.ndarray) -> np.ndarray:
    """The inverse of `_masks`: (g, b, 32) -> (g, b, r, 4) bytes of qh per row."""
    g, nb = masks.shape[:2]
    lanes = np.unpackbits(masks.reshape(g, nb, 4, 2, 4), axis=-1, bitorder="little")  # (g, b, L, high?, 32)
    by_value = lanes.reshape(g, nb, 4, 2, ROWS, 4).transpose(0, 1, 4, 3, 2, 5)  # (g, b, r, high?, L, j)
    return np.packbits(by_value.reshape(g, nb, ROWS, 32), axis=-1, bitorder="little")


def _pack_super(raw: np.ndarray, qtype: QType) -> np.ndarray:
    fmt, block = SUPER_TILES[QType(qtype)], BLOCKS[QType(qtype)]
    blocks = np.asarray(raw, dtype=np.uint8).reshape(raw.shape[0] // ROWS, ROWS, -1, block.nbytes)  # (g, r, b, bytes)
    g, _, nb, _ = blocks.shape
    by_block = blocks.transpose(0, 2, 1, 3).reshape(g, nb, ROWS * block.nbytes)  # (g, b, eight blocks)
    tiles = np.ascontiguousarray(by_block[..., fmt.source])  # fancy indexing may not be
    if fmt.pack_values is not None:  # a few thousand tiles at a time: the rewrite's temporaries are larger
        flat = tiles.reshape(g * nb, fmt.tile_bytes)
        for k in range(0, g * nb, _CHUNK):
            flat[k:k + _CHUNK, fmt.header:] = fmt.pack_values(flat[k:k + _CHUNK, fmt.header:])
    return tiles.reshape(g, nb * fmt.tile_bytes)


def _unpack_super(tiles: np.ndarray, qtype: QType, row_bytes: int) -> np.ndarray:
    fmt, block = SUPER_TILES[QType(qtype)], BLOCKS[QType(qtype)]
    g, nb = tiles.shape[0], row_bytes // block.nbytes
    tiles = np.asarray(tiles, dtype=np.uint8).reshape(g, nb, fmt.tile_bytes)
    if fmt.unpack_values is not None:
        tiles = np.concatenate([tiles[..., :fmt.header], fmt.unpack_values(tiles[..., fmt.header:])], axis=-1)
    by_block = np.empty((g, nb, fmt.tile_bytes), dtype=np.uint8)
    by_block[..., fmt.source] = tiles
    return by_block.reshape(g, nb, ROWS, block.nbytes).transpose(0, 2, 1, 3).reshape(g * ROWS, row_bytes)


def unpack_rows(tiles: np.ndarray, qtype: QType, rows: np.ndarray, row_bytes: int) -> np.ndarray:
    """The file's bytes of `rows` (ints) read back from the tiles: (len(rows), row_bytes). Only
    the groups that hold them are read, so a lookup touches a few pages of the tiles."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    where = _ROW_BYTES.get(QType(qtype))
    if where is None:  # Q5_0's and Q5_1's fifth bits are spread over lanes, Q3_K's values rewritten: unpack the groups
        groups, at = np.unique(rows // ROWS, return_inverse=True)
        unpacked = unpack(tiles[groups], qtype, row_bytes).reshape(len(groups), ROWS, row_bytes)
        return unpacked[at, rows % ROWS]
    # a gather: each block's bytes from where its row's lie in the tile (one numpy call, where
    # unpacking the group took a dozen: an embedding lookup of a decode step took 24 us so)
    tile_bytes = where.size
    blocks = tiles[rows // ROWS].reshape(len(rows), -1, tile_bytes)  # (n, blocks, tile bytes)
    return np.take_along_axis(blocks, where[rows % ROWS][:, None, :], axis=2).reshape(len(rows), row_bytes)


def _row_bytes(qtype: QType) -> np.ndarray | None:
    """(ROWS, block bytes): the tile byte that holds byte j of row r's block, where a tile is
    a permutation of its eight blocks' bytes (every format but those with fifth-bit masks);
    read off `pack` itself by packing the bytes' own indices (their low and high bytes in turn)."""
    if (qtype in TILES and TILES[qtype].qh is not None) or (qtype in SUPER_TILES and SUPER_TILES[qtype].pack_values):
        return None
    label = np.arange(ROWS * BLOCKS[qtype].nbytes).reshape(ROWS, -1)
    low, high = (pack((label >> shift & 0xFF).astype(np.uint8), qtype).astype(np.int64) for shift in (0, 8))
    return np.argsort((low | high << 8).reshape(-1)).reshape(ROWS, -1)


_ROW_BYTES = {q: w for q in (*TILES, *SUPER_TILES) if (w := _row_bytes(q)) is not None}
