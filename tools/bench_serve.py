"""edgert bench --serve MODEL: what constrained decoding costs per token beside a decode
step, and the server under load (8 clients at once on 127.0.0.1): throughput and latency
percentiles. Both run in this process, one after the other; nothing else should run."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["room", "on", "level", "note"],
          "properties": {"room": {"enum": ["kitchen", "hall", "bedroom"]}, "on": {"type": "boolean"},
                         "level": {"type": "integer"}, "note": {"type": "string", "maxLength": 40}}}


def constraint_cost(model, steps: int = 64) -> dict:
    """The mean time of a decode step, and of a JSON-schema constraint's work per token (the
    mask over the whole vocabulary, and following the sampled token), on the same tokens."""
    from edgert.generation import generate_ids
    from edgert.sampling import make_sampler
    from edgert.text.constrain import Structured

    ids = model.tokenizer.encode("<bos>Write JSON about a light.")
    greedy = make_sampler(temperature=0)
    list(generate_ids(model, model.new_state(), ids, 8, greedy, set()))  # warm: kernels compiled
    rule = Structured(model.tokenizer, sorted(model.stop_ids), SCHEMA)
    times = []

    def timed(logits, history):
        t0 = time.perf_counter()
        masked = rule.mask(logits)
        token = greedy(masked, history)
        rule.accept(token)
        times.append(time.perf_counter() - t0)
        return token

    state = model.new_state()
    t0 = time.perf_counter()
    n = sum(1 for _ in generate_ids(model, state, ids, steps, timed, set(model.stop_ids)))
    total = time.perf_counter() - t0
    plain_state = model.new_state()
    model.prefill(plain_state, ids)
    t1 = time.perf_counter()
    for t in range(steps):
        model.decode_step(plain_state, ids[-1])
    step = (time.perf_counter() - t1) / steps
    return {"vocab": model.tokenizer.vocab_size, "decode_ms": step * 1e3, "mask_ms": float(np.mean(times)) * 1e3,
            "mask_p95_ms": float(np.percentile(times, 95)) * 1e3, "tokens": n, "total_s": total}


def load(model, clients: int = 8, requests: int = 4, max_tokens: int = 32) -> dict:
    """`clients` threads, each sending `requests` streamed chat requests one after another
    to a server on 127.0.0.1; time to first token, whole-request latency and throughput."""
    import httpx
    import uvicorn

    from edgert.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model, "m"), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    first, whole, tokens = [], [], []

    def client(i: int) -> None:
        with httpx.Client(timeout=600) as http:
            for j in range(requests):
                body = {"model": "m", "stream": True, "max_tokens": max_tokens, "seed": i * 100 + j,
                        "messages": [{"role": "user", "content": f"Tell me about the number {i * 100 + j}."}]}
                t0, got, n = time.perf_counter(), None, 0
                with http.stream("POST", url, json=body) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            delta = json.loads(line[6:])["choices"][0]["delta"]
                            if delta.get("content"):
                                got = got or time.perf_counter()
                                n += 1
                whole.append(time.perf_counter() - t0)
                first.append((got or time.perf_counter()) - t0)
                tokens.append(n)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    server.should_exit = True
    thread.join(10)
    p = lambda xs, q: float(np.percentile(xs, q))  # noqa: E731
    return {"clients": clients, "requests": len(whole), "wall_s": wall, "tok_s": sum(tokens) / wall,
            "req_s": len(whole) / wall, "ttft_p50": p(first, 50), "ttft_p95": p(first, 95),
            "lat_p50": p(whole, 50), "lat_p95": p(whole, 95), "max_tokens": max_tokens}


def section(name: str, cost: dict, served: dict) -> list[str]:
    return [
        f"### {name}", "",
        "| constrained decoding (JSON schema) | per token |", "| --- | ---: |",
        f"| decode step | {cost['decode_ms']:.2f} ms |",
        f"| the constraint's mask over {cost['vocab']} ids, and following the token | {cost['mask_ms']:.2f} ms "
        f"(p95 {cost['mask_p95_ms']:.2f}) |",
        f"| share of a constrained step | {cost['mask_ms'] / (cost['mask_ms'] + cost['decode_ms']):.0%} |", "",
        f"Server under load: {served['clients']} clients at once, {served['requests']} streamed chat requests of "
        f"{served['max_tokens']} tokens at most, queued for the one model.", "",
        "| throughput | requests/s | time to first token p50 / p95 | latency p50 / p95 |",
        "| ---: | ---: | ---: | ---: |",
        f"| {served['tok_s']:.1f} tok/s | {served['req_s']:.2f} | {served['ttft_p50']:.2f} / {served['ttft_p95']:.2f} s "
        f"| {served['lat_p50']:.2f} / {served['lat_p95']:.2f} s |", ""]
