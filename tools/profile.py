"""edgert profile MODEL_OR_CONFIG: where the memory goes, will it fit, and a check against a real run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgert.kv_cache import DEFAULT_KV, KV_TYPES

SCHEMA = Path(__file__).resolve().parent.parent / "edgert" / "data" / "profile.schema.json"


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="memory footprint: estimate, device fit, measurement, picture")
    p.add_argument("model", help="a GGUF file, a Gemma 4 config.json, or e2b / e4b (the published configs)")
    p.add_argument("--ctx", default=None,
                   help="context length, or a comma list to compare (default 4096, or the model's maximum)")
    p.add_argument("--kv", default=DEFAULT_KV, choices=KV_TYPES, help=f"KV cache entries (default {DEFAULT_KV}, as the runtime)")
    p.add_argument("--no-sharing", action="store_true", help="as if every layer kept its own K/V")
    p.add_argument("--type", default="q4_0", help="weights of a config (every matrix; default q4_0)")
    p.add_argument("--ple", default="mmap", choices=("mmap", "pread", "ram"))
    p.add_argument("--ple-cache-mb", type=float, default=64.0)
    p.add_argument("--device", help="pi5-2gb, pi5-4gb, pi5-8gb, pi5-16gb, laptop-8gb, laptop-16gb, laptop-32gb")
    p.add_argument("--budget", help="memory to fit in, such as 4GB (instead of --device)")
    p.add_argument("--measure", action="store_true", help="also run a generation and measure (GGUF files only)")
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens of the measured run (default 512)")
    p.add_argument("--gen", type=int, default=128, help="new tokens of the measured run (default 128)")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print JSON (schema: edgert/data/profile.schema.json)")
    p.add_argument("--plot", metavar="PNG", help="write the picture here")
    p.set_defaults(func=main)


def main(args) -> int:
    from edgert import profile
    from quant import cpu

    threads = args.threads or cpu.physical_cores()
    budget = profile.parse_size(args.budget) if args.budget else None
    try:
        contexts = [int(c) for c in str(args.ctx).split(",")] if args.ctx else [None]
    except ValueError:
        raise profile.ProfileError(f"--ctx takes numbers, such as 4096 or 4096,32768 (got {args.ctx!r})") from None
    options = dict(kv_type=args.kv, kv_sharing=not args.no_sharing, weights_type=args.type, threads=threads,
                   ple=args.ple, ple_cache_mb=args.ple_cache_mb)
    fit = dict(device=args.device, budget=budget) if (args.device or budget) else {}

    seen = args.prompt + args.gen if args.measure else None  # a measured run sees these tokens' PLE rows
    estimates = [profile.estimate(args.model, n_ctx=c, tokens_seen=seen, **options, **fit) for c in contexts]
    measured = None
    if args.measure:
        if not Path(args.model).is_file():
            raise profile.ProfileError("--measure runs a model file; give a GGUF path")
        ctx = estimates[-1].n_ctx
        print(f"measuring {args.model}: prompt {args.prompt}, {args.gen} new tokens, context {ctx} ...",
              file=sys.stderr, flush=True)
        measured = profile.measure(args.model, args.prompt, args.gen, n_ctx=ctx, threads=threads, kv_type=args.kv,
                                   progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True))

    if args.json:
        doc = {"schema": "edgert-profile/1", "estimates": [e.to_dict() for e in estimates]}
        if measured is not None:
            doc["measured"] = measured.to_dict()
            doc["measured"]["predicted_total"] = estimates[-1].total
        print(json.dumps(doc, indent=1))
    else:
        for e in estimates:
            print(profile.table(e, measured if e is estimates[-1] else None))
            print()
    if args.plot:
        out = profile.plot(estimates[-1], args.plot, source=args.model, measured=measured, **options)
        print(f"wrote {out}", file=sys.stderr)
    return 0
