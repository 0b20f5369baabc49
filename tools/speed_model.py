"""A speed model of the Raspberry Pi 5, checked against this machine: a model, not a measurement.

The matrix products are the work that scales with the model. For each one a decode step or a
prefill makes (recorded from a real run, `trace`), the model takes the longer of

- compute: its weight blocks times the cycles one block costs in the compiled inner loop, as
  llvm-mca counts them for the CPU's scheduling model (quant.asm), over all cores at the clock;
- memory: the bytes of weights it reads, over the sustained read bandwidth (prefill reads each
  weight once per tile of 64 tokens).

The rest of the step (attention, norms, Python) is measured on this machine in the same run and
scaled by how much slower a Pi core is assumed to be. The same method applied to this machine,
with its own clock, cores and measured bandwidth, is set beside what the bench measures: that
is how far the model can be trusted.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quant import QType, asm, layout, packed, simd
from quant.kernels import TOKEN_TILE  # prefill reads each weight row once per tile of tokens

FORMAT_OF = {QType.Q4_0: "q4_0", QType.Q5_0: "q5_0", QType.Q8_0: "q8_0", QType.Q4_K: "q4_k", QType.Q6_K: "q6_k"}
QTYPE_OF = {f: q for q, f in FORMAT_OF.items()}


@dataclass(frozen=True)
class Machine:
    name: str
    target: asm.Target  # what the kernels are compiled for
    mca_cpu: str  # llvm-mca's scheduling model of its core
    ghz: float
    cores: int  # threads the kernels run on
    bandwidth: float  # GB/s, sustained streaming read
    slower: float  # per-core slowdown of the work outside the matrix products, against this machine


# The Raspberry Pi 5: BCM2712, four Cortex-A76 at 2.4 GHz, LPDDR4X-4267 on a 32-bit bus (17.1 GB/s
# peak). LLVM's own cortex-a76 entry reuses the Cortex-A57 model (3-wide); Neoverse N1 is the same
# core (Arm's "Ares") with a model of its own, so it is the one used, and the A57 figure is shown.
PI5_GHZ, PI5_CORES, PI5_PEAK_GBS = 2.4, 4, 17.07
PI5_BANDWIDTH = (0.50 * PI5_PEAK_GBS, 0.70 * PI5_PEAK_GBS)  # assumed sustained read: 50-70% of peak
PI5_SLOWER = (2.0, 3.0)  # assumed: an A76 core at 2.4 GHz against a Zen 4 core near 3.7 GHz
ANCHORS = [  # published figures for E2B on a Pi 5 (third-party), prefill / decode tok/s
    ("LiteRT-LM, E2B (its own int4 format), 1546 MB", "133", "8"),
    ("llama.cpp, E2B Q4_K_M", "28-32", "6-6.7"),
]


def llvm_mca() -> str | None:
    """The newest llvm-mca on PATH (Debian's llvm-NN packages install llvm-mca-NN)."""
    found = sorted((int(m.group(1)), name) for name in _on_path("llvm-mca-") if (m := re.search(r"-(\d+)$", name)))
    return found[-1][1] if found else shutil.which("llvm-mca")


# a core newer than the llvm-mca at hand knows, and the nearest older one it may know
OLDER_CORE = {"emeraldrapids": "sapphirerapids", "graniterapids": "sapphirerapids", "diamondrapids": "graniterapids",
              "znver5": "znver4", "znver4": "znver3", "arrowlake": "alderlake", "meteorlake": "alderlake",
              "lunarlake": "alderlake", "pantherlake": "alderlake", "raptorlake": "alderlake"}


def mca_core(mca: str, arch: str, cpu: str) -> str:
    """llvm-mca's scheduling model for `cpu`: its own, or that of the nearest older core the
    llvm-mca at hand knows (Debian 12's llvm-mca 14 has no Emerald Rapids, nor Zen 4)."""
    listed = subprocess.run([mca, f"-mtriple={arch}", "-mcpu=help"], input="", capture_output=True, text=True)
    known = set(re.findall(r"^\s+(\S+)\s+- ", listed.stdout + listed.stderr, re.MULTILINE))
    while cpu not in known and cpu in OLDER_CORE:
        cpu = OLDER_CORE[cpu]
    return cpu


def _on_path(prefix: str) -> list[str]:
    names = set()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        try:
            names.update(n for n in os.listdir(d) if n.startswith(prefix))
        except OSError:
            continue
    return sorted(names)


def block_cycles(mca: str, target: asm.Target, mca_cpu: str, fmt: str, tokens: int = 1) -> float:
    """Cycles one weight block of `fmt` costs in the main loop, per token, for `tokens` tokens
    per pass (1: decode's GEMV; simd.TOKENS: prefill's), as llvm-mca predicts them. Formats
    that have the x8 layout (what edgert.load reads by default) are timed in its loop, whose
    tiles hold a block of eight rows each."""
    qtype = QTYPE_OF[fmt]
    if layout.packable(qtype, (layout.ROWS, 1)):
        body = asm.main_loop(asm.tiles_dot_assembly(target, qtype, tokens))
        blocks = layout.ROWS * packed.blocks_per_iteration(qtype, tokens)
    else:
        body = asm.main_loop(asm.row_dot_assembly(target, qtype, tokens))
        blocks = simd.FORMATS[qtype].unroll
    arch = _arch(target)
    iterations = 200
    done = subprocess.run([mca, f"-mtriple={arch}", f"-mcpu={mca_cpu}", f"-iterations={iterations}"],
                          input="\n".join(body) + "\n", capture_output=True, text=True)
    found = re.search(r"Total Cycles:\s+(\d+)", done.stdout)
    if done.returncode or not found:
        raise RuntimeError(f"llvm-mca failed on {fmt} for {mca_cpu}: {done.stderr.strip()[:500]}")
    return int(found.group(1)) / iterations / blocks / tokens


def _arch(target: asm.Target) -> str:
    return "aarch64" if target.triple.startswith("aarch64") else "x86_64"


def cycles_table(mca: str, target: asm.Target, mca_cpu: str) -> dict[str, tuple[float, float]]:
    """Per format: (cycles per block in decode, cycles per block and token in prefill)."""
    return {fmt: (block_cycles(mca, target, mca_cpu, fmt, 1), block_cycles(mca, target, mca_cpu, fmt, simd.TOKENS))
            for fmt in FORMAT_OF.values()}


@dataclass(frozen=True)
class Call:
    """One matrix product of a traced run: n tokens against a weight of `rows` x `cols`."""

    n: int
    qtype: QType
    rows: int
    cols: int
    nbytes: int
    seconds: float  # measured


OPS = ("attention", "rms_norm", "norm_rope", "add_norm", "gelu_mul", "softcap", "embed")  # gemma4's other steps (not nested)


def trace(model, run) -> tuple[list[Call], float, dict[str, float]]:
    """Run `run()` with every matrix product of the forward pass timed and recorded, and the
    forward pass's other steps (OPS, and waiting for PLE rows) timed by name; return the
    products, the run's wall time and those seconds. A call of matmuls (products sharing an
    input, in one kernel call) is shared among its products by their bytes. A layer's blocks
    run as their twins, one op at a time (gemma4.qkv_ops, after_attention_ops), so that each
    op can be timed: the run takes longer than an untimed one by that too."""
    from edgert import gemma4

    calls: list[Call] = []
    ops = {name: 0.0 for name in OPS + ("ple_wait",)}
    real = {name: getattr(gemma4, name) for name in ("matmul", "matmuls", "qkv", "after_attention") + OPS}
    ple = model.weights.ple

    def products(x, ws):
        t = time.perf_counter()
        out = real["matmuls"](x, ws)
        seconds, total = time.perf_counter() - t, sum(w.nbytes for w in ws)
        calls.extend(Call(len(x), w.qtype, w.shape[0], w.shape[1], w.nbytes, seconds * w.nbytes / total) for w in ws)
        return out

    def timed(name, fn):
        def step(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            ops[name] += time.perf_counter() - t
            return out
        return step

    gemma4.matmul, gemma4.matmuls = (lambda x, w: products(x, [w])[0]), products
    gemma4.qkv, gemma4.after_attention = gemma4.qkv_ops, gemma4.after_attention_ops
    for name in OPS:
        setattr(gemma4, name, timed(name, real[name]))
    if ple is not None:
        ple.wait = timed("ple_wait", ple.wait)
    try:
        t = time.perf_counter()
        run()
        wall = time.perf_counter() - t
    finally:
        for name, fn in real.items():
            setattr(gemma4, name, fn)
        if ple is not None:
            del ple.wait  # the class's method again
    return calls, wall, ops


def product_seconds(call: Call, machine: Machine, cycles: dict[str, tuple[float, float]], bandwidth: float) -> float:
    """The model's time for one product: the longer of its compute and its weight traffic.
    Float weights (no integer kernel to count) are taken at their traffic alone."""
    passes = 1 if call.n == 1 else math.ceil(call.n / TOKEN_TILE)
    memory = call.nbytes * passes / (bandwidth * 1e9)
    fmt = FORMAT_OF.get(call.qtype)
    if fmt is None:
        return memory
    per_block = cycles[fmt][0] if call.n == 1 else cycles[fmt][1] * call.n
    blocks = call.rows * call.cols // simd.FORMATS[QTYPE_OF[fmt]].walk.values_per_block
    return max(memory, blocks * per_block / (machine.ghz * 1e9 * machine.cores))


@dataclass(frozen=True)
class Phase:
    """A traced phase (a prefill, or a run of decode steps) and what it measured."""

    name: str
    tokens: int  # tokens the phase produced (decode) or read (prefill)
    calls: list[Call]
    wall: float
    ops: dict[str, float] = field(default_factory=dict)  # seconds in the forward pass's other steps

    @property
    def kernel_s(self) -> float:
        return sum(c.seconds for c in self.calls)

    @property
    def other_s(self) -> float:
        return self.wall - self.kernel_s


def predict(phase: Phase, machine: Machine, cycles, bandwidth: float, slower: float) -> tuple[float, float]:
    """(tok/s, seconds in matrix products) that the model predicts for `phase` on `machine`."""
    kernels = sum(product_seconds(c, machine, cycles, bandwidth) for c in phase.calls)
    return phase.tokens / (kernels + phase.other_s * slower), kernels


def measure_ghz() -> float:
    """This core's clock, from a dependent chain of one add and one xor per iteration (2 cycles
    on any out-of-order x86 or Arm core): the turbo clock the kernels really run at."""
    from quant.cpu import kernel

    @kernel
    def chain(n):
        x = np.uint64(1)
        for i in range(n):
            x = (x + np.uint64(i)) ^ (x >> np.uint64(3))
        return x

    chain(10)
    n = 200_000_000
    best = min(_timed(chain, n) for _ in range(3))
    return 2 * n / best / 1e9


def _timed(f, *a) -> float:
    t = time.perf_counter()
    f(*a)
    return time.perf_counter() - t


def host(threads: int, bandwidth: float) -> Machine:
    import llvmlite.binding as llvm

    from quant import cpu

    target = asm.Target(llvm.get_process_triple(), llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten(),
                        cpu.FLAVOR)
    return Machine("this machine", target, llvm.get_host_cpu_name(), measure_ghz(), threads, bandwidth, 1.0)


def pi5() -> Machine:
    return Machine("Raspberry Pi 5", asm.PI5, "neoverse-n1", PI5_GHZ, PI5_CORES, PI5_BANDWIDTH[0], PI5_SLOWER[0])


def phases_to_json(phases: list[Phase]) -> dict:
    """Phases as the bench worker sends them to its parent; phases_of reads them back."""
    return {p.name: dict(tokens=p.tokens, wall=p.wall, ops=p.ops,
                         calls=[[c.n, int(c.qtype), c.rows, c.cols, c.nbytes, c.seconds] for c in p.calls])
            for p in phases}


def phases_of(traced: dict) -> dict[str, Phase]:
    """The bench worker's trace (JSON) as phases."""
    return {name: Phase(name, p["tokens"], [Call(c[0], QType(c[1]), *c[2:]) for c in p["calls"]], p["wall"],
                        p.get("ops", {}))
            for name, p in traced.items()}


def where_time_goes(phase: Phase) -> list[tuple[str, float]]:
    """(what, milliseconds per token) of a traced phase, largest first: the matrix products by
    format, the other steps, and what is left: Python between the kernels."""
    per = 1000 / phase.tokens
    parts: dict[str, float] = {}
    for c in phase.calls:
        parts[f"matrix products, {c.qtype.name}"] = parts.get(f"matrix products, {c.qtype.name}", 0.0) + c.seconds
    names = {"rms_norm": "RMS norms", "norm_rope": "q/k norms with RoPE", "add_norm": "norms with the residual add",
             "gelu_mul": "GELU x up", "softcap": "final softcap",
             "embed": "token embedding", "ple_wait": "waiting for PLE rows", "attention": "attention"}
    for name, seconds in phase.ops.items():
        if seconds:
            parts[names.get(name, name)] = seconds
    rows = sorted(((k, v * per) for k, v in parts.items()), key=lambda kv: -kv[1])
    return rows + [("the rest: Python and numpy between the kernels", (phase.wall - sum(parts.values())) * per)]


def section(results: list[dict], meta: dict, log) -> list[str]:
    """BENCHMARKS.md's speed-model section for the models the bench ran (meta: the bench's run)."""
    threads, bandwidth = meta["threads"], meta["bandwidth"]
    head = ["", "## Raspberry Pi 5: a speed model, not a measurement", "",
            f"From the bench run of {meta['date']} at {meta['commit']} on {meta['cpu']}, {threads} threads.", ""]
    mca = llvm_mca()
    if mca is None:
        return head + ["llvm-mca was not found, so there is no model: `apt-get install llvm-19` adds it.", ""]
    log("speed model: llvm-mca on the compiled inner loops ...")
    here, pi = host(threads, bandwidth), pi5()
    here = dataclasses.replace(here, mca_cpu=mca_core(mca, _arch(here.target), here.mca_cpu))
    cyc_here = cycles_table(mca, here.target, here.mca_cpu)
    cyc_pi = cycles_table(mca, pi.target, pi.mca_cpu)
    cyc_a57 = cycles_table(mca, pi.target, pi.target.cpu)
    lines = head + [
        "How it is made (tools/speed_model.py): every matrix product that a prefill of the prompt and a decode "
        "step make is recorded from the run above. Each one costs the longer of its compute (weight blocks "
        "times the cycles llvm-mca gives for the compiled inner loop, over all cores at the clock) and its "
        "weight traffic (bytes over the sustained read bandwidth; prefill reads each weight once per 64 "
        "tokens). The rest of the step (attention, norms, Python) is what this machine measured, times an "
        "assumed per-core slowdown.",
        "",
        f"Assumptions for the Pi 5: {PI5_CORES} Cortex-A76 cores at {PI5_GHZ} GHz, all used; LPDDR4X-4267 on a "
        f"32-bit bus, {PI5_PEAK_GBS:.1f} GB/s peak, of which {PI5_BANDWIDTH[0]:.1f}-{PI5_BANDWIDTH[1]:.1f} GB/s "
        f"(50-70%) is sustained by a streaming read; the work outside the matrix products "
        f"{PI5_SLOWER[0]:.0f}-{PI5_SLOWER[1]:.0f}x slower per core than here. Cycles come from llvm-mca's "
        f"Neoverse N1 model (`{mca}`): it is the A76's core, while LLVM's `cortex-a76` entry reuses the 3-wide "
        "Cortex-A57 model (shown for comparison). Ranges run from the pessimistic end of every assumption to "
        "the optimistic one.",
        "",
        f"| cycles per weight block (llvm-mca) | Pi 5 decode | Pi 5 prefill, per token | (A57 model) decode "
        f"| here ({here.mca_cpu}) decode | here prefill, per token |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for fmt in FORMAT_OF.values():
        lines.append(f"| {fmt.upper()} ({simd.FORMATS[QTYPE_OF[fmt]].walk.values_per_block} weights) | {cyc_pi[fmt][0]:.1f} | "
                     f"{cyc_pi[fmt][1]:.1f} | {cyc_a57[fmt][0]:.1f} | {cyc_here[fmt][0]:.1f} | {cyc_here[fmt][1]:.1f} |")
    if cyc_pi == cyc_a57:
        lines += ["", f"*`{mca}` has no Neoverse N1 model (LLVM 17 and later do; `apt-get install llvm-19`): the "
                      "Pi 5 columns above are the A57 model's, which is slower than the A76.*"]
    rows, checks = [], []
    for r in results:
        traced = r["edgert"].get("trace")
        if not traced:
            continue
        phases = phases_of(traced)
        pi_range, bias = {}, {}
        for name, measured in (("prefill", r["edgert"]["prefill_tps"]), ("decode", r["edgert"]["decode_tps"])):
            tps, kernel_s = predict(phases[name], here, cyc_here, bandwidth, 1.0)
            checks.append((r["model"], name, tps, measured, kernel_s, phases[name].kernel_s))
            bias[name] = tps / measured
            pi_range[name] = (predict(phases[name], pi, cyc_pi, PI5_BANDWIDTH[0], PI5_SLOWER[1])[0],
                              predict(phases[name], pi, cyc_pi, PI5_BANDWIDTH[1], PI5_SLOWER[0])[0])
        limits = [bw * 1e9 / r["bytes_per_token"] for bw in PI5_BANDWIDTH]

        def span(name, f, scale=1.0):
            low, high = pi_range[name]
            return f"{low / scale:{f}}-{high / scale:{f}}"

        rows.append(f"| {r['model']} ({Path(r['file']).name}) | {span('prefill', '.0f')} | {span('decode', '.1f')} "
                    f"| {span('prefill', '.0f', bias['prefill'])} | {span('decode', '.1f', bias['decode'])} "
                    f"| {limits[0]:.1f}-{limits[1]:.1f} |")
    lines += ["", "| model | Pi 5 prefill tok/s | Pi 5 decode tok/s | prefill, corrected | decode, corrected "
                  "| decode bandwidth limit |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += rows
    lines += [f"| *published:* {name} | {pre} | {dec} | | | |" for name, pre, dec in ANCHORS]
    lines += ["", "*Corrected*: divided by how optimistic the same method is on this machine for that model and "
                  "phase (the last column of the table below).", "",
              f"The same method here ({here.mca_cpu}, {here.ghz:.2f} GHz measured by a dependent add/xor chain, "
              f"{here.cores} threads, {bandwidth:.1f} GB/s measured), beside what this run measured:", "",
              "| model | phase | predicted tok/s | measured tok/s | traced matrix products: predicted s | measured s "
              "| predicted / measured |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {m} | {name} | {p:.1f} | {meas:.1f} | {pk:.3f} | {mk:.3f} | {p / meas:.2f} |"
              for m, name, p, meas, pk, mk in checks]
    return lines + [""]
