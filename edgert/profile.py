"""The memory-footprint profiler: will this model fit this device, and where does the memory go.

`estimate` is analytic: from a GGUF file (its real tensor types) or a config (the published
E2B/E4B by name, or a config.json, with weights in one chosen type) it adds up what a
running edgert holds:

- weights by component, all file-backed (memory-mapped) and read every token, except
- the PLE table, which stays on disk: only the rows of tokens seen become resident;
- the KV cache, by layer type: sliding layers hold the window, global layers the context,
  KV-shared layers nothing (or, to show the saving, every layer its own);
- scratch: the activations of one prefill step;
- the runtime: the interpreter, numpy, Numba and LLVM, and the vocabulary as Python strings.

`measure` runs a generation and samples the process's memory over time, to check the
estimate against. `fits` and `max_context` answer the device question.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgert.config import ModelConfig, config_from_hf, published, tensor_manifest
from edgert.errors import ArchitectureError, EdgeRTError
from edgert.kv_cache import DEFAULT_KV
from edgert.rss import memory
from quant import QType, row_bytes

MB = 2**20
GB = 2**30
PAGE = 4096

# Usable memory of a device: its RAM less what the OS and a desktop keep (assumed, stated).
DEVICES: dict[str, tuple[int, int, str]] = {
    "pi5-2gb": (2 * GB, 300 * MB, "Raspberry Pi 5, 2 GB, Raspberry Pi OS Lite"),
    "pi5-4gb": (4 * GB, 400 * MB, "Raspberry Pi 5, 4 GB, Raspberry Pi OS Lite"),
    "pi5-8gb": (8 * GB, 400 * MB, "Raspberry Pi 5, 8 GB, Raspberry Pi OS Lite"),
    "pi5-16gb": (16 * GB, 400 * MB, "Raspberry Pi 5, 16 GB, Raspberry Pi OS Lite"),
    "laptop-8gb": (8 * GB, 3 * GB, "laptop, 8 GB, desktop session and browser"),
    "laptop-16gb": (16 * GB, 4 * GB, "laptop, 16 GB, desktop session and browser"),
    "laptop-32gb": (32 * GB, 4 * GB, "laptop, 32 GB, desktop session and browser"),
}

# The runtime without a model: Python, numpy, Numba, llvmlite and the compiled kernels,
# measured as the RSS of a process that has run a step of a tiny model, its kernels loaded
# from the on-disk cache (x86-64: 150 MB on 2026-11; 188-192 MB on 2026-12-03, with the kernels
# and libraries added since: a peak of 198-202 MB less the model's own 10 MB; 216 MB on
# 2026-12-04, a peak of 218 MB where it had been 192: a decoder layer's two compiled blocks each
# carry their own copy of the x8 matrix kernel, about 13 MB resident apiece)
RUNTIME_BASE = 216 * MB
VOCAB_BYTES_PER_TOKEN = 48  # its offsets (12), hash index slots (8-16), merges as pair keys and ranks (16 each, ~1.5 per token)

KV_TYPES = {"f32": (1, 4), "f16": (1, 2), "q8_0": (32, 34)}  # values per block, bytes per block
COMPONENTS = ("embedding and LM head", "attention", "MLP", "PLE projection and gates", "norms and scalars",
              "PLE table")


class ProfileError(EdgeRTError):
    """An unknown device, a source that is not a Gemma model, a context beyond the model's."""


@dataclass
class Estimate:
    model: str
    arch: str
    weights_type: str  # "as stored in the file", or the type assumed for a config
    n_ctx: int
    n_ctx_train: int
    kv_type: str
    kv_sharing: bool
    weights: dict[str, int]  # component -> bytes, PLE table excluded
    weights_by_type: dict[str, int]  # ggml type name -> bytes, PLE table excluded
    ple_table: int  # bytes on disk
    ple_resident: int  # bytes of it in DRAM after n_ctx distinct tokens (about)
    kv: dict[str, int]  # "sliding" / "global" -> bytes
    kv_layers: dict[str, int]  # "sliding" / "global" -> layers holding a cache
    scratch: int
    runtime: int
    audio_tower: int  # bytes in f16 if the config has an audio tower (not loaded by the text runtime)
    device: dict | None = None  # name, usable bytes, fits, max_context
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.weights.values()) + self.ple_resident + sum(self.kv.values()) + self.scratch + self.runtime

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        return d


def _source(source: str | os.PathLike) -> tuple[str, ModelConfig, dict | None, dict | None]:
    """(name, config, {tensor: (shape, qtype, nbytes)} of a file or None, the HF config or None)."""
    text = str(source)
    stat = os.stat(text) if os.path.isfile(text) else None
    return _read_source(text, stat and (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)  # `fits` and `plot` ask for many contexts of one source
def _read_source(text: str, version) -> tuple[str, ModelConfig, dict | None, dict | None]:
    if text.lower() in ("e2b", "e4b"):
        hf = published(text.lower())
        return f"gemma4-{text.lower()}", config_from_hf(hf), None, hf
    path = Path(text)
    if not path.is_file():
        raise ProfileError(f"{text!r} is neither 'e2b', 'e4b', a config.json nor a GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        from edgert.files.loader import open_model

        mf = open_model(path)
        present = mf.gguf.tensors
        tensors = {name: (t.shape, QType(present[name].ggml_type), present[name].nbytes)
                   for name, t in mf.tensors.items()}
        return path.name, mf.config, tensors, None
    try:
        hf = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProfileError(f"{path} is not a GGUF file or a JSON config ({e})") from None
    try:
        return path.stem, config_from_hf(hf), None, hf
    except (ArchitectureError, KeyError, TypeError) as e:
        raise ProfileError(f"{path} is not a Gemma 4 config: {e}") from None


def _component(name: str) -> str:
    if name.startswith(("token_embd", "output.")):
        return "embedding and LM head"
    if name == "per_layer_token_embd.weight":
        return "PLE table"
    if name.startswith("per_layer_") or any(p in name for p in (".inp_gate.", ".proj.", ".post_norm.")):
        return "PLE projection and gates"
    if ".attn_" in name or ".post_attention_norm" in name:
        return "attention"
    if ".ffn_" in name or ".post_ffw_norm" in name:
        return "MLP"
    return "norms and scalars"


def kv_cache_bytes(cfg: ModelConfig, n_ctx: int, kv_type: str = DEFAULT_KV, sharing: bool = True) -> dict:
    """Bytes of the KV cache by layer type, as edgert.kv_cache allocates it: per layer that
    owns K/V, K and V of (slots, n_kv, head_dim) and a slot->position table (int64); a
    sliding layer has min(window, context) slots, a global one the context. Without
    sharing, every layer would own its K/V."""
    if kv_type not in KV_TYPES:
        raise ProfileError(f"unknown KV cache type {kv_type!r}; choose one of {', '.join(KV_TYPES)}")
    per_block, block_bytes = KV_TYPES[kv_type]
    n_ctx = min(n_ctx, cfg.n_ctx_train)
    out = {"sliding": 0, "global": 0}
    layers = {"sliding": 0, "global": 0}
    for s in cfg.layers:
        if not (s.owns_kv or not sharing):
            continue
        ring = s.sliding and cfg.sliding_window < n_ctx
        slots = cfg.sliding_window if ring else n_ctx
        values = slots * s.n_kv_heads * s.head_dim
        kind = "sliding" if s.sliding else "global"
        out[kind] += 2 * (-(-values // per_block)) * block_bytes + slots * 8
        layers[kind] += 1
    return {"bytes": out, "layers": layers}


def _scratch(cfg: ModelConfig, n_batch: int, n_ctx: int, threads: int) -> int:
    """The activations of one prefill step of n_batch tokens that are alive at once (float32):
    the residual, a norm, q/k/v, gate, up and their product, the 8-bit copies of the input of
    a product, the attention's output and each thread's blocks (edgert.kernels.attention: a
    tile of queries' sums and a block of decoded keys and values, whatever the context), the
    PLE inputs, and one row of logits."""
    from edgert.kernels import KEY_BLOCK, QUERY_ROWS

    widest = max(s.ffn_dim for s in cfg.layers)
    heads = max(cfg.n_head * s.head_dim for s in cfg.layers)
    floats = n_batch * (3 * cfg.n_embd + 2 * heads + 2 * max(s.n_kv_heads * s.head_dim for s in cfg.layers)
                        + 3 * widest + 2 * cfg.n_layer * cfg.ple_dim)
    floats += threads * (QUERY_ROWS + 2 * KEY_BLOCK) * max(s.head_dim for s in cfg.layers) + cfg.n_vocab
    return 4 * floats + n_batch * widest * 2  # + int8 values and their scales


STEP_BUDGET = 32 * MB  # one prompt step's buffers at most, by default


def prompt_step(cfg: ModelConfig, threads: int = 2) -> int:
    """Prompt tokens per prefill step when none is asked for: 128, the fastest step measured
    (Gemma 3 270M: 64 tokens 3% slower, 256 and 512 5-10% slower, their activations leaving
    the cache), or 64 where 128 tokens' buffers (_scratch) pass STEP_BUDGET (E2B and E4B:
    38 MB; at 64, 1% slower and 12 MB less at peak)."""
    return 128 if _scratch(cfg, 128, 0, threads) <= STEP_BUDGET else 64


def estimate(source, n_ctx: int | None = None, kv_type: str = DEFAULT_KV, kv_sharing: bool = True,
             weights_type: str = "q4_0", n_batch: int | None = None, threads: int = 2, ple: str = "mmap", ple_cache_mb: float = 64.0,
             tokens_seen: int | None = None, device: str | None = None,
             budget: int | None = None) -> Estimate:
    """Where the memory of a running model goes. source: a GGUF file, a config.json, or 'e2b'/'e4b';
    n_ctx: the context the caches hold (default 4096, or the model's maximum if smaller).
    weights_type: the type of every matrix when the source is a config (as llama-quantize --pure).
    tokens_seen: distinct tokens whose PLE rows are resident (default: a full context).
    device / budget: also say whether it fits and the longest context that does."""
    name, cfg, tensors, hf = _source(source)
    n_ctx = min(4096, cfg.n_ctx_train) if n_ctx is None else n_ctx
    if n_ctx < 1:
        raise ProfileError(f"the context must be at least 1 token (got {n_ctx})")
    if n_ctx > cfg.n_ctx_train:
        raise ProfileError(f"a context of {n_ctx} is beyond the model's maximum of {cfg.n_ctx_train}")
    if tensors is None:
        try:
            qtype = QType[weights_type.upper()]
        except KeyError:
            raise ProfileError(f"unknown weights type {weights_type!r}; choose one of "
                               f"{', '.join(t.name.lower() for t in QType)}") from None
        tensors = {}
        for tname, shape in tensor_manifest(cfg).items():
            t = qtype if len(shape) == 2 else QType.F32
            tensors[tname] = (shape, t, shape[0] * row_bytes(t, shape[1]) if len(shape) == 2 else 4 * shape[0])
        described = weights_type.lower() + " (every matrix, as llama-quantize --pure)"
    else:
        described = "as stored in the file"

    weights = dict.fromkeys(COMPONENTS[:-1], 0)
    by_type: dict[str, int] = {}
    ple_table, ple_row = 0, 0
    for tname, (shape, t, nbytes) in tensors.items():
        comp = _component(tname)
        if comp == "PLE table":
            ple_table, ple_row = nbytes, nbytes // shape[0]
            continue
        weights[comp] += nbytes
        by_type[t.name] = by_type.get(t.name, 0) + nbytes

    seen = n_ctx if tokens_seen is None else tokens_seen
    if not ple_table:
        ple_resident = 0
    elif ple == "ram":
        ple_resident = ple_table
    elif ple == "pread":
        ple_resident = min(ple_table, int(ple_cache_mb * MB))
    else:  # mmap: the pages of the rows of the tokens seen (a row spans its pages and one more, about)
        ple_resident = min(ple_table, seen * (-(-ple_row // PAGE) + 1) * PAGE)

    kv = kv_cache_bytes(cfg, n_ctx, kv_type, kv_sharing)
    est = Estimate(
        model=name, arch=cfg.arch, weights_type=described, n_ctx=n_ctx, n_ctx_train=cfg.n_ctx_train,
        kv_type=kv_type, kv_sharing=kv_sharing, weights=weights, weights_by_type=by_type, ple_table=ple_table,
        ple_resident=ple_resident, kv=kv["bytes"], kv_layers=kv["layers"],
        scratch=_scratch(cfg, min(n_batch or prompt_step(cfg, threads), n_ctx), n_ctx, threads),
        runtime=RUNTIME_BASE + VOCAB_BYTES_PER_TOKEN * cfg.n_vocab,
        audio_tower=_audio_tower_bytes(hf) if hf else 0,
    )
    if ple_table and ple == "mmap":
        est.notes.append(f"PLE table: the rows of {seen} tokens resident, about (the page cache may keep more, "
                         "but reclaims them under pressure)")
    if est.audio_tower:
        est.notes.append("audio tower: its weights in f16; the text runtime does not load it")
    if device is not None or budget is not None:
        est.device = fits(est, source, device=device, budget=budget, kv_type=kv_type, kv_sharing=kv_sharing,
                          weights_type=weights_type, n_batch=n_batch, threads=threads, ple=ple,
                          ple_cache_mb=ple_cache_mb)
    return est


def device_budget(device: str | None = None, budget: int | None = None) -> tuple[str, int]:
    if device is not None:
        if device not in DEVICES:
            raise ProfileError(f"unknown device {device!r}; known: {', '.join(DEVICES)} (or give --budget, e.g. 4GB)")
        total, reserve, desc = DEVICES[device]
        return f"{device} ({desc}; {reserve / MB:.0f} MB kept for the system)", total - reserve
    if budget is None or budget <= 0:
        raise ProfileError("a budget must be a positive size, such as 4GB or 3500MB")
    return f"a budget of {budget / GB:.2f} GB", budget


def parse_size(text: str) -> int:
    """'4GB', '3.5G', '800MB', '800M' -> bytes (binary units)."""
    t = text.strip().upper().removesuffix("B")
    units = {"K": 2**10, "M": MB, "G": GB, "T": 2**40}
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise ProfileError(f"{text!r} is not a size; write it like 4GB or 800MB") from None


def fits(est: Estimate, source, device: str | None = None, budget: int | None = None, **options) -> dict:
    """Whether `est` fits the device or budget, and the longest context that does."""
    label, usable = device_budget(device, budget)

    def total_at(n: int) -> int:
        return estimate(source, n_ctx=n, **options).total

    best = 0
    if total_at(1) <= usable:
        lo, hi = 1, est.n_ctx_train
        if total_at(hi) <= usable:
            best = hi
        else:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if total_at(mid) <= usable else (lo, mid)
            best = lo
    return {"name": label, "usable": usable, "fits": est.total <= usable, "max_context": best}


def _audio_tower_bytes(hf: dict) -> int:
    """Parameters of Gemma 4's conformer audio encoder and its projection into the text model,
    counted from the config (Gemma4AudioModel's blocks: two half-step feed-forwards of 4x width,
    attention with a relative-position projection, a light convolution), in f16."""
    a = hf.get("audio_config")
    if not a:
        return 0
    h, n = int(a["hidden_size"]), int(a["num_hidden_layers"])
    k = int(a.get("conv_kernel_size", 5))
    per_layer = 2 * (2 * h * 4 * h) + 5 * h * h + (2 * h * h + k * h + h * h) + 12 * h
    channels = a.get("subsampling_conv_channels", [128, 32])
    sub = 9 * channels[0] + 9 * channels[0] * channels[1] + channels[1] * 128 // 4 * h
    out = int(a.get("output_proj_dims", h))
    text = int((hf.get("text_config") or {}).get("hidden_size", out))
    return 2 * (n * per_layer + sub + h * out + out * text)


# --- measured ---------------------------------------------------------------------------------

@dataclass
class Measurement:
    prompt_tokens: int
    new_tokens: int
    seconds: list[float]
    anon: list[int]  # bytes
    file: list[int]
    ple_resident: list[int]
    kv: list[int]
    peak_rss: int
    phases: dict[str, float]  # "loaded", "prefilled", "done" -> seconds

    def to_dict(self) -> dict:
        return asdict(self)


def _drop_from_page_cache(path, offset: int, length: int) -> None:
    """Evict a region of a file from the page cache (written back first), so that what
    becomes resident is what the run reads, not what an earlier reader left there."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(path, prompt_tokens: int = 512, new_tokens: int = 128, n_ctx: int = 4096, interval: float = 0.05,
            threads: int | None = None, progress=None, kv_type: str = DEFAULT_KV) -> Measurement:
    """Load `path`, prefill `prompt_tokens` distinct token ids, decode `new_tokens` greedily,
    and sample memory every `interval` seconds: RSS split into anonymous and file-backed,
    the PLE table's resident bytes and the KV cache's. The PLE table starts out of the page
    cache. Linux only (/proc, mincore)."""
    import numpy as np

    import edgert
    from edgert.files.gguf_file import GGUFFile

    if not Path("/proc/self/status").exists():
        raise ProfileError("measuring needs Linux's /proc; use the estimate alone here")
    table = GGUFFile(path).tensors.get("per_layer_token_embd.weight")
    if table is not None:
        _drop_from_page_cache(path, table.offset, table.nbytes)
    samples: dict[str, list] = {"seconds": [], "anon": [], "file": [], "ple": [], "kv": []}
    box: dict = {"model": None, "state": None}
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample():
        anon, file, _ = memory()
        model, state = box["model"], box["state"]
        ple = 0
        if model is not None and model.weights.ple is not None:
            ple = model.weights.ple.resident_bytes()
        samples["seconds"].append(time.perf_counter() - t0)
        samples["anon"].append(anon)
        samples["file"].append(file)
        samples["ple"].append(ple)
        samples["kv"].append(state.kv_bytes if state is not None else 0)

    def loop():
        while not stop.wait(interval):
            sample()

    sampler = threading.Thread(target=loop, daemon=True)
    sampler.start()
    phases = {}
    try:
        model = box["model"] = edgert.load(path, n_ctx=n_ctx, threads=threads, kv_type=kv_type)
        phases["loaded"] = time.perf_counter() - t0
        if progress:
            progress("loaded")
        if prompt_tokens + new_tokens > model.n_ctx:
            raise ProfileError(f"{prompt_tokens} + {new_tokens} tokens do not fit the context of {model.n_ctx}")
        rng = np.random.default_rng(7)
        n_ids = model.config.n_vocab_ple or model.config.n_vocab
        ids = rng.choice(np.arange(3, n_ids), prompt_tokens, replace=False).tolist()
        state = box["state"] = model.new_state()
        logits = model.prefill(state, ids)
        phases["prefilled"] = time.perf_counter() - t0
        if progress:
            progress("prefilled")
        for _ in range(new_tokens):
            logits = model.decode_step(state, int(np.argmax(logits)))
        phases["done"] = time.perf_counter() - t0
    finally:
        stop.set()
        sampler.join()
    sample()
    return Measurement(prompt_tokens=prompt_tokens, new_tokens=new_tokens, seconds=samples["seconds"],
                       anon=samples["anon"], file=samples["file"], ple_resident=samples["ple"], kv=samples["kv"],
                       peak_rss=memory().peak, phases=phases)


# --- shown -------------------------------------------------------------------------------------

def table(est: Estimate, measured: Measurement | None = None) -> str:
    """The estimate as text, with the measurement beside it when there is one."""
    def mb(b):
        return f"{b / MB:9.1f}"

    lines = [f"{est.model} ({est.arch}), weights {est.weights_type}, context {est.n_ctx} "
             f"(max {est.n_ctx_train}), KV cache {est.kv_type}{'' if est.kv_sharing else ', no sharing'}", ""]
    lines.append(f"{'component':40s} {'MB':>9s}")
    for comp, b in est.weights.items():
        if b:
            lines.append(f"  weights: {comp:31s} {mb(b)}")
    for t, b in sorted(est.weights_by_type.items()):
        lines.append(f"    of which {t:28s} {mb(b)}")
    if est.ple_table:
        lines.append(f"  PLE table resident (of {est.ple_table / MB:.0f} MB on disk){'':5s} {mb(est.ple_resident)}")
    for kind in ("sliding", "global"):
        if est.kv_layers[kind]:
            lines.append(f"  KV cache, {kind} ({est.kv_layers[kind]} layers){'':{19 - len(kind)}s} {mb(est.kv[kind])}")
    lines.append(f"  scratch (one prefill step){'':13s} {mb(est.scratch)}")
    lines.append(f"  runtime (Python, Numba, vocabulary){'':4s} {mb(est.runtime)}")
    lines.append(f"{'total':40s} {mb(est.total)}")
    if est.audio_tower:
        lines.append(f"  (audio tower, f16, not loaded: {est.audio_tower / MB:.0f} MB)")
    if measured is not None:
        diff = measured.peak_rss - est.total
        lines += ["", f"measured peak RSS {measured.peak_rss / MB:.1f} MB vs predicted {est.total / MB:.1f} MB: "
                      f"{diff / MB:+.1f} MB ({diff / est.total:+.1%})",
                  f"  at the end: anonymous {measured.anon[-1] / MB:.1f} MB, "
                  f"file-backed {measured.file[-1] / MB:.1f} MB, PLE resident {measured.ple_resident[-1] / MB:.1f} MB, "
                  f"KV cache {measured.kv[-1] / MB:.1f} MB"]
    if est.device:
        d = est.device
        lines += ["", f"{d['name']}: {d['usable'] / MB:.0f} MB usable; "
                      f"{'fits' if d['fits'] else 'does NOT fit'} at a context of {est.n_ctx}; "
                      f"longest context that fits: {d['max_context'] if d['max_context'] else 'none'}"]
    lines += [f"note: {n}" for n in est.notes]
    return "\n".join(lines)


def plot(est: Estimate, out, source=None, measured: Measurement | None = None, **options) -> Path:
    """A PNG: stacked bars per component, memory against context length with and without KV
    sharing (and the device budget as a line), and the measured timeline if there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_panels = 3 if measured is not None else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 5.2))
    parts = [(f"weights: {k}", v) for k, v in est.weights.items() if v]
    parts += [("PLE resident", est.ple_resident), ("KV sliding", est.kv["sliding"]),
              ("KV global", est.kv["global"]), ("scratch", est.scratch), ("runtime", est.runtime)]
    ax = axes[0]
    bottom = 0.0
    colors = plt.cm.tab20.colors
    for i, (label, b) in enumerate(p for p in parts if p[1]):
        ax.bar([0], [b / MB], bottom=bottom, color=colors[i % 20], label=f"{label} ({b / MB:.0f} MB)", width=0.5)
        bottom += b / MB
    if measured is not None:
        ax.bar([1], [measured.peak_rss / MB], color="0.5", width=0.5,
               label=f"measured peak ({measured.peak_rss / MB:.0f} MB)")
    ax.set_xticks([0, 1] if measured is not None else [0], ["predicted", "measured"][:2 if measured is not None else 1])
    ax.set_ylabel("MB")
    ax.set_title(f"{est.model}: {est.total / MB:.0f} MB at context {est.n_ctx}")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_xlim(-0.6, 2.6)

    ax = axes[1]
    src = source if source is not None else est.model
    top = est.n_ctx_train
    ctxs = sorted({int(x) for x in [2 ** k for k in range(8, 20)] + [top] if x <= top})
    opts = {k: v for k, v in options.items() if k not in ("n_ctx", "kv_sharing", "kv_type", "device", "budget")}
    for sharing, style in ((True, "-"), (False, "--")):
        for kv_type in ("f32", "f16", "q8_0"):
            ys = [estimate(src, n_ctx=c, kv_sharing=sharing, kv_type=kv_type, **opts).total / GB for c in ctxs]
            ax.plot(ctxs, ys, style, label=f"KV {kv_type}, {'shared' if sharing else 'no sharing'}")
    if est.device:
        ax.axhline(est.device["usable"] / GB, color="red", lw=1.5, label=est.device["name"].split(" (")[0])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("GB")
    ax.set_title("memory against context length")
    ax.legend(fontsize=7)

    if measured is not None:
        ax = axes[2]
        t = measured.seconds
        ax.stackplot(t, [a / MB for a in measured.anon], [f / MB for f in measured.file],
                     labels=["anonymous", "file-backed"], colors=["#4c72b0", "#dd8452"], alpha=0.8)
        ax.plot(t, [p / MB for p in measured.ple_resident], "k:", label="PLE table resident")
        ax.plot(t, [k / MB for k in measured.kv], "g-", label="KV cache")
        ax.axhline(est.total / MB, color="red", lw=1, ls="--", label="predicted peak")
        for name, at in measured.phases.items():
            ax.axvline(at, color="0.6", lw=0.8)
            ax.text(at, ax.get_ylim()[1] * 0.97, name, fontsize=7, rotation=90, va="top")
        ax.set_xlabel("seconds")
        ax.set_ylabel("MB")
        ax.set_title(f"measured: prompt {measured.prompt_tokens}, {measured.new_tokens} new tokens")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
