"""Q3_K: hmask (256 third bits) + 256 x 2-bit (as Q2_K's) + 12 bytes of sixteen 6-bit scales
+ d (f16); value = d * (scale - 32) * (q - 4), q's third bit from hmask."""

import numpy as np

from quant.formats.base import Activations, Block, Format, QType, SuperTileFormat, f16, super_source
from quant.formats.q2_k import two_bit_values
from quant.ir import V32I8, Once, Super, const_like, halves, rows_of, widen


def _three_bit_values(hmask, qs):
    """(n, 32) hmask and (n, 64) 2-bit bytes -> (n, 256) values 0..7 (q + 4, as _dequantize's)."""
    bit = hmask.reshape(-1, 1, 1, 2, 16) >> np.arange(8, dtype=np.uint8).reshape(1, 2, 4, 1, 1)  # (.., n, j, h, l)
    return (two_bit_values(qs) | (bit & 1).reshape(-1, 16, 16) << 2).reshape(-1, 256)


def _dequantize(blocks):
    # ggml's dequantize_row_q3_K: q is 2 bits less 4 where the hmask bit (bit 4n + j of
    # hmask[16h + l], for sub-block 8n + 2j + h) is clear; the sixteen 6-bit scales take
    # a nibble of byte i % 8 (high nibble for i >= 8) and 2 bits of byte 8 + i % 4
    s, d = blocks[:, 96:108].astype(np.int32), f16(blocks[:, 108:110])
    i = np.arange(16)
    scales = ((s[:, i % 8] >> (4 * (i // 8))) & 0x0F) | (((s[:, 8 + i % 4] >> (2 * (i // 4))) & 3) << 4)
    q = _three_bit_values(blocks[:, 0:32], blocks[:, 32:96]).astype(np.int8).reshape(-1, 16, 16) - 4
    return ((d * (scales - 32).astype(np.float32))[:, :, None] * q.astype(np.float32)).reshape(-1, 256)


# The tile: d[8]; the 12 scale bytes at 16 (byte k of row r at 8k + r); then the 3-bit values
# (0..7, less 4 in the dot), rewritten bit by bit (pack_values), not only moved: the file keeps a
# value's two low bits and its third 32-96 bytes apart, which cost two shifts, two masks and an or
# a sub-vector. Here eight triples of sub-vectors (X, Y, Z), at 112 + 96t, hold eight fields each,
# a field being one sub-vector's 3-bit values (byte 4r + j: row r's value 4L + j, as every tile's):
#     X: field 0 at bits 0-2, field 1 at 3-5, field 6's two low bits at 6-7
#     Y: field 2 at bits 0-2, field 3 at 3-5, field 7's two low bits at 6-7
#     Z: field 4 at bits 0-2, field 5 at 3-5, field 6's third bit at 6, field 7's at 7
# so that six fields in eight take a mask and at most a shift. Field f of triple t holds values
# 16g + 4k.. of group g = 2f + t // 4, k = t % 4: a group's four sub-vectors lie alike.
# Per tile on x86 without VNNI, 927 -> 718 instructions; with AVX-512, 500 -> 423; on the Pi, 1208 -> 850.
# FIELDS[f]: (byte of the triple, low bit, width) of field f's low bits, and (byte, bit) of its third
FIELDS = [(0, 0, 3, None), (0, 3, 3, None), (1, 0, 3, None), (1, 3, 3, None), (2, 0, 3, None), (2, 3, 3, None),
          (0, 6, 2, (2, 6)), (1, 6, 2, (2, 7))]
VALUES = 112


def _pack_values(region):
    """(..., 8 x 96) the eight rows' hmask and 2-bit bytes, row by row -> (..., 768) the triples,
    their fields where FIELDS puts them."""
    shape = region.shape[:-1]
    rows = region.reshape(-1, 96)
    q = _three_bit_values(rows[:, :32], rows[:, 32:])
    by_field = q.reshape(-1, 8, 8, 2, 4, 4).transpose(0, 2, 3, 4, 1, 5).reshape(-1, 8, 8, 32)  # (.., f, t, 4r + j)
    triples = np.zeros((len(by_field), 8, 3, 32), dtype=np.uint8)  # (.., t, X/Y/Z, 32)
    for f, (byte, lo, width, third) in enumerate(FIELDS):
        v = by_field[:, f]
        triples[:, :, byte] |= (v & (1 << width) - 1) << lo
        if third is not None:
            triples[:, :, third[0]] |= (v >> 2) << third[1]
    return triples.reshape(*shape, 768)


def _unpack_values(tiles):
    """The inverse of _pack_values."""
    shape = tiles.shape[:-1]
    triples = tiles.reshape(-1, 8, 3, 32)
    f = []
    for byte, lo, width, third in FIELDS:
        v = triples[:, :, byte] >> lo & (1 << width) - 1
        f.append(v if third is None else v | (triples[:, :, third[0]] >> third[1] & 1) << 2)
    q = np.stack(f, axis=1).reshape(-1, 8, 2, 4, 8, 4).transpose(0, 4, 1, 2, 3, 5).reshape(-1, 256)  # (.., r, v)
    by = q.reshape(-1, 2, 4, 2, 16)  # (.., n, j, h, l): sub-block 8n + 2j + h, value l
    shifts = np.arange(4, dtype=np.uint8).reshape(1, 1, 4, 1, 1)
    qs = np.bitwise_or.reduce((by & 3) << 2 * shifts, axis=2).reshape(-1, 64)  # byte 32n + 16h + l, bits 2j
    hmask = np.bitwise_or.reduce((by >> 2).reshape(-1, 8, 2, 16) << np.arange(8, dtype=np.uint8).reshape(1, 8, 1, 1),
                                 axis=1).reshape(-1, 32)  # byte 16h + l, bit 4n + j
    return np.concatenate([hmask, qs], axis=1).astype(np.uint8).reshape(*shape, 768)


# the source puts each row's hmask and 2-bit bytes (bytes 0-95) after the scales, row by row: what
# _pack_values takes
_SOURCE = np.concatenate([super_source(110, head=[108], scales=range(96, 108), runs=[]),
                          [110 * r + b for r in range(8) for b in range(96)]])
# two groups at once in decode too, on a Xeon: 1.38x from L3, 1.05x from memory
TILE = SuperTileFormat(header=VALUES, source=_SOURCE,
                       paired=True, paired_in_decode=True,
                       pack_values=_pack_values, unpack_values=_unpack_values)


def _decode(tile, ops) -> Super:
    """Q3_K: scale i takes nibble i // 8 of byte i % 8 and bits 2 (i // 4) of byte 8 + i % 4, less 32;
    a value is a field of a triple (FIELDS), less 4 (the dot loop's offset: a group's dot, its
    values 0..7 less 4, still fits a word)."""
    b = ops.b
    low = [tile.load(16 + 32 * k, V32I8) for k in range(2)]  # bytes 0-3 and 4-7 of the eight rows
    high = tile.load(80, V32I8)  # bytes 8-11
    scales = []
    for q in range(4):  # scales 4q..4q+3, as bytes: nibble q // 2 of bytes (q % 2) * 4.., bits 2q of 8..11
        v = b.or_(ops.field(low[q % 2], 4 * (q // 2), 4), ops.field(high, 2 * q, 2, to=4))
        v = b.sub(v, const_like(v, 32))
        scales += [Once(lambda v=v, j=j: widen(b, rows_of(b, v, j), signed=True)) for j in range(4)]

    def value(t, f):  # loaded where used, not kept: a tile's triples would not fit in registers
        byte, lo, width, third = FIELDS[f]
        v = ops.field(tile.load(VALUES + 96 * t + 32 * byte, V32I8), lo, width)
        if third is not None:
            v = ops.with_bit(v, tile.load(VALUES + 96 * t + 32 * third[0], V32I8), third[1], 2)
        return v

    groups = []
    for half in range(2):
        for f in range(8):
            g = 2 * f + half
            parts = [(Once(lambda t=4 * half + k, f=f: value(t, f)), 16 * g + 4 * k) for k in range(4)]
            groups.append((scales[g], parts, (g,)))
    return Super(halves(b, tile, 0), groups, offset=4, top=7)


Q3_K = Format(QType.Q3_K, Block(256, 32 + 64 + 12 + 2, (108,)), _dequantize, activations=Activations.Q8_K,
              tile=TILE, decode=_decode)
