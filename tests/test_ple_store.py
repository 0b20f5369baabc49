"""The PLE table stays on disk: identical rows in every mode, resident pages bounded by
the rows touched, the pread cache bounded by its cap, clear errors."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

import edgert
from ple_store import INLINE_ROWS, PAGE, PLEError, PLEStore, TableRegion
from quant import BLOCKS, QTensor, QType, row_bytes

MODES = ("mmap", "pread", "ram")


@pytest.mark.parametrize("qtype", ["f32", "q8_0", "q4_0"])
def test_modes_give_identical_inputs_and_logits(checkpoints, qtype):
    path = checkpoints.gguf("e2b", qtype)
    ids = [2] + list(range(200, 230))
    results = {}
    for mode in MODES:
        model = edgert.load(path, n_ctx=64, ple=mode, ple_cache_mb=0.01)
        state = model.new_state()
        prefill = model.prefill(state, ids, logits="all")
        decode = [model.decode_step(state, t) for t in (5, 77, 5)]
        results[mode] = (model.weights.ple.rows(ids), prefill, decode)
    for mode in ("pread", "ram"):
        for got, want in zip(results[mode], results["mmap"]):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_stats_count_hits_and_reads(checkpoints):
    model = edgert.load(checkpoints.gguf("e2b", "q8_0"), n_ctx=64, ple="pread", ple_cache_mb=1)
    store = model.weights.ple
    store.rows([5, 6, 5])
    store.rows([6])
    s = model.ple_stats()
    assert (s.lookups, s.rows_read, s.cache_hits) == (4, 2, 2)
    assert s.bytes_read == 2 * store.row_bytes
    assert s.resident_bytes == 2 * store.row_bytes
    assert set(s.latency_us) == {"p50", "p90", "p99", "mean"} and s.latency_us["p50"] > 0


def test_bad_requests(checkpoints, tmp_path):
    path = checkpoints.gguf("e2b", "q8_0")
    with pytest.raises(edgert.EdgeRTError, match="mmap, pread, ram"):
        edgert.load(path, ple="disk")
    with pytest.raises(edgert.EdgeRTError, match="cannot hold one row"):
        edgert.load(path, ple="pread", ple_cache_mb=1e-6)
    model = edgert.load(path, n_ctx=64)
    store = model.weights.ple
    with pytest.raises(PLEError, match="out of the PLE table's range"):
        store.rows([store.n_rows])
    with pytest.raises(PLEError, match="past the end of the file"):
        PLEStore(store.table, store.n_layer, store.dim, "pread", 1, TableRegion(Path(path), os.path.getsize(path)))


# --- a full-size E2B table: 262144 x (35 x 256) Q4_0 values, 1.3 GB ---------------------------------

N_VOCAB, N_LAYER, DIM = 262144, 35, 256


@pytest.fixture(scope="module")
def full_table(tmp_path_factory) -> Path:
    """The table as a sparse file: its size is real, its blocks are zeros (d = 0), and no page
    of it is in the page cache until read."""
    path = tmp_path_factory.mktemp("ple") / "e2b-ple-q4_0.bin"
    with open(path, "wb") as f:
        f.truncate(N_VOCAB * row_bytes(QType.Q4_0, N_LAYER * DIM))
    return path


def _store(path: Path, mode: str, cache_mb: float = 64) -> PLEStore:
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(N_VOCAB, -1)
    return PLEStore(QTensor(raw, QType.Q4_0, (N_VOCAB, N_LAYER * DIM)), N_LAYER, DIM, mode, cache_mb,
                    TableRegion(path, 0))


def _smaps_rss(path: Path) -> int:
    """Resident bytes of this process's mappings of `path`, from /proc/self/smaps."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_generating_256_tokens_touches_only_their_rows(full_table):
    store = _store(full_table, "mmap")
    assert _smaps_rss(full_table) == 0
    ids = np.random.default_rng(0).choice(N_VOCAB, 256, replace=False)
    for i in ids:  # one token at a time, as decoding asks
        assert store.rows([i]).shape == (1, N_LAYER, DIM)
    pages_per_row = -(-store.row_bytes // PAGE) + 1  # a row may straddle one more page
    bound = len(ids) * pages_per_row * PAGE
    assert 0 < _smaps_rss(full_table) <= bound
    assert 0 < store.resident_bytes() <= bound
    assert store.resident_bytes() < store.stats().table_bytes / 400  # 0.25% of the table


def test_pread_keeps_the_table_under_its_cap(full_table):
    cap_mb = 0.5
    store = _store(full_table, "pread", cache_mb=cap_mb)
    for i in np.random.default_rng(1).choice(N_VOCAB, 300, replace=False):
        store.rows([i])
    s = store.stats()
    assert s.rows_read == 300 and s.resident_bytes <= cap_mb * 2**20
    assert _smaps_rss(full_table) == 0  # nothing of the file is mapped in
    store.close()


def test_block_rows_match_the_float_rows():
    """Rows of each stored type come out dequantized with the sqrt(dim) scale fused."""
    rng = np.random.default_rng(2)
    values = rng.standard_normal((10, 2 * 64)).astype(np.float32)
    from quant import quantize, dequantize

    for qtype in (QType.Q4_0, QType.Q8_0, QType.F16):
        raw = values.astype(np.float16) if qtype == QType.F16 else quantize(values, qtype)
        store = PLEStore(QTensor(raw, qtype, values.shape), 2, 64)
        want = dequantize(raw, qtype, 128).reshape(10, 2, 64) * np.float32(8.0)
        np.testing.assert_array_equal(store.rows(np.arange(10)), want)
        assert BLOCKS[qtype].values in (1, 32)


def test_prefetch_reads_the_rows_beside_the_step_and_records_its_wait(checkpoints, monkeypatch):
    """With prefetch, rows that may need the disk (a prompt's, or any not in memory) are read on
    the store's own thread while layer 0 runs; a decode step's rows already in memory, and every
    row without prefetch, on the caller's. Either way the logits are the same and the wait is
    recorded. (How much the thread hides is a speed figure: `edgert bench` measures it.)"""
    path = checkpoints.gguf("e2b", "q8_0")
    read_on = []
    rows = PLEStore.rows

    def recording(self, ids):
        read_on.append(threading.current_thread().name)
        return rows(self, ids)

    monkeypatch.setattr(PLEStore, "rows", recording)
    caller = {threading.current_thread().name}
    cases = {  # (prefetch, ids, rows in memory?) -> where they must be read
        (False, 4, True): "caller", (True, 4, True): "caller", (True, 4, False): "ple",
        (False, INLINE_ROWS + 1, True): "caller", (True, INLINE_ROWS + 1, True): "ple",
    }
    logits = {}
    for (prefetch, n, in_memory), where in cases.items():
        read_on.clear()
        model = edgert.load(path, n_ctx=64, ple_prefetch=prefetch)
        if not in_memory:  # as after the page cache dropped them
            monkeypatch.setattr(model.weights.ple, "resident", lambda ids: False)
        logits[prefetch, n, in_memory] = model.forward(list(range(40, 40 + n)))
        s = model.ple_stats()
        assert read_on and s.wait_us["mean"] >= 0
        if where == "ple":
            assert all(name.startswith("ple") for name in read_on), read_on
        else:
            assert set(read_on) == caller, read_on
    for (_, n, _), got in logits.items():
        np.testing.assert_array_equal(got, logits[False, n, True])


@pytest.mark.parametrize("mode", MODES)
def test_resident_says_whether_a_row_is_in_memory(checkpoints, mode):
    """`resident` (what decides a decode step's read is made inline): the rows a read just
    touched are in memory in every mode, rows not yet read are not in pread's row cache, and an
    id out of the table is never resident (the read then raises the clear error)."""
    model = edgert.load(checkpoints.gguf("e2b", "q8_0"), n_ctx=64, ple=mode, ple_cache_mb=1)
    store = model.weights.ple
    if mode == "pread":
        assert not store.resident([3, 5])
    store.rows([3, 5])
    assert store.resident([3, 5]) and store.resident([5])
    assert not store.resident([3, store.n_rows]) and not store.resident([-1])
    with pytest.raises(PLEError, match="out of the PLE table's range"):
        store.wait(store.fetch([store.n_rows]))


def test_converter_writes_the_table_at_its_own_precision(checkpoints, tmp_path):
    """--ple-type: the table alone in Q4_0, its added error reported, the rest untouched."""
    from edgert.files.convert import PLE_TABLE, convert

    _, hf_dir = checkpoints.hf("e4b")  # its table rows (12 layers x 16) fill whole 32-value blocks
    errors: dict[str, float] = {}
    path = convert(hf_dir, tmp_path / "ple-q4.gguf", "q8_0", ple_type="q4_0", errors=errors)
    model = edgert.load(path)
    assert model.file.tensors[PLE_TABLE].qtype == QType.Q4_0
    assert model.file.tensors["blk.0.ffn_up.weight"].qtype == QType.Q8_0
    assert 0.03 < errors[PLE_TABLE] < 0.2  # 4-bit: about 0.1; 8-bit matrices below 0.01
    assert errors["blk.0.ffn_up.weight"] < 0.01
    reference = edgert.load(checkpoints.gguf("e4b", "f32"))
    rows, exact = model.weights.ple.rows([7, 9]), reference.weights.ple.rows([7, 9])
    measured = np.sqrt(np.mean((rows - exact) ** 2) / np.mean(exact ** 2))
    assert abs(measured - errors[PLE_TABLE]) < 0.5 * errors[PLE_TABLE]
