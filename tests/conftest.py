"""Session fixtures: reference checkpoints built once with transformers, converted on demand."""

from __future__ import annotations

from pathlib import Path

import pytest


class Checkpoints:
    def __init__(self, root: Path):
        self.root = root
        self._models: dict[str, object] = {}
        self._files: dict[tuple[str, str], Path] = {}

    def hf(self, kind: str):
        """(torch model, checkpoint dir) of a small random Gemma 4 of `kind` ('e2b' or 'e4b')."""
        from tests.reference import build_checkpoint

        if kind not in self._models:
            directory = self.root / kind
            self._models[kind] = build_checkpoint(directory, kind, seed={"e2b": 1, "e4b": 2}[kind])
        return self._models[kind], self.root / kind

    def gguf(self, kind: str, qtype: str) -> Path:
        from edgert.files.convert import convert

        key = (kind, qtype)
        if key not in self._files:
            _, directory = self.hf(kind)
            self._files[key] = convert(directory, self.root / f"{kind}-{qtype}.gguf", qtype)
        return self._files[key]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    return Checkpoints(tmp_path_factory.mktemp("checkpoints"))
