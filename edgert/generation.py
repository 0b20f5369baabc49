"""Generation over a Model (edgert.model): sampling token ids until a stop, fitting a prompt
into the context, and turning ids into text that ends at a stop string. Four small
functions, as gpt-fast keeps them; chat turns and sessions build on them (edgert.text.sessions).

The library yields and never prints: `generate_ids` is a generator over token ids, and text
streams on top of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from edgert.draft import drafter as make_drafter
from edgert.errors import ContextOverflowError
from edgert.sampling import Sampling
from edgert.text.tokenizer import StreamDecoder

if TYPE_CHECKING:
    from edgert.model import Model, SoftTokens, State


class NoDraft:
    """Plain decoding, as a drafter that never guesses: one token per step."""

    def draft(self, state, history, room) -> list[int]:
        return []


def generate_ids(model: "Model", state: "State", prompt: Sequence[int], max_new_tokens: int,
                 sampler: Callable, stop_ids: set[int], soft: "SoftTokens | None" = None,
                 drafter=None) -> Iterator[int]:
    """Prefill `prompt` (after any pending ids), then sample until a stop id, the token
    budget or the context runs out. Sampled ids are yielded before they are fed, so a
    consumer that stops early leaves the last one in `state.pending`. soft: the prompt's
    soft tokens, as `Model.prefill` takes them.

    drafter (edgert.draft; none: plain decoding): speculative decoding. The drafter guesses
    the next tokens, and one pass of the model over the last token and the guesses checks them
    all: decode reads every weight once per pass, so each guess that stands is a token for
    free. Exactness: every emitted token is drawn by the sampler from the model's own logits
    at its position, one draw per token as in plain decoding; a guess stands only when the draw
    equals it. Greedy output is therefore the plain output, and sampling keeps the model's
    distribution (for a drafter that proposes one token per position, this is speculative
    sampling: a guess with target probability p stands with probability p). The cache keeps
    only what stands; the sliding layers' rings get back what rejected guesses evicted
    (KVCache.rollback)."""
    drafter = drafter or NoDraft()
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


def prefill_prompt(model: "Model", state: "State", prompt: Sequence[int], soft: "SoftTokens | None"):
    """Feed the pending ids and `prompt`; the last position's logits. Interrupted, what was
    not fed is left pending, to be fed next time (soft tokens cannot be)."""
    feed, soft = take_pending(state, list(prompt), soft)
    start = state.pos
    try:
        return model.prefill(state, feed, soft=soft)
    except BaseException:
        state.pending = feed[state.pos - start:] if soft is None else []
        raise


def take_pending(state: "State", ids: list[int], soft: "SoftTokens | None") -> tuple[list[int], "SoftTokens | None"]:
    """The ids to feed: the state's pending ones (sampled, not yet fed), then `ids`; soft tokens,
    given for `ids`, shifted past the pending ones. The state's pending list is emptied."""
    feed = state.pending + ids
    if soft is not None:
        soft = soft.after(len(state.pending))
    state.pending = []
    return feed, soft


def fit(model: "Model", ids: list[int], max_new_tokens: int, truncate: bool, start: int = 0) -> list[int]:
    """`ids` as they fit in the context after `start` tokens with room to answer; with truncate,
    the oldest ids (after <bos>) are dropped, else a prompt too long is an error that says so."""
    room = model.n_ctx - start - max(1, min(max_new_tokens, model.n_ctx // 2))
    if len(ids) <= room:
        return ids
    if not truncate:
        raise ContextOverflowError(
            f"the prompt has {len(ids)} tokens but the context of {model.n_ctx} has room for {room} "
            f"with {max_new_tokens} new tokens; shorten it, load with a larger n_ctx, or pass truncate=True"
        )
    head = ids[:1] if ids and ids[0] == model.tokenizer.bos else []
    return head + ids[len(ids) - (room - len(head)):]


def text(tokens: Iterator[int], decoder: StreamDecoder) -> Iterator[str]:
    """Token ids as text pieces, always whole UTF-8 characters."""
    for t in tokens:
        piece = decoder.push(t)
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail


def stop_strings(pieces: Iterator[str], stop: Sequence[str]) -> Iterator[str]:
    """Pass text through, ending before the first stop string; text that might begin one is
    held back until it is clear."""
    stop = [s for s in stop if s]
    if not stop:
        yield from pieces
        return
    buf = ""
    for piece in pieces:
        buf += piece
        hits = [buf.find(s) for s in stop if s in buf]
        if hits:
            if min(hits):
                yield buf[:min(hits)]
            return
        hold = max((k for s in stop for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        if len(buf) > hold:
            yield buf[:len(buf) - hold]
            buf = buf[len(buf) - hold:]
    if buf:
        yield buf


def generate(model: "Model", prompt: str | Sequence[int], max_new_tokens: int = 256, stop: Sequence[str] = (),
             raw: bool = False, truncate: bool = False, special: bool = False, draft: str = "auto",
             **sampling) -> Iterator[str]:
    """Model.generate: the continuation of `prompt` as text pieces (see there)."""
    if isinstance(prompt, str):
        raw = raw or not model.has_chat_template
        rendered = prompt if raw else model.format.render([{"role": "user", "content": prompt}])
        ids = model.tokenizer.encode(rendered, add_bos=raw and model.tokenizer.add_bos)
    else:
        ids = [int(i) for i in prompt]
    ids = fit(model, ids, max_new_tokens, truncate)
    sampler = Sampling.of(sampling).sampler()
    tokens = generate_ids(model, model.new_state(), ids, max_new_tokens, sampler, model.stop_ids,
                          drafter=make_drafter(draft, model))
    yield from stop_strings(text(tokens, model.tokenizer.stream(special)), stop)
