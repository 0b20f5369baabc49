"""Q5_0 and Q5_1: Q4_0's and Q4_1's nibbles plus a fifth bit per value, bit j of qh (a
little-endian u32) for value j.

    Q5_0  d (f16) + qh + 16 bytes; value = d * (q - 16)
    Q5_1  d, m (f16) + qh + 16 bytes; value = d * q + m"""

import numpy as np
from llvmlite import ir

from quant.formats.base import Activations, Block, Format, QType, TileFormat, f16, nibble_values
from quant.formats.q4_0 import nibble_bytes, q4_0_values, quantize_offset
from quant.ir import F32, I8, grouped_avx2, lane_bits, vec, walker


def _fifth_bit_values(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """(blocks, 4) fifth bits and (blocks, 16) nibbles -> (blocks, 32) 5-bit values."""
    return nibble_values(qs) | (np.unpackbits(qh, axis=1, bitorder="little") << 4)


def _dequantize_q5_0(blocks):
    return f16(blocks[:, :2]) * (_fifth_bit_values(blocks[:, 2:6], blocks[:, 6:]).astype(np.float32) - 16)


def _dequantize_q5_1(blocks):
    return f16(blocks[:, :2]) * _fifth_bit_values(blocks[:, 4:8], blocks[:, 8:]).astype(np.float32) + f16(
        blocks[:, 2:4])


def _quantize(blocks):
    d, q = quantize_offset(blocks, 16)
    qh = np.packbits(q >> np.uint8(4), axis=1, bitorder="little")
    return np.concatenate([d.astype(np.float16).view(np.uint8), qh, nibble_bytes(q)], axis=1)


def _values(b, blk):
    """A Q5_0 block's 32 values, 0..31."""
    return b.or_(q4_0_values(b, blk.load(6, vec(I8, 16))), lane_bits(b, blk.load(2, vec(I8, 4)), 0))


@walker(32)
def _walk(ctx, blk, x, k):
    # block_q5_0: d (f16), qh (bit j: the fifth bit of value j), qs[16] as in Q4_0; value = d * (q - 16)
    b = ctx.b
    d = blk.f16(0)
    partial, shift = ctx.nibble_dot(_values(b, blk), x.bytes32(0), half=16)
    ctx.fma(partial, b.fmul(d, ctx.xd(k)))
    if shift != 16:  # sum((u - 16) x) = partial + (shift - 16) sum(x)
        ctx.sub(b.fmul(b.fmul(d, ir.Constant(F32, 16.0 - shift)), ctx.xs(k)))


_walk.group_avx2 = grouped_avx2(_values, 16.0)

Q5_0 = Format(QType.Q5_0, Block(32, 2 + 4 + 16, (0,)), _dequantize_q5_0, _quantize, Activations.Q8_0,
              tile=TileFormat(qs=6, sub_vectors=4, qh=2, paired=True), walk=_walk, unroll=8)
Q5_1 = Format(QType.Q5_1, Block(32, 2 + 2 + 4 + 16, (0, 2)), _dequantize_q5_1, activations=Activations.Q8_0,
              tile=TileFormat(qs=8, sub_vectors=4, qh=4, m=2, paired=True))
