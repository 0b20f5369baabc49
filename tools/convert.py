"""edgert convert HF_DIR -o OUT.gguf --type q8_0"""

from edgert.convert import TYPES, convert
from tools.common import ProgressBar


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a Hugging Face Gemma 4 checkpoint to GGUF")
    p.add_argument("hf_dir", help="directory with config.json, *.safetensors, tokenizer.json")
    p.add_argument("-o", "--output", required=True, help="the GGUF file to write")
    p.add_argument("--type", default="q8_0", choices=sorted(TYPES), help="type of the large matrices")
    p.set_defaults(func=main)


def main(args) -> int:
    out = convert(args.hf_dir, args.output, args.type, progress=ProgressBar("converting"))
    print(f"wrote {out}")
    return 0
