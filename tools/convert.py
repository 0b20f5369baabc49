"""edgert convert HF_DIR -o OUT.gguf --type q8_0"""

from edgert.files.convert import PLE_TABLE, TYPES, convert
from tools.common import ProgressBar


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a Hugging Face Gemma 4 checkpoint (or its drafter, *-assistant) to GGUF")
    p.add_argument("hf_dir", help="directory with config.json, *.safetensors, tokenizer.json")
    p.add_argument("-o", "--output", required=True, help="the GGUF file to write")
    p.add_argument("--type", default="q8_0", choices=sorted(TYPES), help="type of the large matrices")
    p.add_argument("--ple-type", default=None, choices=sorted(TYPES),
                   help="type of the per-layer embedding table, if not --type (it stays on disk: q4_0 halves it)")
    p.set_defaults(func=main)


def main(args) -> int:
    errors: dict[str, float] = {}
    skipped: dict[str, int] = {}
    out = convert(args.hf_dir, args.output, args.type, progress=ProgressBar("converting"), ple_type=args.ple_type,
                  errors=errors, skipped=skipped)
    print(f"wrote {out}")
    for part, count in skipped.items():
        print(f"skipped the {part} ({count} tensors): edgert reads text and audio")
    if errors:
        worst = max(errors, key=errors.get)
        print(f"relative RMS error of the stored matrices: worst {errors[worst]:.4f} ({worst})")
        if PLE_TABLE in errors:
            print(f"per-layer embedding table ({args.ple_type or args.type}): {errors[PLE_TABLE]:.4f}")
    return 0
