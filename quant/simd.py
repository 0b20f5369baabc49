"""Row dot products over the file's own block layouts, as Numba intrinsics in LLVM IR.

`row_dot` computes one weight row times one activation row, `row_dots` four
consecutive rows (a tuple, for decode), and `tokens_dot` one row against four
consecutive activation rows (for prefill), for every format of FORMATS:

    row_dot(fmt, w, w_off, row_bytes, xq, x_off, xd, xs, xb, n) -> float32

    fmt    the weight format, a QType's value: a switch in the generated code picks
           its walker (the `walk` of its entry in quant.formats)

    w      uint8 blocks (any C-contiguous array); the row starts at byte w_off,
           the next ones row_bytes after it
    xq     activations quantized to int8; the row starts at element x_off
    xd     (.., K/32) float32 scale of each 32-value activation block
    xs     (.., K/32) float32 xd * sum(xq) of each block (for formats with an offset)
    xb     index in xd/xs of the row's first activation block
    n      blocks of the weight format in the row

The weights stay where the memory map has them: blocks are read unaligned, in
place. Activations use 8-bit blocks of 32 with a float32 scale (llama.cpp's
block_q8_0 keeps an f16 scale; f32 costs nothing here and loses nothing).

Weights of the 4-bit formats are stored unsigned (0..15 or 0..63); the dot is
taken on the unsigned values and the offset comes back through `xs`:
sum((q - 8) x) = sum(q x) - 8 sum(x). That is what lets the AVX2 flavor use
vpmaddubsw (unsigned x signed bytes) without sign tricks. The generic flavor
takes q - 8 instead, so that LLVM sees signed x signed bytes (sdot on ARM).

The flavor (quant.cpu.FLAVOR) fixes how an 8-bit dot is emitted; the block
layouts are walked by the same code for both. Counterparts: ggml's
ggml_vec_dot_q4_0_q8_0, _q5_0_q8_0, _q8_0_q8_0, _q4_K_q8_K, _q6_K_q8_K.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from quant.cpu import FLAVOR
from quant.formats import FORMATS as TABLE
from quant.ir import F32, HALF, I8, I16, I32, Bytes, const_vec, declare, shuffle, splat, vec

class _AVX2:
    """<8 x float> accumulator; byte dots through vpmaddubsw + vpmaddwd."""

    acc_type = vec(F32, 8)
    signed_nibbles = False  # vpmaddubsw takes unsigned bytes as they are

    def __init__(self, builder):
        self.b = builder
        v32i8, v16i16, v8i32 = vec(I8, 32), vec(I16, 16), vec(I32, 8)
        self._maddubs = declare(builder, "llvm.x86.avx2.pmadd.ub.sw", v16i16, [v32i8, v32i8])
        self._maddwd = declare(builder, "llvm.x86.avx2.pmadd.wd", v8i32, [v16i16, v16i16])
        self._sign = declare(builder, "llvm.x86.avx2.psign.b", v32i8, [v32i8, v32i8])
        self._fma = declare(builder, "llvm.fma.v8f32", self.acc_type, [self.acc_type] * 3)

    def zero(self):
        return ir.Constant(self.acc_type, None)

    def _pairs(self, u, x):  # (16 x i16) sums of adjacent u*x; u in 0..128 cannot saturate
        return self.b.call(self._maddubs, [u, x])

    def dot_u(self, u, x):
        """u: <32 x i8> unsigned values below 128, x: <32 x i8> signed -> partial sums."""
        return self.b.call(self._maddwd, [self._pairs(u, x), const_vec(I16, 16, 1)])

    def dot_s2(self, w, x, scale_lo, scale_hi):
        """Signed w times x, the first 16 products weighted by scale_lo and the rest by scale_hi (i16)."""
        pairs = self._pairs(self.b.call(self._sign, [w, w]), self.b.call(self._sign, [x, w]))
        scales = shuffle(self.b, splat(self.b, scale_lo, 16), splat(self.b, scale_hi, 16),
                          list(range(8)) + list(range(24, 32)))
        return self.b.call(self._maddwd, [pairs, scales])

    def dot_s(self, w, x):
        one = ir.Constant(I16, 1)
        return self.dot_s2(w, x, one, one)

    def fma(self, partial, scale, acc):
        return self.b.call(self._fma, [self.b.sitofp(partial, self.acc_type), splat(self.b, scale, 8), acc])

    def total(self, acc):
        lanes = [self.b.extract_element(acc, ir.Constant(I32, i)) for i in range(8)]
        while len(lanes) > 1:
            lanes = [self.b.fadd(lanes[i], lanes[i + 1]) for i in range(0, len(lanes), 2)]
        return lanes[0]


class _Generic:
    """Scalar float accumulator; byte dots as widen-multiply-reduce, which LLVM
    lowers to the target's own instructions (sdot on ARMv8.2 with dotprod)."""

    acc_type = F32
    signed_nibbles = True

    def __init__(self, builder):
        self.b = builder
        self._fma = declare(builder, "llvm.fma.f32", F32, [F32] * 3)
        self._add16 = declare(builder, "llvm.vector.reduce.add.v16i32", I32, [vec(I32, 16)])
        self._add32 = declare(builder, "llvm.vector.reduce.add.v32i32", I32, [vec(I32, 32)])

    def zero(self):
        return ir.Constant(F32, 0.0)

    def _products(self, w, x):
        v = vec(I32, w.type.count)
        return self.b.mul(self.b.sext(w, v), self.b.sext(x, v))

    def dot_u(self, u, x):  # values below 128 read the same signed
        return self.b.call(self._add32, [self._products(u, x)])

    dot_s = dot_u

    def dot_s2(self, w, x, scale_lo, scale_hi):
        # The halves are split before widening: a reduction of sext(16 x i8) products is what
        # LLVM matches to sdot; halves shuffled out of 32 widened products become smull.
        def half(v, h):
            return shuffle(self.b, v, v, range(16 * h, 16 * h + 16))

        lo = self.b.call(self._add16, [self._products(half(w, 0), half(x, 0))])
        hi = self.b.call(self._add16, [self._products(half(w, 1), half(x, 1))])
        return self.b.add(self.b.mul(lo, self.b.sext(scale_lo, I32)), self.b.mul(hi, self.b.sext(scale_hi, I32)))

    def fma(self, partial, scale, acc):
        return self.b.call(self._fma, [self.b.sitofp(partial, F32), scale, acc])

    def total(self, acc):
        return acc


_FLAVOR_CLASS = {"avx2": _AVX2, "generic": _Generic}
# The row layout has no AVX-512 emitter of its own: there the x8 layout (quant.packed) is the fast path.
_ROW_FLAVOR = {"avx512": "avx2"}


N_ACC = 4  # independent accumulators: one FMA chain would wait out its latency on every block


@dataclass(frozen=True)
class RowFormat:
    """How a row of one weight format is walked: its block size in bytes, the IR emitter of
    one block, and how many blocks one loop iteration takes."""

    block_bytes: int
    walk: object
    unroll: int


def emit_row_dot(builder, flavor: str, fmt: RowFormat, w_ptr, w_off, xq_ptr, x_offs, xd_ptr, xs_ptr, xbs, n):
    """Emit the loop over one row's `n` blocks against one or more activation rows (x_offs,
    xbs: each token's first value and first scale index) and return one dot per token. Pure
    llvmlite: the intrinsics call it, and the tests compile it for other targets. Pointers:
    i8* weights and activations, float* scales; offsets and counts: intp. Several tokens share
    each weight block's loads and unpacking (LLVM merges the repeated ones)."""
    walk = fmt.walk
    flavor = _ROW_FLAVOR.get(flavor, flavor)

    def const(v):
        return ir.Constant(cgutils.intp_t, v)

    n_acc = N_ACC if len(x_offs) == 1 else 1  # several tokens already give independent FMA chains
    ctxs = [_Ctx(builder, _FLAVOR_CLASS[flavor](builder), xd_ptr, xs_ptr, n_acc) for _ in x_offs]
    grouped = getattr(walk, "group_" + flavor, None)

    def blocks(first, count):
        """Emit blocks first .. first + count - 1 (first: an IR index)."""
        groups = [[] for _ in ctxs]  # per token: (block bytes, activations, scale index)
        for u in range(count):
            i = builder.add(first, const(u))
            blk = Bytes(builder, builder.gep(w_ptr, [builder.add(w_off, builder.mul(i, const(fmt.block_bytes)))]))
            for group, x_off, xb in zip(groups, x_offs, xbs):
                x = Bytes(builder, builder.gep(xq_ptr, [builder.add(x_off, builder.mul(
                    i, const(walk.values_per_block)))]))
                group.append((blk, x, builder.add(xb, builder.mul(i, const(walk.values_per_block // 32)))))
        if grouped is not None and count == fmt.unroll:
            grouped(ctxs, groups)
        else:
            for ctx, group in zip(ctxs, groups):
                for blk, x, k in group:
                    walk(ctx, blk, x, k)

    n_main = builder.mul(builder.sdiv(n, const(fmt.unroll)), const(fmt.unroll))
    with cgutils.for_range_slice(builder, const(0), n_main, const(fmt.unroll)) as (i, _), _registers(ctxs):
        blocks(i, fmt.unroll)
    with cgutils.for_range_slice(builder, n_main, n, const(1)) as (i, _), _registers(ctxs):
        blocks(i, 1)
    return [ctx.result() for ctx in ctxs]


@contextlib.contextmanager
def _registers(ctxs):
    with contextlib.ExitStack() as stack:
        for ctx in ctxs:
            stack.enter_context(ctx.registers())
        yield


def switch(builder, fmt_v, cases: dict, n_results: int, emit):
    """Emit `emit(case)` (-> n_results float32 values) for each entry of `cases` ({QType: what
    emit takes}) under a switch on the run-time format id fmt_v (a QType's value); return the
    chosen case's values (0 for a format outside `cases`, which the callers never pass)."""
    slots = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in range(n_results)]
    done = builder.append_basic_block("done")
    on = builder.switch(fmt_v, done)
    for qtype, case in cases.items():
        block = builder.append_basic_block(qtype.name)
        on.add_case(ir.Constant(fmt_v.type, int(qtype)), block)
        builder.position_at_end(block)
        for slot, value in zip(slots, emit(case)):
            builder.store(value, slot)
        builder.branch(done)
    builder.position_at_end(done)
    return [builder.load(s) for s in slots]


def _row_intrinsic(n_rows: int):
    """A Numba intrinsic computing `n_rows` consecutive row dots in the host's flavor:
    row_dot(fmt, w, w_off, row_bytes, xq, x_off, xd, xs, xb, n) -> float32, or a tuple of
    n_rows, `fmt` being a QType's value.

    The rows are walked one after the other, in memory order: the hardware prefetcher
    follows that best (rows side by side halved DRAM throughput here), and doing four per
    call takes Numba's per-row loop and dispatch out of the way (15% on 1536-wide rows)."""

    @intrinsic
    def row_dot(typingctx, fmt, w, w_off, row_bytes, xq, x_off, xd, xs, xb, n):
        ret = types.float32 if n_rows == 1 else types.UniTuple(types.float32, n_rows)
        sig = ret(types.intp, w, types.intp, types.intp, xq, types.intp, xd, xs, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            fmt_v, w_v, w_off_v, stride_v, xq_v, x_off_v, xd_v, xs_v, xb_v, n_v = args

            def data(i, value):
                return context.make_array(signature.args[i])(context, builder, value).data

            w_ptr = builder.bitcast(data(1, w_v), I8.as_pointer())
            xq_ptr = builder.bitcast(data(4, xq_v), I8.as_pointer())

            def rows(fmt):
                dots = []
                for r in range(n_rows):
                    w_off = builder.add(w_off_v, builder.mul(stride_v, ir.Constant(cgutils.intp_t, r)))
                    dots += emit_row_dot(builder, FLAVOR, fmt, w_ptr, w_off, xq_ptr, [x_off_v], data(6, xd_v),
                                         data(7, xs_v), [xb_v], n_v)
                return dots

            dots = switch(builder, fmt_v, FORMATS, n_rows, rows)
            return dots[0] if n_rows == 1 else context.make_tuple(builder, signature.return_type, dots)

        return sig, codegen

    return row_dot


def _tokens_intrinsic(n_tokens: int):
    """A Numba intrinsic computing one row against `n_tokens` consecutive activation rows,
    for prefill: tokens_dot(fmt, w, w_off, xq, x_off, x_stride, xd, xs, xb, xb_stride, n) -> tuple.
    Each weight block is loaded and unpacked once for all of them."""

    @intrinsic
    def tokens_dot(typingctx, fmt, w, w_off, xq, x_off, x_stride, xd, xs, xb, xb_stride, n):
        sig = types.UniTuple(types.float32, n_tokens)(types.intp, w, types.intp, xq, types.intp, types.intp, xd, xs,
                                                      types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            fmt_v, w_v, w_off_v, xq_v, x_off_v, x_stride_v, xd_v, xs_v, xb_v, xb_stride_v, n_v = args

            def data(i, value):
                return context.make_array(signature.args[i])(context, builder, value).data

            def nth(base, stride, j):
                return builder.add(base, builder.mul(stride, ir.Constant(cgutils.intp_t, j)))

            def tokens(fmt):
                return emit_row_dot(builder, FLAVOR, fmt, builder.bitcast(data(1, w_v), I8.as_pointer()), w_off_v,
                                    builder.bitcast(data(3, xq_v), I8.as_pointer()),
                                    [nth(x_off_v, x_stride_v, j) for j in range(n_tokens)], data(6, xd_v),
                                    data(7, xs_v), [nth(xb_v, xb_stride_v, j) for j in range(n_tokens)], n_v)

            return context.make_tuple(builder, signature.return_type, switch(builder, fmt_v, FORMATS, n_tokens, tokens))

        return sig, codegen

    return tokens_dot


class _Ctx:
    """What a block walker needs: the builder, the flavor, the activation scales, and
    N_ACC accumulators (and offset corrections) that successive FMAs take in turn."""

    def __init__(self, builder, flavor, xd, xs, n_acc: int = N_ACC):
        self.b, self.f, self._xd, self._xs, self.n_acc = builder, flavor, xd, xs, n_acc
        self._acc_slots = [cgutils.alloca_once_value(builder, flavor.zero()) for _ in range(n_acc)]
        self._corr_slots = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in range(n_acc)]
        self._acc = self._corr = None
        self._next_acc = self._next_corr = 0

    @contextlib.contextmanager
    def registers(self):
        """Within a loop body: accumulators are loaded at its top and stored at its end."""
        self._acc = [self.b.load(s) for s in self._acc_slots]
        self._corr = [self.b.load(s) for s in self._corr_slots]
        yield
        for slot, v in zip(self._acc_slots + self._corr_slots, self._acc + self._corr):
            self.b.store(v, slot)

    def fma(self, partial, scale):
        """acc += partial * scale (partial: the flavor's integer dot)."""
        i = self._next_acc = (self._next_acc + 1) % self.n_acc
        self._acc[i] = self.f.fma(partial, scale, self._acc[i])

    def nibble_dot(self, u, x, half: int = 8):
        """(partial, shift) with sum(u x) = partial + shift * sum(x), for u in 0..2*half-1.
        The generic flavor takes u - half so that both factors stay signed bytes: LLVM keeps
        sext x sext, which it lowers to sdot, where 0..15 would read as a zext."""
        if self.f.signed_nibbles:
            return self.f.dot_s(self.b.sub(u, const_vec(I8, u.type.count, half)), x), half
        return self.f.dot_u(u, x), 0

    def fma_lanes(self, values, scales):
        """acc += values * scales, lane by lane (float vectors of the accumulator's width)."""
        i = self._next_acc = (self._next_acc + 1) % self.n_acc
        self._acc[i] = self.b.call(self.f._fma, [values, scales, self._acc[i]])

    def sub(self, value):
        """Subtract a float from the row's result (the offset of unsigned formats)."""
        i = self._next_corr = (self._next_corr + 1) % self.n_acc
        self._corr[i] = self.b.fadd(self._corr[i], value)

    def result(self):
        acc, corr = [self.b.load(s) for s in self._acc_slots], [self.b.load(s) for s in self._corr_slots]
        while len(acc) > 1:
            acc = [self.b.fadd(acc[i], acc[i + 1]) for i in range(0, len(acc), 2)]
            corr = [self.b.fadd(corr[i], corr[i + 1]) for i in range(0, len(corr), 2)]
        return self.b.fsub(self.f.total(acc[0]), corr[0])

    def xd(self, k, j=0):
        return self.b.load(self.b.gep(self._xd, [self.b.add(k, ir.Constant(cgutils.intp_t, j))]))

    def xs(self, k, j=0):
        return self.b.load(self.b.gep(self._xs, [self.b.add(k, ir.Constant(cgutils.intp_t, j))]))


# the file's own row layouts with a walker (in the format's module); the rest are read through
# the x8 layout only (quant.packed)
FORMATS = {q: RowFormat(f.block.nbytes, f.walk, f.unroll) for q, f in TABLE.items() if f.walk is not None}
ROWS = 4  # rows per call of row_dots
TOKENS = 4  # activation rows per call of tokens_dot
row_dot, row_dots, tokens_dot = _row_intrinsic(1), _row_intrinsic(ROWS), _tokens_intrinsic(TOKENS)


def _resize(builder, v, ty):
    if v.type.width > ty.width:
        return builder.trunc(v, ty)
    return builder.zext(v, ty) if v.type.width < ty.width else v


@intrinsic
def half_to_float(typingctx, bits):
    """The low 16 bits of an integer, read as an IEEE half -> float32 (vcvtph2ps)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(_resize(builder, args[0], I16), HALF), F32)
    return types.float32(bits), codegen


@intrinsic
def float_to_half(typingctx, x):
    """A float32 -> the bits of the nearest IEEE half, ties to even, as numpy's astype(float16)
    rounds (vcvtps2ph), in a uint16."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], HALF), I16)
    return types.uint16(types.float32), codegen


@intrinsic
def fused_multiply_add(typingctx, a, b, c):
    """a * b + c in float32, rounded once (llvm.fma.f32: vfmadd on x86, fmadd on ARM): a rounding
    that is the same on every target, where the compiler left to itself may fuse a multiply and
    an add on one and not on another."""
    def codegen(context, builder, signature, args):
        return builder.call(declare(builder, "llvm.fma.f32", F32, [F32] * 3), list(args))
    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def bf16_to_float(typingctx, bits):
    """The low 16 bits of an integer, read as a bfloat16 -> float32 (a 16-bit shift)."""
    def codegen(context, builder, signature, args):
        wide = builder.zext(_resize(builder, args[0], I16), I32)
        return builder.bitcast(builder.shl(wide, ir.Constant(I32, 16)), F32)
    return types.float32(bits), codegen


@intrinsic
def f32_from_bits(typingctx, bits):
    """The low 32 bits of an integer, read as a float32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(_resize(builder, args[0], I32), F32)
    return types.float32(bits), codegen
