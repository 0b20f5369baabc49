"""edgert serve [MODEL]: an OpenAI- and Ollama-compatible HTTP server (edgert.serve)."""

from pathlib import Path

from tools.common import add_model_argument, load_model


def add_parser(sub) -> None:
    from edgert.draft import DRAFTS
    from edgert.serve.engine import Limits

    d = Limits()
    p = sub.add_parser("serve", help="serve the model over HTTP: OpenAI's /v1 and Ollama's /api routes")
    add_model_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    p.add_argument("--name", default=None, help="the model's name in the API (default: the file's name)")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="the most new tokens a request may ask for")
    p.add_argument("--draft", default="auto", choices=DRAFTS,
                   help="speculative decoding for every request (auto: the model's drafter, if it has one; "
                        "lookup: prompt lookup); a request may ask otherwise")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="requests that may wait (more get 429)")
    p.set_defaults(func=main)


def main(args) -> int:
    from edgert.serve import serve
    from edgert.serve.engine import Limits

    model = load_model(args)
    name = args.name or Path(model.file.path).stem
    serve(model, args.host, args.port, name, args.api_key, Limits(max_tokens=args.max_tokens, max_queue=args.max_queue),
          args.draft)
    return 0
