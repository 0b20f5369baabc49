"""edgert bench --mtp e2b|e4b: what Gemma 4's drafter costs and what it would buy, on the
full-size synthetic model and a random drafter of the published shape (tools/synth.py).

Random weights accept no guesses, so the speedup is a model, labelled as one: per pass, the
drafter runs k steps and the target verifies k + 1 tokens in one pass, yielding tau tokens
(the accepted guesses and the target's own next one):

    speedup(tau, k) = tau * t_decode / (k * t_draft + t_verify(k + 1))

Each time is the median of `reps` runs after a warm-up (compile time apart)."""

from __future__ import annotations

import time

import numpy as np

TAUS = (1.5, 2.5, 3.5)  # tokens per pass; 2.5 is a published figure for E2B's drafter
KS = (1, 2, 3, 4)


def _median(f, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(model, prompt: int = 256, reps: int = 15) -> dict:
    """Seconds: one decode step, one draft step, one verify pass of k + 1 tokens (k in KS)."""
    state = model.new_state()
    rng = np.random.default_rng(0)
    model.prefill(state, [2] + rng.integers(300, 5000, prompt - 1).tolist(), logits="last")
    token = 1000
    for _ in range(3):  # warm-up: every kernel compiled or loaded from the cache
        model.decode_step(state, token)
        model.verify(state, [token] * 3)
        model.keep(state, 1)
        model.assistant.head.best(model.assistant.step(state, token, state.hidden, state.pos)[0])
    out = {"prompt": state.pos}  # each timed step below adds one token to it (under 100 in all)

    def one_decode():
        model.decode_step(state, token)

    def draft_step():
        x, _ = model.assistant.step(state, token, state.hidden, state.pos)
        model.assistant.head.best(x)

    out["decode"] = _median(one_decode, reps)
    out["draft"] = _median(draft_step, reps)
    for k in KS:
        def verify():
            model.verify(state, [token] * (k + 1))
            model.keep(state, 1)  # the first stands, as when every guess is rejected
        out[f"verify{k}"] = _median(verify, reps)
    return out


def speedup(r: dict, tau: float, k: int) -> float:
    return tau * r["decode"] / (k * r["draft"] + r[f"verify{k}"])


def section(kind: str, r: dict, drafter_bytes: int, target_line: str, guessed: tuple[str, ...]) -> list[str]:
    ms = lambda s: f"{s * 1e3:.1f} ms"  # noqa: E731
    lines = [f"## Gemma 4's drafter (MTP): cost per pass, {kind}", "",
             f"Target: {target_line}. Drafter: random weights of the published shape, "
             f"{drafter_bytes / 2**20:.0f} MiB (guessed: {', '.join(guessed)}); "
             f"prompt {r['prompt']} tokens, the median of 15 runs each.", "",
             "| step | time | per decode step |", "| --- | ---: | ---: |",
             f"| one decode step (1 token) | {ms(r['decode'])} | 1.00 |",
             f"| one draft step | {ms(r['draft'])} | {r['draft'] / r['decode']:.2f} |"]
    for k in KS:
        v = r[f"verify{k}"]
        lines.append(f"| verify pass of {k + 1} tokens (k = {k}) | {ms(v)} | {v / r['decode']:.2f} |")
    lines += ["", "A model, not a measurement (random drafters accept nothing): the speedup over plain decoding "
              "at tau tokens per pass, tau * t_decode / (k * t_draft + t_verify(k + 1)).", "",
              "| tokens per pass (tau) | " + " | ".join(f"k = {k}" for k in KS) + " |",
              "| --- | " + " | ".join("---:" for _ in KS) + " |"]
    for tau in TAUS:
        cells = [f"{speedup(r, tau, k):.2f}x" if tau <= k + 1 else "-" for k in KS]
        lines.append(f"| {tau} | " + " | ".join(cells) + " |")
    return lines + [""]
