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
moved, never requantized: a tile has exactly the bytes of its eight blocks, so the layout
costs no memory, and `unpack` gives the file's bytes back.

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
their tiles are a fixed permutation of the eight blocks' bytes (SUPER_TILES): the rows' f16
scales side by side, their scale bytes transposed (byte k of row r at 8k + r), then every
run of value bytes as sub-vectors:

    Q4_K (8 x 144 bytes)  d[8], dmin[8]; the 12 packed scale bytes at 32; then for each
                          64-value pair p of sub-blocks, eight sub-vectors of its 32 value
                          bytes (low nibbles: sub-block 2p, high: 2p + 1)
    Q5_K (8 x 176 bytes)  Q4_K's head; qh (bit s of byte l: the fifth bit of sub-block s's
                          value l) as eight sub-vectors at 128; Q4_K's values at 384
    Q6_K (8 x 210 bytes)  d[8]; the 16 int8 scales at 16; ql, as four runs of 32 bytes
                          (64h + 32a) of eight sub-vectors each; qh, as two runs (32h)
    Q3_K (8 x 110 bytes)  d[8]; the 12 scale bytes at 16; hmask as eight sub-vectors at 112;
                          the 2-bit bytes as two runs of 32 (32h) at 368
    Q2_K (8 x 84 bytes)   d[8], dmin[8]; the 16 scale bytes at 32; the 2-bit bytes as Q3_K's at 160
    IQ4_XS (8 x 136)      d[8], scales_h[8] (u16); the 4 scales_l bytes at 32; then per
                          sub-block of 32 its 16 bytes as four sub-vectors at 64

so that a sub-vector gives eight rows' values with shifts and masks only: a Q6_K one of ql
(h, a) and one of qh (h) the values 128h + 32s + 4L + j (s = a, a + 2); a Q3_K or Q2_K one
(h, L) at bits 2s the values 128h + 32s + 4L + j.

Counterpart: llama.cpp's block_q4_0x8 (ggml-cpu/repack.cpp), which interleaves eight
blocks the same way but rewrites the nibbles; this layout keeps them and so needs no
per-format repacking code in the kernels beyond the byte moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quant.formats import BLOCKS, QType

VERSION = 2  # bump when a tile's bytes change: cached layouts of another version are rebuilt
ROWS = 8  # rows per group


@dataclass(frozen=True)
class TileFormat:
    """Where a block's parts lie (`qs`: its value bytes; `qh`: the fifth bits of Q5_0 and
    Q5_1; `m`: the f16 min of Q4_1 and Q5_1) and how many 32-byte sub-vectors a tile has.
    A tile holds the eight rows' scales, then their mins, then the masks, then the values."""

    qs: int  # offset of the value bytes in the file's block
    sub_vectors: int
    qh: int | None = None
    m: int | None = None
    levels: bool = False  # IQ4_NL: each nibble indexes formats.IQ4_NL_LEVELS

    @property
    def masks(self) -> int:
        """Where the masks start in a tile."""
        return 2 * ROWS + (2 * ROWS if self.m is not None else 0)

    @property
    def header(self) -> int:
        """Bytes before the values in a tile: the scales, mins and masks."""
        return self.masks + (32 if self.qh is not None else 0)

    @property
    def tile_bytes(self) -> int:
        return self.header + 32 * self.sub_vectors


TILES: dict[QType, TileFormat] = {
    QType.Q4_0: TileFormat(qs=2, sub_vectors=4),
    QType.Q5_0: TileFormat(qs=6, sub_vectors=4, qh=2),
    QType.Q8_0: TileFormat(qs=2, sub_vectors=8),
    QType.Q4_1: TileFormat(qs=4, sub_vectors=4, m=2),
    QType.Q5_1: TileFormat(qs=8, sub_vectors=4, qh=4, m=2),
    QType.IQ4_NL: TileFormat(qs=2, sub_vectors=4, levels=True),  # Q4_0's bytes
}
for _q, _t in TILES.items():
    assert _t.tile_bytes == ROWS * BLOCKS[_q].nbytes, _q  # the layout costs no memory


def _q4_k_source() -> np.ndarray:
    """Q4_K: tile byte i holds byte source[i] of the eight blocks laid end to end (row r's
    byte b at 144 r + b)."""
    at = lambda r, b: 144 * r + b  # noqa: E731
    head = [at(r, b) for r in range(ROWS) for b in (0, 1)] + [at(r, b) for r in range(ROWS) for b in (2, 3)]  # d, dmin
    scales = [at(r, 4 + k) for k in range(12) for r in range(ROWS)]
    values = [at(r, 16 + 32 * p + 4 * L + j) for p in range(4) for L in range(8) for r in range(ROWS) for j in range(4)]
    return np.array(head + scales + values)


def _q6_k_source() -> np.ndarray:
    """Q6_K: as _q4_k_source (row r's byte b at 210 r + b)."""
    at = lambda r, b: 210 * r + b  # noqa: E731
    head = [at(r, b) for r in range(ROWS) for b in (208, 209)]
    scales = [at(r, 192 + k) for k in range(16) for r in range(ROWS)]
    ql = [at(r, 64 * h + 32 * a + 4 * L + j) for h in range(2) for a in range(2) for L in range(8)
          for r in range(ROWS) for j in range(4)]
    qh = [at(r, 128 + 32 * h + 4 * L + j) for h in range(2) for L in range(8) for r in range(ROWS) for j in range(4)]
    return np.array(head + scales + ql + qh)


def _q5_k_source() -> np.ndarray:
    """Q5_K: Q4_K's head and scales, the fifth bits (qh) as eight sub-vectors, then Q4_K's values."""
    at = lambda r, b: 176 * r + b  # noqa: E731
    head = [at(r, b) for r in range(ROWS) for b in (0, 1)] + [at(r, b) for r in range(ROWS) for b in (2, 3)]
    scales = [at(r, 4 + k) for k in range(12) for r in range(ROWS)]
    qh = [at(r, 16 + 4 * L + j) for L in range(8) for r in range(ROWS) for j in range(4)]
    values = [at(r, 48 + 32 * p + 4 * L + j) for p in range(4) for L in range(8) for r in range(ROWS) for j in range(4)]
    return np.array(head + scales + qh + values)


def _q3_k_source() -> np.ndarray:
    """Q3_K: d, the 12 scale bytes, hmask as eight sub-vectors, then the 2-bit bytes as sixteen
    (two runs of 32 bytes, 32h, of eight sub-vectors each)."""
    at = lambda r, b: 110 * r + b  # noqa: E731
    head = [at(r, b) for r in range(ROWS) for b in (108, 109)]
    scales = [at(r, 96 + k) for k in range(12) for r in range(ROWS)]
    hmask = [at(r, 4 * L + j) for L in range(8) for r in range(ROWS) for j in range(4)]
    qs = [at(r, 32 + 32 * h + 4 * L + j) for h in range(2) for L in range(8) for r in range(ROWS) for j in range(4)]
    return np.array(head + scales + hmask + qs)


def _q2_k_source() -> np.ndarray:
    """Q2_K: d, dmin, the 16 scale bytes, then the 2-bit bytes as Q3_K's."""
    at = lambda r, b: 84 * r + b  # noqa: E731
    head = [at(r, b) for r in range(ROWS) for b in (80, 81)] + [at(r, b) for r in range(ROWS) for b in (82, 83)]
    scales = [at(r, k) for k in range(16) for r in range(ROWS)]
    qs = [at(r, 16 + 32 * h + 4 * L + j) for h in range(2) for L in range(8) for r in range(ROWS) for j in range(4)]
    return np.array(head + scales + qs)


def _iq4_xs_source() -> np.ndarray:
    """IQ4_XS: d, scales_h (row r's u16 at 16 + 2r), the 4 scales_l bytes, then for each sub-block
    of 32 its 16 bytes as four sub-vectors (low nibbles: values 0..15, high: 16..31)."""
    at = lambda r, b: 136 * r + b  # noqa: E731
    head = [at(r, b) for r in range(ROWS) for b in (0, 1)] + [at(r, b) for r in range(ROWS) for b in (2, 3)]
    scales = [at(r, 4 + k) for k in range(4) for r in range(ROWS)]
    qs = [at(r, 8 + 16 * ib + 4 * L + j) for ib in range(8) for L in range(4) for r in range(ROWS) for j in range(4)]
    return np.array(head + scales + qs)


@dataclass(frozen=True)
class SuperTileFormat:
    """A 256-value format's tile: `source` maps each tile byte to a byte of the eight blocks;
    values start at `header`."""

    header: int
    source: np.ndarray

    @property
    def tile_bytes(self) -> int:
        return len(self.source)


SUPER_TILES: dict[QType, SuperTileFormat] = {
    QType.Q4_K: SuperTileFormat(header=128, source=_q4_k_source()),
    QType.Q6_K: SuperTileFormat(header=144, source=_q6_k_source()),
    QType.Q5_K: SuperTileFormat(header=384, source=_q5_k_source()),
    QType.Q3_K: SuperTileFormat(header=368, source=_q3_k_source()),
    QType.Q2_K: SuperTileFormat(header=160, source=_q2_k_source()),
    QType.IQ4_XS: SuperTileFormat(header=64, source=_iq4_xs_source()),
}
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
    return np.ascontiguousarray(by_block[..., fmt.source]).reshape(g, nb * fmt.tile_bytes)  # fancy indexing may not be


def _unpack_super(tiles: np.ndarray, qtype: QType, row_bytes: int) -> np.ndarray:
    fmt, block = SUPER_TILES[QType(qtype)], BLOCKS[QType(qtype)]
    g, nb = tiles.shape[0], row_bytes // block.nbytes
    by_block = np.empty((g, nb, fmt.tile_bytes), dtype=np.uint8)
    by_block[..., fmt.source] = np.asarray(tiles, dtype=np.uint8).reshape(g, nb, fmt.tile_bytes)
    return by_block.reshape(g, nb, ROWS, block.nbytes).transpose(0, 2, 1, 3).reshape(g * ROWS, row_bytes)


def unpack_rows(tiles: np.ndarray, qtype: QType, rows: np.ndarray, row_bytes: int) -> np.ndarray:
    """The file's bytes of `rows` (ints) read back from the tiles: (len(rows), row_bytes). Only
    the groups that hold them are unpacked, so a lookup touches a few pages of the tiles."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    groups, where = np.unique(rows // ROWS, return_inverse=True)
    unpacked = unpack(tiles[groups], qtype, row_bytes).reshape(len(groups), ROWS, row_bytes)
    return unpacked[where, rows % ROWS]
