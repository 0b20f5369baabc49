"""Q2_K: 16 scale bytes (low nibble: scale, high: min, per 16 values) + 256 x 2-bit + d, dmin
(f16); value = d * scale * q - dmin * min. Its 2-bit values lie as Q3_K's low bits do."""

import numpy as np

from quant.formats.base import Activations, Block, Format, QType, SuperTileFormat, f16, super_source
from quant.ir import I8, V32I8, Once, Super, const_like, halves, vec, widen


def two_bit_values(qs: np.ndarray) -> np.ndarray:
    """(blocks, 64) bytes of 2-bit values -> (blocks, 16, 16) by sub-block of 16: sub-block
    8n + 2j + h, value l sits at bits 2j of byte 32n + 16h + l (Q2_K and Q3_K alike)."""
    q = qs.reshape(-1, 2, 1, 2, 16) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1, 1)
    return (q & 3).reshape(-1, 16, 16)


def _dequantize(blocks):
    # ggml's dequantize_row_q2_K: per sub-block of 16, d * scale * q - dmin * min
    scales, d, dmin = blocks[:, 0:16], f16(blocks[:, 80:82]), f16(blocks[:, 82:84])
    dl = (d * (scales & 0x0F).astype(np.float32))[:, :, None]
    ml = (dmin * (scales >> 4).astype(np.float32))[:, :, None]
    return (dl * two_bit_values(blocks[:, 16:80]).astype(np.float32) - ml).reshape(-1, 256)


# the tile: d[8], dmin[8]; the 16 scale bytes at 32; the 2-bit bytes as two runs of 32 (32h)
# of eight sub-vectors each, at 160
# two groups at once in decode too, on a Xeon: 1.27x from L3, 1.08x from memory
TILE = SuperTileFormat(header=160, source=super_source(84, head=[80, 82], scales=range(0, 16), runs=[(16, 64)]),
                       paired=True, paired_in_decode=True)


def two_bit_groups(ops, tile, at: int, scales, in_place=()):
    """Q2_K's sixteen groups of 16, and each group's shift (quant.ir.Super): value
    128h + 32s + 4L + j is bits 2s of 2-bit sub-vector (h, L) at `at`. The fields s in `in_place`
    stay where they are, masked but not shifted (4^s times their values), and their groups' dots
    are shifted down."""
    qs = [[Once(lambda at=at + 32 * (8 * h + L): tile.load(at, V32I8)) for L in range(8)] for h in range(2)]
    lift = [2 * s if s in in_place else 0 for s in range(4)]  # where field s's low bit goes: its group's shift

    def value(h, s, L):
        return ops.field(qs[h][L](), 2 * s, 2, to=lift[s])

    groups, shifts = [], []  # half by half, so that only four sub-vectors of each kind are live at a time
    for h in range(2):
        for half in range(2):
            for s in range(4):
                parts = [(Once(lambda h=h, s=s, L=L: value(h, s, L)), 128 * h + 32 * s + 4 * L)
                         for L in range(4 * half, 4 * half + 4)]
                g = 8 * h + 2 * s + half
                groups.append((scales[g], parts, (g,)))
                shifts.append(lift[s])
    return groups, shifts


def _decode(tile, ops) -> Super:
    """Q2_K: group g's scale is the low nibble of its byte, its min the high one."""
    b = ops.b
    sc = [Once(lambda g=g: widen(b, tile.load(32 + 8 * g, vec(I8, 8)))) for g in range(16)]
    scales = [Once(lambda s=s: b.and_(s(), const_like(s(), 15))) for s in sc]
    mins = [Once(lambda s=s: b.lshr(s(), const_like(s(), 4))) for s in sc]
    # fields 1 and 2 in place: a mask each where a shift and a mask would be (values up to 48 stay
    # within a signed byte for every flavor's dot); 345 -> 321 instructions a tile on x86, +11%
    # from L3 on a Xeon with AVX512-VNNI
    groups, shifts = two_bit_groups(ops, tile, TILE.header, scales, in_place=(1, 2))
    return Super(halves(b, tile, 0), groups, top=3, shifts=shifts,
                 mins=(halves(b, tile, 16), [(m, (g,)) for g, m in enumerate(mins)]))


Q2_K = Format(QType.Q2_K, Block(256, 16 + 64 + 2 + 2, (80, 82)), _dequantize, activations=Activations.Q8_K,
              tile=TILE, decode=_decode)
