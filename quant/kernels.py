"""Numba matrix products over weights as they lie in the model file.

    out[t, r] = sum_k x[t, k] * w[r, k]

Block weights take activations quantized to 8-bit blocks as llama.cpp quantizes
them for the format (`quantize_q8`, quant.formats.ACTIVATIONS) and integer dot
products (quant.packed over the x8 layout, quant.simd over the file's rows). A
format is its QType's value: the intrinsics switch on it, so nothing here names
one. Float weights
(F32, F16, BF16) take float32 activations. One kernel serves decode (one
token: a GEMV) and prefill (many: a GEMM): threads split the weight rows, and
each row is multiplied with a tile of tokens while it sits in L1, so every
weight block comes from memory once per tile of tokens.

Each kernel has a numpy twin in quant.ref that the tests compare against.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange, types
from numba.extending import overload

from quant.cpu import kernel
from quant.formats import ACTIVATIONS, FORMATS, Activations, QType
from quant.ir import ROWS
from quant.packed import GEMV_PAIRS, PAIRS, TOKENS, tiles_1, tiles_4
from quant.simd import bf16_to_float, f32_from_bits, half_to_float, row_dot, row_dots, tokens_dot

# the activations each format's dot takes, indexed by its QType's value (-1: none)
ACTIVATION = np.full(max(QType) + 1, -1, dtype=np.int64)
for _q, _a in ACTIVATIONS.items():
    ACTIVATION[_q] = _a
Q8_0, Q8_K = Activations.Q8_0.value, Activations.Q8_K.value
# formats of `gemm_float`: the float types' ids (quant.formats.floats)
F32, F16, BF16 = (FORMATS[q].float_kernel for q in (QType.F32, QType.F16, QType.BF16))
ROW_TILE = 16  # weight rows per work item
GROUP_TILE = 2  # groups of eight rows per work item in the x8 layout
_PAIRED = np.isin(np.arange(max(QType) + 1), [int(q) for q in PAIRS])  # by format id: two groups a call
_GEMV_PAIRED = np.isin(np.arange(max(QType) + 1), [int(q) for q in GEMV_PAIRS])  # the same, below TOKENS tokens
TOKEN_TILE = 64  # tokens multiplied with a row while it is in L1: 64 x 12288 int8 stays within L2


@kernel
def _f16_round(v):
    """v rounded to the nearest float16 value, ties to even (as F16C's vcvtps2ph)."""
    a = abs(v)
    if a == 0:
        return v
    if a < 6.103515625e-05:  # below float16's normal range: a fixed quantum of 2^-24
        quantum = 5.9604644775390625e-08
    else:
        _, e = math.frexp(a)  # a in [2^(e-1), 2^e): 10 mantissa bits below the leading one
        quantum = math.ldexp(1.0, e - 11)
    return np.float32(np.rint(np.float64(v) / quantum) * quantum)


@kernel
def _quantize_row(x, t, xq, xd, xs, kind):
    """Token t's activations in 8-bit blocks of 32 (xq), each with its scale (xd) and scale
    times its sum (xs), the way llama.cpp quantizes them for the weight's dot product:

    - Q8_0 (its AVX2 path): d = max|x| / 127 stored as float16, q = round(x * (127 / max|x|));
    - Q8_K: one scale per 256, from the value of largest magnitude m:
      q = min(127, round(x * (-127 / m))), d = 1 / (-127 / m).

    Rounding is half to even, as its SIMD and nearest_int paths do."""
    k = x.shape[1]
    if kind == Q8_K:
        for sb in range(k // 256):
            amax, vmax = np.float32(0.0), np.float32(0.0)
            for j in range(sb * 256, sb * 256 + 256):
                if abs(x[t, j]) > amax:  # the first of equal magnitudes, as llama.cpp
                    amax, vmax = abs(x[t, j]), x[t, j]
            iscale = np.float32(-127.0) / vmax if amax != 0 else np.float32(0.0)
            d = np.float32(1.0) / iscale if amax != 0 else np.float32(0.0)
            for blk in range(sb * 8, sb * 8 + 8):
                total = 0
                for j in range(blk * 32, blk * 32 + 32):
                    q = min(np.int32(127), np.int32(np.rint(x[t, j] * iscale)))
                    xq[t, j] = q
                    total += q
                xd[t, blk] = d
                xs[t, blk] = d * np.float32(total)
        return
    for blk in range(k // 32):
        amax = np.float32(0.0)
        for j in range(blk * 32, blk * 32 + 32):
            amax = max(amax, abs(x[t, j]))
        d = _f16_round(amax / np.float32(127.0))
        inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
        total = 0
        for j in range(blk * 32, blk * 32 + 32):
            q = np.int32(np.rint(x[t, j] * inv))
            xq[t, j] = q
            total += q
        xd[t, blk] = d
        xs[t, blk] = d * np.float32(total)


@kernel(parallel=True)
def quantize_q8(x, xq, xd, xs, kind):
    """x (n, K) float32 -> xq (n, K) int8, xd (n, K/32) scale, xs (n, K/32) scale * sum(xq);
    `kind` Q8_0 or Q8_K: see _quantize_row."""
    for t in prange(x.shape[0]):
        _quantize_row(x, t, xq, xd, xs, kind)


@kernel
def _quantized(x, kind):
    """x (n, K) float32 -> (xq, xd, xs) as quantize_q8 makes them."""
    n, k = x.shape
    xq = np.empty((n, k), dtype=np.int8)
    xd = np.empty((n, k // 32), dtype=np.float32)
    xs = np.empty((n, k // 32), dtype=np.float32)
    if n == 1:
        _quantize_row(x, 0, xq, xd, xs, kind)  # a thread launch would cost more than the work
    else:
        quantize_q8(x, xq, xd, xs, kind)
    return xq, xd, xs


@kernel
def matmul_blocks(fmt, values_per_block, w, x, out, exact=False):
    """x (n, K) float32 @ w.T into out (n, rows): activations quantized here, then gemm_blocks.
    One call from Python per product: in decode, dispatch costs as much as a small matrix."""
    xq, xd, xs = _quantized(x, ACTIVATION[fmt])
    gemm_blocks(fmt, values_per_block, w, xq, xd, xs, out, exact)


@kernel
def _sums_of_16(xq):
    """The integer sum of each 16 activations (n, K / 16), int32: Q8_K's bsums."""
    n, k = xq.shape
    out = np.empty((n, k // 16), dtype=np.int32)
    for t in range(n):
        for g in range(k // 16):
            total = 0
            for j in range(16 * g, 16 * g + 16):
                total += xq[t, j]
            out[t, g] = total
    return out


@kernel(parallel=True)
def gemm_blocks(fmt, values_per_block, w, xq, xd, xs, out, exact=False):
    """w (rows, row_bytes) uint8 blocks of format `fmt`; xq, xd, xs from quantize_q8; out (n, rows).

    One token (decode): four rows per call, walked in memory order. Many (prefill): each row
    meets four tokens per call, so its blocks are unpacked once for the four. exact: every
    token as decode takes one, so that its row of the product is bit for bit decode's."""
    rows, row_bytes = w.shape
    n, k = xq.shape
    n_blocks = k // values_per_block
    n_xb = xd.shape[1]
    for tile in prange((rows + ROW_TILE - 1) // ROW_TILE):
        r_end = min(rows, (tile + 1) * ROW_TILE)
        if n == 1 or exact:
            for t in range(n):
                r = tile * ROW_TILE
                while r + 4 <= r_end:
                    d0, d1, d2, d3 = row_dots(fmt, w, r * row_bytes, row_bytes, xq, t * k, xd, xs, t * n_xb,
                                              n_blocks)
                    out[t, r], out[t, r + 1], out[t, r + 2], out[t, r + 3] = d0, d1, d2, d3
                    r += 4
                for rr in range(r, r_end):
                    out[t, rr] = row_dot(fmt, w, rr * row_bytes, 0, xq, t * k, xd, xs, t * n_xb, n_blocks)
            continue
        for t0 in range(0, n, TOKEN_TILE):
            t_end = min(n, t0 + TOKEN_TILE)
            for r in range(tile * ROW_TILE, r_end):
                t = t0
                while t + 4 <= t_end:
                    d0, d1, d2, d3 = tokens_dot(fmt, w, r * row_bytes, xq, t * k, k, xd, xs, t * n_xb, n_xb,
                                                n_blocks)
                    out[t, r], out[t + 1, r], out[t + 2, r], out[t + 3, r] = d0, d1, d2, d3
                    t += 4
                for tt in range(t, t_end):
                    out[tt, r] = row_dot(fmt, w, r * row_bytes, 0, xq, tt * k, xd, xs, tt * n_xb, n_blocks)


SLOTS = 3  # matrices one call of matmul_packed can take: q, k and v


@kernel(parallel=True)
def matmul_packed(fmts, ws, count, x, outs, exact=False):
    """x (n, K) float32 @ w.T into out (n, rows) for the first `count` of the SLOTS matrices
    (fmts, ws, outs: tuples of SLOTS, the unused ones repeating a used one), all in the x8
    layout (quant.layout, as (rows / 8, group bytes)) and all reading x: q/k/v or gate/up,
    or a single matrix. The activations are quantized once (every format given must take
    the same ones, ACTIVATION; Q8_K's tiles take the sums of 16 as xs). One call, one
    kernel: tuples of a fixed length keep it one compiled specialization.

    Threads split the groups of eight rows, GROUP_TILE at a time, of all the matrices laid
    end to end; a work item's two groups go in one call where the host pairs the format
    (quant.packed.PAIRS, and GEMV_PAIRS for fewer than TOKENS tokens: sixteen rows in 512-bit
    vectors; a pair's products are bit for bit a group's at a time). Each group meets the tokens
    TOKENS at a time, within tiles of TOKEN_TILE tokens, so its tiles stay in L1 while the
    tokens pass. exact: one token at a time, as decode takes it, so that each token's row of
    the product is bit for bit decode's (a draft's verification); the group's tiles still
    come from memory once for all of them."""
    kind = ACTIVATION[fmts[0]]
    xq, xd, xs = _quantized(x, kind)
    if kind == Q8_K:
        xs = _sums_of_16(xq).view(np.float32)  # read as int32 by the kernels: one array type for both kinds
    n, k = xq.shape
    n_blocks = k // 256 if kind == Q8_K else k // 32  # tiles per group
    n_xb = xd.shape[1]
    starts = np.zeros(count + 1, dtype=np.int64)
    for j in range(count):
        starts[j + 1] = starts[j] + (ws[j].shape[0] + GROUP_TILE - 1) // GROUP_TILE
    paired = _PAIRED if n >= TOKENS else _GEMV_PAIRED
    for item in prange(starts[count]):
        j = 0
        while item >= starts[j + 1]:
            j += 1
        w, out, fmt = ws[j], outs[j], fmts[j]
        tile = item - starts[j]
        group_bytes, rows = w.shape[1], out.shape[1]
        for t0 in range(0, n, TOKEN_TILE):
            t_end = min(n, t0 + TOKEN_TILE)
            g, g_end = tile * GROUP_TILE, min(w.shape[0], (tile + 1) * GROUP_TILE)
            while g < g_end:
                both = paired[fmt] and g + 1 < g_end  # two groups in one call: sixteen rows in 512-bit vectors
                t = t0
                while not exact and t + TOKENS <= t_end:
                    tiles_4(fmt, both, w, g * group_bytes, xq, t * k, k, xd, xs, t * n_xb, n_xb, n_blocks,
                            out, t * rows + 8 * g, rows)
                    t += TOKENS
                for tt in range(t, t_end):
                    tiles_1(fmt, both, w, g * group_bytes, xq, tt * k, k, xd, xs, tt * n_xb, n_xb, n_blocks,
                            out, tt * rows + 8 * g, rows)
                g += 2 if both else 1


@kernel
def _dot_float(fmt, w, r, x, t):
    """Row r of float weights given as their bits, times x[t]; the format branch stays outside the loop."""
    acc = np.float32(0.0)
    if fmt == F16:
        for j in range(x.shape[1]):
            acc += half_to_float(w[r, j]) * x[t, j]
    elif fmt == BF16:
        for j in range(x.shape[1]):
            acc += bf16_to_float(w[r, j]) * x[t, j]
    else:
        for j in range(x.shape[1]):
            acc += f32_from_bits(w[r, j]) * x[t, j]
    return acc


@kernel(parallel=True)
def gemm_float(fmt, w, x, out):
    """w (rows, K) bits of F32 (uint32), F16 or BF16 (uint16) weights; x (n, K) float32; out (n, rows)."""
    rows = w.shape[0]
    n = x.shape[0]
    for tile in prange((rows + ROW_TILE - 1) // ROW_TILE):
        r_end = min(rows, (tile + 1) * ROW_TILE)
        for t0 in range(0, n, TOKEN_TILE):
            t_end = min(n, t0 + TOKEN_TILE)
            for r in range(tile * ROW_TILE, r_end):
                for t in range(t0, t_end):
                    out[t, r] = _dot_float(fmt, w, r, x, t)


# A matrix as the kernels take it (quant.tensor.QTensor.kernel_args): (kind, format id, values
# per block, data), kind one of these: the x8 layout's tiles (uint8), the file's rows of blocks
# (uint8), or the bits of float weights (uint16 or uint32; the format id is gemm_float's).
PACKED, BLOCKS, FLOAT = 0, 1, 2


def product(w, x, out, exact):
    """x (n, K) float32 @ w.T into out (n, rows), w an x8 (PACKED) or float matrix as its
    kernel_args: the dispatch for compiled callers (a decoder layer's blocks). The file's rows
    (BLOCKS) are not taken here: every compiled caller links a copy of each kernel it may
    call, and gemm_blocks's would cost as much memory as matmul_packed's (about 14 MB)."""


@overload(product)
def _product(w, x, out, exact):
    if w.types[3].dtype == types.uint8:  # chosen while typing: float bits never meet the block kernels
        def tiles(w, x, out, exact):
            # a count typed int64, not Literal[int](1): one compiled matmul_packed serves every
            # caller (each specialization linked into a caller costs it about 10 MB resident)
            one = np.int64(1)
            matmul_packed((w[1], w[1], w[1]), (w[3], w[3], w[3]), one, x, (out, out, out), exact)
        return tiles

    def floats(w, x, out, exact):
        gemm_float(w[1], w[3], x, out)
    return floats


def products(ws, count, x, outs, exact):
    """product(ws[j], x, outs[j], exact) for the first `count` of SLOTS matrices that read the
    same x (q/k/v, gate/up; the unused slots repeat a used one): one call of matmul_packed,
    which quantizes x once and runs them in one parallel region, when all are x8 tiles of
    one array type taking the same activations; else one product each."""


@overload(products)
def _products(ws, count, x, outs, exact):
    first = ws.types[0]
    joinable = all(t == first for t in ws.types) and first.types[3].dtype == types.uint8 and all(
        t == outs.types[0] for t in outs.types)

    def each_or_joined(ws, count, x, outs, exact):
        w0, w1, w2 = ws
        if joinable and ACTIVATION[w1[1]] == ACTIVATION[w0[1]] and ACTIVATION[w2[1]] == ACTIVATION[w0[1]]:
            matmul_packed((w0[1], w1[1], w2[1]), (w0[3], w1[3], w2[3]), count, x, outs, exact)
            return
        product(w0, x, outs[0], exact)
        if count > 1:
            product(w1, x, outs[1], exact)
        if count > 2:
            product(w2, x, outs[2], exact)
    return each_or_joined


@kernel
def rows(w):
    """The rows of a matrix given as its kernel_args (the x8 layout holds them in groups)."""
    return w[3].shape[0] * ROWS if w[0] == PACKED else w[3].shape[0]


@kernel(parallel=True)
def stream_sum(a):
    """Sum of a large float32 array: a streaming read, to measure memory bandwidth."""
    total = np.float32(0.0)
    for i in prange(a.shape[0]):
        total += a[i]
    return total
