"""Numba twins of the numpy reference ops (edgert.ops): what the forward pass calls.

Private `_*` kernels take arrays and write into `out`; the public functions have
the signatures of their twins in edgert.ops, which the tests hold them to. In
decode each op sees one token, so what these save is numpy's per-call overhead
(a dozen temporaries per RMSNorm) as much as arithmetic."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numba
from numba import prange, types
from numba.extending import overload

from quant.cpu import kernel
from quant.kernels import product, products, rows
from quant.simd import f32_from_bits, float_to_half, fused_multiply_add, half_to_float

if TYPE_CHECKING:  # edgert.kv_cache stores its rows through store_kv below
    from edgert.kv_cache import KVView


F32 = np.float32
NEGLIGIBLE = np.float32(-30.0)  # log of the smallest attention weight kept, relative to the largest
QUERY_ROWS = 32  # (query, head) pairs of one KV head per work item
KEY_BLOCK = 32  # keys decoded and scored together
SPAN_KEYS = 64  # fewest keys per span when few queries split the keys among threads


def rms_norm(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """ops.rms_norm over the last axis."""
    x = np.ascontiguousarray(x, dtype=F32)
    out = np.empty_like(x)
    w = weight if weight is not None else np.ones(x.shape[-1], dtype=F32)
    _rms_norm(x.reshape(-1, x.shape[-1]), w, F32(eps), out.reshape(-1, x.shape[-1]))
    return out


def gelu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ops.gelu_tanh(gate) * up."""
    out = np.empty_like(gate)
    _gelu_mul(gate.reshape(-1), np.ascontiguousarray(up).reshape(-1), out.reshape(-1))
    return out


def rope(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """ops.rope: (n, heads, head_dim) rotated by position, NeoX halves."""
    x = np.ascontiguousarray(x, dtype=F32)
    out = np.empty_like(x)
    _rope(x, *_rope_table(pos.astype(np.int64), inv_freq), out)
    return out


def norm_rope(x: np.ndarray, weight: np.ndarray, eps: float, pos: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """ops.rope(ops.rms_norm(x, weight, eps), pos, inv_freq) in one call: a step's queries or
    keys, (n, heads, head_dim). Bit for bit rope(rms_norm(...)) here."""
    x = np.ascontiguousarray(x, dtype=F32)
    out = np.empty_like(x)
    _norm_rope(x, weight, F32(eps), *_rope_table(pos.astype(np.int64), inv_freq), out)
    return out


def add_norm(x: np.ndarray, h: np.ndarray, weight: np.ndarray, eps: float, scale: float = 1.0) -> np.ndarray:
    """(x + ops.rms_norm(h, weight, eps)) * scale in one call: a block's output joining the
    residual stream x, (n, H) both. Bit for bit (x + rms_norm(h, ...)) * scale here."""
    h = np.ascontiguousarray(h, dtype=F32)
    out = np.empty_like(h)
    _add_norm(np.ascontiguousarray(x, dtype=F32), h, weight, F32(eps), F32(scale), out)
    return out


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """ops.softcap: tanh(x / cap) * cap."""
    if not cap:
        return x
    out = np.empty_like(x)
    _softcap(np.ascontiguousarray(x).reshape(-1), F32(cap), out.reshape(-1))
    return out


def attention(q: np.ndarray, kv: KVView, q_pos: np.ndarray, window: int, threads: int | None = None) -> np.ndarray:
    """ops.attention over a cache view (edgert.kv_cache.KVView, entries of any kv_type):
    (n, n_head, d) queries -> (n, n_head * d).

    Work items are (KV head, tile of queries, span of keys). The queries of a tile that share
    a KV head meet each key once: its row is decoded to float32 once for all of them, and
    the softmax runs online (flash attention), so no query keeps more than a block of scores,
    whatever the context. Few queries (decode) split the keys into spans, merged at the end
    as flash-decoding does, so that every thread has work. threads: those the work is
    planned for (default: the kernels' own)."""
    return _attend(np.ascontiguousarray(q, dtype=F32), kv.k, kv.k_scale, kv.v, kv.v_scale, q_pos, kv.pos, window,
                   threads or numba.get_num_threads())  # asked in compiled code, it would keep _attend from the disk cache


@kernel
def _attend(q, k, k_scale, v, v_scale, q_pos, k_pos, window, threads):
    """`attention` in one compiled call, from its plan (query tiles, key spans, their order)
    to its output: the spans in parallel (_attention_spans), then their merge on this thread,
    a few thousand values at most (only a few queries split the keys). With its plan made
    in Python, a decode step's attention took 3-6 us more (cold), and as two calls about 1% more
    of the step (BENCHMARKS.md)."""
    n, n_head, d = q.shape
    m, n_kv = k.shape[0], k.shape[1]
    tile = max(1, QUERY_ROWS // (n_head // n_kv))
    tiles = (n + tile - 1) // tile
    spans = _spans(m, n_kv * tiles, threads)
    acc = np.empty((spans, n, n_head, d), dtype=np.float32)
    best = np.empty((spans, n, n_head), dtype=np.float32)
    total = np.empty((spans, n, n_head), dtype=np.float32)
    _attention_spans(q, k, k_scale, v, v_scale, q_pos, k_pos, window, tile, _order(tiles, spans, threads), acc, best,
                     total)
    if spans == 1:  # normalized in place already
        return acc[0].reshape(n, n_head * d)
    out = np.empty((n, n_head, d), dtype=np.float32)
    _merge(acc, best, total, out)
    return out.reshape(n, n_head * d)


@kernel
def _spans(m, items, threads):
    """How many spans the m keys are split into, for `items` (KV head, query tile) pairs: none
    shorter than SPAN_KEYS, at most two work items a thread, and, where there are more items
    than threads, a whole number of items a thread. 3 spans on 2 threads would leave one thread
    two spans' work: E2B's decode attention at 192 keys, called alone with warm caches, takes
    1.3-1.4x as long so (in a decode step, where each call finds its code and keys evicted by
    the weights streamed before it, the two are level: BENCHMARKS.md)."""
    spans = max(1, min((m + SPAN_KEYS - 1) // SPAN_KEYS, (2 * threads + items - 1) // items))
    while spans > 1 and spans * items > threads and spans * items % threads:
        spans -= 1
    return spans


@kernel
def _order(tiles, spans, threads):
    """The (query tile, span) pairs, as tile * spans + span, in the order the work items take
    them: spans dealt round the threads (_dealt), and tiles from both ends in turn (0, last,
    1, last - 1, ...). A causal prompt's tile meets as many keys as come before its queries,
    so in order, the thread given the last run of tiles would do nearly three quarters of the
    work (two threads, 16 tiles: 100 of 136 parts; Gemma 3 270M's attention at 128 tokens ran
    1.6x as fast on two threads as on one, and 1.9x so dealt)."""
    dealt = _dealt(spans, threads)
    order = np.empty(tiles * spans, dtype=np.int64)
    for i in range(tiles):
        end = i // 2 if i % 2 == 0 else tiles - 1 - i // 2
        for j in range(spans):
            order[i * spans + j] = end * spans + dealt[j]
    return order


@kernel
def _dealt(spans, threads):
    """The spans in the order the work items take them, dealt round the threads: a prange hands
    each thread a run of consecutive items, and a ring cache not yet full keeps its keys in its
    first slots, so spans in key order would leave the threads given the last ones nothing to
    do (decode of E2B's sliding layers below 512 tokens ran on one thread so). Which thread
    takes a span changes no result: each is its own work item."""
    out = np.arange(spans)
    if threads < 2 or spans % threads:
        return out
    per = spans // threads
    for p in range(spans):
        out[p] = (p % per) * threads + p // per
    return out


@kernel(inline="always")
def _tanh(x):
    """tanh as a rational function (Eigen's float tanh): within 4e-7 of tanh everywhere, and
    plain arithmetic, so loops over it vectorize where libm's tanhf would be called per value."""
    c = min(max(x, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    x2 = c * c
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return c * p / q


@kernel
def _rms_norm(x, w, eps, out):
    n, d = x.shape
    for t in range(n):
        ss = np.float32(0.0)
        for j in range(d):
            ss += x[t, j] * x[t, j]
        scale = np.float32(1.0) / np.sqrt(ss / np.float32(d) + eps)
        for j in range(d):
            out[t, j] = x[t, j] * scale * w[j]


@kernel
def _gelu_mul(gate, up, out):
    c = np.float32(np.sqrt(2.0 / np.pi))
    for i in range(gate.shape[0]):
        g = gate[i]
        out[i] = np.float32(0.5) * g * (np.float32(1.0) + _tanh(c * (g + np.float32(0.044715) * g * g * g))) * up[i]


@kernel
def _rope_table(pos, inv_freq):
    """cos and sin of each position's angles, (n, head_dim / 2) each: made once for a step's
    queries and keys alike (a libm call per angle costs more than the rotation it serves)."""
    n, half = pos.shape[0], inv_freq.shape[0]
    cos, sin = np.empty((n, half), dtype=np.float32), np.empty((n, half), dtype=np.float32)
    for t in range(n):
        for i in range(half):
            angle = np.float32(pos[t]) * inv_freq[i]
            cos[t, i], sin[t, i] = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return cos, sin


@kernel
def _rope(x, cos, sin, out):
    """out (not x) = x rotated: x1 * c - x2 * s and x2 * c + x1 * s, each one fused multiply-add
    of the first product and the second product rounded (x1 * c - round(x2 * s)), written out:
    the x86 compiler had fused the scalar loop so, but fused the other product in about one
    value of seven once the loop vectorized, and the ARM one fused otherwise. A tiny random
    model's logits amplify such a change past test_layouts' bound."""
    n, heads, d = x.shape
    half = d // 2
    for t in range(n):
        for h in range(heads):
            for i in range(half):
                x1, x2 = x[t, h, i], x[t, h, i + half]
                out[t, h, i] = fused_multiply_add(x1, cos[t, i], -(x2 * sin[t, i]))
                out[t, h, i + half] = fused_multiply_add(x2, cos[t, i], x1 * sin[t, i])


@kernel
def _norm_rope(x, w, eps, cos, sin, out):
    """_rms_norm over each head, then _rope: one dispatch where the forward pass would make two
    (a decode step's small ops cost their calls more than their arithmetic)."""
    n, heads, d = x.shape
    normed = np.empty_like(out)
    _rms_norm(x.reshape(n * heads, d), w, eps, normed.reshape(n * heads, d))
    _rope(normed, cos, sin, out)


@kernel
def _add_norm(x, h, w, eps, scale, out):
    """out = (x + _rms_norm(h)) * scale, each value rounded as numpy's add and multiply would."""
    _rms_norm(h, w, eps, out)
    for t in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[t, j] = (x[t, j] + out[t, j]) * scale


@kernel
def _softcap(x, cap, out):
    for i in range(x.shape[0]):
        out[i] = _tanh(x[i] / cap) * cap


@kernel
def qkv_block(x, attn_norm, eps, ws, count, q_norm, k_norm, v_norm, pos, inv_freq, n_head, n_kv, d, exact):
    """A decoder layer's attention up to its cache (Gemma4TextAttention), in one call, bit for
    bit the ops one by one (edgert.gemma4.qkv_ops): h = rms_norm(x) (n, H); q, k, v = h @
    ws.T (count 3, or 1 on a layer that borrows its K/V: q alone); q and k normed per head
    and rotated, v normed without a weight when v_norm. Returns q (n, n_head, d), k and v
    (n, n_kv, d), the last two unwritten when count is 1."""
    n = x.shape[0]
    h = np.empty_like(x)
    _rms_norm(x, attn_norm, eps, h)
    q = np.empty((n, n_head * d), dtype=np.float32)
    k = np.empty((n, n_kv * d), dtype=np.float32)
    v = np.empty((n, n_kv * d), dtype=np.float32)
    products(ws, count, h, (q, k, v), exact)
    cos, sin = _rope_table(pos, inv_freq)
    q_out = np.empty((n, n_head, d), dtype=np.float32)
    _norm_rope(q.reshape(n, n_head, d), q_norm, eps, cos, sin, q_out)
    k_out = np.empty((n, n_kv, d), dtype=np.float32)
    v_out = v.reshape(n, n_kv, d)
    if count > 1:
        _norm_rope(k.reshape(n, n_kv, d), k_norm, eps, cos, sin, k_out)
        if v_norm:
            v_out = np.empty((n, n_kv, d), dtype=np.float32)
            _rms_norm(v.reshape(n * n_kv, d), np.ones(d, dtype=np.float32), eps, v_out.reshape(n * n_kv, d))
    return q_out, k_out, v_out


@kernel
def after_attention_block(x, a, wo, post_attn_norm, ffn_norm, gate_up, down, post_ffn_norm, ple_gate, ple_proj,
                          ple_norm, ple, scalar, eps, exact):
    """The rest of a decoder layer after its attention `a` (n, n_head * d), in one call, bit for
    bit the ops one by one (edgert.gemma4.after_attention_ops); x (n, H) is the residual stream:

        x = x + norm(a @ wo.T)                                       the attention's output
        x = x + norm(down(gelu_tanh(gate(h)) * up(h))), h = norm(x)  the MLP (gate_up: slots
                                                                     of `products`, 2 used)
        x = (x + norm(ple_proj(gelu_tanh(ple_gate(x)) * ple))) * scalar   the per-layer input

    ple (n, P), this layer's per-layer inputs; with P = 0 (no PLE) the last line is x * scalar."""
    n, hidden = x.shape
    o = np.empty((n, hidden), dtype=np.float32)
    product(wo, a, o, exact)
    x1 = np.empty_like(x)
    _add_norm(x, o, post_attn_norm, eps, np.float32(1.0), x1)
    h = np.empty_like(x)
    _rms_norm(x1, ffn_norm, eps, h)
    gate = np.empty((n, rows(gate_up[0])), dtype=np.float32)
    up = np.empty_like(gate)
    products(gate_up, 2, h, (gate, up, gate), exact)
    act = np.empty_like(gate)
    _gelu_mul(gate.reshape(-1), up.reshape(-1), act.reshape(-1))
    d = np.empty((n, hidden), dtype=np.float32)
    product(down, act, d, exact)
    x2 = np.empty_like(x)
    _add_norm(x1, d, post_ffn_norm, eps, np.float32(1.0), x2)
    if ple.shape[1] == 0:
        for t in range(n):
            for j in range(hidden):
                x2[t, j] *= scalar
        return x2
    g = np.empty((n, ple.shape[1]), dtype=np.float32)
    product(ple_gate, x2, g, exact)
    gated = np.empty_like(g)
    _gelu_mul(g.reshape(-1), ple.reshape(-1), gated.reshape(-1))
    p = np.empty((n, hidden), dtype=np.float32)
    product(ple_proj, gated, p, exact)
    out = np.empty_like(x)
    _add_norm(x2, p, ple_norm, eps, scalar, out)
    return out


def _decode_row(values, scales, j, g, out, row):
    """Cache row (j, g) as float32 into out[row]: see edgert.kv_cache for the three types."""


@overload(_decode_row, inline="always")
def _decode_row_typed(values, scales, j, g, out, row):
    if values.dtype == types.float32:
        def f32(values, scales, j, g, out, row):
            for c in range(values.shape[2]):
                out[row, c] = values[j, g, c]
        return f32
    if values.dtype == types.uint16:
        def f16(values, scales, j, g, out, row):
            for c in range(values.shape[2]):
                out[row, c] = half_to_float(values[j, g, c])
        return f16

    def q8_0(values, scales, j, g, out, row):
        for b in range(scales.shape[2]):
            scale = half_to_float(scales[j, g, b])
            for c in range(b * 32, b * 32 + 32):
                out[row, c] = np.float32(values[j, g, c]) * scale
    return q8_0


@kernel
def store_kv(k, v, p, slot, keys, key_scales, values, value_scales, positions):
    """A decode step's k and v (n_kv, head_dim) float32 into a cache's `slot`, encoded as
    edgert.kv_cache.encode does, bit for bit, with the slot's position p: one call where
    encoding and five stores through numpy took 26-40 us a layer."""
    _encode_row(k, keys, key_scales, slot)
    _encode_row(v, values, value_scales, slot)
    positions[slot] = p


@kernel
def encode_kv(x, values, scales):
    """A chunk's rows x (n, n_kv, head_dim) float32 into values and scales (n, ...), as
    edgert.kv_cache.encode makes them, bit for bit: numpy's conversion to halves took 75 us
    for Gemma 3's 128 rows of 256 values, a tenth of that here."""
    for t in range(x.shape[0]):
        _encode_row(x[t], values, scales, t)


def _encode_row(x, values, scales, j):
    """x (n_kv, head_dim) float32 into cache row j: see edgert.kv_cache for the three types."""


@overload(_encode_row, inline="always")
def _encode_row_typed(x, values, scales, j):
    if values.dtype == types.float32:
        def f32(x, values, scales, j):
            for g in range(x.shape[0]):
                for c in range(x.shape[1]):
                    values[j, g, c] = x[g, c]
        return f32
    if values.dtype == types.uint16:
        def f16(x, values, scales, j):
            for g in range(x.shape[0]):
                for c in range(x.shape[1]):
                    values[j, g, c] = float_to_half(x[g, c])
        return f16

    def q8_0(x, values, scales, j):  # d = max|x| / 127, q = rint(x / d) by 1/d, as encode
        for g in range(x.shape[0]):
            for b in range(scales.shape[2]):
                top = np.float32(0.0)
                for c in range(b * 32, b * 32 + 32):
                    top = max(top, abs(x[g, c]))
                d = top / np.float32(127)
                inv = np.float32(1) / d if d > 0 else np.float32(0)
                for c in range(b * 32, b * 32 + 32):
                    values[j, g, c] = np.int8(np.rint(x[g, c] * inv))
                scales[j, g, b] = float_to_half(d)
    return q8_0


@kernel(inline="always")
def _sees(q_pos, t, k_pos, window):
    dist = q_pos[t] - k_pos
    return k_pos >= 0 and dist >= 0 and (window <= 0 or dist < window)


@kernel(inline="always")
def _exp(x):
    """e^x for NEGLIGIBLE < x <= 0 as plain float32 arithmetic (Cephes' expf: x = n ln2 + r,
    a degree-7 polynomial in r, times 2^n built from its bits), within 2 ulp of exp: a loop
    over it vectorizes, where libm's expf would be called per value (the attention's
    weights cost as much as its dot products otherwise)."""
    n = np.rint(x * np.float32(1.44269504088896341))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@kernel(inline="always")
def _scores4(qt, r, kb, jj, d):
    """Four query rows (r..r+3) against key row jj: one pass over the key for all four."""
    s0 = s1 = s2 = s3 = np.float32(0.0)
    for c in range(d):
        kc = kb[jj, c]
        s0 += qt[r, c] * kc
        s1 += qt[r + 1, c] * kc
        s2 += qt[r + 2, c] * kc
        s3 += qt[r + 3, c] * kc
    return s0, s1, s2, s3


@kernel(parallel=True)
def _attention_spans(q, k, k_scale, v, v_scale, q_pos, k_pos, window, tile, order, acc, best, total):
    """Causal GQA attention with scale 1, as ops.attention, over the keys of each span: per
    (span, query, head), the span's largest score (best), the sum of exp(score - best)
    (total) and those weights times the values (acc; divided by total already when there
    is one span). q (n, n_head, d); K and V as edgert.kv_cache stores them, positions
    k_pos (m,), -1 for an empty slot; order: the (tile, span) pairs as the work items take
    them (_order; a decode step's single tile: its spans alone, _dealt).
    Rows of a work item are its (query, head) pairs; four at a time meet a key or a value
    row, so each load of it serves four."""
    n, n_head, d = q.shape
    m, n_kv = k.shape[0], k.shape[1]
    group = n_head // n_kv
    tiles = (n + tile - 1) // tile
    per_head = len(order)
    spans = per_head // tiles
    for item in prange(n_kv * per_head):
        g, pair = item // per_head, order[item % per_head]
        qt_index, span = pair // spans, pair % spans
        t0, t1 = qt_index * tile, min(n, qt_index * tile + tile)
        rows = (t1 - t0) * group
        padded = (rows + 3) // 4 * 4
        j0, j1 = span * m // spans, (span + 1) * m // spans
        qt = np.zeros((padded, d), dtype=np.float32)  # the item's queries, row r = (t0 + r // group, head)
        for r in range(rows):
            for c in range(d):
                qt[r, c] = q[t0 + r // group, g * group + r % group, c]
        a = np.zeros((padded, d), dtype=np.float32)
        mx = np.full(padded, -np.inf, dtype=np.float32)
        tot = np.zeros(padded, dtype=np.float32)
        kb = np.empty((KEY_BLOCK, d), dtype=np.float32)
        vb = np.empty((KEY_BLOCK, d), dtype=np.float32)
        sc = np.empty((padded, KEY_BLOCK), dtype=np.float32)
        seen = np.zeros(KEY_BLOCK, dtype=np.bool_)
        sees = np.zeros((tile, KEY_BLOCK), dtype=np.bool_)  # query t0 + i sees key b0 + jj
        for b0 in range(j0, j1, KEY_BLOCK):
            nb = min(j1, b0 + KEY_BLOCK) - b0
            anyone, everyone = False, True
            for jj in range(nb):
                seen[jj] = False
                for t in range(t0, t1):
                    sees[t - t0, jj] = _sees(q_pos, t, k_pos[b0 + jj], window)
                    seen[jj] |= sees[t - t0, jj]
                    everyone &= sees[t - t0, jj]
                anyone |= seen[jj]
                if seen[jj]:
                    _decode_row(k, k_scale, b0 + jj, g, kb, jj)
                    _decode_row(v, v_scale, b0 + jj, g, vb, jj)
            if not anyone:
                continue
            for r in range(0, padded, 4):
                for jj in range(nb):
                    if seen[jj]:
                        sc[r, jj], sc[r + 1, jj], sc[r + 2, jj], sc[r + 3, jj] = _scores4(qt, r, kb, jj, d)
            for r in range(rows):  # masks, then the online softmax's step: weights in place of scores
                if not everyone:
                    for jj in range(nb):
                        if not sees[r // group, jj]:
                            sc[r, jj] = -np.inf
                block_best = -np.inf
                for jj in range(nb):
                    block_best = max(block_best, sc[r, jj])
                if block_best > mx[r]:  # a new largest score: what came before is rescaled
                    shift = mx[r] - block_best
                    scale = np.float32(math.exp(shift)) if shift > NEGLIGIBLE else np.float32(0.0)
                    for c in range(d):
                        a[r, c] *= scale
                    tot[r] *= scale
                    mx[r] = block_best
                for jj in range(nb):
                    # weights below e^-30 of the largest are dropped: with at most 2^15 keys they
                    # add up to under 3e-9 of the sum, and left in they become subnormal floats,
                    # which cost x86 a microcode assist on every multiply (4x the whole decode
                    # attention, measured)
                    x = sc[r, jj] - mx[r]
                    e = _exp(x) if x > NEGLIGIBLE else np.float32(0.0)
                    sc[r, jj] = e
                    tot[r] += e
            for r in range(rows, padded):
                for jj in range(nb):
                    sc[r, jj] = 0.0
            for r in range(0, padded, 4):
                for jj in range(nb):
                    e0, e1, e2, e3 = sc[r, jj], sc[r + 1, jj], sc[r + 2, jj], sc[r + 3, jj]
                    if e0 == 0 and e1 == 0 and e2 == 0 and e3 == 0:
                        continue
                    for c in range(d):
                        vc = vb[jj, c]
                        a[r, c] += e0 * vc
                        a[r + 1, c] += e1 * vc
                        a[r + 2, c] += e2 * vc
                        a[r + 3, c] += e3 * vc
        for r in range(rows):
            t, h = t0 + r // group, g * group + r % group
            best[span, t, h], total[span, t, h] = mx[r], tot[r]
            norm = np.float32(1.0) / tot[r] if spans == 1 and tot[r] > 0 else np.float32(1.0)
            for c in range(d):
                acc[span, t, h, c] = a[r, c] * norm


@kernel
def _merge(acc, best, total, out):
    """The spans' partial softmaxes as one: out (n, n_head, d), in the order a parallel merge
    took them (each (query, head) on its own), so the values are the same."""
    spans, n, n_head, d = acc.shape
    for item in range(n * n_head):
        t, h = item // n_head, item % n_head
        mx = -np.inf
        for sp in range(spans):
            mx = max(mx, best[sp, t, h])
        weight = np.float32(0.0)
        for c in range(d):
            out[t, h, c] = 0.0
        for sp in range(spans):
            if best[sp, t, h] - mx > NEGLIGIBLE:
                e = np.float32(math.exp(best[sp, t, h] - mx))
                weight += e * total[sp, t, h]
                for c in range(d):
                    out[t, h, c] += e * acc[sp, t, h, c]
        if weight > 0:
            for c in range(d):
                out[t, h, c] /= weight
