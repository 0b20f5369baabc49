"""Sampling functions: properties that must hold."""

import numpy as np
import pytest

from edgert.sampling import (apply_min_p, apply_repetition_penalty, apply_top_k, apply_top_p, make_sampler,
                             softmax)

LOGITS = np.array([2.0, 1.0, 0.5, -1.0, 3.0], np.float32)


def test_temperature_zero_is_argmax():
    assert make_sampler(temperature=0)(LOGITS, []) == 4


def test_top_k_keeps_k_best():
    out = apply_top_k(LOGITS, 2)
    assert set(np.flatnonzero(np.isfinite(out))) == {0, 4}


def test_top_p_keeps_smallest_nucleus():
    p = softmax(LOGITS)
    out = apply_top_p(LOGITS, 0.7)
    kept = set(np.flatnonzero(np.isfinite(out)))
    assert kept == {4, 0} and p[4] < 0.7 <= p[4] + p[0]


def test_min_p_drops_unlikely():
    out = apply_min_p(LOGITS, 0.2)
    p = softmax(LOGITS)
    assert set(np.flatnonzero(np.isfinite(out))) == set(np.flatnonzero(p >= 0.2 * p.max()))


def test_repetition_penalty_lowers_seen_tokens():
    out = apply_repetition_penalty(LOGITS, [4, 3], 2.0)
    assert out[4] == 1.5 and out[3] == -2.0 and out[0] == LOGITS[0]


def test_seeded_sampling_is_reproducible_and_follows_distribution():
    draws = [make_sampler(temperature=1.0, top_k=0, top_p=1.0, rng=np.random.default_rng(s))(LOGITS, [])
             for s in range(2000)]
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, softmax(LOGITS), atol=0.03)
    s1 = make_sampler(rng=np.random.default_rng(3))
    s2 = make_sampler(rng=np.random.default_rng(3))
    assert [s1(LOGITS, []) for _ in range(20)] == [s2(LOGITS, []) for _ in range(20)]


@pytest.mark.parametrize("top_k, top_p, min_p", [(64, 0.95, 0.0), (0, 0.9, 0.05), (5, 1.0, 0.0), (0, 1.0, 0.0)])
def test_the_sampler_draws_what_the_whole_chain_draws(top_k, top_p, min_p):
    """The sampler works on the ids top-k keeps; over the whole vocabulary the same chain of
    functions draws the same ids for the same seeds (masked ids included)."""
    rng = np.random.default_rng(0)
    for seed in range(200):
        logits = (rng.standard_normal(4096) * 3).astype(np.float32)
        logits[rng.random(4096) < 0.3] = -np.inf  # a constraint's mask
        x = apply_min_p(apply_top_p(apply_top_k(logits, top_k), top_p), min_p)
        probs = softmax(x.astype(np.float64) / 0.8)
        whole = int(np.random.default_rng(seed).choice(probs.size, p=probs))
        fast = make_sampler(0.8, top_k, top_p, min_p, rng=np.random.default_rng(seed))(logits, [])
        assert fast == whole


def test_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        make_sampler(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        make_sampler(top_p=0)
