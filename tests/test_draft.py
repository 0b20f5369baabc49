"""Speculative decoding with prompt lookup: the same tokens as plain decoding, greedy and
sampled with a seed (one draw per token from bit-identical logits), and the same cache after
rejected guesses, past the sliding window; on the small E2B/E4B-like models and the real
Gemma 3 270M."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgert
from edgert.draft import Lookup, lookup
from edgert.draft.speculate import generate_ids as drafted
from edgert.generation import generate_ids
from edgert.sampling import make_sampler


def test_lookup_continues_the_latest_longest_match():
    h = [5, 1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 4, 2, 3]
    assert lookup(h, 3) == [7, 8, 4]  # "2 3" last seen before "7 8 4"; "4 2 3" never was
    assert lookup(h, 3, n_max=1) == [7, 8, 4]
    assert lookup([1, 2, 3], 4) == []
    assert lookup(h + [6], 2) == []


def test_k_follows_acceptance():
    d = Lookup(k=4, k_max=16)
    d.update(4, 4)
    assert d.k == 8
    d.update(8, 2)
    assert d.k == 3 and d.acceptance == 0.5


@pytest.fixture(scope="module", params=["e2b", "e4b"])
def tiny(request, checkpoints):
    return edgert.load(checkpoints.gguf(request.param, "q8_0"))


@pytest.fixture(scope="module")
def gemma3():
    from edgert.demo import demo_model

    return edgert.load(demo_model(), n_ctx=1024)


def _both(model, prompt, n, sampler):
    """Plain and drafted ids from fresh states, the states, and the drafter."""
    plain_state, draft_state, d = model.new_state(), model.new_state(), Lookup()
    plain = list(generate_ids(model, plain_state, prompt, n, sampler(), model.stop_ids))
    fast = list(drafted(model, draft_state, prompt, n, sampler(), model.stop_ids, d))
    return plain, fast, plain_state, draft_state, d


# prompts that repeat themselves, so that guesses are made, accepted and rejected
_prompts = st.lists(st.integers(120, 800), min_size=3, max_size=10).flatmap(
    lambda piece: st.integers(2, 4).map(lambda times: [2] + piece * times))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=_prompts, n=st.integers(0, 40))
def test_greedy_is_the_same_with_and_without_drafting(tiny, prompt, n):
    plain, fast, *_ = _both(tiny, prompt, n, lambda: make_sampler(temperature=0))
    assert fast == plain


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=_prompts, seed=st.integers(0, 2**16))
def test_seeded_sampling_is_the_same_with_and_without_drafting(tiny, prompt, seed):
    """One draw per emitted token, from the same logits: the same ids for the same seed, so
    the distribution is the model's own (a guess stands with the probability the model gives it)."""
    plain, fast, *_ = _both(tiny, prompt, 30, lambda: make_sampler(temperature=0.7, rng=np.random.default_rng(seed)))
    assert fast == plain


def test_the_cache_after_rejected_guesses_is_plain_decoding_s(tiny):
    prompt = [2] + list(range(200, 230)) * 3  # past the sliding window of 8
    plain, fast, a, b, d = _both(tiny, prompt, 60, lambda: make_sampler(temperature=0))
    assert fast == plain and d.drafted > d.accepted > 0  # some guesses were rejected
    assert a.tokens == b.tokens and a.pending == b.pending
    for i in a.caches:
        for x, y in zip(a.caches[i].arrays, b.caches[i].arrays):
            np.testing.assert_array_equal(x, y)


def test_gemma3_rewrites_the_same_and_accepts_guesses(gemma3):
    text = ("<bos><start_of_turn>user\nRepeat this sentence exactly: The harbour at dawn is grey, and the "
            "neighbours watch the boats come in.<end_of_turn>\n<start_of_turn>model\n")
    prompt = gemma3.tokenizer.encode(text)
    plain, fast, a, b, d = _both(gemma3, prompt, 40, lambda: make_sampler(temperature=0))
    assert fast == plain and a.tokens == b.tokens
    assert d.accepted > 5


def test_a_reader_that_stops_mid_draft_keeps_what_it_took(tiny):
    prompt = [2] + list(range(300, 320)) * 3
    state = tiny.new_state()
    taken = []
    for t in drafted(tiny, state, prompt, 50, make_sampler(temperature=0), tiny.stop_ids, Lookup(k=8)):
        taken.append(t)
        if len(taken) == 7:
            break
    assert state.unconfirmed == 0 and state.tokens[:len(prompt)] == prompt
    assert state.tokens[len(prompt):] + state.pending == taken


def test_draft_option_on_generate_and_chat(gemma3):
    prompt = "Repeat: one two three four five six seven eight nine ten"
    a = "".join(gemma3.generate(prompt, max_new_tokens=24, temperature=0))
    b = "".join(gemma3.generate(prompt, max_new_tokens=24, temperature=0, draft="lookup"))
    assert a == b
    with pytest.raises(ValueError, match="draft must be one of auto, none, lookup, mtp"):
        list(gemma3.generate(prompt, draft="medusa"))
    with pytest.raises(ValueError, match="draft='mtp' needs a drafter"):
        list(gemma3.generate(prompt, draft="mtp"))
