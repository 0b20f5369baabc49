"""Q3_K: hmask (256 third bits) + 256 x 2-bit (as Q2_K's) + 12 bytes of sixteen 6-bit scales
+ d (f16); value = d * (scale - 32) * (q - 4), q's third bit from hmask."""

import numpy as np

from quant.formats.base import Activations, Block, Format, QType, SuperTileFormat, f16, super_source
from quant.formats.q2_k import two_bit_groups, two_bit_values
from quant.ir import V32I8, Once, Super, const_like, halves, rows_of, widen


def _dequantize(blocks):
    # ggml's dequantize_row_q3_K: q is 2 bits less 4 where the hmask bit (bit 4n + j of
    # hmask[16h + l], for sub-block 8n + 2j + h) is clear; the sixteen 6-bit scales take
    # a nibble of byte i % 8 (high nibble for i >= 8) and 2 bits of byte 8 + i % 4
    hmask, s, d = blocks[:, 0:32], blocks[:, 96:108].astype(np.int32), f16(blocks[:, 108:110])
    i = np.arange(16)
    scales = ((s[:, i % 8] >> (4 * (i // 8))) & 0x0F) | (((s[:, 8 + i % 4] >> (2 * (i // 4))) & 3) << 4)
    bit = hmask.reshape(-1, 1, 1, 2, 16) >> np.arange(8, dtype=np.uint8).reshape(1, 2, 4, 1, 1)  # (.., n, j, h, l)
    q = two_bit_values(blocks[:, 32:96]).astype(np.int8) - 4 * (1 - (bit & 1).reshape(-1, 16, 16)).astype(np.int8)
    return ((d * (scales - 32).astype(np.float32))[:, :, None] * q.astype(np.float32)).reshape(-1, 256)


# the tile: d[8]; the 12 scale bytes at 16; hmask as eight sub-vectors at 112; the 2-bit bytes
# as Q2_K's, at 368
TILE = SuperTileFormat(header=368, source=super_source(110, head=[108], scales=range(96, 108), runs=[(0, 96)]),
                       paired=True, paired_in_decode=True)  # two groups at once: 1.38x from L3, 1.05x from memory


def _decode(tile, ops) -> Super:
    """Q3_K: scale i takes nibble i // 8 of byte i % 8 and bits 2 (i // 4) of byte 8 + i % 4, less 32;
    a value is 2 bits and a third from hmask, less 4 (the dot loop's offset: a group's dot, its
    values 0..7 less 4, still fits a word)."""
    b = ops.b
    low = [tile.load(16 + 32 * k, V32I8) for k in range(2)]  # bytes 0-3 and 4-7 of the eight rows
    high = tile.load(80, V32I8)  # bytes 8-11
    scales = []
    for q in range(4):  # scales 4q..4q+3, as bytes: nibble q // 2 of bytes (q % 2) * 4.., bits 2q of 8..11
        v = b.or_(ops.field(low[q % 2], 4 * (q // 2), 4), ops.field(high, 2 * q, 2, to=4))
        v = b.sub(v, const_like(v, 32))
        scales += [Once(lambda v=v, j=j: widen(b, rows_of(b, v, j), signed=True)) for j in range(4)]
    hmask = [[Once(lambda at=112 + 32 * L: tile.load(at, V32I8)) for L in range(8)] for _ in range(2)]  # once per h
    groups, _ = two_bit_groups(ops, tile, TILE.header, scales, hmask)  # no field in place: measured slower
    return Super(halves(b, tile, 0), groups, offset=4, top=7)


Q3_K = Format(QType.Q3_K, Block(256, 32 + 64 + 12 + 2, (108,)), _dequantize, activations=Activations.Q8_K,
              tile=TILE, decode=_decode)
