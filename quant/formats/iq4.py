"""IQ4_NL and IQ4_XS: 4-bit indices into sixteen non-uniform levels (IQ4_NL_LEVELS).

    IQ4_NL  d (f16) + 16 bytes as in Q4_0; value = d * IQ4_NL_LEVELS[q]
    IQ4_XS  d (f16) + scales_h (u16: 2 high bits of 8 scales) + 4 bytes of low scale nibbles
            + 256 x 4-bit indices, 16 bytes per 32 values as IQ4_NL"""

import numpy as np

from quant.formats.base import (IQ4_NL_VALUES, Activations, Block, Format, QType, SuperTileFormat, TileFormat, f16,
                                nibble_values, super_source)
from quant.ir import I8, I16, ROWS, V32I8, Once, Super, const_like, halves, vec, widen


def _dequantize_iq4_nl(blocks):
    return f16(blocks[:, :2]) * IQ4_NL_VALUES[nibble_values(blocks[:, 2:])]


def _dequantize_iq4_xs(blocks):
    # ggml's dequantize_row_iq4_xs: per 32 values, d * (scale - 32) * IQ4_NL_VALUES[q]; scale ib
    # has the nibble ib % 2 of scales_l[ib / 2] and bits 2ib, 2ib + 1 of scales_h
    d = f16(blocks[:, 0:2])
    high = np.ascontiguousarray(blocks[:, 2:4]).view(np.uint16).astype(np.int32)  # (blocks, 1)
    ib = np.arange(8)
    low = (blocks[:, 4 + ib // 2].astype(np.int32) >> (4 * (ib % 2))) & 0x0F
    scales = low | (((high >> (2 * ib)) & 3) << 4)
    q = IQ4_NL_VALUES[nibble_values(blocks[:, 8:].reshape(-1, 16)).reshape(-1, 8, 32)]
    return ((d * (scales - 32).astype(np.float32))[:, :, None] * q).reshape(-1, 256)


# the tile: d[8], scales_h[8] (u16); the 4 scales_l bytes at 32; then per sub-block of 32 its
# 16 bytes as four sub-vectors at 64 (low nibbles: values 0..15, high: 16..31)
# two groups at once in decode too, on a Xeon: 1.13x from L3, 1.01x from memory
XS_TILE = SuperTileFormat(header=64, source=super_source(136, head=[0, 2], scales=range(4, 8), runs=[(8, 128)]),
                          paired=True, paired_in_decode=True)


def _decode_iq4_xs(tile, ops) -> Super:
    """IQ4_XS: sub-block ib's scale is nibble ib % 2 of scales_l[ib / 2] and bits 2ib of scales_h,
    less 32; its values are IQ4_NL levels, low nibbles first."""
    b = ops.b
    high = Once(lambda: widen(b, tile.load(16, vec(I16, ROWS))))
    low = [Once(lambda k=k: widen(b, tile.load(32 + 8 * k, vec(I8, 8)))) for k in range(4)]

    def scale(ib):
        c = lambda v: const_like(high(), v)  # noqa: E731
        s = b.or_(b.and_(b.lshr(low[ib // 2](), c(4 * (ib % 2))), c(15)),
                  b.shl(b.and_(b.lshr(high(), c(2 * ib)), c(3)), c(4)))
        return b.sub(s, c(32))

    groups = []
    for ib in range(8):
        subs = [Once(lambda at=XS_TILE.header + 32 * (4 * ib + L): tile.load(at, V32I8)) for L in range(4)]
        parts = [(Once(lambda v=v, hi=hi: ops.levels(ops.nibbles(v(), 4 if hi else 0))), 32 * ib + 16 * hi + 4 * L)
                 for hi in (False, True) for L, v in enumerate(subs)]
        groups.append((Once(lambda ib=ib: scale(ib)), parts, (2 * ib, 2 * ib + 1)))
    return Super(halves(b, tile, 0), groups, signed=True)


IQ4_NL = Format(QType.IQ4_NL, Block(32, 2 + 16, (0,)), _dequantize_iq4_nl, activations=Activations.Q8_0,
                tile=TileFormat(qs=2, sub_vectors=4, levels=True, paired=True))  # Q4_0's bytes
IQ4_XS = Format(QType.IQ4_XS, Block(256, 2 + 2 + 4 + 128, (0,)), _dequantize_iq4_xs, activations=Activations.Q8_K,
                tile=XS_TILE, decode=_decode_iq4_xs)
