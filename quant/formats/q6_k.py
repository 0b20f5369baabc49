"""Q6_K: 256 x 6-bit as ql[128] (low 4 bits) + qh[64] (high 2 bits), 16 x int8 scales (one
per 16 values), d (f16); value = d * scale * (q - 32)."""

import numpy as np

from quant.formats.base import Activations, Block, Format, QType, SuperTileFormat, f16, super_source
from quant.ir import I8, I16, V32I8, Once, Super, bits, const_vec, halves, vec, walker, widen


def _dequantize(blocks):
    # ggml's dequantize_row_q6_K: per 128 values, ql 64 bytes, qh 32 bytes, 8 scales;
    # value l + 32g takes ql's low (g 0, 1) or high (g 2, 3) nibble and qh's bits 2g..2g+1
    ql = blocks[:, 0:128].reshape(-1, 2, 2, 32)  # (blocks, half, which 32 bytes, l)
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32).reshape(-1, 2, 4, 2)  # (.., g, l >= 16)
    d = f16(blocks[:, 208:210]).reshape(-1, 1, 1, 1)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # g = 0..3
    high = (qh >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3
    q = (low | (high << 4)).astype(np.float32) - 32  # (blocks, half, g, 32)
    scale = np.repeat(scales, 16, axis=3)  # (blocks, half, g, 32)
    return (d * scale * q).reshape(-1, 256)


# the tile: d[8]; the 16 int8 scales at 16; ql, as four runs of 32 bytes (64h + 32a) of eight
# sub-vectors each; qh, as two runs (32h)
TILE = SuperTileFormat(header=144, source=super_source(210, head=[208], scales=range(192, 208), runs=[(0, 192)]))


def _decode(tile, ops) -> Super:
    """Q6_K: a sub-vector of ql (h, a) and one of qh (h) give the values 128h + 32s + 4L + j."""
    b = ops.b
    scales = [Once(lambda k=k: widen(b, tile.load(16 + 8 * k, vec(I8, 8)), signed=True)) for k in range(16)]
    by_value = {}
    for h in range(2):
        for L in range(8):
            ql = [Once(lambda at=TILE.header + 32 * (16 * h + 8 * a + L): tile.load(at, V32I8)) for a in range(2)]
            qh = Once(lambda at=TILE.header + 32 * 32 + 32 * (8 * h + L): tile.load(at, V32I8))
            for s in range(4):
                by_value[128 * h + 32 * s + 4 * L] = Once(
                    lambda ql=ql[s % 2], qh=qh, s=s: b.or_(ops.nibbles(ql(), 4 if s >= 2 else 0),
                                                           ops.field(qh(), 2 * s, 2, to=4)))
    groups = [(scales[k], [(by_value[16 * k + 4 * c], 16 * k + 4 * c) for c in range(4)], (k,)) for k in range(16)]
    return Super(halves(b, tile, 0), groups, offset=32, top=63)


@walker(256)
def _walk(ctx, blk, x, k):
    # block_q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8, one per 16 values), d (f16).
    # Each half of 128 values: 64 bytes of ql, 32 of qh, 8 scales; value = d * scale * (q - 32)
    b = ctx.b
    d = blk.f16(208)
    for half in range(2):
        ql0, ql1 = blk.bytes32(64 * half), blk.bytes32(64 * half + 32)
        qh = blk.bytes32(128 + 32 * half)
        groups = [(ql0, 0, 0), (ql1, 0, 2), (ql0, 4, 4), (ql1, 4, 6)]  # (ql, its shift, qh shift)
        for g, (ql, lshift, hshift) in enumerate(groups):
            q = b.or_(bits(b, ql, lshift, 0x0F), b.shl(bits(b, qh, hshift, 3), const_vec(I8, 32, 4)))
            q = b.sub(q, const_vec(I8, 32, 32))
            s = 8 * half + 2 * g
            scale_lo = b.sext(blk.load(192 + s, I8), I16)
            scale_hi = b.sext(blk.load(193 + s, I8), I16)
            j = 4 * half + g
            partial = ctx.f.dot_s2(q, x.bytes32(32 * j), scale_lo, scale_hi)
            ctx.fma(partial, b.fmul(d, ctx.xd(k, j)))


Q6_K = Format(QType.Q6_K, Block(256, 128 + 64 + 16 + 2, (208,)), _dequantize, activations=Activations.Q8_K,
              tile=TILE, decode=_decode, walk=_walk)
