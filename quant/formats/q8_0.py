"""Q8_0: d (f16) + 32 x int8; value = d * q."""

import numpy as np

from quant.formats.base import Activations, Block, Format, QType, TileFormat, f16, round_half_away
from quant.ir import walker, grouped_avx2


def _dequantize(blocks):
    return f16(blocks[:, :2]) * blocks[:, 2:].view(np.int8).astype(np.float32)


def _quantize(blocks):
    # ggml's quantize_row_q8_0_ref
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, 0, 1 / d)
    qs = round_half_away(blocks * inv).astype(np.int8).view(np.uint8)
    return np.concatenate([d.astype(np.float16).view(np.uint8), qs], axis=1)


@walker(32)
def _walk(ctx, blk, x, k):
    # block_q8_0: d (f16), qs[32] signed
    ctx.fma(ctx.f.dot_s(blk.bytes32(2), x.bytes32(0)), ctx.b.fmul(blk.f16(0), ctx.xd(k)))


_walk.group_avx2 = grouped_avx2(lambda b, blk: blk.bytes32(2), 0.0)

Q8_0 = Format(QType.Q8_0, Block(32, 2 + 32, (0,)), _dequantize, _quantize, Activations.Q8_0,
              tile=TileFormat(qs=2, sub_vectors=8, paired=True), walk=_walk, unroll=8)
