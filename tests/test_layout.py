"""The x8 layout (quant.layout) and its kernels (quant.packed) against the file's own layout:
the bytes go back unchanged, integer dots are exact, float results differ from the row
kernels and the numpy reference by summation order only, in every flavor this host can run,
and on the Pi's instruction set."""

from __future__ import annotations

import platform

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant import BLOCKS, QTensor, QType, asm, cpu, layout, packed, simd
from quant.formats import ACTIVATIONS, Activations
from quant.tensor import matmul, matmul_ref, matmuls
from tests.test_kernels import SCALAR_FALLBACK, assert_matches, check_zeros_and_extremes, cols_for, weight

pytestmark = pytest.mark.aarch64

TILED = list(layout.TILES) + list(layout.SUPER_TILES)
K_QUANTS = list(layout.SUPER_TILES)
# The shape sweeps run every format natively; under the Pi's emulation only the five formats
# with row kernels too (the others' sdot tiles are checked there by the flavor tests below).
SWEPT = [pytest.param(q, id=q.name, marks=pytest.mark.skipif(
    platform.machine() == "aarch64" and q not in simd.FORMATS,
    reason="shape sweep of this format runs natively only (emulation is slow)")) for q in TILED]


def tiled(rng, qtype: QType, rows: int, cols: int, values: np.ndarray | None = None) -> tuple[QTensor, QTensor]:
    """A matrix in the file's layout and the same with its x8 layout (Q4_K, Q6_K: random blocks)."""
    t = weight(rng, qtype, rows, cols, values)
    return t, t.with_layout()


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(TILED), st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_pack_moves_bytes_and_unpack_puts_them_back(qtype, groups, n_blocks, seed):
    raw = np.random.default_rng(seed).integers(0, 256, (8 * groups, n_blocks * BLOCKS[qtype].nbytes), dtype=np.uint8)
    tiles = layout.pack(raw, qtype)
    assert tiles.shape == (groups, raw.shape[1] * 8)  # no byte more or less than the file
    assert tiles.flags.c_contiguous  # as the kernels and the cache writer read it
    if qtype not in (QType.Q5_0, QType.Q5_1, QType.Q3_K):  # bytes moved, not rewritten (their bits are regrouped)
        assert sorted(tiles.ravel()) == sorted(raw.ravel())
    assert np.unpackbits(tiles).sum() == np.unpackbits(raw).sum()  # every format: bits moved, none made
    np.testing.assert_array_equal(layout.unpack(tiles, qtype, raw.shape[1]), raw)


def test_a_tile_is_laid_out_as_documented():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (8, 2 * 22), dtype=np.uint8)  # two Q5_0 blocks per row
    tile = layout.pack(raw, QType.Q5_0).reshape(2, 176)[1]  # the second block column
    block = raw[:, 22:]  # (r, 22): d, qh, qs
    np.testing.assert_array_equal(tile[:16].reshape(8, 2), block[:, :2])  # the scales, row by row
    sub = tile[48:].reshape(4, 8, 4)  # (L, r, j)
    np.testing.assert_array_equal(sub[2, 5], block[5, 6 + 8:6 + 12])  # row 5's bytes 8..11
    qh = block[:, 2:6].copy().view("<u4")[:, 0]
    masks = tile[16:48].copy().view("<u4").reshape(4, 2)  # (L, low/high)
    for L in range(4):
        for r in range(8):
            for j in range(4):
                assert (masks[L, 0] >> (4 * r + j)) & 1 == (qh[r] >> (4 * L + j)) & 1
                assert (masks[L, 1] >> (4 * r + j)) & 1 == (qh[r] >> (16 + 4 * L + j)) & 1


def test_super_block_tiles_are_laid_out_as_documented():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (8, 2 * 144), dtype=np.uint8)  # two Q4_K blocks per row
    tile = layout.pack(raw, QType.Q4_K).reshape(2, 1152)[1]
    block = raw[:, 144:]  # (r, 144): d, dmin, scales[12], qs[128]
    np.testing.assert_array_equal(tile[:16].reshape(8, 2), block[:, 0:2])
    np.testing.assert_array_equal(tile[16:32].reshape(8, 2), block[:, 2:4])
    np.testing.assert_array_equal(tile[32:128].reshape(12, 8), block[:, 4:16].T)  # byte k of row r at 8k + r
    sub = tile[128:].reshape(4, 8, 8, 4)  # (pair p, L, r, j)
    np.testing.assert_array_equal(sub[3, 6, 5], block[5, 16 + 32 * 3 + 4 * 6:16 + 32 * 3 + 4 * 6 + 4])
    raw = rng.integers(0, 256, (8, 210), dtype=np.uint8)  # one Q6_K block per row
    tile = layout.pack(raw, QType.Q6_K)[0]
    np.testing.assert_array_equal(tile[:16].reshape(8, 2), raw[:, 208:210])
    np.testing.assert_array_equal(tile[16:144].reshape(16, 8), raw[:, 192:208].T)
    ql = tile[144:1168].reshape(2, 2, 8, 8, 4)  # (h, a, L, r, j)
    np.testing.assert_array_equal(ql[1, 0, 7, 2], raw[2, 64 + 28:64 + 32])
    qh = tile[1168:].reshape(2, 8, 8, 4)  # (h, L, r, j)
    np.testing.assert_array_equal(qh[1, 3, 6], raw[6, 128 + 32 + 12:128 + 32 + 16])


def test_q3_k_tiles_hold_each_value_s_three_bits_together_as_documented():
    """quant.formats.q3_k's triples (X, Y, Z) hold the values that the gguf package's own
    dequantizer reads from the file: scales of 33 (33 - 32 = 1) and d = 1 make it give q - 4."""
    from gguf.quants import dequantize
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, (8, 2 * 110), dtype=np.uint8).reshape(8, 2, 110)
    raw[..., 96:104], raw[..., 104:108] = 0x11, 0xAA  # every 6-bit scale: low nibble 1, high bits 2
    raw[..., 108:110] = np.frombuffer(np.float16(1).tobytes(), np.uint8)
    raw = raw.reshape(8, 220)
    q = dequantize(raw, QType.Q3_K).astype(np.int64).reshape(8, 2, 256)[:, 1] + 4  # the second block column
    assert q.min() >= 0 and q.max() <= 7
    tile = layout.pack(raw, QType.Q3_K).reshape(2, 880)[1].astype(np.int64)
    for t in range(8):
        x, y, z = (tile[112 + 96 * t + 32 * c:112 + 96 * t + 32 * c + 32].reshape(8, 4) for c in range(3))  # (r, j)
        fields = [x & 7, x >> 3 & 7, y & 7, y >> 3 & 7, z & 7, z >> 3 & 7, x >> 6 | (z >> 6 & 1) << 2,
                  y >> 6 | (z >> 7) << 2]
        for f, got in enumerate(fields):
            g, k = 2 * f + t // 4, t % 4
            np.testing.assert_array_equal(got, q[:, 16 * g + 4 * k:16 * g + 4 * k + 4], err_msg=f"triple {t} field {f}")


@pytest.mark.parametrize("qtype", SWEPT)
def test_packed_matches_rows_and_reference_on_odd_shapes(qtype):
    rng = np.random.default_rng(int(qtype))
    for cols in cols_for(qtype) + ([1568] if qtype in layout.TILES else [2304]):  # and an odd count past the unroll
        for rows in (8, 24, 48):  # one group, an odd number of groups (a half work tile), several
            for n in (1, 3, 4, 9, 70):  # GEMV, below/at/past the 4-token step, past the 64-token tile
                w, p = tiled(rng, qtype, rows, cols)
                x = rng.standard_normal((n, cols)).astype(np.float32)
                assert_matches(x, p)
                magnitude = np.abs(x) @ np.abs(w.dequantize()).T
                np.testing.assert_array_less(np.abs(matmul(x, p) - matmul(x, w)), 2e-5 * magnitude + 1e-30)


@pytest.mark.parametrize("qtype", list(layout.TILES), ids=lambda q: q.name)
def test_packed_integer_dots_are_exact(qtype):
    """With every scale 1 (and Q4_1's and Q5_1's mins a whole number), each result is an integer
    below 2^24, exact in float: the x8 kernels must give exactly the reference's integer dot,
    offsets, mins and IQ4_NL's levels included."""
    rng = np.random.default_rng(1)
    rows, cols = 16, 256
    lo, hi = {QType.Q4_0: (-8, 8), QType.Q5_0: (-16, 16), QType.Q8_0: (-128, 128), QType.Q4_1: (-8, 8),
              QType.Q5_1: (-16, 16), QType.IQ4_NL: (-127, 114)}[qtype]
    raw = rng.integers(0, 256, (rows, cols // 32, BLOCKS[qtype].nbytes), dtype=np.uint8)
    raw[:, :, 0:2] = np.array([1.0], np.float16).view(np.uint8)  # d = 1 in every block
    if qtype in (QType.Q4_1, QType.Q5_1):
        raw[:, :, 2:4] = np.array([lo], np.float16).view(np.uint8)  # m: the values start at lo
    w = QTensor(raw.reshape(rows, -1), qtype, (rows, cols))
    x = rng.integers(-127, 128, (5, cols)).astype(np.float32)
    # max |x| = 127 in each block: activation scale 1, values kept as they are
    x[:, ::32] = 127
    values = w.dequantize()
    assert values.min() >= lo and values.max() < hi
    exact = x.astype(np.int64) @ values.astype(np.int64).T
    np.testing.assert_array_equal(matmul(x, w.with_layout()), exact.astype(np.float32))
    np.testing.assert_array_equal(matmul(x, w), exact.astype(np.float32))


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda q: q.name)
def test_super_block_integer_dots_are_exact(qtype):
    """With d (and dmin) = 1 every super-block format holds integers (Q4_K: sc q - m; Q6_K:
    sc (q - 32); IQ4_XS: (sc - 32) level): with activations whose Q8_K scale is 1, the x8
    kernels give the exact integer dot, the per-row scales, mins, offsets and levels included."""
    rng = np.random.default_rng(2)
    rows, cols = 16, 512
    raw = rng.integers(0, 256, (rows, cols // 256, BLOCKS[qtype].nbytes), dtype=np.uint8)
    one = np.array([1.0], np.float16).view(np.uint8)
    for at in BLOCKS[qtype].scales:
        raw[:, :, at:at + 2] = one
    w = QTensor(raw.reshape(rows, -1), qtype, (rows, cols))
    x = rng.integers(-7, 8, (5, cols)).astype(np.float32)
    x[:, ::256] = 127  # the largest value of each super-block is +127: Q8_K's scale is 1 (q = -x, d = -1)
    exact = x.astype(np.int64) @ w.dequantize().astype(np.int64).T
    assert np.abs(exact).max() < 2 ** 24
    np.testing.assert_array_equal(matmul(x, w.with_layout()), exact.astype(np.float32))


@pytest.mark.parametrize("qtype", SWEPT)
def test_packed_zeros_and_extremes(qtype):
    rng = np.random.default_rng(7)
    cols = 544 if qtype in layout.TILES else 768
    check_zeros_and_extremes(rng, 16, cols, lambda values: tiled(rng, qtype, 16, cols, values)[1])


@pytest.mark.parametrize("qtype", TILED, ids=lambda q: q.name)
def test_rows_read_from_the_tiles_are_the_files(qtype):
    """Embedding lookups read the x8 copy (the tied LM head's) and give the file's rows exactly:
    unsorted, repeated, in one group and across groups."""
    rng = np.random.default_rng(6)
    w, p = tiled(rng, qtype, 40, cols_for(qtype)[-1])
    index = np.array([39, 0, 7, 8, 8, 21, 3])
    np.testing.assert_array_equal(p.rows(index), w.rows(index))
    np.testing.assert_array_equal(layout.unpack_rows(p.packed, qtype, index, w.raw.shape[1]), w.raw[index])


@pytest.mark.parametrize("qtypes", [(QType.Q4_0, QType.Q5_0, QType.Q8_0), (QType.Q4_K, QType.Q6_K),
                                    (QType.Q8_0, QType.Q4_K)], ids=["32-value", "super-block", "mixed"])
def test_products_that_share_an_input_equal_separate_ones(qtypes):
    """matmuls (q/k/v, gate/up in one call) gives exactly what a call per matrix gives: the same
    activations, the same tiles; formats that take other activations go one by one."""
    rng = np.random.default_rng(5)
    cols = 768
    ws = [tiled(rng, q, rows, cols)[1] for q, rows in zip(qtypes, (40, 8, 24))]
    for n in (1, 5, 70):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        for got, w in zip(matmuls(x, ws), ws):
            np.testing.assert_array_equal(got, matmul(x, w))


def _run_flavor(flavor: str, features: frozenset[str], qtype: QType, w: QTensor, x: np.ndarray,
                pair: bool = False) -> np.ndarray:
    """The x8 loop of another flavor, compiled here in a small Numba function of its own; with
    `pair`, groups two at a time (quant.packed's pairs; w's groups an even count)."""
    from numba import njit

    from quant import kernels as qk

    one, four = (packed.tiles_intrinsic(tokens, flavor, features, (qtype,), (qtype,) if pair else ())
                 for tokens in (1, 4))
    values, fmt, step = BLOCKS[qtype].values, int(qtype), 2 if pair else 1

    @njit
    def run(wp, xq, xd, xs, out):
        n, k = xq.shape
        rows = out.shape[1]
        for g in range(0, wp.shape[0], step):
            t = 0
            while t + 4 <= n:
                four(fmt, pair, wp, g * wp.shape[1], xq, t * k, k, xd, xs, t * xd.shape[1], xd.shape[1],
                     k // values, out, t * rows + 8 * g, rows)
                t += 4
            for tt in range(t, n):
                one(fmt, pair, wp, g * wp.shape[1], xq, tt * k, k, xd, xs, tt * xd.shape[1], xd.shape[1],
                    k // values, out, tt * rows + 8 * g, rows)

    kind = ACTIVATIONS[qtype]
    xq, xd, xs = qk._quantized(x, int(kind))
    if kind == Activations.Q8_K:
        xs = qk._sums_of_16(xq)
    out = np.zeros((x.shape[0], w.shape[0]), np.float32)
    run(w.with_layout().packed, xq, xd, xs, out)
    return out


def host_flavors() -> list[tuple[str, frozenset[str]]]:
    """(flavor, features) pairs whose instructions this host has."""
    have = cpu.FEATURES
    runs = [("generic", have & {"dotprod"})]  # sdot where the CPU has it, plain vectors elsewhere
    if {"avx2", "f16c", "fma"} <= have:
        runs += [("avx2", frozenset({"avx2", "f16c", "fma"}))]  # vpmaddubsw
        if "avxvnni" in have:
            runs += [("avx2", have)]  # vpdpbusd, VEX
    if cpu.AVX512 <= have:
        runs += [("avx512", have)]
    return runs


@pytest.mark.parametrize("flavor,features", host_flavors(),
                         ids=lambda v: v if isinstance(v, str) else "+".join(sorted(v & {"avxvnni", "dotprod"})))
@pytest.mark.parametrize("qtype", TILED, ids=lambda q: q.name)
def test_every_flavor_the_host_runs_matches_the_reference(flavor, features, qtype):
    """vpdpbusd (AVX512-VNNI, AVX-VNNI), vpmaddubsw (AVX2 without VNNI) and the portable form
    (plain vectors; sdot on ARM) give the reference's results on this host."""
    rng = np.random.default_rng(3)
    cols = 544 if qtype in layout.TILES else 768
    w, _ = tiled(rng, qtype, 24, cols)
    x = rng.standard_normal((7, cols)).astype(np.float32)
    x[1, ::5] = 40.0  # large activations: the most negative Q8_0 byte meets 127 in the sign trick
    got, want = _run_flavor(flavor, features, qtype, w, x), matmul_ref(x, w)
    np.testing.assert_array_less(np.abs(got - want), 2e-5 * (np.abs(x) @ np.abs(w.dequantize()).T) + 1e-30)


@pytest.mark.skipif(not {"avx2", "f16c", "fma"} <= cpu.FEATURES, reason="needs AVX2")
@pytest.mark.parametrize("qtype", TILED, ids=lambda q: q.name)
def test_avx2_word_sums_do_not_overflow_at_the_extremes(qtype):
    """AVX2 without VNNI adds the byte products of several sub-vectors as 16-bit words before it
    widens them (quant.packed._Madd.dots). Every value at its largest (or, for signed formats,
    most negative) against activations that quantize to -128 or +127 is where a word would
    overflow: the dots must still be the reference's."""
    rows, cols = 16, 512
    features = frozenset({"avx2", "f16c", "fma"})
    for fill in (0xFF, 0x80, 0x77):
        raw = np.full((rows, cols // BLOCKS[qtype].values, BLOCKS[qtype].nbytes), fill, dtype=np.uint8)
        for at in BLOCKS[qtype].scales:  # d (and dmin, m) 1: no NaN, no infinity
            raw[:, :, at:at + 2] = np.array([1.0], np.float16).view(np.uint8)
        w = QTensor(raw.reshape(rows, -1), qtype, (rows, cols))
        for sign in (-1.0, 1.0):
            x = np.full((5, cols), sign, dtype=np.float32)
            x[1] = np.where(np.arange(cols) % 2, 1.0, -1.0)
            got, want = _run_flavor("avx2", features, qtype, w, x), matmul_ref(x, w)
            np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"bytes {fill:#x}, activations {sign}")


@pytest.mark.parametrize("flavor,features", [(f, s) for f, s in host_flavors() if f in packed.PAIRED_FLAVORS],
                         ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("qtype", packed.PAIRED, ids=lambda q: q.name)
def test_two_groups_at_once_give_each_group_s_own_dots_bit_for_bit(flavor, features, qtype):
    """A pair call (sixteen rows in 512-bit vectors) gives exactly what one call per group
    gives: decode and a draft's verification must agree to the bit whichever way a matrix's
    groups were taken."""
    rng = np.random.default_rng(4)
    w, _ = tiled(rng, qtype, 32, 768)  # four groups: two pairs
    x = rng.standard_normal((6, 768)).astype(np.float32)  # a call of four tokens and two of one
    np.testing.assert_array_equal(_run_flavor(flavor, features, qtype, w, x, pair=True),
                                  _run_flavor(flavor, features, qtype, w, x))


@pytest.mark.parametrize("tokens", [1, packed.TOKENS], ids=["gemv", "gemm"])
@pytest.mark.parametrize("qtype", TILED, ids=lambda q: q.name)
def test_every_tile_dot_is_sdot_on_the_raspberry_pi_5(qtype, tokens):
    """On a Cortex-A76, eight rows' 32 values take two sdot per sub-vector of 32 bytes per token
    (four rows each), and nothing is widened beside them."""
    loop = asm.mnemonics(asm.main_loop(asm.tiles_dot_assembly(asm.PI5, qtype, tokens)))
    fallback = SCALAR_FALLBACK
    if qtype in K_QUANTS:  # one super-block per iteration: 64 vectors of values
        assert loop.count("sdot") == 2 * 64 * tokens
        # Q6_K's sixteen int8 scales widen to i32 once per super-block (i8 -> i16 -> i32: three
        # shifts each), never a value: that is not the fallback the set looks for
        widen = loop.count("sshll") + loop.count("sshll2")
        assert widen <= 3 * 16, widen
        fallback = SCALAR_FALLBACK - {"sshll", "sshll2"}
    else:
        blocks = 2 if tokens == 1 else 1  # the GEMV loop takes two blocks per iteration
        assert loop.count("sdot") == 2 * 8 * blocks * tokens  # 8 sub-vectors of values per block
    assert not fallback & set(loop), sorted(fallback & set(loop))


@pytest.mark.parametrize("qtype", packed.PAIRED, ids=lambda q: q.name)
def test_a_pair_of_groups_is_one_loop_of_512_bit_dots(qtype):
    """Two groups' tiles take the byte dots one group takes (a super-block's 64, or the eight
    of each of a 32-value GEMV's two blocks), each on a 512-bit vector (sixteen rows), not two
    loops of 256-bit ones."""
    loop = asm.main_loop(asm.tiles_dot_assembly(asm.ZEN4_AVX512, qtype, 1, pair=True))
    dots = [line for line in loop if line.split()[0] == "vpdpbusd"]
    want = 64 if qtype in K_QUANTS else 8 * packed.blocks_per_iteration(qtype, 1)
    assert len(dots) == want and all("zmm" in line for line in dots), dots[:3]


@pytest.mark.parametrize("pair", [False, True], ids=["group", "pair"])
@pytest.mark.parametrize("qtype", [QType.Q4_K, QType.Q5_K], ids=lambda q: q.name)
def test_a_prompt_s_products_keep_each_group_s_values_in_registers(qtype, pair):
    """A prompt's products (four tokens a call) meet a group's values with every token before
    the next group's are made, so the values stay in registers: on AVX-512, fewer stack accesses
    in the loop than a third of its byte dots. Left to LLVM's order, Q4_K's loop made 281 (Q5_K's
    325) for 256 dots: each group's values spilled after the first token and reloaded for the others."""
    loop = asm.main_loop(asm.tiles_dot_assembly(asm.ZEN4_AVX512, qtype, 4, pair=pair))
    dots = [line for line in loop if line.split()[0] == "vpdpbusd"]
    stack = [line for line in loop if "(%rsp)" in line]
    assert len(dots) == 256 and len(stack) < len(dots) / 3, (len(stack), len(dots))


@pytest.mark.parametrize("target,instruction", [(asm.ZEN4_AVX512, "vpdpbusd"), (asm.ZEN2_AVX2, "vpmaddubsw")],
                         ids=["avx512", "avx2"])
def test_x86_flavors_use_their_byte_dot(target, instruction):
    loop = asm.mnemonics(asm.main_loop(asm.tiles_dot_assembly(target, QType.Q4_0, 1)))
    assert loop.count(instruction) == 16  # two blocks, eight sub-vector dots each
    # the GEMV asks for the stream a few KB ahead into L2: a line per 64 bytes of each 144-byte tile
    assert loop.count("prefetcht1") == 2 * 3
    prefill = asm.mnemonics(asm.main_loop(asm.tiles_dot_assembly(target, QType.Q4_0, 4)))
    assert "prefetcht1" not in prefill  # the GEMM reads each tile for many tokens: no stream to run ahead of


def test_flavor_choice():
    assert cpu.pick_flavor(frozenset({"avx2", "f16c", "fma"})) == "avx2"
    assert cpu.pick_flavor(frozenset({"avx2", "f16c", "fma"}) | cpu.AVX512) == "avx512"
    assert cpu.pick_flavor(frozenset({"neon", "dotprod"})) == "generic"


@pytest.mark.parametrize("qtype", [QType.Q4_0, QType.Q8_0, QType.Q4_K, QType.Q6_K], ids=lambda q: q.name)
def test_exact_rows_are_one_row_products_bit_for_bit(qtype):
    """Under exact_rows (a draft's verification), each row of a product of several rows is the
    one-row product, bit for bit, in the x8 layout and in the file's; outside it, the four-token
    tiles sum in another order."""
    from quant.tensor import exact_rows

    rng = np.random.default_rng(int(qtype))
    cols = 512
    rows_layout, tiles = tiled(rng, qtype, 40, cols)
    x = rng.standard_normal((9, cols)).astype(np.float32)
    for w in (tiles, rows_layout):
        alone = np.concatenate([matmul(x[i:i + 1], w) for i in range(len(x))])
        with exact_rows():
            together = matmul(x, w)
        np.testing.assert_array_equal(together, alone)
        np.testing.assert_allclose(matmul(x, w), alone, rtol=1e-4, atol=1e-4)
    with exact_rows():  # products that share their input (q/k/v, gate/up): one kernel call
        q, k = matmuls(x, [tiles, tiles])
    np.testing.assert_array_equal(q, np.concatenate([matmul(x[i:i + 1], tiles) for i in range(len(x))]))
    np.testing.assert_array_equal(k, q)
