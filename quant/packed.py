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

from quant.cpu import FEATURES, FLAVOR
from quant.formats import QType
from quant.layout import ROWS, SUPER_TILES, TILES
from quant.simd import F32, HALF, I8, I16, I32, _Bytes, _const_vec, _declare, _shuffle, _splat, _vec

V8I32, V32I8, V8F32 = _vec(I32, 8), _vec(I8, 32), _vec(F32, 8)
PREFETCH_FLAVORS = ("avx512", "avx2")  # GEMV prefetches; measured on x86 only (+14% E2B decode matmuls)
AHEAD = 4096  # bytes ahead of the tile being read: 2-8 KB measured alike


class _Vnni:
    """vpdpbusd: four unsigned x signed byte products summed into each i32 lane."""

    def __init__(self, builder):
        self.b = builder
        self._dp = _declare(builder, "llvm.x86.avx512.vpdpbusd.256", V8I32, [V8I32] * 3)

    def bias(self, bias):
        return 128 if bias is None else bias

    def dot(self, acc, values, bias, x):
        u = values if bias is not None else self.b.xor(values, _const_vec(I8, 32, 0x80))
        return self.b.call(self._dp, [acc, self.b.bitcast(u, V8I32), self.b.bitcast(x, V8I32)])


class _Madd:
    """AVX2 without VNNI: vpmaddubsw (pairs, into i16) then vpmaddwd by ones (into i32)."""

    def __init__(self, builder):
        self.b = builder
        v16i16 = _vec(I16, 16)
        self._maddubs = _declare(builder, "llvm.x86.avx2.pmadd.ub.sw", v16i16, [V32I8, V32I8])
        self._maddwd = _declare(builder, "llvm.x86.avx2.pmadd.wd", V8I32, [v16i16, v16i16])
        self._sign = _declare(builder, "llvm.x86.avx2.psign.b", V32I8, [V32I8, V32I8])

    def bias(self, bias):
        return 0 if bias is None else bias

    def dot(self, acc, values, bias, x):
        b = self.b
        if bias is None:  # signed weights: |w| x sign(w) (pairs of 128 x 127 stay within i16)
            values, x = b.call(self._sign, [values, values]), b.call(self._sign, [x, values])
        pairs = b.call(self._maddubs, [values, x])  # 31 x 127 or 128 x 127, twice: no saturation
        return b.add(acc, b.call(self._maddwd, [pairs, _const_vec(I16, 16, 1)]))


class _Signed:
    """Dots of signed bytes: the bias comes off the values before the dot, none after it."""

    def bias(self, bias):
        return 0

    def signed(self, values, bias):
        return values if bias is None else self.b.sub(values, _const_vec(I8, 32, bias))


class _Sdot(_Signed):
    """ARMv8.2 with the dot-product extension: sdot, four signed byte products summed into each
    i32 lane, on the two 128-bit halves (rows 0-3, rows 4-7)."""

    def __init__(self, builder):
        self.b = builder
        v4i32, v16i8 = _vec(I32, 4), _vec(I8, 16)
        self._sdot = _declare(builder, "llvm.aarch64.neon.sdot.v4i32.v16i8", v4i32, [v4i32, v16i8, v16i8])

    def dot(self, acc, values, bias, x):
        b = self.b
        s = self.signed(values, bias)
        halves = []
        for h in range(2):
            def half(v, n):
                return _shuffle(b, v, v, range(n * h, n * h + n))
            halves.append(b.call(self._sdot, [half(acc, 4), half(s, 16), half(x, 16)]))
        return _shuffle(b, halves[0], halves[1], range(8))


class _Widen(_Signed):
    """Any other target: sext x sext products, then lane r sums products 4r..4r+3. (LLVM's
    partial-reduction intrinsic would be shorter, but it leaves which products meet in
    which lane unspecified, and its x86 lowering does not group them four by four.)"""

    def __init__(self, builder):
        self.b = builder

    def dot(self, acc, values, bias, x):
        b = self.b
        s = self.signed(values, bias)
        v32i32 = _vec(I32, 32)
        products = b.mul(b.sext(s, v32i32), b.sext(x, v32i32))
        for j in range(4):
            acc = b.add(acc, _shuffle(b, products, products, [4 * r + j for r in range(ROWS)]))
        return acc


def _dot_class(flavor: str, features: frozenset[str]):
    """The byte dot of a flavor on a CPU with these features (quant.cpu.FEATURES)."""
    if flavor == "avx512" or (flavor == "avx2" and "avxvnni" in features):
        return _Vnni
    if flavor == "avx2":
        return _Madd
    return _Sdot if "dotprod" in features else _Widen


def _sub_vectors(b, fmt: TileFormat, tile: _Bytes):
    """A tile's values as (<32 x i8>, bias, activation chunk): value = byte - bias, or a
    signed byte when bias is None; chunk c is the block's activations 4c..4c+3."""
    out = []
    for s in range(fmt.sub_vectors):
        v = tile.load(fmt.header + 32 * s, V32I8)
        if fmt.sub_vectors == 8:  # Q8_0: signed bytes, values 4s..4s+3
            out.append((v, None, s))
            continue
        lo = b.and_(v, _const_vec(I8, 32, 0x0F))
        hi = b.and_(b.lshr(v, _const_vec(I8, 32, 4)), _const_vec(I8, 32, 0x0F))
        if fmt.qh is None:  # Q4_0
            out += [(lo, 8, s), (hi, 8, s + 4)]
            continue
        masks = tile.load(2 * ROWS + 8 * s, _vec(I8, 8))  # Q5_0: lane i's fifth bit is bit i of a mask
        out += [(b.or_(lo, _lane_bits(b, masks, 0)), 16, s), (b.or_(hi, _lane_bits(b, masks, 4)), 16, s + 4)]
    return out


def _lane_bits(b, masks, first: int):
    """<32 x i8> holding 16 in lane i where bit i of the 32-bit mask at byte `first` of `masks`
    is set: byte i // 8 goes to lane i, which keeps bit i % 8 (a byte shuffle, an and and a
    compare, on every target; an i1 vector would become a loop of inserts on ARM)."""
    spread = _shuffle(b, masks, masks, [first + i // 8 for i in range(32)])
    bit = b.and_(spread, ir.Constant(V32I8, [1 << (i % 8) for i in range(32)]))
    return b.select(b.icmp_unsigned("!=", bit, _const_vec(I8, 32, 0)), _const_vec(I8, 32, 16), _const_vec(I8, 32, 0))


def emit_tiles_dot(builder, flavor: str, features: frozenset[str], qtype: QType, w_ptr, w_off, xq_ptr,
                   x_offs, xd_ptr, xs_ptr, xbs, n):
    """Emit the loop over a group's `n` tiles against the tokens (x_offs, xbs: each token's first
    activation and first scale index) and return one <8 x float> per token. Pure llvmlite: the
    intrinsics call it, and the tests compile it for other targets."""
    if qtype in SUPER_TILES:
        return emit_super_tiles_dot(builder, flavor, features, qtype, w_ptr, w_off, xq_ptr, x_offs, xd_ptr, xs_ptr,
                                    xbs, n)
    fmt = TILES[qtype]
    b = builder
    dots = _dot_class(flavor, features)(b)

    def const(v):
        return ir.Constant(cgutils.intp_t, v)

    unroll = blocks_per_iteration(qtype, len(x_offs))
    prefetch = len(x_offs) == 1 and flavor in PREFETCH_FLAVORS
    acc = [[cgutils.alloca_once_value(b, ir.Constant(V8F32, None)) for _ in range(unroll)] for _ in x_offs]
    zero = ir.Constant(V8I32, None)

    def block(i, slot):
        tile = _Bytes(b, b.gep(w_ptr, [b.add(w_off, b.mul(i, const(fmt.tile_bytes)))]))
        if prefetch:
            _prefetch(b, tile.base, AHEAD, fmt.tile_bytes)
        dw = b.fpext(b.bitcast(tile.load(0, _vec(I16, ROWS)), _vec(HALF, ROWS)), V8F32)
        subs = _sub_vectors(b, fmt, tile)
        correction = dots.bias(subs[0][1])  # every sub-vector of a format has the same bias
        for t, (x_off, xb) in enumerate(zip(x_offs, xbs)):
            x = _Bytes(b, b.gep(xq_ptr, [b.add(x_off, b.mul(i, const(32)))]))
            chains = [zero, zero]  # two dependency chains of integer dots
            for j, (values, bias, chunk) in enumerate(subs):
                word = _splat(b, x.load(4 * chunk, I32), 8)
                chains[j % 2] = dots.dot(chains[j % 2], values, bias, b.bitcast(word, V32I8))
            total = b.sitofp(b.add(*chains), V8F32)
            k = b.add(xb, i)
            xd = _splat(b, b.load(b.gep(xd_ptr, [k])), 8)
            if correction:  # dw * (xd * dot - bias * xd * sum(xq))
                xs = b.fmul(b.load(b.gep(xs_ptr, [k])), ir.Constant(F32, -float(correction)))
                scaled = b.call(_fma(b), [total, xd, _splat(b, xs, 8)])
            else:
                scaled = b.fmul(total, xd)
            b.store(b.call(_fma(b), [dw, scaled, b.load(acc[t][slot])]), acc[t][slot])

    n_main = b.mul(b.sdiv(n, const(unroll)), const(unroll))
    with cgutils.for_range_slice(b, const(0), n_main, const(unroll)) as (i, _):
        for u in range(unroll):
            block(b.add(i, const(u)), u)
    with cgutils.for_range_slice(b, n_main, n, const(1)) as (i, _):
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
                         x_offs, xd_ptr, xs_ptr, xbs, n):
    """emit_tiles_dot for the 256-value formats (quant.layout.SUPER_TILES) over `n` super-blocks.
    The activations are Q8_K's: xd holds one scale per 32 values (the super-block's, repeated)
    and xs the integer sum of each 16 values (as float), both indexed from xb = the token's
    first 32-value block.

    Values go into the byte dots unsigned (Q4_K 0..15, Q6_K 0..63). Per row and sub-block,
    the eight lanes' integer dots are scaled by the rows' integer scales and summed in i32
    over the super-block (at most 63 x 127 x 16 x 127 x 16 < 2^31); Q6_K's offset of 32
    comes off each 16 values through their activation sum, Q4_K's mins through the sums of
    32, as llama.cpp's bsums do. One float step per super-block and token then applies
    the rows' d (and dmin) and the token's scale."""
    b = builder
    dots = _dot_class(flavor, features)(b)
    fmt = SUPER_TILES[qtype]
    v8i8 = _vec(I8, 8)

    def const(v):
        return ir.Constant(cgutils.intp_t, v)

    def bytes8(tile, at):  # eight rows' byte at a transposed offset, widened
        return tile.load(at, v8i8)

    def nibbles(v, high):
        return b.and_(b.lshr(v, _const_vec(I8, 32, 4)) if high else v, _const_vec(I8, 32, 0x0F))

    prefetch = len(x_offs) == 1 and flavor in PREFETCH_FLAVORS
    acc = [cgutils.alloca_once_value(b, ir.Constant(V8F32, None)) for _ in x_offs]
    zero = ir.Constant(V8I32, None)
    with cgutils.for_range_slice(b, const(0), n, const(1)) as (i, _):
        tile = _Bytes(b, b.gep(w_ptr, [b.add(w_off, b.mul(i, const(fmt.tile_bytes)))]))
        if prefetch:
            _prefetch(b, tile.base, AHEAD, fmt.tile_bytes)
        dw = b.fpext(b.bitcast(tile.load(0, _vec(I16, ROWS)), _vec(HALF, ROWS)), V8F32)
        groups = []  # (integer scale <8 x i32>, [(values, activation offset in the super-block)])
        if qtype == QType.Q4_K:
            dmin = b.fpext(b.bitcast(tile.load(16, _vec(I16, ROWS)), _vec(HALF, ROWS)), V8F32)
            sb = [b.zext(bytes8(tile, 32 + 8 * k), V8I32) for k in range(12)]  # get_scale_min_k4, 8 rows at once
            c63, c15, c4, c6 = (_const_vec(I32, 8, v) for v in (63, 15, 4, 6))
            scales = [b.and_(sb[j], c63) for j in range(4)]
            scales += [b.or_(b.and_(sb[j + 4], c15), b.shl(b.lshr(sb[j - 4], c6), c4)) for j in range(4, 8)]
            mins = [b.and_(sb[j + 4], c63) for j in range(4)]
            mins += [b.or_(b.lshr(sb[j + 4], c4), b.shl(b.lshr(sb[j], c6), c4)) for j in range(4, 8)]
            subs = [tile.load(fmt.header + 32 * (8 * p + L), V32I8) for p in range(4) for L in range(8)]
            for j in range(8):
                groups.append((scales[j], [(nibbles(subs[8 * (j // 2) + L], j % 2), 32 * j + 4 * L) for L in range(8)]))
        else:  # Q6_K
            scales = [b.sext(bytes8(tile, 16 + 8 * k), V8I32) for k in range(16)]
            by_value = {}
            for h in range(2):
                for L in range(8):
                    ql = [tile.load(fmt.header + 32 * (16 * h + 8 * a + L), V32I8) for a in range(2)]
                    qh = tile.load(fmt.header + 32 * 32 + 32 * (8 * h + L), V32I8)
                    for s in range(4):
                        high = b.and_(b.lshr(qh, _const_vec(I8, 32, 2 * s)), _const_vec(I8, 32, 3))
                        value = b.or_(nibbles(ql[s % 2], s >= 2), b.shl(high, _const_vec(I8, 32, 4)))
                        by_value[128 * h + 32 * s + 4 * L] = value
            for k in range(16):
                groups.append((scales[k], [(by_value[16 * k + 4 * c], 16 * k + 4 * c) for c in range(4)]))
        for t, (x_off, xb) in enumerate(zip(x_offs, xbs)):
            first = b.add(xb, b.mul(i, const(8)))  # the super-block's first 32-value block
            x = _Bytes(b, b.gep(xq_ptr, [b.add(x_off, b.mul(i, const(256)))]))
            total = zero
            for g, (scale, parts) in enumerate(groups):
                chains = [zero, zero]
                for c, (values, at) in enumerate(parts):
                    word = _splat(b, x.load(at, I32), 8)
                    chains[c % 2] = dots.dot(chains[c % 2], values, 0, b.bitcast(word, V32I8))
                dot = b.add(*chains)
                if qtype == QType.Q6_K:  # (q - 32) x = q x - 32 x, per 16 values
                    xsum = b.fptosi(b.load(b.gep(xs_ptr, [b.add(b.mul(first, const(2)), const(g))])), I32)
                    dot = b.sub(dot, _splat(b, b.mul(xsum, ir.Constant(I32, 32)), 8))
                total = b.add(total, b.mul(dot, scale))
            xd = _splat(b, b.load(b.gep(xd_ptr, [first])), 8)
            scaled = b.fmul(b.fmul(dw, xd), b.sitofp(total, V8F32))
            if qtype == QType.Q4_K:  # - dmin * min * (sum of the 32 activations)
                offset = ir.Constant(V8F32, None)
                for j in range(8):
                    at = b.add(b.mul(first, const(2)), const(2 * j))
                    pair = b.fadd(b.load(b.gep(xs_ptr, [at])), b.load(b.gep(xs_ptr, [b.add(at, const(1))])))
                    offset = b.call(_fma(b), [b.sitofp(mins[j], V8F32), _splat(b, pair, 8), offset])
                scaled = b.call(_fma(b), [b.fneg(b.fmul(dmin, xd)), offset, scaled])
            b.store(b.fadd(b.load(acc[t]), scaled), acc[t])
    return [b.load(a) for a in acc]


def _prefetch(b, ptr, ahead: int, n_bytes: int):
    """Ask for the cache lines of n_bytes at ptr + ahead to come into L2 (prefetcht1 on x86).
    Tiles lie back to back, so a line every 64 bytes of each tile covers the stream."""
    fn = _declare(b, "llvm.prefetch.p0", ir.VoidType(), [I8.as_pointer(), I32, I32, I32])
    for off in range(0, n_bytes, 64):
        where = b.gep(ptr, [ir.Constant(cgutils.intp_t, ahead + off)])
        b.call(fn, [where, ir.Constant(I32, 0), ir.Constant(I32, 2), ir.Constant(I32, 1)])  # read, L2, data


def _fma(b):
    return _declare(b, "llvm.fma.v8f32", V8F32, [V8F32] * 3)


def tiles_intrinsic(qtype: QType, n_tokens: int, flavor: str = FLAVOR, features: frozenset[str] = FEATURES):
    """A Numba intrinsic: one group of eight rows against `n_tokens` tokens, stored into out.
    The kernels take the host's flavor; the tests build others that the host can run too."""

    @intrinsic
    def tiles_dot(typingctx, w, w_off, xq, x_off, x_stride, xd, xs, xb, xb_stride, n, out, out_off, out_stride):
        sig = types.none(w, types.intp, xq, types.intp, types.intp, xd, xs, types.intp, types.intp, types.intp,
                         out, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            (w_v, w_off_v, xq_v, x_off_v, x_stride_v, xd_v, xs_v, xb_v, xb_stride_v, n_v,
             out_v, out_off_v, out_stride_v) = args

            def data(i, value):
                return context.make_array(signature.args[i])(context, builder, value).data

            def nth(base, stride, j):
                return builder.add(base, builder.mul(stride, ir.Constant(cgutils.intp_t, j)))

            dots = emit_tiles_dot(builder, flavor, features, qtype, builder.bitcast(data(0, w_v), I8.as_pointer()),
                                  w_off_v, builder.bitcast(data(2, xq_v), I8.as_pointer()),
                                  [nth(x_off_v, x_stride_v, j) for j in range(n_tokens)], data(5, xd_v),
                                  data(6, xs_v), [nth(xb_v, xb_stride_v, j) for j in range(n_tokens)], n_v)
            out_ptr = data(10, out_v)
            for j, dot in enumerate(dots):
                where = builder.gep(out_ptr, [nth(out_off_v, out_stride_v, j)])
                builder.store(dot, builder.bitcast(where, V8F32.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tiles_dot


TOKENS = 4  # tokens per call in prefill
q4_0_tiles_1, q4_0_tiles_4 = tiles_intrinsic(QType.Q4_0, 1), tiles_intrinsic(QType.Q4_0, TOKENS)
q5_0_tiles_1, q5_0_tiles_4 = tiles_intrinsic(QType.Q5_0, 1), tiles_intrinsic(QType.Q5_0, TOKENS)
q8_0_tiles_1, q8_0_tiles_4 = tiles_intrinsic(QType.Q8_0, 1), tiles_intrinsic(QType.Q8_0, TOKENS)
q4_k_tiles_1, q4_k_tiles_4 = tiles_intrinsic(QType.Q4_K, 1), tiles_intrinsic(QType.Q4_K, TOKENS)
q6_k_tiles_1, q6_k_tiles_4 = tiles_intrinsic(QType.Q6_K, 1), tiles_intrinsic(QType.Q6_K, TOKENS)
