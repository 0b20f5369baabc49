"""Prompt-lookup drafting (llama.cpp's llama-lookup, Saxena's prompt lookup decoding): the
tokens that followed the last earlier occurrence of the text's final n-gram are guessed to
follow again. Free to compute, and right often where the answer repeats its prompt
(summaries, rewrites, code edits, answers from a given document)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from edgert.draft.adaptive import Adaptive

if TYPE_CHECKING:
    from edgert.model import State


def lookup(history: Sequence[int], k: int, n_max: int = 4, n_min: int = 1) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of history's last n tokens,
    the longest n from n_max down to n_min that has one; [] when none does."""
    if k <= 0 or len(history) < n_min + 1:
        return []
    h = np.asarray(history, dtype=np.int64)
    for n in range(min(n_max, len(h) - 1), n_min - 1, -1):
        tail = h[-n:]
        # starts j < len(h) - n of earlier copies of the tail (the tail itself excluded)
        starts = np.flatnonzero(h[:len(h) - n] == tail[0])
        for j in starts[::-1]:
            if np.array_equal(h[j:j + n], tail):
                follow = h[j + n:j + n + k]
                if len(follow):
                    return follow.tolist()
    return []


class Lookup(Adaptive):
    """A drafter over the text so far: `draft` proposes up to `k` tokens, k following the
    acceptance (Adaptive). A guess costs nothing to make, so drafting never pauses."""

    def __init__(self, k: int = 4, k_min: int = 1, k_max: int = 16, n_max: int = 4):
        super().__init__(k, k_min, k_max)
        self.n_max = n_max

    def draft(self, state: "State | None", history: Sequence[int], room: int) -> list[int]:
        return lookup(history, self.budget(room), self.n_max)
