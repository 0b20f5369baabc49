"""The layout cache (edgert.files.layouts): built once, atomically, keyed by the model file and
the layout version, rebuilt when stale or damaged; a model on it computes what the file's own
layout computes; and the file's copies of the packed matrices leave the resident set."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

import edgert
from edgert.files.convert import convert
from quant import QTensor, layout
from tests.reference import GOLDEN_DIR

pytestmark = pytest.mark.aarch64

PROMPT = [2, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 7, 8]


@pytest.fixture(scope="module")
def q4_file(tmp_path_factory):
    return convert(GOLDEN_DIR, tmp_path_factory.mktemp("layouts") / "tiny-q4_0.gguf", "q4_0")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "edgert" / "layouts"


class Calls:
    def __init__(self):
        self.seen = []

    def __call__(self, done, total, what):
        self.seen.append((done, total, what))


def test_built_once_then_mapped_and_equal_to_the_files_layout(q4_file, cache):
    calls = Calls()
    model = edgert.load(q4_file, n_ctx=64, progress=calls)
    assert model.layout_cache is not None and model.layout_cache.parent == cache
    assert calls.seen and calls.seen[-1][0] == calls.seen[-1][1]  # progress ran to its end
    packed = [n for n, t in model.file.tensors.items() if layout.packable(t.qtype, t.shape)]
    assert len(packed) >= 10 and "per_layer_token_embd.weight" not in packed

    again = Calls()
    second = edgert.load(q4_file, n_ctx=64, progress=again)
    assert not again.seen and second.layout_cache == model.layout_cache  # read, not rebuilt
    assert [p.name for p in cache.iterdir()] == [model.layout_cache.name]  # no temporary file left

    # Each product equals the row kernels' but for summation order (tests/test_layout.py); through
    # the model, a changed rounding of an 8-bit activation moves later positions more, as a
    # change of SIMD flavor does: here up to 3% of the largest logit, from 1e-6 per product.
    rows = edgert.load(q4_file, n_ctx=64, layout="rows")
    ours, theirs = second.forward(PROMPT), rows.forward(PROMPT)
    assert np.abs(ours - theirs).max() < 0.06 * np.abs(theirs).max()
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999
    state_a, state_b = second.new_state(), rows.new_state()
    second.prefill(state_a, PROMPT)
    rows.prefill(state_b, PROMPT)
    for token in (5, 6, 7):
        a, b = second.decode_step(state_a, token), rows.decode_step(state_b, token)
        assert np.corrcoef(a, b)[0, 1] > 0.999


def test_a_changed_model_file_or_a_damaged_cache_is_rebuilt(q4_file, cache, tmp_path):
    model_file = tmp_path / "copy.gguf"
    model_file.write_bytes(q4_file.read_bytes())
    first = edgert.load(model_file, n_ctx=64).layout_cache

    with open(first, "r+b") as f:  # cut off: the index at the end is gone
        f.truncate(os.path.getsize(first) // 2)
    calls = Calls()
    assert edgert.load(model_file, n_ctx=64, progress=calls).layout_cache == first and calls.seen

    os.utime(model_file, ns=(1, 1))  # the same path, another file as far as the key can tell
    calls = Calls()
    moved = edgert.load(model_file, n_ctx=64, progress=calls).layout_cache
    assert moved != first and calls.seen
    assert not first.exists()  # the stale cache was deleted by the build that replaced it


def test_a_build_deletes_the_caches_nothing_can_read_again(q4_file, cache, tmp_path):
    kept, removed = tmp_path / "kept.gguf", tmp_path / "removed.gguf"
    for f in (kept, removed):
        f.write_bytes(q4_file.read_bytes())
    kept_cache, removed_cache = (edgert.load(f, n_ctx=64).layout_cache for f in (kept, removed))
    removed.unlink()
    dead_build = cache / f".{kept_cache.name}.{2**22 + 12345}.tmp"  # no process has that pid
    dead_build.write_bytes(b"partial")
    foreign = cache / "other-x8v1-0000000000000000.bin"  # another layout version
    foreign.write_bytes(kept_cache.read_bytes()[:4096])

    other = tmp_path / "other.gguf"
    other.write_bytes(q4_file.read_bytes())
    built = edgert.load(other, n_ctx=64).layout_cache
    assert sorted(cache.iterdir()) == sorted([kept_cache, built])
    assert not removed_cache.exists()


def test_an_interrupted_build_leaves_nothing(q4_file, cache):
    def stop(done, total, what):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        edgert.load(q4_file, n_ctx=64, progress=stop)
    assert not cache.exists() or not list(cache.iterdir())


def test_an_unwritable_cache_falls_back_to_memory(q4_file, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    model = edgert.load(q4_file, n_ctx=64)
    assert model.layout_cache is None
    matrices = [getattr(model.weights.layers[0], f.name) for f in dataclasses.fields(model.weights.layers[0])]
    matrices = [t for t in matrices if isinstance(t, QTensor) and layout.packable(t.qtype, t.shape)]
    assert matrices and all(t.packed is not None for t in matrices)
    assert np.isfinite(model.forward(PROMPT)).all()


def _resident(path) -> int:
    """Resident bytes of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
                inside = len(head) >= 6 and head[5] == str(path)
            elif inside and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc")
def test_the_files_copies_of_packed_matrices_leave_the_resident_set(q4_file, cache):
    """Resident memory does not grow: after the build and a forward pass, the model file's
    resident pages are at most what was not packed (and the few a tied table's lookups touch)."""
    model = edgert.load(q4_file, n_ctx=64)
    model.forward(PROMPT)
    size = os.path.getsize(q4_file)
    packed = sum(t.nbytes for t in model.file.tensors.values() if layout.packable(t.qtype, t.shape))
    assert packed > size / 3
    assert _resident(q4_file.resolve()) <= size - packed + 64 * 4096
