"""Speculative decoding: drafters (prompt lookup) and the loop that verifies their guesses."""

from edgert.draft.lookup import Lookup, lookup

DRAFTS = ("none", "lookup")


def drafter(kind: str):
    """The drafter a `draft=` option names (None for "none")."""
    if kind in (None, "none"):
        return None
    if kind == "lookup":
        return Lookup()
    raise ValueError(f"draft must be one of {', '.join(DRAFTS)}, not {kind!r}")


__all__ = ["DRAFTS", "Lookup", "drafter", "lookup"]
