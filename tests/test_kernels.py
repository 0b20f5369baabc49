"""The Numba kernels against their numpy twins: every weight format, odd shapes,
zeros and extremes, both SIMD flavors, and the instructions the flavors lower to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgert import kernels, kv_cache, ops
from edgert.kv_cache import KVView
from quant import BLOCKS, QTensor, QType, asm, cpu, quantize, ref, simd
from quant import ir as ir_
from quant.formats import Activations
from quant.tensor import matmul, matmul_ref

pytestmark = pytest.mark.aarch64

REPO = Path(__file__).resolve().parent.parent
FORMATS = list(simd.FORMATS) + [QType.F32, QType.F16, QType.BF16]  # the file's own rows: any shape
QUANTIZED = (QType.Q4_0, QType.Q5_0, QType.Q8_0)  # block types quant.quantize writes; the rest are random blocks


def random_blocks(rng, qtype: QType, rows: int, cols: int, scale: float = 0.01) -> np.ndarray:
    """Random stored bytes of `qtype` whose f16 scales are finite (any other bytes are valid)."""
    nbytes = BLOCKS[qtype].nbytes
    raw = rng.integers(0, 256, (rows, cols // BLOCKS[qtype].values * nbytes), dtype=np.uint8)
    blocks = raw.reshape(-1, nbytes)
    for o in BLOCKS[qtype].scales:
        d = np.abs(rng.standard_normal((len(blocks), 1))) * scale
        blocks[:, o:o + 2] = d.astype(np.float16).view(np.uint8)
    return raw


def weight(rng, qtype: QType, rows: int, cols: int, values: np.ndarray | None = None) -> QTensor:
    if BLOCKS[qtype].scales and qtype not in QUANTIZED:  # no reference quantizer: random blocks
        return QTensor(random_blocks(rng, qtype, rows, cols), qtype, (rows, cols))
    w = values if values is not None else rng.standard_normal((rows, cols)).astype(np.float32)
    if qtype == QType.F32:
        raw = w
    elif qtype == QType.F16:
        raw = w.astype(np.float16)
    else:
        raw = quantize(w, qtype)
        raw = raw.view(np.uint16) if qtype == QType.BF16 else raw
    return QTensor(raw, qtype, (rows, cols))


def assert_matches(x: np.ndarray, w: QTensor) -> None:
    """matmul against matmul_ref: equal up to float32 rounding of the sums."""
    fast, slow = matmul(x, w), matmul_ref(x, w)
    magnitude = np.abs(x) @ np.abs(w.dequantize()).T
    assert fast.shape == slow.shape == (x.shape[0], w.shape[0])
    np.testing.assert_array_less(np.abs(fast - slow), 2e-5 * magnitude + 1e-30)


def cols_for(qtype: QType) -> list[int]:
    if BLOCKS[qtype].values == 256:
        return [256, 768]
    return [32, 544, 1536] if BLOCKS[qtype].values == 32 else [1, 33, 544]


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: q.name)
def test_matmul_matches_reference_on_odd_shapes(qtype):
    rng = np.random.default_rng(int(qtype))
    for cols in cols_for(qtype):
        for rows in (1, 7, 37):  # below, at and past the 4-row step and the 16-row tile
            for n in (1, 3, 70):  # one token (GEMV), a few, past the 64-token tile
                w = weight(rng, qtype, rows, cols)
                assert_matches(rng.standard_normal((n, cols)).astype(np.float32), w)


def check_zeros_and_extremes(rng, rows: int, cols: int, make) -> None:
    """An all-zero, a spiked and a tiny activation row against weights of a zero row and a huge
    value, made into a QTensor by make(values): finite results, zeros where they must be, and
    the reference's results."""
    x = rng.standard_normal((6, cols)).astype(np.float32)
    x[0] = 0  # an all-zero activation row: scale 0, no division by it
    x[1, ::7] = 3e4  # a few huge values next to small ones
    x[2] = -1e-30  # tiny values
    values = rng.standard_normal((rows, cols)).astype(np.float32)
    values[0] = 0
    values[1, 0] = 1e4
    w = make(values)
    out = matmul(x, w)
    assert np.isfinite(out).all()
    assert (out[0] == 0).all()
    if w.qtype in QUANTIZED or not BLOCKS[w.qtype].scales:  # the values, not random blocks
        assert (out[:, 0] == 0).all()
    assert_matches(x, w)


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: q.name)
def test_matmul_zeros_and_extremes(qtype):
    rng = np.random.default_rng(7)
    cols = cols_for(qtype)[-1]
    check_zeros_and_extremes(rng, 9, cols, lambda values: weight(rng, qtype, 9, cols, values))


def test_block_kernels_approximate_the_float_product():
    """The 8-bit activations cost little: Q8_0 weights with Q8 activations stay near x @ w.T."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 1536)).astype(np.float32)
    w = rng.standard_normal((64, 1536)).astype(np.float32)
    exact = x @ w.T
    got = matmul(x, weight(rng, QType.Q8_0, 64, 1536, w))
    assert np.abs(got - exact).max() < 0.02 * np.abs(exact).max()


@pytest.mark.parametrize("kind", list(Activations), ids=lambda k: k.name)
def test_activation_quantizer_matches_reference(kind):
    from quant import kernels as qk

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((5, 512)) * np.logspace(-9, 3, 512)).astype(np.float32)  # f16 subnormal scales too
    x[1] = 0
    x[2, :32] = 0.5  # exact halves after scaling: round half to even in both
    x[3, 5], x[3, 9] = -1e4, 1e4  # equal magnitudes: the first one sets the sign of the Q8_K scale
    xq, xd, xs = np.empty(x.shape, np.int8), np.empty((5, 16), np.float32), np.empty((5, 16), np.float32)
    qk.quantize_q8(x, xq, xd, xs, int(kind))
    rq, rd, rs = ref.quantize_q8(x, kind)
    np.testing.assert_array_equal(xq, rq)
    np.testing.assert_array_equal(xd, rd)
    np.testing.assert_allclose(xs, rs, rtol=1e-6)
    assert np.abs(xq.astype(np.float32) * np.repeat(xd, 32, axis=1) - x).max() <= 1.01 * np.abs(x).max() / 254


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([QType.Q4_K, QType.Q6_K]), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_k_quant_dequantize_is_bit_exact_with_gguf(qtype, n_blocks, seed):
    raw = random_blocks(np.random.default_rng(seed), qtype, 3, 256 * n_blocks, scale=10.0)
    ours = ref.dequantize(raw, qtype, 256 * n_blocks)
    theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(qtype)))
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.skipif(cpu.FLAVOR == "generic", reason="the kernels here are the generic flavor already: "
                                                   "every other test in this file runs it")
def test_generic_flavor_matches_reference():
    """The portable flavor (what an ARM board runs), forced on this host in a fresh process."""
    code = """
import numpy as np
from quant import cpu
assert cpu.FLAVOR == "generic", cpu.FLAVOR
from tests.test_kernels import FORMATS, assert_matches, cols_for, weight
rng = np.random.default_rng(11)
for q in FORMATS:
    for cols in cols_for(q):
        assert_matches(rng.standard_normal((5, cols)).astype(np.float32), weight(rng, q, 9, cols))
        assert_matches(rng.standard_normal((1, cols)).astype(np.float32), weight(rng, q, 6, cols))
print("ok")
"""
    env = {**os.environ, "EDGERT_SIMD": "generic"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


# Widening multiplies: what LLVM emits for the generic flavor's byte products when it does not
# match them to sdot (each 16-byte product then costs four instructions instead of one)
SCALAR_FALLBACK = {"smull", "smull2", "smlal", "smlal2", "sshll", "sshll2", "saddw", "saddw2", "sxtl", "sxtl2"}


@pytest.mark.parametrize("tokens", [1, simd.TOKENS], ids=["gemv", "gemm"])
@pytest.mark.parametrize("fmt", list(simd.FORMATS), ids=lambda q: q.name)
def test_every_row_dot_is_sdot_on_the_raspberry_pi_5(fmt, tokens):
    """On a Cortex-A76 (ARMv8.2 with the dot-product extension) LLVM turns the generic flavor's
    widen-multiply-reduce into sdot, as llama.cpp's NEON path does by hand: one sdot per 16
    weights per token in the main loop, and no widening multiply beside them."""
    loop = asm.mnemonics(asm.main_loop(asm.row_dot_assembly(asm.PI5, fmt, tokens)))
    f = simd.FORMATS[fmt]
    assert loop.count("sdot") == f.unroll * f.walk.values_per_block // 16 * tokens
    assert not SCALAR_FALLBACK & set(loop), sorted(SCALAR_FALLBACK & set(loop))


def test_the_scalar_fallback_check_catches_a_widened_product():
    """The check above can fail: products widened to 32 bits before the halves are split (as the
    generic Q6_K dot once did) are lowered to smull, and counted as a fallback."""
    from llvmlite import ir

    class Widened(simd._Generic):
        def dot_s2(self, w, x, scale_lo, scale_hi):
            p = self._products(w, x)
            lo = self.b.call(self._add16, [ir_.shuffle(self.b, p, p, range(16))])
            hi = self.b.call(self._add16, [ir_.shuffle(self.b, p, p, range(16, 32))])
            return self.b.add(self.b.mul(lo, self.b.sext(scale_lo, ir.IntType(32))),
                              self.b.mul(hi, self.b.sext(scale_hi, ir.IntType(32))))

    original = simd._FLAVOR_CLASS["generic"]
    simd._FLAVOR_CLASS["generic"] = Widened
    try:
        loop = asm.mnemonics(asm.main_loop(asm.row_dot_assembly(asm.PI5, QType.Q6_K)))
    finally:
        simd._FLAVOR_CLASS["generic"] = original
    assert SCALAR_FALLBACK & set(loop)


def test_avx2_flavor_uses_byte_multiply_add():
    code = asm.row_dot_assembly(asm.ZEN2_AVX2, QType.Q4_0)
    assert "vpmaddubsw" in code and "vcvtph2ps" in code


# --- the forward pass's own kernels against edgert.ops ------------------------------------------

def test_norm_gelu_rope_softcap_match_ops():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4, 64)).astype(np.float32) * 5
    w = rng.standard_normal(64).astype(np.float32)
    np.testing.assert_allclose(kernels.rms_norm(x, w, 1e-6), ops.rms_norm(x, w, 1e-6), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kernels.rms_norm(x, None, 1e-6), ops.rms_norm(x, None, 1e-6), rtol=1e-5, atol=1e-6)
    zeros = np.zeros((2, 64), np.float32)
    assert (kernels.rms_norm(zeros, w, 1e-6) == 0).all()

    g = np.linspace(-30, 30, 4001, dtype=np.float32).reshape(1, -1)
    u = rng.standard_normal(g.shape).astype(np.float32)
    # the rational tanh is within 4e-7 of tanh: errors scale with |gate * up|
    np.testing.assert_array_less(np.abs(kernels.gelu_mul(g, u) - ops.gelu_tanh(g) * u), 1e-6 * np.abs(g * u) + 1e-7)
    big = np.array([-1e30, -50, 0, 50, 1e30, np.inf, -np.inf], np.float32)
    np.testing.assert_allclose(kernels.softcap(big, 30.0), ops.softcap(big, 30.0), atol=1e-5)
    np.testing.assert_allclose(kernels.softcap(g, 30.0), ops.softcap(g, 30.0), rtol=1e-5, atol=1e-5)

    inv = ops.rope_inv_freq(64, 16, 10000.0)  # partial rotation: 16 of 32 pairs rotate
    pos = np.array([0, 7, 100000])
    np.testing.assert_allclose(kernels.rope(x, pos, inv), ops.rope(x, pos, inv), rtol=1e-4, atol=1e-4)


def test_rope_rounds_each_value_as_one_fused_multiply_add():
    """The rotation's roundings are pinned, not only its accuracy: x1 * c - x2 * s is the first
    product fused with the second one rounded, as the scalar loop it replaced contracted it.
    A tiny random model's logits amplify a different contraction past test_layouts' bound."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((37, 3, 256)).astype(np.float32) * 3
    pos, inv = np.arange(37) * 97 + 5, ops.rope_inv_freq(256, 128, 10000.0)
    cos, sin = (v[:, None, :].astype(np.float64) for v in kernels._rope_table(pos.astype(np.int64), inv))
    x1, x2 = x[..., :128].astype(np.float64), x[..., 128:].astype(np.float64)
    f32 = np.float32  # x1 * c is exact in float64: the sum below rounds once to float64, once to float32
    fused = np.concatenate([f32(x1 * cos - f32(x2 * sin)), f32(x2 * cos + f32(x1 * sin))], axis=-1)
    np.testing.assert_array_equal(kernels.rope(x, pos, inv), fused)


def test_fused_norms_are_bit_for_bit_the_ops_they_join():
    """norm_rope and add_norm save the forward pass a call each, and must change no value: they
    are held to the kernels they join exactly, and to edgert.ops within rounding."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 4, 64)).astype(np.float32) * 5
    w = rng.standard_normal(64).astype(np.float32)
    inv = ops.rope_inv_freq(64, 16, 10000.0)
    pos = np.array([0, 7, 100000])
    fused = kernels.norm_rope(x, w, 1e-6, pos, inv)
    np.testing.assert_array_equal(fused, kernels.rope(kernels.rms_norm(x, w, 1e-6), pos, inv))
    np.testing.assert_allclose(fused, ops.rope(ops.rms_norm(x, w, 1e-6), pos, inv), rtol=1e-4, atol=1e-4)

    stream, h = rng.standard_normal((2, 3, 64)).astype(np.float32) * 3
    for scale in (1.0, 0.3125):
        fused = kernels.add_norm(stream, h, w, 1e-6, scale)
        np.testing.assert_array_equal(fused, (stream + kernels.rms_norm(h, w, 1e-6)) * np.float32(scale))
        np.testing.assert_allclose(fused, (stream + ops.rms_norm(h, w, 1e-6)) * np.float32(scale), rtol=1e-5, atol=1e-5)
    assert (kernels.add_norm(stream, np.zeros_like(h), w, 1e-6) == stream).all()  # a zero block adds nothing


def cache_view(k, v, k_pos, kv_type="f32"):
    """A KVView of these entries as a cache of kv_type holds them."""
    return KVView(*kv_cache.encode(k, kv_type), *kv_cache.encode(v, kv_type), k_pos)


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("kv_type", kv_cache.KV_TYPES)
def test_attention_matches_ops(window, kv_type):
    """GQA groups, a ring of slots in any order with empty (-1) ones, a window, one query
    and many; entries of every cache type, against ops.attention over what they decode to."""
    rng = np.random.default_rng(window)
    n_head, n_kv, d, m = 8, 2, 32, 12
    k = rng.standard_normal((m, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((m, n_kv, d)).astype(np.float32)
    k_pos = np.array([8, 9, 10, 11, 4, 5, 6, 7, 0, 1, -1, -1])
    view = cache_view(k, v, k_pos, kv_type)
    k, v = kv_cache.decode(view.k, view.k_scale), kv_cache.decode(view.v, view.v_scale)
    for q_pos in (np.array([11]), np.arange(4, 12)):
        q = rng.standard_normal((len(q_pos), n_head, d)).astype(np.float32)
        got = kernels.attention(q, view, q_pos, window)
        want = ops.attention(q, k, v, q_pos, k_pos, window)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 3, 70])
def test_attention_over_long_contexts_matches_ops(n):
    """Keys in many blocks and, for few queries, in spans merged at the end (flash decoding);
    a query tile that ends inside a block; a sliding window much shorter than the keys."""
    rng = np.random.default_rng(n)
    n_head, n_kv, d, m = 4, 1, 64, 1500
    k = rng.standard_normal((m, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((m, n_kv, d)).astype(np.float32)
    k_pos = rng.permutation(m)
    q = rng.standard_normal((n, n_head, d)).astype(np.float32)
    q_pos = np.arange(m - n, m)
    for window in (0, 300):
        for threads in (1, 2):
            got = kernels.attention(q, cache_view(k, v, k_pos), q_pos, window, threads=threads)
            # up to 1500 weighted values summed in another order (and, on ARM, other roundings of
            # the exp and the dots): a few float32 steps of the largest value, 1e-5 was exceeded once
            np.testing.assert_allclose(got, ops.attention(q, k, v, q_pos, k_pos, window), rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("kv_type", kv_cache.KV_TYPES)
def test_a_decode_steps_cache_store_is_the_encoders_bit_for_bit(kv_type):
    """A step of one token is encoded and stored by one compiled call (kernels.store_kv); a
    chunk by another (kernels.encode_kv). Both leave the bits of kv_cache.encode, numpy's
    encoding, in a ring and in an append cache, for values a half rounds to even, overflows,
    or keeps as a subnormal, and blocks of zeros."""
    rng = np.random.default_rng(7)
    m, n_kv, d = 12, 2, 64
    x = rng.standard_normal((m, n_kv, d)).astype(np.float32) * np.float32(3)
    x[0, 0, :4] = [1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 70000.0, -0.0]  # ties to even, past the largest half
    x[1, 1, :3] = [2.0 ** -20, -3 * 2.0 ** -25, 6.1e-5]  # subnormal halves
    x[2, 0, :32] = 0  # a q8_0 block of zeros: scale 0
    for ring in (False, True):
        chunk, steps = (kv_cache.KVCache(8 if ring else m, n_kv, d, ring, kv_type) for _ in range(2))
        with np.errstate(over="ignore"):  # 70000 is past the largest half: inf, as meant
            chunk.update(x, x[::-1].copy(), np.arange(m))
        for i in range(m):
            view = steps.update(x[i:i + 1], x[m - 1 - i:m - i], np.array([i]))
        for a, b in zip(steps.arrays, chunk.arrays):
            np.testing.assert_array_equal(a, b)
        assert len(view.pos) == (8 if ring else m)
        with np.errstate(over="ignore"):
            expected = (*kv_cache.encode(x, kv_type), *kv_cache.encode(x[::-1], kv_type), np.arange(m))
        held = np.arange(m - 8, m) if ring else np.arange(m)  # a ring of 8 keeps the last 8, at pos % 8
        for a, e in zip(chunk.arrays, expected):
            np.testing.assert_array_equal(a[held % len(a)], e[held])


def test_keys_are_split_into_spans_that_share_out_evenly():
    """Spans of at least SPAN_KEYS keys, at most two work items a thread, and, beyond one item
    a thread, a whole number of items each: no thread waits on another's extra span."""
    for threads in (1, 2, 3, 4, 8):
        for items in (1, 2, 3, 8, 40):
            for m in (1, 63, 64, 65, 129, 192, 320, 512, 4096):
                spans = kernels._spans(m, items, threads)
                assert 1 <= spans <= max(1, -(-m // kernels.SPAN_KEYS))
                assert spans == 1 or spans * items <= 2 * threads + items
                assert spans * items <= threads or spans * items % threads == 0 or spans == 1
    assert kernels._spans(192, 1, 2) == 2  # E2B's decode at 129-192 keys: 3 spans would leave a thread two
    assert kernels._spans(192, 1, 4) == 3  # fewer spans than threads: each its own
    assert kernels._spans(512, 1, 2) == 4  # a ring's 512 slots: four spans, dealt round (below)


def test_spans_dealt_round_the_threads_give_each_thread_work_and_the_same_result():
    """A ring cache not yet full keeps its keys in its first slots: in key order, a prange's
    consecutive items would give one thread every filled span. Dealt, each thread's run of
    items holds spans from the front and the back, and the result is bit for bit the same."""
    assert kernels._dealt(4, 2).tolist() == [0, 2, 1, 3]
    assert kernels._dealt(8, 4).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert kernels._dealt(3, 2).tolist() == [0, 1, 2]  # uneven: key order
    rng = np.random.default_rng(5)
    n_head, n_kv, d, m = 8, 1, 64, 512
    k = rng.standard_normal((m, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((m, n_kv, d)).astype(np.float32)
    k_pos = np.where(np.arange(m) < 150, np.arange(m), -1)  # a ring of 512 holding 150 keys
    view = cache_view(k, v, k_pos)
    q = rng.standard_normal((1, n_head, d)).astype(np.float32)
    outs = []
    for order in (np.arange(4), kernels._dealt(4, 2)):
        acc = np.empty((4, 1, n_head, d), dtype=np.float32)
        best, total = np.empty((4, 1, n_head), dtype=np.float32), np.empty((4, 1, n_head), dtype=np.float32)
        kernels._attention_spans(q, view.k, view.k_scale, view.v, view.v_scale, np.array([200]), view.pos, 0, 8,
                                 order, acc, best, total)
        outs.append((acc, best, total))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(kernels.attention(q, view, np.array([200]), 0, threads=2),
                               ops.attention(q, k, v, np.array([200]), k_pos, 0), rtol=1e-5, atol=1e-5)


def test_a_prompts_query_tiles_are_taken_from_both_ends_with_the_same_result():
    """A causal prompt's later tiles meet more keys: the work items take the tiles from both
    ends in turn, so that each thread's run of items holds as many keys as another's, and each
    tile's result is bit for bit what it is in order."""
    assert kernels._order(6, 1, 2).tolist() == [0, 5, 1, 4, 2, 3]
    assert kernels._order(1, 4, 2).tolist() == kernels._dealt(4, 2).tolist()  # decode: its spans alone
    assert kernels._order(3, 2, 2).tolist() == [0, 1, 4, 5, 2, 3]
    for tiles in range(1, 20):  # every (tile, span) pair once
        assert sorted(kernels._order(tiles, 2, 2).tolist()) == list(range(2 * tiles))
    costs = np.arange(1, 17)[kernels._order(16, 1, 2)]  # a tile's keys grow with its index
    assert costs[:8].sum() == costs[8:].sum()
    rng = np.random.default_rng(6)
    n, n_head, n_kv, d = 40, 4, 2, 64
    k = rng.standard_normal((n, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((n, n_kv, d)).astype(np.float32)
    q = rng.standard_normal((n, n_head, d)).astype(np.float32)
    view, pos, tile = cache_view(k, v, np.arange(n)), np.arange(n), 8
    outs = []
    for order in (np.arange(5), kernels._order(5, 1, 2)):
        acc = np.empty((1, n, n_head, d), dtype=np.float32)
        best, total = np.empty((1, n, n_head), dtype=np.float32), np.empty((1, n, n_head), dtype=np.float32)
        kernels._attention_spans(q, view.k, view.k_scale, view.v, view.v_scale, pos, view.pos, 0, tile, order,
                                 acc, best, total)
        outs.append(acc)
    np.testing.assert_array_equal(*outs)
    np.testing.assert_allclose(outs[0][0].reshape(n, -1), ops.attention(q, k, v, pos, pos, 0), rtol=1e-5, atol=1e-5)


def test_attention_with_scores_far_apart_matches_ops():
    """Scores hundreds apart, as peaked heads give: weights that would be subnormal floats
    are dropped by the kernel (below e^-30 of the largest), and what that drops stays far
    below float32 rounding of the result."""
    rng = np.random.default_rng(3)
    n_head, n_kv, d, m = 4, 1, 64, 300
    k = rng.standard_normal((m, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((m, n_kv, d)).astype(np.float32)
    q = (rng.standard_normal((2, n_head, d)) * 8).astype(np.float32)  # scores spread over about +-200
    q_pos, k_pos = np.array([m - 2, m - 1]), np.arange(m)
    scores = np.einsum("thd,md->thm", q, k[:, 0])
    assert (scores.max(-1) - scores.min(-1)).min() > 100  # e^-100: far into subnormals and below
    got = kernels.attention(q, cache_view(k, v, k_pos), q_pos, 0)
    # scores of +-200 carry float32 rounding that the weights magnify, so the truth here is
    # float64 (ops.attention, in float32, is itself 6e-6 from it)
    s = np.einsum("thd,md->thm", q.astype(np.float64), k[:, 0].astype(np.float64))
    p = np.exp(s - s.max(-1, keepdims=True))
    exact = np.einsum("thm,md->thd", p / p.sum(-1, keepdims=True), v[:, 0]).reshape(len(q), -1)
    # the kernel's own float32 steps (compiled for this CPU) stayed within 1e-6 on the Xeons and came to
    # 2.2e-6 on Zen 4 (float32 attention itself is 6e-6 away);
    # dropping weights below e^-5 of the largest would miss by 1.3e-3
    np.testing.assert_allclose(got, exact, rtol=0, atol=5e-6)


def test_attention_exp_is_within_an_ulp_or_two():
    """The attention's own exp (plain arithmetic, so its loop vectorizes) over the range of
    weights it keeps, e^-30..1."""
    from numba import njit

    @njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = kernels._exp(x[i])

    x = np.linspace(-30, 0, 300001, dtype=np.float32)
    out = np.empty_like(x)
    run(x, out)
    want = np.exp(x.astype(np.float64))
    assert (np.abs(out - want) <= 2 * np.spacing(want.astype(np.float32))).all()
    assert out[-1] == 1.0


def test_cache_types_round_trip_within_their_rounding():
    """f16 keeps 11 significant bits; q8_0 keeps each value within half a step of its
    block's scale d = max|x| / 127, plus what rounding d to half moves the largest (127 d 2^-11)."""
    x = np.random.default_rng(0).standard_normal((5, 2, 64)).astype(np.float32) * 3
    x[0, 0, :32] = 0  # an all-zero block
    assert (kv_cache.decode(*kv_cache.encode(x, "f32")) == x).all()
    np.testing.assert_allclose(kv_cache.decode(*kv_cache.encode(x, "f16")), x, rtol=2 ** -11)
    got = kv_cache.decode(*kv_cache.encode(x, "q8_0"))
    step = np.abs(x.reshape(5, 2, 2, 32)).max(-1, keepdims=True) / 127
    assert (np.abs(got - x).reshape(5, 2, 2, 32) <= step * (0.5 + 127 * 2 ** -11)).all()
    assert (got[0, 0, :32] == 0).all()


def test_the_emulated_pi_is_told_the_cpu_the_assembly_is_checked_for():
    """tools/aarch64.sh names the Pi's CPU to Numba (LLVM cannot detect an emulated one): the
    same CPU and features as quant.asm.PI5, which the sdot checks compile for."""
    script = (REPO / "tools" / "aarch64.sh").read_text()
    assert f"pi5_cpu={asm.PI5.cpu}\n" in script
    assert f"pi5_features={asm.PI5.features}\n" in script
