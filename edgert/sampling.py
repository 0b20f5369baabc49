"""Sampling as composable pure functions over a logits vector; the random
generator is passed in. Order as llama.cpp's default chain: penalties, top-k,
top-p, min-p, temperature, then draw. Temperature 0 means argmax."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Sequence

import numpy as np

NEG_INF = np.float32(-np.inf)


def apply_repetition_penalty(logits: np.ndarray, history: Sequence[int], penalty: float) -> np.ndarray:
    """Divide positive logits of seen tokens by `penalty`, multiply negative ones (CTRL / llama.cpp)."""
    if penalty == 1.0 or not len(history):
        return logits
    seen = np.unique(np.asarray(history, dtype=np.int64))
    out = logits.copy()
    vals = out[seen]
    out[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def apply_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, NEG_INF)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def apply_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = softmax(logits)[order]
    cut = int(np.searchsorted(np.cumsum(probs), p)) + 1
    out = np.full_like(logits, NEG_INF)
    out[order[:cut]] = logits[order[:cut]]
    return out


def apply_min_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Drop tokens whose probability is below p times the most likely token's."""
    if p <= 0.0:
        return logits
    probs = softmax(logits)
    return np.where(probs >= p * probs.max(), logits, NEG_INF)


Sampler = Callable[[np.ndarray, Sequence[int]], int]


@dataclass(frozen=True)
class Sampling:
    """The sampling options and their defaults, written here once: the library's `generate`,
    `chat` and sessions take them as keywords, and the command line's flags read their
    defaults here. Temperature 1, top-k 64 and top-p 0.95 are Gemma's recommended settings."""

    temperature: float = 1.0
    top_k: int = 64
    top_p: float = 0.95
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    @classmethod
    def of(cls, options: dict) -> "Sampling":
        """The options given as keywords; an unknown one is an error that names the known ones."""
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown sampling options {sorted(unknown)}; "
                            f"they are {', '.join(f.name for f in fields(cls))}")
        return cls(**options)

    def sampler(self) -> "Sampler":
        return make_sampler(self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty,
                            np.random.default_rng(self.seed))


def make_sampler(temperature: float = Sampling.temperature, top_k: int = Sampling.top_k,
                 top_p: float = Sampling.top_p, min_p: float = Sampling.min_p,
                 repetition_penalty: float = Sampling.repetition_penalty,
                 rng: np.random.Generator | None = None) -> Sampler:
    """A closure (logits, history) -> token id."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    rng = rng if rng is not None else np.random.default_rng()

    def sample(logits: np.ndarray, history: Sequence[int]) -> int:
        x = apply_repetition_penalty(np.asarray(logits, dtype=np.float32), history, repetition_penalty)
        if temperature == 0:
            return int(np.argmax(x))
        # the chain above, over the ids that top-k keeps: sorting 262144 logits for top-p would
        # cost more than the decode step; ids top-k drops have probability 0 either way
        ids = candidates(x, top_k)
        x = apply_min_p(apply_top_p(x[ids], top_p), min_p)
        probs = softmax(x.astype(np.float64) / temperature)
        return int(ids[rng.choice(probs.size, p=probs)])

    return sample


def candidates(logits: np.ndarray, k: int) -> np.ndarray:
    """The ids apply_top_k keeps (ties with the k-th included) that are not masked (-inf), in order."""
    if 0 < k < logits.size:
        kept = np.flatnonzero(logits >= np.partition(logits, -k)[-k])
    else:
        kept = np.arange(logits.size)
    finite = kept[np.isfinite(logits[kept])]
    return finite if finite.size else kept
