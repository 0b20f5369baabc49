"""How many tokens a drafter guesses: the policy the drafters share (edgert.draft.lookup,
edgert.draft.mtp)."""

from __future__ import annotations


class Adaptive:
    """How many tokens to guess: k doubles after a wholly accepted draft, else becomes one past
    what was accepted, between k_min and k_max. A drafter whose guesses keep failing costs a
    pass's extra work for nothing: after `patience` drafts in a row with none accepted, drafting
    pauses for `pause` tokens (doubling, up to 64, while it keeps failing; reset by a hit)."""

    def __init__(self, k: int, k_min: int = 1, k_max: int = 16, patience: int | None = None):
        self.k, self.k_min, self.k_max, self.patience = k, k_min, k_max, patience
        self.drafted = self.accepted = 0
        self.misses, self.pause, self.paused = 0, 2, 0

    def budget(self, room: int) -> int:
        """Tokens to guess now (0 while paused)."""
        if self.paused:
            self.paused -= 1
            return 0
        return min(self.k, room)

    def update(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted
        self.k = min(self.k_max, 2 * self.k) if accepted == drafted else max(self.k_min, accepted + 1)
        self.misses = 0 if accepted else self.misses + 1
        if accepted:
            self.pause = 2
        elif self.patience is not None and self.misses >= self.patience:
            self.paused, self.pause, self.misses = self.pause, min(64, 2 * self.pause), 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0
