"""Files of every type llama.cpp's quantizer writes, read by both engines: speed and agreement
per type.

    edgert bench --model gemma3-270m,e2b --type f16 --quantize q4_1,q5_1,iq4_nl,q2_k,q3_k_m,q5_k_m,iq4_xs

For each model and type, llama.cpp's own quantizer (`llama_cpp.llama_model_quantize`) makes
the file from the model's file (a synthetic model written in f16; the Gemma 3 file, which is
Q4_K_M, requantized as llama-quantize --allow-requantize does). Then each engine, in a process
of its own, reads the same prompt on the same file: prefill and decode speed and the greedy
tokens, as `edgert bench` times them (tools.bench._generate); and, along llama.cpp's greedy
tokens, every position's top-1 choice, teacher-forced, to count where the two engines choose
alike. A choice may differ only at a near-tie: where edgert's top two are within TIE.
"""

from __future__ import annotations

import ctypes
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from tools import bench

# llama.cpp's llama_ftype values (llama.h) for the names llama-quantize takes
FTYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_m": 12, "q4_k_m": 15,
          "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30}
TIE = 0.5  # edgert's top-two margin below which a different top-1 choice is a near-tie


def quantize(src: Path, dst: Path, ftype: str, threads: int) -> Path:
    """dst made from src by llama.cpp's quantizer (written beside it, then renamed), unless it exists."""
    import llama_cpp

    if dst.exists():
        return dst
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.allow_requantize = True
    params.nthread = threads
    part = dst.with_name(dst.name + ".part")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(part).encode(), ctypes.byref(params))
    if rc != 0:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize failed ({rc}) making {ftype} from {src}")
    part.rename(dst)
    return dst


def tensor_types(path: Path) -> str:
    """The file's matrix types and how many of each: 'Q5_K x 120, Q6_K x 31'."""
    from edgert.files.gguf_file import GGUFFile
    from quant import QType

    counts: dict[str, int] = {}
    for t in GGUFFile(path).tensors.values():
        if len(t.shape) == 2:
            name = QType(t.ggml_type).name
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{k} x {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


# --- workers: one process per engine and file ------------------------------------------------------

def _choices(logits: np.ndarray) -> tuple[list[int], list[float]]:
    """Each position's top-1 token and its lead over the runner-up."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return logits.argmax(axis=1).tolist(), (top2[:, 1] - top2[:, 0]).tolist()


def _forced_edgert(args, seq: list[int]) -> np.ndarray:
    import edgert

    model = edgert.load(args.file, n_ctx=args.ctx, threads=args.threads)
    return model.prefill(model.new_state(), seq, logits="all")


def _forced_llama(args, seq: list[int]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=args.file, n_ctx=args.ctx, n_batch=512, n_ubatch=512, n_threads=args.threads,
                          n_threads_batch=args.threads, logits_all=True, verbose=False)
    llm.eval(seq)
    return np.array(llm.scores[:len(seq)], dtype=np.float32)


def worker(argv: list[str]) -> None:
    """`python -m tools.filetypes --worker ENGINE --file F --seq JSON ...`: the logits along seq."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("engine", choices=("edgert", "llama"))
    p.add_argument("--file", required=True)
    p.add_argument("--seq", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--ctx", type=int, required=True)
    p.add_argument("--logits", required=True, help="where to write the logits (.npy), from the first generated position")
    p.add_argument("--first", type=int, required=True)
    args = p.parse_args(argv)
    seq = json.loads(Path(args.seq).read_text())
    logits = (_forced_edgert if args.engine == "edgert" else _forced_llama)(args, seq)
    np.save(args.logits, logits[args.first:])


def _forced(engine: str, file: Path, seq_path: Path, threads: int, ctx: int, first: int) -> np.ndarray:
    """The engine's logits along the sequence from position `first` on (in a worker process,
    which leaves them in a .npy beside the sequence)."""
    import subprocess

    out = seq_path.with_name(f"{engine}.npy")
    cmd = [sys.executable, "-m", "tools.filetypes", "--worker", engine, "--file", str(file), "--seq", str(seq_path),
           "--threads", str(threads), "--ctx", str(ctx), "--first", str(first), "--logits", str(out)]
    done = subprocess.run(cmd, cwd=bench.REPO, capture_output=True, text=True)
    if done.returncode or not out.exists():
        raise RuntimeError(f"the {engine} worker failed on {file.name}:\n{done.stderr[-2000:]}")
    return np.load(out)


# --- the parent -----------------------------------------------------------------------------------

def measure(source: Path, model: str, ftype: str, args, threads: int, out_dir: Path, log) -> dict:
    """One file of `ftype` made from `source`: both engines' speed and tokens, and the
    teacher-forced agreement along llama.cpp's greedy tokens."""
    log(f"{model} {ftype}: quantizing with llama.cpp ...")
    path = quantize(source, out_dir / f"{source.stem}-{ftype}.gguf", ftype, threads)
    with tempfile.TemporaryDirectory(prefix="edgert-types-") as tmp:
        prompts, seq_path = Path(tmp) / "prompts.json", Path(tmp) / "seq.json"
        bench.write_prompts(path, args.prompt, prompts)
        log(f"{model} {ftype}: edgert ...")
        ours = bench._run_worker("edgert", path, prompts, args, threads)
        log(f"{model} {ftype}: llama.cpp ...")
        theirs = bench._run_worker("llama", path, prompts, args, threads)
        prompt = json.loads(prompts.read_text())["prompt"]
        seq = prompt + theirs["tokens"][:-1]  # every generated token's position, fed llama.cpp's choices
        seq_path.write_text(json.dumps(seq))
        log(f"{model} {ftype}: teacher-forced choices ...")
        first = len(prompt) - 1  # the position whose logits chose the first generated token
        logits = [_forced(e, path, seq_path, threads, args.ctx, first) for e in ("edgert", "llama")]
    apart = np.abs(logits[0] - logits[1]).max(axis=1)  # per generated position
    spread = float(logits[1].std(axis=1).mean())
    (ours_top, margin), (theirs_top, _) = (_choices(x) for x in logits)
    differ = [i for i, (a, b) in enumerate(zip(ours_top, theirs_top)) if a != b]
    return dict(model=model, type=ftype, file=path.name, file_mb=path.stat().st_size / 2**20,
                tensors=tensor_types(path), edgert=ours, llama=theirs,
                greedy=bench._agreement(ours["tokens"], theirs["tokens"]), positions=len(ours_top),
                differ=len(differ), differ_outside_ties=sum(margin[i] >= TIE for i in differ),
                logits_apart=float(np.median(apart)), logits_apart_max=float(apart.max()), logits_spread=spread,
                distinct=len(set(theirs["tokens"])), min_margin=float(min(margin)))


def section(results: list[dict], meta: dict) -> list[str]:
    """BENCHMARKS.md's table of file types."""
    lines = [
        "", "## Every file type, beside llama.cpp", "",
        "Each file made by llama.cpp's own quantizer (`llama_model_quantize`) from the model's file;",
        "each engine reads the same file and prompt (tools/filetypes.py). Greedy: tokens identical from",
        "the start. Teacher-forced: along llama.cpp's greedy tokens, the positions whose top-1 choice",
        f"differs, and of those the ones where edgert's top two are {TIE} or more apart (must be 0);",
        "the distinct tokens among llama.cpp's greedy ones (a degenerate model repeats one), edgert's",
        "smallest top-two margin there, and how far apart the two engines' logits are at a generated",
        "position (largest difference over the vocabulary: median over positions / largest; the",
        "logits' spread, their standard deviation, is given beside).",
        f"Prompt {meta['prompt']} tokens, {meta['gen']} generated, {meta['threads']} threads.", "",
        "| model | type | matrices | MB | prefill tok/s edgert / llama.cpp | ratio | decode tok/s edgert / llama.cpp "
        "| ratio | greedy identical | teacher-forced: differ (outside near-ties) | distinct | smallest margin "
        "| logits apart (spread) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        e, ll = r["edgert"], r["llama"]
        lines.append(
            f"| {r['model']} | {r['type'].upper()} | {r['tensors']} | {r['file_mb']:.0f} | "
            f"{e['prefill_tps']:.1f} / {ll['prefill_tps']:.1f} | {e['prefill_tps'] / ll['prefill_tps']:.2f}x | "
            f"{e['decode_tps']:.2f} / {ll['decode_tps']:.2f} | {e['decode_tps'] / ll['decode_tps']:.2f}x | "
            f"{r['greedy']}/{meta['gen']} | {r['differ']} of {r['positions']} ({r['differ_outside_ties']}) | "
            f"{r['distinct']} | {r['min_margin']:.2f} | {r['logits_apart']:.3f} / {r['logits_apart_max']:.3f} "
            f"({r['logits_spread']:.2f}) |")
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2:])


# --- the kernels alone, per type ------------------------------------------------------------------

GEMV_SHAPE = (16384, 2048)  # rows, cols of each matrix the GEMV streams
CACHED_MATRICES = 4  # cycled through: 40-75 MB, within a large L3 (the compute per byte)
DRAM_BYTES = 1.5e9  # enough matrices in turn to pass every cache (the stream from memory)
GEMM_SHAPE, GEMM_TOKENS = (4096, 2048), 64


def kernel_speeds(threads: int, log, rounds: int = 5, repeats: int = 3) -> list[dict]:
    """Per x8-tiled type, on random blocks of realistic scales: the GEMV's weight bytes per
    second over CACHED_MATRICES matrices (cache-resident where the L3 is large: what its
    arithmetic allows) and over DRAM_BYTES of them (streamed from memory), and the GEMM's
    weights times tokens per second (GEMM_TOKENS tokens, from cache).

    Each type is measured in `rounds` rounds alternating with Q4_K's (first in one round,
    second in the next), each figure the best of `repeats` passes: a shared machine drifts by
    more than the differences between types within minutes, so each type's ratios to Q4_K
    ("vs_" keys) are the medians of its rounds' ratios, taken seconds apart, and its speeds the
    medians of its rounds. Q4_K's own row, measured against itself, shows what is left of the
    noise."""
    import time

    from quant import BLOCKS, QTensor, cpu, layout, matmul, packed
    from quant.formats import QType
    from tools.synth import _RandomBlocks

    cpu.set_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, GEMV_SHAPE[1])).astype(np.float32)
    xs = rng.standard_normal((GEMM_TOKENS, GEMM_SHAPE[1])).astype(np.float32)

    def matrices(qtype) -> tuple[list, list, object]:
        """The type's cached set, its set from memory, and its GEMM matrix, each run once (compiled,
        and every page touched)."""
        def tensor(rows, cols):
            raw = _RandomBlocks(rng, rows, cols, qtype)._chunk(rows).reshape(rows, -1)
            return QTensor(raw, qtype, (rows, cols), layout.pack(raw, qtype))

        one = tensor(*GEMV_SHAPE)
        cached = [one] + [tensor(*GEMV_SHAPE) for _ in range(CACHED_MATRICES - 1)]
        dram = [one] + [tensor(*GEMV_SHAPE) for _ in range(int(DRAM_BYTES / one.nbytes))]
        w = tensor(*GEMM_SHAPE)
        for m in dram + cached[1:]:  # `one` heads both
            matmul(x, m)
        matmul(xs, w)
        return cached, dram, w

    def gemv(ws) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for w in ws:
                matmul(x, w)
            best = min(best, time.perf_counter() - t)
        return sum(w.nbytes for w in ws) / best / 1e9

    def speeds(sets) -> np.ndarray:
        cached, dram, w = sets
        best = min(bench._timed(matmul, xs, w) for _ in range(repeats))
        return np.array([gemv(cached), gemv(dram), GEMM_SHAPE[0] * GEMM_SHAPE[1] * GEMM_TOKENS / best / 1e9])

    log("kernels: Q4_K, the reference ...")
    reference = matrices(QType.Q4_K)
    out = []
    for qtype in packed.TILED:
        log(f"kernels: {qtype.name} ...")
        sets = reference if qtype == QType.Q4_K else matrices(qtype)
        own, ratio = [], []
        for k in range(rounds):  # in turn first and second: the second of a pair measured 7% faster
            if k % 2:
                r, s = speeds(reference), speeds(sets)
            else:
                s, r = speeds(sets), speeds(reference)
            own.append(s)
            ratio.append(s / r)
        own, ratio = np.median(own, axis=0), np.median(ratio, axis=0)
        out.append(dict(type=qtype.name, bits=8 * BLOCKS[qtype].nbytes / BLOCKS[qtype].values, gemv_gbs=own[0],
                        dram_gbs=own[1], gemm_gvals=own[2], vs_gemv=ratio[0], vs_dram=ratio[1], vs_gemm=ratio[2]))
        del sets
    return out


def kernel_section(speeds: list[dict], threads: int, bandwidth: float) -> list[str]:
    lines = ["", "## The kernels alone, per type", "",
             f"Random blocks in edgert's x8 layout, {threads} threads (tools/filetypes.py: kernel_speeds). GEMV: "
             f"matrices of {GEMV_SHAPE[0]} x {GEMV_SHAPE[1]} in turn, one token, weight bytes per second: "
             f"{CACHED_MATRICES} of them (within a large L3: what the arithmetic allows per byte), and "
             f"{DRAM_BYTES / 1e9:.1f} GB of them (from memory; a streaming read makes {bandwidth:.1f} GB/s). "
             f"GEMM: {GEMM_TOKENS} tokens against {GEMM_SHAPE[0]} x {GEMM_SHAPE[1]}, weights x tokens per second. "
             "Each beside Q4_K's, measured alternately with it (medians of the rounds' ratios).", "",
             "| type | bits per weight | GEMV from cache GB/s | vs Q4_K | GEMV from memory GB/s | vs Q4_K "
             "| GEMM G weights x tokens / s | vs Q4_K |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in speeds:
        lines.append(f"| {s['type']} | {s['bits']:.2f} | {s['gemv_gbs']:.1f} | {s['vs_gemv']:.2f} | "
                     f"{s['dram_gbs']:.1f} | {s['vs_dram']:.2f} | {s['gemm_gvals']:.1f} | {s['vs_gemm']:.2f} |")
    return lines
