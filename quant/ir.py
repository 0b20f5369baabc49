"""The LLVM IR vocabulary the kernels are written in (llvmlite), shared by the row kernels
(quant.simd), the x8-layout kernels (quant.packed) and the formats' own decoders
(quant.formats): types, vector constants, loads from a byte pointer, and the few pieces of a
tile decoder that every format uses. Nothing here knows a format."""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir
from numba.core import cgutils

I8, I16, I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
F32, HALF = ir.FloatType(), ir.HalfType()
ROWS = 8  # rows of a tile in the x8 layout (quant.layout)


def vec(t, n):
    return ir.VectorType(t, n)


V8I32, V32I8, V8F32 = vec(I32, 8), vec(I8, 32), vec(F32, 8)


def const_vec(t, n, value):
    return ir.Constant(vec(t, n), [ir.Constant(t, value)] * n)


def declare(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def splat(builder, value, n):
    vt = vec(value.type, n)
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(vec(I32, n), [0] * n))


def shuffle(builder, a, b, idx):
    return builder.shuffle_vector(a, b, ir.Constant(vec(I32, len(idx)), list(idx)))


class Bytes:
    """Loads from an i8* base at byte offsets (a Python int or an IR value)."""

    def __init__(self, builder, base):
        self.b, self.base = builder, base

    def at(self, offset, ty):
        off = ir.Constant(cgutils.intp_t, offset) if isinstance(offset, int) else offset
        return self.b.bitcast(self.b.gep(self.base, [off]), ty.as_pointer())

    def load(self, offset, ty):
        return self.b.load(self.at(offset, ty), align=1)

    def f16(self, offset):
        """An IEEE half at `offset`, widened to float (vcvtph2ps with F16C)."""
        return self.b.fpext(self.b.bitcast(self.load(offset, I16), HALF), F32)

    def bytes32(self, offset):
        return self.load(offset, vec(I8, 32))


class Tile(Bytes):
    """A 256-value tile of the x8 layout as its decoder reads it: `load(offset, ty)` gives what
    ty holds for the group's eight rows (a TilePair's: for sixteen)."""

    @property
    def bases(self):
        return [self.base]


class TilePair(Tile):
    """Two groups' tiles at the same block column read as one: each load is the first tile's
    vector followed by the second's (<32 x i8> becomes <64 x i8>, <8 x i16> <16 x i16>), so a
    decoder written over Tile gives sixteen rows' values in 512-bit vectors. Both groups
    meet the same activations, so one broadcast word still serves every row."""

    def __init__(self, builder, first, second):
        super().__init__(builder, first)
        self.second = second

    @property
    def bases(self):
        return [self.base, self.second]

    def load(self, offset, ty):
        halves = [Bytes(self.b, base).load(offset, ty) for base in self.bases]
        return shuffle(self.b, halves[0], halves[1], range(2 * ty.count))


def const_like(v, value):
    """`value` in every lane of a vector of v's type."""
    return const_vec(v.type.element, v.type.count, value)


def widen(b, v, signed: bool = False):
    """<n x i8 or i16> -> <n x i32>, zero- or sign-extended."""
    return (b.sext if signed else b.zext)(v, vec(I32, v.type.count))


def rows_of(b, v, j: int):
    """The bytes of rows 0-7 at byte 8j of each group's 32 in v (<32 x i8> of one group,
    <64 x i8> of a TilePair's two): <8 x i8> or <16 x i8>, row by row."""
    return shuffle(b, v, v, [32 * p + 8 * j + r for p in range(v.type.count // 32) for r in range(ROWS)])


def nibbles(b, v, shift: int):
    """The low (shift 0) or high (shift 4) 4 bits of each byte."""
    return b.and_(b.lshr(v, const_vec(I8, v.type.count, shift)) if shift else v, const_vec(I8, v.type.count, 0x0F))


def bits(b, v, shift: int, mask: int):
    """(v >> shift) & mask, bytewise."""
    return b.and_(b.lshr(v, const_like(v, shift)) if shift else v, const_like(v, mask))


def lane_bits(b, masks, first: int, value: int = 16, lanes: int = 32):
    """<32 x i8> holding `value` in lane i where bit i of the 32-bit mask at byte `first` of
    `masks` is set: byte i // 8 goes to lane i, which keeps bit i % 8 (a byte shuffle, an and and
    a compare, on every target; an i1 vector would become a loop of inserts on ARM). Q5_0's and
    Q5_1's fifth bits, in the file's rows and in the x8 layout's masks. lanes 64: a TilePair's
    two such vectors as one, the second's mask `masks.type.count / 2` bytes on."""
    step = masks.type.count // 2
    spread = shuffle(b, masks, masks, [(i // 32) * step + first + (i % 32) // 8 for i in range(lanes)])
    bit = b.and_(spread, ir.Constant(vec(I8, lanes), [1 << (i % 8) for i in range(lanes)]))
    return b.select(b.icmp_unsigned("!=", bit, const_vec(I8, lanes, 0)), const_vec(I8, lanes, value),
                    const_vec(I8, lanes, 0))


def halves(b, tile: Bytes, at: int):
    """Eight rows' f16 at byte `at` of a tile, as <8 x float> (a TilePair's sixteen: <16 x float>)."""
    v = tile.load(at, vec(I16, ROWS))
    return b.fpext(b.bitcast(v, vec(HALF, v.type.count)), vec(F32, v.type.count))


class Once:
    """A value emitted where it is first asked for, then reused. The decoders give a tile's
    values as these, so that each is loaded and decoded beside its first dot rather than all
    at the top of the loop, where eight rows' 1-2 KB of them would not fit in registers."""

    def __init__(self, emit):
        self.emit, self.value = emit, None

    def __call__(self):
        if self.value is None:
            self.value = self.emit()
        return self.value


@dataclass
class Super:
    """What a 256-value format's decoder makes of one tile (eight rows' super-blocks), in the
    shape the dot loop (quant.packed.emit_super_tiles_dot) takes:

    d       the rows' scales, <8 x float>
    groups  (integer scale: Once of <8 x i32>, [(values: Once of <32 x i8>, activation offset)], sums): each
            group's dot is weighted by its scale; `sums` are the indices (within the
            super-block) of the sums of 16 activations that the group's values meet
    offset  what comes off every value (Q6_K's 32, Q3_K's 4), through those sums
    signed  whether the values are signed bytes (IQ4_XS's levels) rather than unsigned
    mins    (dmin <8 x float>, [(integer min: Once of <8 x i32>, sums)]) for formats with mins
            (the vectors twice as long for a TilePair; scales and mins are Once, like the values,
            so that each is read beside its use: sixteen rows' of them all at the top would
            not fit in registers)
    top     the largest of unsigned values (Q2_K's 3, Q3_K's 7, Q4_K's 15, Q6_K's 63): where a
            group's dot (less the offset) fits a signed word, the dot loop scales it with a word
            product; AVX2 without VNNI sums as many products as words as stay within one
    shifts  per group, the bits its values sit above bit 0 (Q2_K's fields left in place, masked
            but not shifted down): the dot loop shifts the group's dot down by as many, exactly,
            as the dot is a multiple of their power of two"""

    d: object
    groups: list
    offset: int = 0
    signed: bool = False
    mins: tuple | None = None
    top: int | None = None
    shifts: list | None = None


# Pieces the row walkers of several formats share (quant.simd walks the file's own rows)

def walker(values_per_block):
    """Marks a row walker (ctx, block, activations, scale index) with the values of its block."""
    def wrap(fn):
        fn.values_per_block = values_per_block
        return fn
    return wrap


def lane_totals(b, parts):
    """Eight <8 x i32> -> one <8 x i32> whose lane u is the sum of parts[u]'s lanes (vphaddd tree)."""
    v8 = vec(I32, 8)
    hadd = declare(b, "llvm.x86.avx2.phadd.d", v8, [v8, v8])
    pairs = [b.call(hadd, [parts[i], parts[i + 1]]) for i in range(0, 8, 2)]
    quads = [b.call(hadd, [pairs[0], pairs[1]]), b.call(hadd, [pairs[2], pairs[3]])]
    # quads[q] lanes: blocks 4q..4q+3 over their low 4 lanes | the same over their high 4 lanes
    low = shuffle(b, quads[0], quads[1], [0, 1, 2, 3, 8, 9, 10, 11])
    high = shuffle(b, quads[0], quads[1], [4, 5, 6, 7, 12, 13, 14, 15])
    return b.add(low, high)


def grouped_avx2(unpack, offset: float):
    """The AVX2 path over eight blocks of a 32-value format with one f16 scale at byte 0
    (Q4_0, Q5_0, Q8_0): their eight scales become one vector (vcvtph2ps), the eight integer
    dots are summed across lanes into one vector, and one FMA applies all scales; an offset
    (8 in Q4_0, 16 in Q5_0) comes off with one more. Per block this saves the scalar scale
    work that otherwise costs as much as the dot itself (what llama.cpp gets by repacking
    rows, here without a copy of the weights). The unpacked blocks serve every token.
    unpack(b, blk) -> <32 x i8>: unsigned values below 128 if offset, else signed."""

    def groups_fn(ctxs, groups):
        for i in range(0, len(groups[0]), 8):
            group8(ctxs, [group[i:i + 8] for group in groups])

    def group8(ctxs, groups):
        b = ctxs[0].b
        values, scales = [], ir.Constant(vec(I16, 8), ir.Undefined)
        for u, (blk, _, _) in enumerate(groups[0]):
            values.append(unpack(b, blk))
            scales = b.insert_element(scales, blk.load(0, I16), ir.Constant(I32, u))
        d = b.fpext(b.bitcast(scales, vec(HALF, 8)), vec(F32, 8))
        for ctx, group in zip(ctxs, groups):
            dot = ctx.f.dot_u if offset else ctx.f.dot_s
            parts = [dot(v, x.bytes32(0)) for v, (_, x, _) in zip(values, group)]
            k = group[0][2]
            xd = b.load(b.bitcast(b.gep(ctx._xd, [k]), vec(F32, 8).as_pointer()), align=4)
            ctx.fma_lanes(b.sitofp(lane_totals(b, parts), vec(F32, 8)), b.fmul(d, xd))
            if offset:
                xs = b.load(b.bitcast(b.gep(ctx._xs, [k]), vec(F32, 8).as_pointer()), align=4)
                ctx.fma_lanes(d, b.fmul(xs, const_vec(F32, 8, -offset)))

    return groups_fn
