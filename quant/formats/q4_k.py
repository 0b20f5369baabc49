"""Q4_K and Q5_K, 256 values per block in eight sub-blocks of 32, each with a 6-bit scale and min:

    Q4_K  d, dmin (f16) + 12 bytes of eight 6-bit (scale, min) + 256 x 4-bit: per 64 values,
          32 bytes, their low nibbles sub-block 2p and their high nibbles sub-block 2p + 1;
          value = d * scale * q - dmin * min
    Q5_K  Q4_K's head + qh (bit s of byte l: the fifth bit of sub-block s's value l) + Q4_K's values"""

import numpy as np
from llvmlite import ir

from quant.formats.base import Activations, Block, Format, QType, SuperTileFormat, f16, super_source
from quant.ir import F32, I8, I32, V32I8, Once, Super, const_like, halves, nibbles, vec, walker, widen


def q4_k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(blocks, 12) packed bytes -> (blocks, 8) scales and mins, as ggml's get_scale_min_k4:
    sub-blocks 0-3 take 6 bits of bytes 0-3 and 4-7; 4-7 take a nibble of bytes 8-11
    plus the top 2 bits of bytes 0-3 (scale) and 4-7 (min)."""
    s = scales.astype(np.int32)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def _sub_block_nibbles(qs: np.ndarray) -> np.ndarray:
    """(blocks, 128) bytes -> (blocks, 8, 32) 4-bit values by sub-block."""
    qs = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32)


def _scaled_less_mins(blocks: np.ndarray, q: np.ndarray) -> np.ndarray:
    """d * scale * q - dmin * min per sub-block of 32, from the d, dmin and 12 packed scale
    bytes that open a Q4_K or Q5_K block; q: (blocks, 8, 32) unsigned values."""
    d, dmin = f16(blocks[:, 0:2]), f16(blocks[:, 2:4])
    sc, m = q4_k_scale_min(blocks[:, 4:16])
    scale = (d * sc.astype(np.float32))[:, :, None]
    offset = (dmin * m.astype(np.float32))[:, :, None]
    return (scale * q.astype(np.float32) - offset).reshape(-1, 256)


def _dequantize_q4_k(blocks):
    # ggml's dequantize_row_q4_K
    return _scaled_less_mins(blocks, _sub_block_nibbles(blocks[:, 16:]))


def _dequantize_q5_k(blocks):
    # ggml's dequantize_row_q5_K: Q4_K's values plus a fifth bit, bit s of qh[l] for value l of sub-block s
    fifth = (blocks[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    return _scaled_less_mins(blocks, _sub_block_nibbles(blocks[:, 48:]) | (fifth << 4))


# the tiles: d[8], dmin[8]; the 12 packed scale bytes at 32; (Q5_K: qh as eight sub-vectors at
# 128;) then for each 64-value pair p of sub-blocks, eight sub-vectors of its 32 value bytes
# two groups at once in a prompt's products: 1.4x (Q4_K) and 1.13x (Q5_K) at 128 tokens on Zen 5; not in
# decode, where Q4_K's pair ran 1.11x from L3 but 0.88x from memory
Q4_K_TILE = SuperTileFormat(header=128, source=super_source(144, head=[0, 2], scales=range(4, 16), runs=[(16, 128)]),
                            paired=True)
Q5_K_TILE = SuperTileFormat(header=384, source=super_source(176, head=[0, 2], scales=range(4, 16), runs=[(16, 160)]),
                            paired=True)


def _q4_k_scales(b, tile, at: int):
    """Q4_K's and Q5_K's eight 6-bit (scale, min) pairs of eight rows (ggml's get_scale_min_k4)
    from the 12 transposed bytes at `at`: two lists of eight Once of <8 x i32>, each byte read
    where a scale or min is first asked for."""
    sb = [Once(lambda k=k: widen(b, tile.load(at + 8 * k, vec(I8, 8)))) for k in range(12)]

    def c(v):
        return const_like(sb[0](), v)

    def scale(j):
        if j < 4:
            return b.and_(sb[j](), c(63))
        return b.or_(b.and_(sb[j + 4](), c(15)), b.shl(b.lshr(sb[j - 4](), c(6)), c(4)))

    def min_(j):
        if j < 4:
            return b.and_(sb[j + 4](), c(63))
        return b.or_(b.lshr(sb[j + 4](), c(4)), b.shl(b.lshr(sb[j](), c(6)), c(4)))

    return [Once(lambda j=j: scale(j)) for j in range(8)], [Once(lambda j=j: min_(j)) for j in range(8)]


def _decode(tile, ops, fifth_bits: bool) -> Super:
    """Q4_K (and, with fifth_bits, Q5_K): sub-block j's value 4L + jj is nibble j % 2 of
    sub-vector L of pair j // 2 (and bit j of qh sub-vector L is its fifth bit)."""
    b = ops.b
    scales, mins = _q4_k_scales(b, tile, 32)
    values_at = (Q5_K_TILE if fifth_bits else Q4_K_TILE).header
    subs = [Once(lambda at=values_at + 32 * k: tile.load(at, V32I8)) for k in range(32)]
    qh = [Once(lambda at=128 + 32 * L: tile.load(at, V32I8)) for L in range(8)]

    def value(j, L):
        v = ops.nibbles(subs[8 * (j // 2) + L](), 4 * (j % 2))
        return ops.with_bit(v, qh[L](), j, 4) if fifth_bits else v

    groups = []
    for j in range(8):
        parts = [(Once(lambda j=j, L=L: value(j, L)), 32 * j + 4 * L) for L in range(8)]
        groups.append((scales[j], parts, (2 * j, 2 * j + 1)))
    return Super(halves(b, tile, 0), groups, mins=(halves(b, tile, 16), [(mins[j], (2 * j, 2 * j + 1))
                                                                          for j in range(8)]),
                 top=31 if fifth_bits else 15)


def _scale_min(b, scales, j):
    """get_scale_min_k4: the 6-bit scale and min of sub-block j, as float."""
    def s(i):
        return b.zext(scales[i], I32)

    def c(v):
        return ir.Constant(I32, v)

    if j < 4:
        sc, m = b.and_(s(j), c(63)), b.and_(s(j + 4), c(63))
    else:
        sc = b.or_(b.and_(s(j + 4), c(0xF)), b.shl(b.lshr(s(j - 4), c(6)), c(4)))
        m = b.or_(b.lshr(s(j + 4), c(4)), b.shl(b.lshr(s(j), c(6)), c(4)))
    return b.uitofp(sc, F32), b.uitofp(m, F32)


@walker(256)
def _walk(ctx, blk, x, k):
    # block_q4_K: d, dmin (f16), scales[12] (8 x 6-bit scale and min), qs[128]:
    # 32 bytes per 64 values, low nibbles the first 32, high nibbles the next 32
    b = ctx.b
    d, dmin = blk.f16(0), blk.f16(2)
    scales = [blk.load(4 + i, I8) for i in range(12)]
    for pair in range(4):
        qs = blk.bytes32(16 + 32 * pair)
        for half in range(2):
            j = 2 * pair + half
            sc, m = _scale_min(b, scales, j)
            partial, shift = ctx.nibble_dot(nibbles(b, qs, 4 * half), x.bytes32(32 * j))
            scale = b.fmul(d, sc)
            ctx.fma(partial, b.fmul(scale, ctx.xd(k, j)))
            ctx.sub(b.fmul(b.fmul(dmin, m), ctx.xs(k, j)))
            if shift:  # sum(u x) = partial + shift sum(x)
                ctx.sub(b.fmul(b.fmul(scale, ir.Constant(F32, -shift)), ctx.xs(k, j)))


Q4_K = Format(QType.Q4_K, Block(256, 2 + 2 + 12 + 128, (0, 2)), _dequantize_q4_k, activations=Activations.Q8_K,
              tile=Q4_K_TILE, decode=lambda tile, ops: _decode(tile, ops, fifth_bits=False), walk=_walk)
Q5_K = Format(QType.Q5_K, Block(256, 2 + 2 + 12 + 32 + 128, (0, 2)), _dequantize_q5_k, activations=Activations.Q8_K,
              tile=Q5_K_TILE, decode=lambda tile, ops: _decode(tile, ops, fifth_bits=True))
