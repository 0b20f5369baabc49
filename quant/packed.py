"""Matrix products over the x8 layout (quant.layout), as Numba intrinsics in LLVM IR.

    tiles_dot(w, w_off, xq, x_off, x_stride, xd, xs, xb, xb_stride, n, out, out_off, out_stride)

multiplies one group of eight rows (its tiles start at byte w_off of w) with T consecutive
tokens (token t's int8 activations at element x_off + t * x_stride of xq, its block scales
at xb + t * xb_stride of xd and xs, as quant.kernels.quantize_q8 makes them) over `n`
blocks, and stores the eight dots of token t at out_off + t * out_stride of out.

Per block and token, the eight rows' integer dots come out in the eight i32 lanes of one
vector, one instruction per 32-byte sub-vector against one broadcast activation word; one
float FMA then applies the eight rows' scales. The flavor (quant.cpu.FLAVOR) fixes the
instruction:

- "avx512": vpdpbusd (AVX512-VNNI, on 256-bit vectors: Zen 4 runs 512-bit ones as two
  halves, so they would save decode slots only);
- "avx2": vpdpbusd in its VEX form where the CPU has AVX-VNNI, else vpmaddubsw + vpmaddwd;
- "generic": sdot where the CPU has ARM's dot-product extension (the Raspberry Pi 5's
  Cortex-A76), else sign-extended products summed four by four in plain vector IR.

vpdpbusd and vpmaddubsw take unsigned weights: 4- and 5-bit values are used as stored
(0..15, 0..31) and Q8_0's bytes with their sign bit flipped (w + 128); the offset comes
back through xs: sum((u - bias) x) = sum(u x) - bias * sum(x). Without VNNI, Q8_0 takes
vpmaddubsw's sign trick instead (|w| times x with w's sign). sdot takes signed bytes, so
the generic flavor subtracts the bias from the values before the dot.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from quant.cpu import FEATURES, FLAVOR, PAIRS_IN_GEMV
from quant.formats import FORMATS, IQ4_NL_LEVELS, QType, TileFormat
from quant.ir import (F32, I8, I16, I32, ROWS, V8I32, V32I8, Bytes, Tile, TilePair, bits, const_like,
                      const_vec, declare, halves, lane_bits, nibbles, shuffle, splat, vec)
from quant.layout import SUPER_TILES, TILES
from quant.simd import switch

PAIRED_FLAVORS = ("avx512",)  # two groups at once, sixteen rows in 512-bit vectors, for PAIRED's formats
# the formats whose tiles say so (TileFormat.paired, SuperTileFormat.paired), in a prompt's products, and
# those paired in decode's too (paired_in_decode). A prompt's products at 128 tokens on Zen 5 ran at these
# multiples of a group at a time: Q4_0, Q4_1, IQ4_NL, Q5_0, Q5_1 and Q8_0 1.4-1.8x, Q4_K 1.4x, Q5_K 1.13x.
# In decode, Q4_K's pair ran 1.11x from L3 but 0.88x from memory: Q4_K and Q5_K are paired in prefill only,
# as are the 32-value formats (Q4_0's, Q8_0's, IQ4_NL's GEMV pairs from memory, Zen 5: 0.7-0.9x, once 1.17x).
# Q6_K is not paired: slower in decode from L3 (its scale pairs spill), and in prefill its GEMM's 1.08-1.17x
# (Zen 5) did not show in E2B's, for a fifth more compile time
PAIRED = tuple(q for q, t in (TILES | SUPER_TILES).items() if t.paired)
PAIRED_IN_DECODE = tuple(q for q, t in (TILES | SUPER_TILES).items() if t.paired_in_decode)
# A prompt's products meet each group's values with every token before the next group's are made (so
# the IR has it). LLVM's scheduler moved the next groups' value vectors above the first token's dots and
# spilled them for the other tokens: Q4_K's 4-token AVX-512 loop made 281 stack accesses a tile. A
# compiler barrier between groups (_barrier: no load crosses it) keeps the order where there are 32
# vector registers. AVX-512, 64-token GEMM on Zen 5: Q4_K 1.43-1.46x (133 stack accesses), Q5_K
# 1.32-1.42x, Q2_K 1.13-1.15x, Q3_K 1.03-1.19x, Q6_K and IQ4_XS level. With AVX2's 16 registers LLVM's
# own order spills less: the barrier ran Q4_K, Q5_K and Q2_K at 0.69-0.71x there.
GROUP_BARRIER_FLAVORS = ("avx512",)
PREFETCH_FLAVORS = ("avx512", "avx2")  # GEMV prefetches; measured on x86 only (+14% E2B decode matmuls)
AHEAD = 4096  # bytes ahead of the tile being read: 2-8 KB measured alike
# AVX2 without VNNI sums the byte products of unsigned values as words, four or more sub-vectors a
# widening (_Madd.dots): Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q4_K, Q5_K. From L3, 1.04-1.20x; a 64-token
# product 1.02-1.29x (BENCHMARKS.md). Q6_K's values (0..63) allow two a widening, signed ones one:
# their loops spilled more than they saved. Q3_K's, with an offset, are widened by ones and scaled
# after it (1.11x from L3, 1.07x a 64-token product): by the scale, the offset costs a word product
# more a group (0.84x).
WORD_RUN = 4
SUPER_AHEAD = 8192  # the same for the 256-value tiles (1-2 KB each): 4 KB streams 5% slower


class _Vnni:
    """vpdpbusd: four unsigned x signed byte products summed into each i32 lane."""

    def __init__(self, builder):
        self.b = builder

    def _call(self, name, acc, a, c):  # on 256- or 512-bit vectors, as acc is
        bits = 32 * acc.type.count
        return self.b.call(declare(self.b, f"llvm.x86.avx512.{name}.{bits}", acc.type, [acc.type] * 3),
                           [acc, self.b.bitcast(a, acc.type), self.b.bitcast(c, acc.type)])

    def bias(self, bias):
        return 128 if bias is None else bias

    def dot(self, acc, values, bias, x):
        u = values if bias is not None else self.b.xor(values, const_like(values, 0x80))
        return self._call("vpdpbusd", acc, u, x)

    def madd16(self, acc, a, c):
        """acc + a c, lane by lane, for i32 lanes whose values fit a signed word: one vpdpwssd (the
        low words' product plus the high words', a's high word cleared). a: the factor that
        stays while tokens pass (a scale, a min), so that clearing it is done once for all."""
        return self._call("vpdpwssd", acc, self.b.and_(a, const_like(a, 0xFFFF)), c)


class _Madd:
    """AVX2 without VNNI: vpmaddubsw (pairs, into i16) then vpmaddwd by ones (into i32)."""

    def __init__(self, builder):
        self.b = builder
        v16i16 = vec(I16, 16)
        self._maddubs = declare(builder, "llvm.x86.avx2.pmadd.ub.sw", v16i16, [V32I8, V32I8])
        self._maddwd = declare(builder, "llvm.x86.avx2.pmadd.wd", V8I32, [v16i16, v16i16])
        self._sign = declare(builder, "llvm.x86.avx2.psign.b", V32I8, [V32I8, V32I8])

    def bias(self, bias):
        return 0 if bias is None else bias

    def words(self, values, bias, x):
        """The byte products summed in pairs, as signed words (vpmaddubsw)."""
        b = self.b
        if bias is None:  # signed weights: |w| x sign(w) (pairs of 128 x 127 stay within i16)
            values, x = b.call(self._sign, [values, values]), b.call(self._sign, [x, values])
        return b.call(self._maddubs, [values, x])  # 63 x 128 or 128 x 127, twice: no saturation

    def dot(self, acc, values, bias, x):
        return self.b.add(acc, self.b.call(self._maddwd, [self.words(values, bias, x), const_vec(I16, 16, 1)]))

    @staticmethod
    def run(top: int | None) -> int:
        """How many sub-vectors' words of values up to top (None: signed) sum within a word."""
        return 1 if top is None else max(1, (2 ** 15 - 1) // (2 * 128 * top))

    def dots(self, items, top: int | None, scale=None):
        """The sum of the byte dots of items, <8 x i32>, times scale (<8 x i32> of word-sized
        values) if given. An item is a function that makes (values, bias, x) for dot, called where
        its dot is emitted, so that few are live at once. Values up to `top` (None: signed) times
        activations of at most 128 in size: as many sub-vectors' words as cannot leave a word (2 x
        128 x top each) are added as words, then widened by one vpmaddwd, by ones or by the scale
        in both words of its lane. Q4_K's eight sub-vectors a group: eight vpmaddwd and the
        scale's word product become one. vpmaddwd by the scale gives the integers that scaling
        the i32 dot gives."""
        b = self.b
        run = self.run(top)
        if scale is None:
            factor = const_vec(I16, 16, 1)
        else:  # the low word of each lane in both
            halves16 = b.bitcast(scale, vec(I16, 16))
            factor = shuffle(b, halves16, halves16, [2 * (k // 2) for k in range(16)])
        total = None
        for i in range(0, len(items), run):
            words = None
            for item in items[i:i + run]:
                w = self.words(*item())
                words = w if words is None else b.add(words, w)
            wide = b.call(self._maddwd, [words, factor])
            total = wide if total is None else b.add(total, wide)
        return total

    def madd16(self, acc, a, c):  # _Vnni.madd16 through vpmaddwd
        v16i16 = vec(I16, 16)
        a = self.b.bitcast(self.b.and_(a, const_vec(I32, 8, 0xFFFF)), v16i16)
        return self.b.add(acc, self.b.call(self._maddwd, [a, self.b.bitcast(c, v16i16)]))


class _Signed:
    """Dots of signed bytes: the bias comes off the values before the dot, none after it."""

    def bias(self, bias):
        return 0

    def madd16(self, acc, a, c):  # _Vnni.madd16 as an i32 multiply-add (mla on ARM)
        return self.b.add(acc, self.b.mul(a, c))

    def signed(self, values, bias):
        return values if bias is None else self.b.sub(values, const_vec(I8, 32, bias))


class _Sdot(_Signed):
    """ARMv8.2 with the dot-product extension: sdot, four signed byte products summed into each
    i32 lane, on the two 128-bit halves (rows 0-3, rows 4-7)."""

    def __init__(self, builder):
        self.b = builder
        v4i32, v16i8 = vec(I32, 4), vec(I8, 16)
        self._sdot = declare(builder, "llvm.aarch64.neon.sdot.v4i32.v16i8", v4i32, [v4i32, v16i8, v16i8])

    def dot(self, acc, values, bias, x):
        b = self.b
        s = self.signed(values, bias)
        halves = []
        for h in range(2):
            def half(v, n):
                return shuffle(b, v, v, range(n * h, n * h + n))
            halves.append(b.call(self._sdot, [half(acc, 4), half(s, 16), half(x, 16)]))
        return shuffle(b, halves[0], halves[1], range(8))


class _Widen(_Signed):
    """Any other target: sext x sext products, then lane r sums products 4r..4r+3. (LLVM's
    partial-reduction intrinsic would be shorter, but it leaves which products meet in
    which lane unspecified, and its x86 lowering does not group them four by four.)"""

    def __init__(self, builder):
        self.b = builder

    def dot(self, acc, values, bias, x):
        b = self.b
        s = self.signed(values, bias)
        v32i32 = vec(I32, 32)
        products = b.mul(b.sext(s, v32i32), b.sext(x, v32i32))
        for j in range(4):
            acc = b.add(acc, shuffle(b, products, products, [4 * r + j for r in range(ROWS)]))
        return acc


def _dot_class(flavor: str, features: frozenset[str]):
    """The byte dot of a flavor on a CPU with these features (quant.cpu.FEATURES)."""
    if flavor == "avx512" or (flavor == "avx2" and "avxvnni" in features):
        return _Vnni
    if flavor == "avx2":
        return _Madd
    return _Sdot if "dotprod" in features else _Widen


def _levels(b, flavor: str, features: frozenset[str], idx):
    """<32 x i8> IQ4_NL levels of the 4-bit indices idx: pshufb on x86, tbl on ARM, else a
    chain of selects (the portable flavor off ARM, which only the tests run)."""
    table = [ir.Constant(I8, v) for v in IQ4_NL_LEVELS]
    if flavor in ("avx512", "avx2"):  # <32 x i8> (vpshufb ymm) or a TilePair's <64 x i8> (zmm)
        name = "llvm.x86.avx2.pshuf.b" if idx.type.count == 32 else "llvm.x86.avx512.pshuf.b.512"
        lookup = ir.Constant(idx.type, table * (idx.type.count // 16))
        return b.call(declare(b, name, idx.type, [idx.type] * 2), [lookup, idx])
    if {"neon", "dotprod"} & features:
        v16i8 = vec(I8, 16)
        tbl = declare(b, "llvm.aarch64.neon.tbl1.v16i8", v16i8, [v16i8, v16i8])
        halves = [b.call(tbl, [ir.Constant(v16i8, table), shuffle(b, idx, idx, range(16 * h, 16 * h + 16))])
                  for h in range(2)]
        return shuffle(b, halves[0], halves[1], range(32))
    out = const_vec(I8, 32, IQ4_NL_LEVELS[0])
    for k in range(1, 16):
        out = b.select(b.icmp_unsigned("==", idx, const_vec(I8, 32, k)), const_vec(I8, 32, IQ4_NL_LEVELS[k]), out)
    return out


class ByteOps:
    """What a 256-value format's decoder (its entry's `decode`) asks of the flavor: `b`, the
    builder; the IQ4_NL levels of 4-bit indices; and bit fields of each byte of a <32 x i8>."""

    def __init__(self, b, flavor: str, features: frozenset[str]):
        self.b, self.flavor, self.features = b, flavor, features

    def levels(self, idx):
        return _levels(self.b, self.flavor, self.features, idx)

    def field(self, v, lo: int, width: int, to: int = 0):
        """Bits lo..lo + width - 1 of each byte, moved to bit `to`; the other bits zero. (x86 has
        no byte shift: LLVM shifts words and masks, or shifts bytes with GFNI's vgf2p8affineqb
        where the CPU has it. One vgf2p8affineqb whose matrix also masks, written here, took
        10% of Q2_K's instructions and measured no faster on a Xeon with AVX512-VNNI.)"""
        out = bits(self.b, v, lo, (1 << width) - 1)
        return self.b.shl(out, const_like(out, to)) if to else out

    def nibbles(self, v, shift: int):
        """The low (shift 0) or high (shift 4) 4 bits of each byte."""
        return self.field(v, shift, 4)

    def with_bit(self, v, h, k: int, to: int):
        """v (its bit `to` clear) with bit k of h's byte at bit `to`."""
        return self.b.or_(v, self.field(h, k, 1, to))


def _sub_vectors(b, fmt: TileFormat, tile: Tile, levels):
    """A tile's values as (<32 x i8>, bias, activation chunk): value = byte - bias, or a
    signed byte when bias is None; chunk c is the block's activations 4c..4c+3. (A TilePair's:
    <64 x i8>, sixteen rows.)"""
    out = []
    for s in range(fmt.sub_vectors):
        v = tile.load(fmt.header + 32 * s, V32I8)
        if fmt.sub_vectors == 8:  # Q8_0: signed bytes, values 4s..4s+3
            out.append((v, None, s))
            continue
        lo, hi = nibbles(b, v, 0), nibbles(b, v, 4)
        if fmt.levels:  # IQ4_NL: signed levels
            out += [(levels(lo), None, s), (levels(hi), None, s + 4)]
            continue
        bias = 0 if fmt.m is not None else 8 if fmt.qh is None else 16  # Q4_1 and Q5_1 take their mins instead
        if fmt.qh is not None:  # Q5_0, Q5_1: lane i's fifth bit is bit i of a mask
            masks = tile.load(fmt.masks + 8 * s, vec(I8, 8))
            lanes = v.type.count
            lo, hi = b.or_(lo, lane_bits(b, masks, 0, lanes=lanes)), b.or_(hi, lane_bits(b, masks, 4, lanes=lanes))
        out += [(lo, bias, s), (hi, bias, s + 4)]
    return out


def _const(v: int):
    """An index-sized integer constant (offsets and loop bounds in the emitted loops)."""
    return ir.Constant(cgutils.intp_t, v)


def _x_word(b, x: Bytes, at: int, rows: int):
    """The four activations at byte `at` of x in every row's lane (<4 rows x i8>): what a byte dot
    meets a sub-vector of values with."""
    return b.bitcast(splat(b, x.load(at, I32), rows), vec(I8, 4 * rows))


def _tile(b, w_ptr, w_off, i, n, tile_bytes: int, pair: bool) -> Tile:
    """Tile i of the group whose tiles start at byte w_off; with `pair`, as a TilePair with the
    next group's tile i, n tiles on (a group has n)."""
    at = b.add(w_off, b.mul(i, _const(tile_bytes)))
    if pair:
        return TilePair(b, b.gep(w_ptr, [at]), b.gep(w_ptr, [b.add(at, b.mul(n, _const(tile_bytes)))]))
    return Tile(b, b.gep(w_ptr, [at]))


def emit_tiles_dot(builder, flavor: str, features: frozenset[str], qtype: QType, w_ptr, w_off, xq_ptr,
                   x_offs, xd_ptr, xs_ptr, xbs, n, pair: bool = False):
    """Emit the loop over a group's `n` tiles against the tokens (x_offs, xbs: each token's first
    activation and first scale index) and return one <8 x float> per token. Pure llvmlite: the
    intrinsics call it, and the tests compile it for other targets. Q4_1's and Q5_1's mins
    meet xs, each block's activation scale times its sum.

    pair: the group at w_off and the next one (n tiles on) in one loop, sixteen rows in 512-bit
    vectors, one <16 x float> per token (PAIRED's formats in PAIRED_FLAVORS)."""
    b = builder
    if pair and not (qtype in PAIRED and flavor in PAIRED_FLAVORS):
        raise ValueError(f"{qtype.name} in the {flavor} flavor is taken a group at a time, not in pairs")
    if qtype in SUPER_TILES:
        return emit_super_tiles_dot(builder, flavor, features, qtype, w_ptr, w_off, xq_ptr, x_offs, xd_ptr, xs_ptr,
                                    xbs, n, pair)
    fmt = TILES[qtype]
    dots = _dot_class(flavor, features)(b)

    unroll = blocks_per_iteration(qtype, len(x_offs))
    prefetch = len(x_offs) == 1 and flavor in PREFETCH_FLAVORS
    rows = 2 * ROWS if pair else ROWS
    floats = vec(F32, rows)
    acc = [[cgutils.alloca_once_value(b, ir.Constant(floats, None)) for _ in range(unroll)] for _ in x_offs]
    zero = ir.Constant(vec(I32, rows), None)

    def block(i, slot):
        tile = _tile(b, w_ptr, w_off, i, n, fmt.tile_bytes, pair)
        if prefetch:
            for base in tile.bases:
                _prefetch(b, base, AHEAD, fmt.tile_bytes)
        dw = halves(b, tile, 0)
        dm = halves(b, tile, 2 * ROWS) if fmt.m is not None else None
        subs = _sub_vectors(b, fmt, tile, lambda idx: _levels(b, flavor, features, idx))
        correction = dots.bias(subs[0][1])  # every sub-vector of a format has the same bias
        top = None if subs[0][1] is None else 15 if fmt.qh is None else 31
        as_words = isinstance(dots, _Madd) and dots.run(top) >= WORD_RUN
        for t, (x_off, xb) in enumerate(zip(x_offs, xbs)):
            x = Bytes(b, b.gep(xq_ptr, [b.add(x_off, b.mul(i, _const(32)))]))
            if as_words:  # AVX2 without VNNI: products summed as words first
                total = dots.dots([lambda v=v, bias=bias, c=c: (v, bias, _x_word(b, x, 4 * c, rows))
                                   for v, bias, c in subs], top)
            else:
                chains = [zero, zero]  # two dependency chains of integer dots
                for j, (values, bias, chunk) in enumerate(subs):
                    chains[j % 2] = dots.dot(chains[j % 2], values, bias, _x_word(b, x, 4 * chunk, rows))
                total = b.add(*chains)
            total = b.sitofp(total, floats)
            k = b.add(xb, i)
            xd = splat(b, b.load(b.gep(xd_ptr, [k])), rows)
            if correction:  # dw * (xd * dot - bias * xd * sum(xq))
                xs = b.fmul(b.load(b.gep(xs_ptr, [k])), ir.Constant(F32, -float(correction)))
                scaled = b.call(_fma(b, rows), [total, xd, splat(b, xs, rows)])
            else:
                scaled = b.fmul(total, xd)
            total = b.call(_fma(b, rows), [dw, scaled, b.load(acc[t][slot])])
            if dm is not None:  # + m * xd * sum(xq)
                total = b.call(_fma(b, rows), [dm, splat(b, b.load(b.gep(xs_ptr, [k])), rows), total])
            b.store(total, acc[t][slot])

    n_main = b.mul(b.sdiv(n, _const(unroll)), _const(unroll))
    with cgutils.for_range_slice(b, _const(0), n_main, _const(unroll)) as (i, _):
        for u in range(unroll):
            block(b.add(i, _const(u)), u)
    with cgutils.for_range_slice(b, n_main, n, _const(1)) as (i, _):
        block(i, 0)
    results = []
    for slots in acc:
        values = [b.load(s) for s in slots]
        results.append(values[0] if len(values) == 1 else b.fadd(values[0], values[1]))
    return results


def blocks_per_iteration(qtype: QType, tokens: int) -> int:
    """Tiles the main loop takes per iteration: the 32-value GEMV takes two (two accumulators
    hide the FMA latency); the rest one."""
    return 2 if tokens == 1 and qtype in TILES else 1


def emit_super_tiles_dot(builder, flavor: str, features: frozenset[str], qtype: QType, w_ptr, w_off, xq_ptr,
                         x_offs, xd_ptr, xs_ptr, xbs, n, pair: bool = False):
    """emit_tiles_dot for the 256-value formats (quant.layout.SUPER_TILES) over `n` super-blocks.
    The activations are Q8_K's: xd holds one scale per 32 values (the super-block's, repeated)
    and xs the integer sum of each 16 values (int32, as quant.kernels._sums_of_16 makes them:
    llama.cpp's bsums), both indexed from xb = the token's first 32-value block.

    Each format's decoder (its entry's `decode`, in quant.formats) turns a tile into groups of
    values with integer scales (quant.ir.Super). Unsigned values go into the byte dots as they
    are; signed ones (IQ4_XS) as the flavor takes them. Per row and group, the eight lanes'
    integer dots are scaled by the rows' integer scales and summed in i32 over the super-block
    (at most 127 x 127 x 32 x 32 x 8 < 2^31); an offset on the values (Q6_K's 32, Q3_K's 4, the
    VNNI bias of signed values) comes off each group's dot through the activation sums of 16,
    and mins (Q4_K, Q5_K, Q2_K) through the same sums, summed in i32 as word products (at most
    63 x 4096 x 8). One float step per super-block and token
    then applies the rows' d (and dmin) and the token's scale.

    pair: two groups at once, the one at w_off and the next (n tiles on), as one TilePair."""
    b = builder
    dots = _dot_class(flavor, features)(b)
    fmt = SUPER_TILES[qtype]

    rows = 2 * ROWS if pair else ROWS
    prefetch = len(x_offs) == 1 and flavor in PREFETCH_FLAVORS
    acc = [cgutils.alloca_once_value(b, ir.Constant(vec(F32, rows), None)) for _ in x_offs]
    zero = ir.Constant(vec(I32, rows), None)
    sums_ptr = b.bitcast(xs_ptr, I32.as_pointer())
    with cgutils.for_range_slice(b, _const(0), n, _const(1)) as (i, _):
        tile = _tile(b, w_ptr, w_off, i, n, fmt.tile_bytes, pair)
        sup = FORMATS[qtype].decode(tile, ByteOps(b, flavor, features))
        offset = sup.offset + (dots.bias(None) if sup.signed else 0)
        lines = -(-fmt.tile_bytes // 64)  # the tile's cache lines
        share = 64 * -(-lines // len(sup.groups))  # the bytes of them each group prefetches
        firsts = [b.add(xb, b.mul(i, _const(8))) for xb in xbs]  # each token's first 32-value block here
        xs = [Bytes(b, b.gep(xq_ptr, [b.add(x_off, b.mul(i, _const(256)))])) for x_off in x_offs]
        # where a group's dot fits a signed word, its scale is applied as a word product (vpdpwssd: one
        # instruction where vpmulld is two, and the add with it)
        as_words = isinstance(dots, _Madd) and not sup.signed and dots.run(sup.top) >= WORD_RUN
        tokens_unsigned = len(x_offs) > 1 and not sup.signed  # several tokens, unsigned values
        narrow = (sup.top is not None and max(sup.top - offset, offset) * 128 * 4 * max(len(p) for _, p, _ in sup.groups)
                  < 2 ** 15)

        def sum16(t, s):
            return b.load(b.gep(sums_ptr, [b.add(b.mul(firsts[t], _const(2)), _const(s))]))

        def xsum(t, sums):  # the total of these sums of 16 (of two at most: 2 x 16 x 128 fits a word)
            total = sum16(t, sums[0])
            for s in sums[1:]:
                total = b.add(total, sum16(t, s))
            return total

        totals = [zero] * len(x_offs)
        for g, (scale, parts, sums) in enumerate(sup.groups):  # group by group, each meeting every token
            if prefetch:  # the tile SUPER_AHEAD on, a few lines per group: see _pinned_prefetch
                for base in tile.bases:
                    _pinned_prefetch(b, base, SUPER_AHEAD + g * share, min(share, fmt.tile_bytes - g * share))
            elif len(x_offs) > 1 and flavor in GROUP_BARRIER_FLAVORS:
                _barrier(b)
            if tokens_unsigned:  # see _in_register
                totals = [t if t is zero else _in_register(b, t) for t in totals]
            shift = sup.shifts[g] if sup.shifts else 0
            for t, x in enumerate(xs):
                items = [lambda values=values, at=at, x=x: (values(), 0, _x_word(b, x, at, rows))
                         for values, at in parts]
                if as_words and not offset:  # AVX2 without VNNI: the products summed as words, then scaled
                    dot = dots.dots(items, sup.top << shift, scale())
                    if shift:  # exact: the scale times a multiple of 2^shift
                        dot = b.ashr(dot, const_like(dot, shift))
                    totals[t] = b.add(totals[t], dot)
                    continue
                if as_words:  # with an offset (Q3_K's): summed as words, widened by ones, then as below
                    dot = dots.dots(items, sup.top << shift)
                else:
                    # two chains let a group's own dots overlap; with several tokens, the tokens' chains do,
                    # and one a token frees registers (Q4_K's 64-token GEMM: 1.07-1.08x on AVX-512, 1.22x
                    # on AVX-VNNI; Q5_K 1.01-1.10x and level). IQ4_XS's signed values keep two (0.93-0.97x).
                    one = len(parts) <= 4 or tokens_unsigned
                    chains = [zero] * (1 if one else 2)
                    for c, (values, at) in enumerate(parts):
                        word = _x_word(b, x, at, rows)
                        chain = c % len(chains)
                        chains[chain] = dots.dot(chains[chain], values(), None if sup.signed else 0, word)
                    dot = chains[0] if len(chains) == 1 else b.add(*chains)
                if shift:  # the values' power of two off (exact: the dot is its multiple)
                    dot = b.ashr(dot, const_like(dot, shift))
                if offset:  # (q - offset) x = q x - offset x
                    dot = b.sub(dot, splat(b, b.mul(xsum(t, sums), ir.Constant(I32, offset)), rows))
                if narrow:
                    totals[t] = dots.madd16(totals[t], scale(), dot)
                else:
                    totals[t] = b.add(totals[t], b.mul(dot, scale()))
        for t, total in enumerate(totals):
            xd = splat(b, b.load(b.gep(xd_ptr, [firsts[t]])), rows)
            scaled = b.fmul(b.fmul(sup.d, xd), b.sitofp(total, xd.type))
            if sup.mins is not None:  # - dmin * (sum of min x the group's activations), exact in i32
                dmin, mins = sup.mins
                off = zero
                for m, sums in mins:
                    off = dots.madd16(off, m(), splat(b, xsum(t, sums), rows))
                scaled = b.call(_fma(b, rows), [b.fneg(b.fmul(dmin, xd)), b.sitofp(off, xd.type), scaled])
            b.store(b.fadd(b.load(acc[t]), scaled), acc[t])
    return [b.load(a) for a in acc]


def _prefetch(b, ptr, ahead: int, n_bytes: int):
    """Ask for the cache lines of n_bytes at ptr + ahead to come into L2 (prefetcht1 on x86).
    Tiles lie back to back, so a line every 64 bytes of each tile covers the stream."""
    fn = declare(b, "llvm.prefetch.p0", ir.VoidType(), [I8.as_pointer(), I32, I32, I32])
    for off in range(0, n_bytes, 64):
        where = b.gep(ptr, [_const(ahead + off)])
        b.call(fn, [where, ir.Constant(I32, 0), ir.Constant(I32, 2), ir.Constant(I32, 1)])  # read, L2, data


def _pinned_prefetch(b, ptr, ahead: int, n_bytes: int):
    """_prefetch, kept here in program order. A 256-value tile takes 18-26
    lines; left to itself, LLVM sinks all their prefetches to the loop's end, where they wait
    behind the whole tile's dots whenever one of its loads waits on memory, and the stream
    from memory falls to what the arithmetic leaves (20 GB/s on 2 threads against 35).
    Issued a few per group, between compiler barriers (an empty asm statement with side
    effects, which nothing that touches memory crosses), they keep memory busy while the
    dots run: 23 GB/s. (Measured on a Xeon with AVX512-VNNI; see BENCHMARKS.md.)"""
    _prefetch(b, ptr, ahead, n_bytes)
    _barrier(b)


def _in_register(b, v):
    """v, made here: an empty asm statement takes it and gives it back in a vector register. On
    aarch64 a register holds 128 bits, and wider vectors go through in pieces of <4 x i32>.

    A prompt's products (emit_super_tiles_dot) pass their tokens' totals through it at each group:
    else LLVM put the scale products of many groups' dots off to the loop's end, each dot held
    (spilled) until then. 64-token GEMM, in one process, on Zen 5 with AVX-512 (pairs where taken):
    Q4_K 1.26x (pair; 1.11x alone; 104 -> 23 stack accesses a tile), Q5_K 1.36x (1.17x); AVX2
    without VNNI: Q4_K 1.35x, Q5_K 1.15x, Q2_K 1.47x, Q3_K 1.04x; AVX-VNNI: Q5_K 1.15x, Q3_K
    1.20x, Q2_K 1.29x, Q4_K level; the rest level, but for IQ4_XS's signed values on AVX-VNNI
    (0.79x): not theirs. On the Pi, by instruction counts alone (its speed is unmeasured here), a
    4-token loop's stack accesses fall for Q2_K 963 -> 233 (2966 -> 2251 instructions), Q3_K
    226 -> 39, Q6_K 299 -> 202, Q5_K 376 -> 317."""
    if not b.module.triple.startswith("aarch64"):
        return b.asm(ir.FunctionType(v.type, [v.type]), "", "=v,0", [v], side_effect=True)
    parts = []
    for at in range(0, v.type.count, 4):
        part = shuffle(b, v, v, range(at, at + 4))
        parts.append(b.asm(ir.FunctionType(part.type, [part.type]), "", "=w,0", [part], side_effect=True))
    while len(parts) > 1:  # joined back pairwise
        parts = [shuffle(b, a, c, range(2 * a.type.count)) for a, c in zip(parts[::2], parts[1::2])]
    return parts[0]


def _barrier(b):
    """A compiler barrier: an empty asm statement with side effects, which no load or store crosses."""
    b.asm(ir.FunctionType(ir.VoidType(), []), "", "", [], side_effect=True)


def _fma(b, rows: int = ROWS):
    v = vec(F32, rows)
    return declare(b, f"llvm.fma.v{rows}f32", v, [v] * 3)


TILED = tuple(TILES) + tuple(SUPER_TILES)  # every format with an x8 layout, its kernel here


def tiles_intrinsic(n_tokens: int, flavor: str = FLAVOR, features: frozenset[str] = FEATURES,
                    qtypes: tuple[QType, ...] = TILED, pairs: tuple[QType, ...] = ()):
    """A Numba intrinsic: one group of eight rows (with `pair`, two: sixteen rows, the group at
    w_off and the next) against `n_tokens` tokens, stored into out:

        tiles_dot(fmt, pair, w, w_off, xq, x_off, x_stride, xd, xs, xb, xb_stride, n, out, out_off,
                  out_stride)

    `fmt` (a QType's value) and `pair` (a bool) pick the loop at run time: one group for the
    formats in `qtypes`, two for those in `pairs` (PAIRED's in PAIRED_FLAVORS); a case outside
    them does nothing. The kernels take the host's flavor and every format; the tests build
    others that the host can run too."""

    @intrinsic
    def tiles_dot(typingctx, fmt, pair, w, w_off, xq, x_off, x_stride, xd, xs, xb, xb_stride, n, out, out_off,
                  out_stride):
        sig = types.none(types.intp, types.boolean, w, types.intp, xq, types.intp, types.intp, xd, xs,
                         types.intp, types.intp, types.intp, out, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            (fmt_v, pair_v, w_v, w_off_v, xq_v, x_off_v, x_stride_v, xd_v, xs_v, xb_v, xb_stride_v, n_v,
             out_v, out_off_v, out_stride_v) = args

            def data(i, value):
                return context.make_array(signature.args[i])(context, builder, value).data

            def nth(base, stride, j):
                return builder.add(base, builder.mul(stride, _const(j)))

            w_ptr = builder.bitcast(data(2, w_v), I8.as_pointer())
            xq_ptr = builder.bitcast(data(4, xq_v), I8.as_pointer())
            out_ptr = data(12, out_v)

            def tiles(case):  # the format's loop, its dots per token stored into out
                qtype, pair = case
                dots = emit_tiles_dot(builder, flavor, features, qtype, w_ptr, w_off_v, xq_ptr,
                                      [nth(x_off_v, x_stride_v, j) for j in range(n_tokens)], data(7, xd_v),
                                      data(8, xs_v), [nth(xb_v, xb_stride_v, j) for j in range(n_tokens)], n_v,
                                      pair)
                for j, dot in enumerate(dots):
                    where = builder.gep(out_ptr, [nth(out_off_v, out_stride_v, j)])
                    builder.store(dot, builder.bitcast(where, dot.type.as_pointer()), align=4)
                return []

            with builder.if_else(cgutils.as_bool_bit(builder, pair_v)) as (two, one):
                with two:
                    switch(builder, fmt_v, {q: (q, True) for q in pairs}, 0, tiles)
                with one:
                    switch(builder, fmt_v, {q: (q, False) for q in qtypes}, 0, tiles)
            return context.get_dummy_value()

        return sig, codegen

    return tiles_dot


TOKENS = 4  # tokens per call in prefill
PAIRS = PAIRED if FLAVOR in PAIRED_FLAVORS else ()  # the formats this host takes two groups at a time
# ... and in a GEMV (decode), which reads the two groups as two streams from memory. On AMD's cores
# (quant.cpu.GEMV_UNPAIRED_CORES) those streams cost more than the pair saves. Zen 4, which splits
# 512-bit vectors, ran a one-token GEMV from memory a group at a time at these multiples of its speed in
# pairs: Q3_K 1.25x, IQ4_XS 1.2x, Q2_K 0.95x. Zen 5, through matmul_packed over all of E2B's decode
# matrices: Q2_K 1.20x, Q3_K 1.19-1.24x, IQ4_XS 1.21x (no faster from L3); E2B decode in turn with the
# other tree, IQ4_XS 1.18x, Q3_K_M 1.04x (Zen 4: 1.20x, 0.96-0.98x). Intel's Xeon (Emerald Rapids)
# gained 1.01-1.08x from memory, as the formats' paired_in_decode comments say. Prefill gains from
# pairs everywhere (1.13-1.17x on Zen 4). See BENCHMARKS.md.
GEMV_PAIRS = tuple(q for q in PAIRS if q in PAIRED_IN_DECODE) if PAIRS_IN_GEMV else ()
tiles_1, tiles_4 = (tiles_intrinsic(tokens, pairs=PAIRS) for tokens in (1, TOKENS))
