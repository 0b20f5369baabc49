"""The kernels' inner loops compiled for a named CPU, as assembly: what the tests read to check
the instructions each flavor lowers to, and what the speed model feeds to llvm-mca.

The loops are the ones the kernels inline (quant.simd.emit_row_dot for the file's row layout,
quant.packed.emit_tiles_dot for the x8 layout), built in a module of their own for the target's
triple and CPU and run through the same -O3 pipeline Numba uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quant import packed, simd
from quant.formats import QType


@dataclass(frozen=True)
class Target:
    """A CPU to compile for: LLVM's triple, CPU name and features, and the kernel flavor it runs."""

    triple: str
    cpu: str
    features: str
    flavor: str


# The Raspberry Pi 5's BCM2712: four Cortex-A76 cores, ARMv8.2-A with the dot-product extension.
PI5 = Target("aarch64-unknown-linux-gnu", "cortex-a76", "+neon,+dotprod,+fp-armv8,+fullfp16,+rcpc,+lse,+crc", "generic")
ZEN2_AVX2 = Target("x86_64-unknown-linux-gnu", "znver2", "+avx2,+f16c,+fma", "avx2")
ZEN4_AVX512 = Target("x86_64-unknown-linux-gnu", "znver4", "+avx2,+f16c,+fma,+avx512f,+avx512bw,+avx512vl,+avx512vnni",
                     "avx512")


def _features(target: Target) -> frozenset[str]:
    return frozenset(f[1:] for f in target.features.split(",") if f.startswith("+"))


def row_dot_assembly(target: Target, qtype: QType, tokens: int = 1) -> str:
    """Assembly of a function that runs the row-dot loop of `qtype` (a format of
    quant.simd.FORMATS) over one weight row against `tokens` activation rows."""
    def emit(builder, w, zero, x, x_offs, xd, xs, xbs, n):
        return simd.emit_row_dot(builder, target.flavor, simd.FORMATS[QType(qtype)], w, zero, x, x_offs, xd, xs,
                                 xbs, n)

    from llvmlite import ir
    return _assembly(target, emit, [ir.FloatType()] * tokens, tokens)


def tiles_dot_assembly(target: Target, qtype: QType, tokens: int = 1, pair: bool = False) -> str:
    """Assembly of a function that runs the x8 layout's loop (quant.packed) for `qtype` over one
    group of eight rows (two with `pair`) against `tokens` activation rows."""
    def emit(builder, w, zero, x, x_offs, xd, xs, xbs, n):
        return packed.emit_tiles_dot(builder, target.flavor, _features(target), QType(qtype), w,
                                     zero, x, x_offs, xd, xs, xbs, n, pair)

    from llvmlite import ir
    return _assembly(target, emit, [ir.VectorType(ir.FloatType(), 16 if pair else 8)] * tokens, tokens)


def _assembly(target: Target, emit, results: list, tokens: int) -> str:
    """Compile emit(builder, w, w_off, x, x_offs, xd, xs, xbs, n) -> one result per token, in a
    function returning them as a struct, for the target."""
    import llvmlite.binding as llvm
    from llvmlite import ir

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    module = ir.Module(name="dot")
    module.triple = target.triple
    i8p, f32p, i64 = ir.IntType(8).as_pointer(), ir.FloatType().as_pointer(), ir.IntType(64)
    ret = ir.LiteralStructType(results)
    fn = ir.Function(module, ir.FunctionType(ret, [i8p, i8p, f32p, f32p, i64, i64, i64]), name="dot")
    builder = ir.IRBuilder(fn.append_basic_block())
    w, x, xd, xs, n, x_stride, xb_stride = fn.args
    zero = ir.Constant(i64, 0)
    x_offs = [builder.mul(x_stride, ir.Constant(i64, j)) for j in range(tokens)]
    xbs = [builder.mul(xb_stride, ir.Constant(i64, j)) for j in range(tokens)]
    dots = emit(builder, w, zero, x, x_offs, xd, xs, xbs, n)
    out = ir.Constant(ret, None)
    for j, d in enumerate(dots):
        out = builder.insert_value(out, d, j)
    builder.ret(out)
    parsed = llvm.parse_assembly(str(module))
    machine = llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=target.features, opt=3)
    passes = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(parsed, passes)
    return machine.emit_assembly(parsed)


_LABEL = re.compile(r"^(\.?L\w+|\w+):")
_BRANCH = re.compile(r"^\s*(b\.\w+|cbnz|cbz|tbnz|tbz|b|j\w+)\s+(.*?)(\s*[;#].*)?$")


def main_loop(asm: str) -> list[str]:
    """The instructions of the longest loop in `asm`: from a label to the last branch back to it.
    The row dot has two loops, the unrolled one and the one-block tail; this is the first."""
    lines = [line.split("//")[0].rstrip() for line in asm.splitlines()]
    best: list[str] = []
    labels: dict[str, int] = {}
    for i, line in enumerate(lines):
        m = _LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = i
            continue
        b = _BRANCH.match(line)
        if b and b.group(2).split(",")[-1].strip() in labels:
            start = labels[b.group(2).split(",")[-1].strip()]
            body = [s.strip() for s in lines[start + 1:i + 1] if _is_instruction(s)]
            if len(body) > len(best):
                best = body
    return best


def _is_instruction(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith((".", "#", "//", ";")) and not _LABEL.match(s)


def mnemonics(instructions: list[str]) -> list[str]:
    return [s.split()[0] for s in instructions]
