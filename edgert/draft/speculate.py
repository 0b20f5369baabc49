"""Speculative decoding: a drafter guesses the next tokens, one pass of the model over the
last token and the guesses checks them all, and the guesses the model would have made itself
stand. Decode reads every weight once per pass, so each accepted guess is a token for free.

Exactness: every emitted token is drawn by the sampler from the model's own logits at its
position, one draw per token as in plain decoding; a guess stands only when the draw equals
it. Greedy output is therefore the plain output, and sampling keeps the model's distribution
(for a drafter that proposes one token per position, this is speculative sampling: a guess
with target probability p stands with probability p). The cache keeps only what stands; the
sliding layers' rings get back what rejected guesses evicted (KVCache.rollback)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from edgert.generation import prefill_prompt

if TYPE_CHECKING:
    from edgert.draft.adaptive import Adaptive
    from edgert.model import Model, SoftTokens, State


def generate_ids(model: "Model", state: "State", prompt: Sequence[int], max_new_tokens: int, sampler: Callable,
                 stop_ids: set[int], drafter: "Adaptive", soft: "SoftTokens | None" = None) -> Iterator[int]:
    """edgert.generation.generate_ids with drafting: the same ids, drawn the same way."""
    logits = prefill_prompt(model, state, prompt, soft)
    if max_new_tokens <= 0:  # as plain decoding: the prompt is fed, nothing is drawn
        return
    history = list(state.tokens)
    emitted = 0
    token = sampler(logits, history)  # drawn, not yet emitted nor fed
    while True:
        if token in stop_ids:
            state.pending = [token]
            return
        history.append(token)
        state.pending = [token]
        yield token
        emitted += 1
        if emitted == max_new_tokens or state.pos + 1 >= model.n_ctx:
            return
        room = min(max_new_tokens - emitted - 1, model.n_ctx - state.pos - 2, model.max_verify - 1)
        draft = drafter.draft(state, history, room) if room > 0 else []
        try:
            if not draft:
                logits = model.decode_step(state, token)
            else:
                rows = model.verify(state, [token, *draft])
        except BaseException:
            state.pending = [token]  # not in the cache: fed again next time
            raise
        state.pending = []
        if not draft:
            token = sampler(logits, history)
            continue
        kept = 1  # of [token, *draft], those that stand: the token, then each guess drawn again
        try:
            for guess, row in zip(draft, rows):
                token = sampler(row, history)
                if token != guess or token in stop_ids:
                    break
                history.append(token)
                kept += 1
                yield token
                emitted += 1
            else:
                token = sampler(rows[len(draft)], history)
        finally:
            model.keep(state, kept)  # also when the reader stops mid-draft
        drafter.update(len(draft), kept - 1)
