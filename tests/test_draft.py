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
from edgert.draft import Adaptive, Lookup, lookup
from edgert.generation import generate_ids
from tests.reference import assert_same_caches, plain_ids
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
    plain = list(plain_ids(model, plain_state, prompt, n, sampler(), model.stop_ids))
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
    assert_same_caches(a, b)


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


class _Fixed(Adaptive):
    """A drafter that always guesses the same tokens (some drawn, some not)."""

    def __init__(self, guesses: list[int]):
        super().__init__(len(guesses), len(guesses), len(guesses))
        self.guesses = guesses

    def draft(self, state, history, room):
        return self.guesses[:room]


def test_drafted_sampling_draws_from_the_models_distribution(checkpoints):
    """A chi-square test: the first two sampled tokens, drawn 3000 times with a drafter whose
    guess for the second is often but not always drawn, against the model's own joint probabilities
    p(t1) p(t2 | t1) at temperature 0.3 (no top-k or top-p)."""
    model = edgert.load(checkpoints.gguf("e2b", "q8_0"), n_ctx=32, threads=1)  # tiny: no team
    prompt = [2, 50, 51, 52, 53, 50, 51]
    T = 0.3  # a random model spreads its mass thin: concentrate it, so that pairs have counts

    def probs(ids):
        x = model.forward(ids)[-1].astype(np.float64) / T
        p = np.exp(x - x.max())
        return p / p.sum()

    p1 = probs(prompt)
    first = [int(t) for t in np.flatnonzero(p1 > 2e-3)]
    joint = {(a, b): p1[a] * q for a in first for b, q in enumerate(probs(prompt + [a])) if q > 0}
    best = max(joint, key=joint.get)
    d = _Fixed([best[1]])
    n, counts = 3000, {}
    rng = np.random.default_rng(1)
    for _ in range(n):
        sampler = make_sampler(temperature=T, top_k=0, top_p=1.0, min_p=0.0, rng=rng)
        # a budget of 3: the guess for t2 is checked by the pass that feeds t1
        got = tuple(drafted(model, model.new_state(), prompt, 3, sampler, set(), d))[:2]
        counts[got] = counts.get(got, 0) + 1
    assert d.accepted > 0 and d.drafted > d.accepted  # guesses both drawn and not
    bins = [pair for pair, p in joint.items() if p * n >= 5]
    observed = [counts.get(pair, 0) for pair in bins] + [n - sum(counts.get(pair, 0) for pair in bins)]
    expected = [joint[pair] * n for pair in bins] + [n * (1 - sum(joint[pair] for pair in bins))]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    df = len(bins)
    z = 3.09  # p = 0.001; Wilson-Hilferty's chi-square quantile
    assert len(bins) >= 5 and chi2 < df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def test_a_verify_step_holds_no_more_than_a_sliding_window(tiny):
    """A verify step's queries each read the sliding ring as if decoded alone, so the step must
    fit in the ring: a drafter that would guess more is given less room (hypothesis found 8
    guesses and their token, 9 ids, failing on the small models' window of 8)."""
    prompt = [2] + list(range(300, 312)) * 4
    plain = list(plain_ids(tiny, tiny.new_state(), prompt, 30, make_sampler(temperature=0), tiny.stop_ids))
    d = Lookup(k=16, k_min=16, k_max=16)
    fast = list(drafted(tiny, tiny.new_state(), prompt, 30, make_sampler(temperature=0), tiny.stop_ids, d))
    assert fast == plain and d.drafted > 0 and tiny.max_verify == 8
    with pytest.raises(edgert.EdgeRTError, match="does not fit"):
        tiny.verify(tiny.new_state(), list(range(300, 309)))


def drafted(model, state, prompt, n, sampler, stop_ids, d, soft=None):
    return generate_ids(model, state, prompt, n, sampler, stop_ids, soft, d)
