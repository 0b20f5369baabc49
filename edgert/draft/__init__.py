"""Speculative decoding: drafters (Gemma 4's own drafter, prompt lookup), which guess the next
tokens; edgert.generation.generate_ids checks their guesses as it decodes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgert.draft.adaptive import Adaptive
from edgert.draft.lookup import Lookup, lookup
from edgert.draft.mtp import Assistant, Mtp

if TYPE_CHECKING:
    from edgert.model import Model

DRAFTS = ("auto", "none", "lookup", "mtp")


def drafter(kind: str | None, model: "Model"):
    """The drafter a `draft=` option names for `model` (None: plain decoding). "auto": the
    model's drafter when it has one ("mtp"), else none."""
    if kind == "auto":
        kind = "mtp" if model.assistant is not None else "none"
    if kind in (None, "none"):
        return None
    if kind == "lookup":
        return Lookup()
    if kind == "mtp":
        return Mtp(model)
    raise ValueError(f"draft must be one of {', '.join(DRAFTS)}, not {kind!r}")


__all__ = ["DRAFTS", "Adaptive", "Assistant", "Lookup", "Mtp", "drafter", "lookup"]
