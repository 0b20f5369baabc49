"""Q4_0 and Q4_1, 32 values per block in 4 bits: value j in the low nibble of byte j, value
j + 16 in the high one.

    Q4_0  d (f16) + 16 bytes; value = d * (q - 8)
    Q4_1  d, m (f16) + 16 bytes; value = d * q + m"""

import numpy as np
from llvmlite import ir

from quant.formats.base import Activations, Block, Format, QType, TileFormat, f16, nibble_values
from quant.ir import F32, I8, I32, const_vec, grouped_avx2, nibbles, shuffle, vec, walker


def quantize_offset(blocks, half: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's quantize_row_q4_0_ref (half 8) and q5_0's (half 16): (d, q) with q in 0..2 half - 1."""
    imax = np.abs(blocks).argmax(axis=1)[:, None]
    d = np.take_along_axis(blocks, imax, axis=1) / -half
    # a tiny d overflows 1/d to inf, as in ggml's C; the bytes still match it exactly
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = np.where(d == 0, 0, 1 / d)
        q = np.trunc(blocks * inv + np.float32(half + 0.5)).astype(np.uint8).clip(0, 2 * half - 1)
    return d, q


def nibble_bytes(q: np.ndarray) -> np.ndarray:
    """(blocks, 32) values -> (blocks, 16) bytes: value j in byte j's low nibble, j + 16 in its high."""
    return (q[:, :16] & np.uint8(0x0F)) | ((q[:, 16:] & np.uint8(0x0F)) << np.uint8(4))


def _quantize(blocks):
    d, q = quantize_offset(blocks, 8)
    return np.concatenate([d.astype(np.float16).view(np.uint8), nibble_bytes(q)], axis=1)


def q4_0_values(b, qs):
    """16 bytes of Q4_0 nibbles -> their 32 values in order (low nibbles, then high nibbles):
    the bytes go to both halves, the upper half shifted by 4 (vbroadcasti128, vpsrlvd, vpand)."""
    both = b.bitcast(shuffle(b, qs, qs, list(range(16)) * 2), vec(I32, 8))
    shifted = b.lshr(both, ir.Constant(vec(I32, 8), [0, 0, 0, 0, 4, 4, 4, 4]))
    return b.and_(b.bitcast(shifted, vec(I8, 32)), const_vec(I8, 32, 0x0F))


@walker(32)
def _walk(ctx, blk, x, k):
    # block_q4_0: d (f16), qs[16]; value j in the low nibble of byte j, value j + 16 in the high one
    b = ctx.b
    d = blk.f16(0)
    qs = blk.load(2, vec(I8, 16))
    u = shuffle(b, nibbles(b, qs, 0), nibbles(b, qs, 4), range(32))
    partial, shift = ctx.nibble_dot(u, x.bytes32(0))
    ctx.fma(partial, b.fmul(d, ctx.xd(k)))
    if shift != 8:  # sum((u - 8) x) = partial + (shift - 8) sum(x)
        ctx.sub(b.fmul(b.fmul(d, ir.Constant(F32, 8.0 - shift)), ctx.xs(k)))


_walk.group_avx2 = grouped_avx2(lambda b, blk: q4_0_values(b, blk.load(2, vec(I8, 16))), 8.0)

def _dequantize_q4_0(blocks):
    return f16(blocks[:, :2]) * (nibble_values(blocks[:, 2:]).astype(np.float32) - 8)


def _dequantize_q4_1(blocks):
    # ggml's dequantize_row_q4_1: d * q + m
    return f16(blocks[:, :2]) * nibble_values(blocks[:, 4:]).astype(np.float32) + f16(blocks[:, 2:4])


Q4_0 = Format(QType.Q4_0, Block(32, 2 + 16, (0,)), _dequantize_q4_0, _quantize, Activations.Q8_0,
              tile=TileFormat(qs=2, sub_vectors=4, paired=True), walk=_walk, unroll=16)
Q4_1 = Format(QType.Q4_1, Block(32, 2 + 2 + 16, (0, 2)), _dequantize_q4_1, activations=Activations.Q8_0,
              tile=TileFormat(qs=4, sub_vectors=4, m=2, paired=True))
