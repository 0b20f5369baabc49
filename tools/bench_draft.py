"""edgert bench --draft MODEL: prompt-lookup drafting on grounded tasks (summarise, rewrite or
edit a given text), greedy, each engine with and without it on the same file and prompt ids:
edgert's draft="lookup" beside llama.cpp's prompt lookup as llama-cpp-python exposes it
(LlamaPromptLookupDecoding, its Python port of llama-lookup)."""

from __future__ import annotations

import time

PARAGRAPH = ("The color of the harbor at dawn is gray, and the neighbors organize a program to analyze the "
             "behavior of the fish. The center of the town is full of flavor, and the theater on the corner "
             "shows a traveling program every fall. Everyone agrees that the favorite part of the day is the "
             "moment the fog lifts and the boats come in.")
CODE = '''def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax
'''
TASKS = {
    "rewrite": f"Rewrite this paragraph in British spelling, changing nothing else:\n\n{PARAGRAPH}",
    "edit code": f"Rename the variable `subtotal` to `net` in this function, and return the whole function:\n\n{CODE}",
    "summarise": f"Summarise this paragraph in two sentences, reusing its words:\n\n{PARAGRAPH}",
    "quote": f"Which sentence of this paragraph mentions the theater? Quote it exactly.\n\n{PARAGRAPH}",
}


def _prompt(model, task: str) -> list[int]:
    return model.tokenizer.encode(model.format.render([{"role": "user", "content": task}]))


def edgert_runs(model, n: int) -> list[dict]:
    from edgert.draft import Lookup
    from edgert.generation import generate_ids
    from edgert.sampling import make_sampler

    out = []
    warm = _prompt(model, "Hi")
    list(generate_ids(model, model.new_state(), warm, 4, make_sampler(temperature=0), model.stop_ids))
    list(generate_ids(model, model.new_state(), warm + warm, 8, make_sampler(temperature=0), model.stop_ids,
                      drafter=Lookup()))
    for name, task in TASKS.items():
        ids = _prompt(model, task)
        row = {"task": name, "prompt": len(ids)}
        for kind in ("plain", "lookup"):
            drafter = Lookup() if kind == "lookup" else None
            state = model.new_state()
            model.prefill(state, ids[:-1], logits="none")  # prefill apart: decode is timed
            t0 = time.perf_counter()
            got = list(generate_ids(model, state, ids[-1:], n, make_sampler(temperature=0), model.stop_ids,
                                    drafter=drafter))
            row[kind] = len(got) / (time.perf_counter() - t0)
            row[kind + "_ids"] = got
            if drafter is not None:
                row["acceptance"] = drafter.acceptance
        out.append(row)
    return out


def llama_runs(path: str, prompts: list[list[int]], n: int, threads: int) -> list[dict]:
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    out = [{} for _ in prompts]
    for kind in ("plain", "lookup"):
        draft = LlamaPromptLookupDecoding(num_pred_tokens=10) if kind == "lookup" else None
        llm = Llama(path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False, draft_model=draft)
        for row, ids in zip(out, prompts):
            llm.reset()
            llm.eval(ids[:-1])
            got = []
            t0 = time.perf_counter()
            for t in llm.generate(ids[-1:], temp=0.0, top_k=1, reset=False):
                if llm.token_eos() == t or len(got) == n:
                    break
                got.append(t)
            row[kind] = len(got) / (time.perf_counter() - t0)
            row[kind + "_ids"] = got
        del llm
    return out


def section(name: str, ours: list[dict], theirs: list[dict] | None, llama_line: str) -> list[str]:
    lines = [f"### {name}: prompt lookup, greedy, {llama_line}", "",
             "| task | prompt | edgert plain | edgert lookup | speedup | acceptance | same ids "
             "| llama.cpp plain | llama.cpp lookup | speedup |", "| --- | ---: | ---: | ---: | ---: | ---: | --- "
             "| ---: | ---: | ---: |"]
    for i, r in enumerate(ours):
        same = "yes" if r["plain_ids"] == r["lookup_ids"] else "no"
        row = (f"| {r['task']} | {r['prompt']} | {r['plain']:.1f} tok/s | {r['lookup']:.1f} tok/s | "
               f"{r['lookup'] / r['plain']:.2f}x | {r['acceptance']:.0%} | {same} |")
        if theirs:
            t = theirs[i]
            row += f" {t['plain']:.1f} tok/s | {t['lookup']:.1f} tok/s | {t['lookup'] / t['plain']:.2f}x |"
        else:
            row += " - | - | - |"
        lines.append(row)
    summary = f"Over the {len(ours)} tasks: edgert {_rate(ours, 'plain'):.1f} -> {_rate(ours, 'lookup'):.1f} tok/s " \
        f"({_rate(ours, 'lookup') / _rate(ours, 'plain'):.2f}x)"
    if theirs:
        summary += (f"; llama.cpp {_rate(theirs, 'plain'):.1f} -> {_rate(theirs, 'lookup'):.1f} tok/s "
                    f"({_rate(theirs, 'lookup') / _rate(theirs, 'plain'):.2f}x)")
    return lines + ["", summary + ".", ""]


def _rate(rows: list[dict], kind: str) -> float:
    """Tokens over seconds, all tasks together."""
    return sum(len(r[kind + "_ids"]) for r in rows) / sum(len(r[kind + "_ids"]) / r[kind] for r in rows)
