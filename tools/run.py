"""edgert run MODEL -p TEXT: stream one answer."""

import sys
import time

from tools.common import add_model_argument, add_sampling_arguments, load_model, print_stats, sampling


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="answer one prompt, streaming")
    add_model_argument(p)
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("--raw", action="store_true",
                   help="send the prompt as it is, without the chat format (always so for a base model)")
    p.add_argument("--special", action="store_true", help="print the control tokens the model writes (<eoa>, ...)")
    add_sampling_arguments(p)
    p.set_defaults(func=main)


def main(args) -> int:
    model = load_model(args)
    t0, n = time.perf_counter(), 0
    try:
        for piece in model.generate(args.prompt, max_new_tokens=args.max_new_tokens, raw=args.raw,
                                    special=args.special, **sampling(args)):
            sys.stdout.write(piece)
            sys.stdout.flush()
            n += 1
    finally:
        sys.stdout.write("\n")
        if args.verbose:
            print_stats(model, n, time.perf_counter() - t0)
    return 0
