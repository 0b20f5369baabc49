"""Write golden data for a GGUF model with llama.cpp (through llama-cpp-python), so
that edgert's tests can compare against an independent implementation without it.

    python -m tools.golden [--model PATH] --out tests/data/gemma3_270m_golden.json

It records, on the same file edgert reads:
- token ids for a varied corpus, with and without parsing special tokens;
- greedy continuations of a set of prompts, and at every generated step the top-10
  logits llama.cpp saw, and the logits of those ids when it reads the same tokens in
  one batch instead of one by one (its own spread, against which edgert's is judged);
- llama.cpp's settings and version, and the file's sha256.

llama.cpp runs with the settings a user gets by default (f16 KV cache, no flash
attention, 2 threads); the JSON says which.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

N_GREEDY = 48  # tokens generated per prompt; the tests require 32 identical
TOP = 10

CORPUS = [
    "Hello world",
    " Hello  world ",
    "hello",
    "HELLO",
    "The quick brown fox jumps over the lazy dog.",
    "The quick brown fox\n\njumps over\tthe lazy dog.",
    "   three leading spaces",
    "trailing spaces   ",
    "\n",
    "\n\n\n\n",
    "\t\tindented\n\t\t\tmore",
    "a  b   c    d     e",
    "naïve café, résumé, façade, Ångström",
    "Größe, Straße, Übermut",
    "東京は日本の首都です。",
    "北京欢迎你",
    "한국어 문장입니다",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "emoji 🤖🎉 family 👨‍👩‍👧 flag 🇫🇷 skin 👍🏽",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name;",
    '{"key": [1, 2.5, -3e10, null, true], "nested": {"a": "b"}}',
    "<html><body><p class=\"x\">Hi</p></body></html>",
    "https://example.com/path?query=1&x=%20#frag",
    "user@example.org, +1 (555) 123-4567",
    "123456789 3.14159 1e-10 0xDEADBEEF 1,000,000",
    "2026-11-24T08:53:55Z",
    "x" * 64,
    "ab" * 40,
    "!!!???...,,,;;;:::",
    "a\u0001b\u00a0c\u200bd\ufeffe",
    "\u0301 combining first, e\u0301 combined",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos> in text <eos> and <pad> and <unused7>",
    "<start_of_image> and <end_of_image>",
    "<start_of_turn",
    "Mixed 中文 and English and 日本語 text.",
    "Tabs\tand\nnewlines\r\nand CRLF\r\n",
    "",
]

PROMPTS = [
    ("raw", "The capital of France is"),
    ("raw", "Once upon a time, in a small village by the sea,"),
    ("raw", "def fibonacci(n):\n"),
    ("raw", "The three primary colors are"),
    ("raw", "Water boils at"),
    ("raw", "Le petit chat est"),
    ("chat", "Write a haiku about the moon."),
    ("chat", "What is 12 times 7?"),
    ("raw", "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(1, 61)) + "Line 61:"),
]


def chat_text(message: str) -> str:
    """Gemma 3's chat format (its template; the file carries none)."""
    return f"<start_of_turn>user\n{message}<end_of_turn>\n<start_of_turn>model\n"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def top(logits: np.ndarray, k: int = TOP) -> list[list]:
    idx = np.argsort(-logits, kind="stable")[:k]
    return [[int(i), round(float(logits[i]), 5)] for i in idx]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="GGUF file (default: edgert's embedded Gemma 3 270M)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import llama_cpp

    from edgert.demo import demo_model

    path = Path(args.model) if args.model else demo_model(lambda s: print(s, file=sys.stderr))
    settings = dict(n_ctx=2048, n_batch=512, n_threads=args.threads, flash_attn=False, type_k=None, type_v=None)
    llm = llama_cpp.Llama(str(path), logits_all=True, verbose=False, seed=0, **settings)
    eos = {llm.token_eos(), *(llm.tokenize(t.encode(), add_bos=False, special=True)[0] for t in ("<end_of_turn>",))}

    tokenize = []
    for text in CORPUS:
        for special in (True, False):
            ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
            tokenize.append({"text": text, "parse_special": special, "ids": ids})
    print(f"tokenized {len(CORPUS)} texts", file=sys.stderr)

    greedy = []
    for kind, prompt in PROMPTS:
        text = chat_text(prompt) if kind == "chat" else prompt
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        out, steps = [], []
        for _ in range(N_GREEDY):
            logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            token = int(np.argmax(logits))
            steps.append(top(logits))
            out.append(token)
            if token in eos:
                break
            llm.eval([token])
        # llama.cpp's own spread: the same tokens fed in one batch give slightly different logits
        llm.reset()
        llm.eval(ids + out)
        batch = [[round(float(llm.scores[len(ids) - 1 + s][i]), 5) for i, _ in step] for s, step in enumerate(steps)]
        greedy.append({"kind": kind, "prompt": prompt, "prompt_ids": ids, "ids": out, "top": steps,
                       "top_batch": batch})
        print(f"greedy {len(greedy)}/{len(PROMPTS)}: {llm.detokenize(out).decode('utf-8', 'replace')!r}",
              file=sys.stderr)

    data = {
        "model": path.name,
        "sha256": sha256(path),
        "made_by": f"llama-cpp-python {llama_cpp.__version__}",
        "date": datetime.date.today().isoformat(),
        "settings": settings,
        "tokenize": tokenize,
        "greedy": greedy,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
