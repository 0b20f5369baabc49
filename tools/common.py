"""What the commands share: the model argument, sampling flags, progress lines."""

from __future__ import annotations

import argparse
import sys
import time


def add_model_argument(p: argparse.ArgumentParser) -> None:
    from edgert.kv_cache import KV_TYPES
    from edgert.model import Options
    from ple_store import MODES

    d = Options()  # the library's defaults, written there once
    p.add_argument("model", nargs="?", help="a GGUF model file (default: the embedded default model)")
    p.add_argument("--ctx", type=int, default=d.n_ctx, help=f"context length (default {d.n_ctx})")
    p.add_argument("-t", "--threads", type=int, default=d.threads, help="kernel threads (default: physical cores)")
    p.add_argument("--ple", default=d.ple, choices=MODES,
                   help=f"how the per-layer embedding table is held (default {d.ple}: rows read from the file)")
    p.add_argument("--ple-cache-mb", type=float, default=d.ple_cache_mb,
                   help=f"row cache of --ple pread (default {d.ple_cache_mb:g})")
    p.add_argument("--kv", default=d.kv_type, choices=KV_TYPES,
                   help=f"KV cache entries (default {d.kv_type}, as llama.cpp; q8_0 takes 34 bytes per 32 values)")
    p.add_argument("--mmproj", default=None,
                   help="llama.cpp's multimodal projector file to take the audio tower from (default: the model's "
                        "own, else an mmproj*.gguf beside it)")
    p.add_argument("--drafter", default=None,
                   help="Gemma 4's drafter for the model (a gemma4-assistant GGUF; default: the one "
                        "*assistant*.gguf beside the model that drafts for it, if any)")
    p.add_argument("-v", "--verbose", action="store_true", help="print timings and PLE table statistics")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    from edgert.draft import DRAFTS
    from edgert.sampling import Sampling

    d = Sampling()  # the library's defaults, written there once
    p.add_argument("-n", "--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 for greedy")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--min-p", type=float, default=d.min_p)
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--draft", default="auto", choices=DRAFTS,
                   help="speculative decoding, the same tokens: mtp (the model's drafter; auto, the default, "
                        "uses it when there is one) or lookup (guesses from the text so far, for answers "
                        "that repeat the prompt), checked several per pass")


def sampling(args) -> dict:
    """The sampling flags as the library's keyword options (edgert.sampling.Sampling, and draft)."""
    from dataclasses import fields

    from edgert.sampling import Sampling

    return {"draft": args.draft, **{f.name: getattr(args, f.name) for f in fields(Sampling)}}


def resolve_model(path: str | None) -> str:
    """The model file to open: the one given, else the embedded default (edgert[demo])."""
    if path:
        return path
    from edgert.demo import demo_model

    return str(demo_model(lambda msg: print(msg, file=sys.stderr)))


def load_model(args, **options):
    """The model of the command line's arguments; options: more of edgert.load's."""
    import edgert

    path = resolve_model(args.model)
    t0 = time.perf_counter()
    print(f"loading {path} ...", file=sys.stderr, end="", flush=True)
    building = ProgressBar("building the weight layout cache (once per model file)")
    model = edgert.load(path, n_ctx=args.ctx, threads=args.threads, ple=args.ple, ple_cache_mb=args.ple_cache_mb,
                        kv_type=args.kv, progress=building, mmproj=args.mmproj, drafter=args.drafter, **options)
    print(f" {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return model


def print_stats(model, n_tokens: int, seconds: float) -> None:
    """The --verbose lines: generation speed and the PLE table's statistics."""
    print(f"{n_tokens} pieces in {seconds:.2f} s ({n_tokens / max(seconds, 1e-9):.2f}/s), "
          f"{model.threads} threads", file=sys.stderr)
    s = model.ple_stats()
    if s is not None:
        lat = " ".join(f"{k} {v:.0f}" for k, v in s.latency_us.items())
        wait = " ".join(f"{k} {v:.0f}" for k, v in s.wait_us.items())
        print(f"PLE {s.mode}: {s.lookups} lookups, {s.cache_hits} cache hits, {s.rows_read} rows "
              f"({s.bytes_read / 2**20:.1f} MB) read, {s.resident_bytes / 2**20:.1f} of {s.table_bytes / 2**20:.0f} MB "
              f"resident; lookup us {lat}; step waited us {wait}", file=sys.stderr)


class ProgressBar:
    """A single line on stderr: `label [#####.....] 12/40 name`."""

    def __init__(self, label: str, stream=sys.stderr):
        self.label, self.stream = label, stream

    def __call__(self, done: int, total: int, what: str) -> None:
        width = 30
        fill = int(width * done / max(1, total))
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {what[:40]:<40}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
