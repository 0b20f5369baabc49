"""Per-layer embedding (PLE) rows, read on demand from the table in the model file.

E2B's PLE table is 262144 x (35 x 256) values, nearly half of the model; a token
needs one row of it. Three ways to hold it, with bit-identical rows:

- "mmap" (default): rows are read where the file maps them; the table's region is
  advised MADV_RANDOM, so touching a row does not read ahead into its neighbours.
- "pread": rows are read with os.pread into a bounded LRU cache of `cache_mb`, and
  the page cache is told to drop what was read (POSIX_FADV_DONTNEED), so DRAM for
  the table stays under the cap.
- "ram": the whole table is read into memory, for machines that have it.

A token's row is needed at the end of the first layer, not at its start: `fetch`
starts reading on a background thread and returns a handle to wait on, so the read
overlaps layer 0's compute. A decode step whose rows are in memory already reads them
on the caller's thread instead: that read cannot wait on the disk, and the thread would
only take the GIL and a core from the step.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quant import QTensor, dequantize

MODES = ("mmap", "pread", "ram")
PAGE = mmap.PAGESIZE
# A step of at most this many ids (decode, a short draft) reads rows that are in memory on the
# caller's thread: with the thread, E2B's Q4_K_M decode step took 2% longer on Zen 4 (two
# in-process A/Bs, BENCHMARKS.md), the row costing 0.2 ms either way. A prompt's many rows still
# go to the thread.
INLINE_ROWS = 8
_libc = ctypes.CDLL(None, use_errno=True)


class PLEError(ValueError):
    """A PLE table or request that cannot be served (bad region, row, mode or cache size)."""


@dataclass(frozen=True)
class TableRegion:
    """Where the table lies in the model file: path and byte offset of its first row."""

    path: Path
    offset: int


@dataclass(frozen=True)
class PLEStats:
    mode: str
    lookups: int  # rows asked for
    cache_hits: int  # pread: rows served from the row cache
    rows_read: int  # pread: rows read from the file
    bytes_read: int  # pread: bytes read from the file
    resident_bytes: int  # the table's bytes in DRAM now (mmap: resident pages of its mapping)
    table_bytes: int
    latency_us: dict  # percentiles of one `rows` call: {"p50": .., "p90": .., "p99": ..}
    wait_us: dict  # percentiles of the time the forward pass waited for its rows (what prefetch hides)


class PLEStore:
    """Rows of the packed table (n_vocab, n_layer * dim) as (n, n_layer, dim) float32, scaled by sqrt(dim)."""

    def __init__(self, table: QTensor, n_layer: int, dim: int, mode: str = "mmap", cache_mb: float = 64.0,
                 region: TableRegion | None = None, prefetch: bool = True):
        if table.shape[1] != n_layer * dim:
            raise PLEError(f"PLE table has {table.shape[1]} columns, expected {n_layer} x {dim}")
        if mode not in MODES:
            raise PLEError(f"PLE mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.table, self.n_layer, self.dim, self.mode = table, n_layer, dim, mode
        self.n_rows, self.row_bytes = table.raw.shape[0], table.raw.shape[1] * table.raw.itemsize
        self.scale = np.float32(dim ** 0.5)  # Gemma4TextScaledWordEmbedding's embed_scale
        self._lock = threading.Lock()
        self._latency = collections.deque(maxlen=10000)
        self._waits = collections.deque(maxlen=10000)
        self.prefetch = prefetch
        self.lookups = self.cache_hits = self.rows_read = self.bytes_read = 0
        self._pool: ThreadPoolExecutor | None = None
        if region is not None:
            size = region.path.stat().st_size
            if region.offset + self.n_rows * self.row_bytes > size:
                raise PLEError(f"the PLE table of {region.path} runs past the end of the file "
                               f"({region.offset + self.n_rows * self.row_bytes} > {size} bytes); the file is truncated")
        self.region = region
        if mode == "mmap":
            self._advise(mmap.MADV_RANDOM)
            self._table_address = table.raw.ctypes.data
            self._row_pages = ctypes.c_ubyte * (self.row_bytes // PAGE + 2)  # mincore's answer for a row
        elif mode == "pread":
            if region is None:
                raise PLEError("pread mode needs the table's place in the file")
            self._capacity = int(cache_mb * 2**20) // self.row_bytes
            if self._capacity < 1:
                raise PLEError(f"a PLE cache of {cache_mb} MB cannot hold one row of {self.row_bytes} bytes; "
                               f"give at least {self.row_bytes / 2**20:.3f} MB")
            self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
            self._fd = os.open(region.path, os.O_RDONLY)
        else:
            self._ram = np.array(table.raw)

    # --- rows ---------------------------------------------------------------------------------

    def rows(self, ids) -> np.ndarray:
        """(n,) token ids -> (n, n_layer, dim) scaled rows."""
        t0 = time.perf_counter()
        ids = self._check(ids)
        raw = self._raw_rows(ids)
        out = dequantize(raw, self.table.qtype, self.table.shape[1]) * self.scale
        out = out.reshape(len(ids), self.n_layer, self.dim)
        self._latency.append(time.perf_counter() - t0)
        return out

    def fetch(self, ids) -> Future:
        """Start reading rows on a background thread; `wait` on the handle gives what `rows`
        would. They are read now, on the caller's thread, with prefetch off, and when a step of
        at most INLINE_ROWS ids finds its rows in memory (`resident`)."""
        ids = np.array(ids, dtype=np.int64).reshape(-1)
        if not self.prefetch or (len(ids) <= INLINE_ROWS and self.resident(ids)):
            done = _ReadNow()
            done.set_result(self.rows(ids))
            return done
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ple")
        return self._pool.submit(self.rows, ids)

    def wait(self, pending: Future) -> np.ndarray:
        """The rows of a `fetch`, recording how long the caller was held up by them: the
        read's whole time when it was made on the caller's thread, only what compute did not
        cover when it was made on the store's."""
        t0 = time.perf_counter()
        rows = pending.result()
        blocked = time.perf_counter() - t0
        self._waits.append(self._latency[-1] if isinstance(pending, _ReadNow) else blocked)
        return rows

    def resident(self, ids) -> bool:
        """Whether reading the rows of `ids` needs no disk: every page they lie on is in the
        page cache (mincore; mmap mode), each is in the row cache (pread), or the table is in
        DRAM (ram). False for an id out of range: `rows` then says what is wrong."""
        try:
            ids = self._check(ids).tolist()
        except PLEError:
            return False
        if self.mode == "ram":
            return True
        if self.mode == "pread":
            with self._lock:
                return all(i in self._cache for i in ids)
        flags = self._row_pages()
        for i in ids:
            start = self._table_address + i * self.row_bytes
            first = start - start % PAGE
            pages = (start + self.row_bytes - first + PAGE - 1) // PAGE
            if _libc.mincore(ctypes.c_void_p(first), ctypes.c_size_t(pages * PAGE), flags) != 0:
                return False
            if not all(b & 1 for b in flags[:pages]):
                return False
        return True

    def _check(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_rows):
            bad = ids[(ids < 0) | (ids >= self.n_rows)][0]
            raise PLEError(f"token id {bad} is out of the PLE table's range 0..{self.n_rows - 1}")
        return ids

    def _raw_rows(self, ids: np.ndarray) -> np.ndarray:
        with self._lock:
            self.lookups += len(ids)
        if self.mode == "mmap":
            return self.table.raw[ids]
        if self.mode == "ram":
            return self._ram[ids]
        return np.stack([self._pread_row(int(i)) for i in ids]) if len(ids) else self.table.raw[:0]

    def _pread_row(self, i: int) -> np.ndarray:
        with self._lock:
            row = self._cache.get(i)
            if row is not None:
                self._cache.move_to_end(i)
                self.cache_hits += 1
                return row
        offset = self.region.offset + i * self.row_bytes
        data = os.pread(self._fd, self.row_bytes, offset)
        if len(data) != self.row_bytes:
            raise PLEError(f"row {i} of the PLE table could not be read whole from {self.region.path}")
        os.posix_fadvise(self._fd, offset, self.row_bytes, os.POSIX_FADV_DONTNEED)
        row = np.frombuffer(data, dtype=self.table.raw.dtype)
        with self._lock:
            self.rows_read += 1
            self.bytes_read += self.row_bytes
            self._cache[i] = row
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return row

    # --- memory -------------------------------------------------------------------------------

    def _span(self) -> tuple[int, int]:
        """Page-aligned (address, length) of the table's mapping."""
        raw = self.table.raw
        start = raw.ctypes.data
        end = start + raw.shape[0] * raw.strides[0]
        aligned = start - start % PAGE
        return aligned, end - aligned

    def _advise(self, advice: int) -> None:
        addr, length = self._span()
        _libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), ctypes.c_int(advice))

    def resident_bytes(self) -> int:
        """Bytes of the table in DRAM: resident pages of its mapping (mincore), the row cache, or the copy."""
        if self.mode == "ram":
            return int(self._ram.nbytes)
        if self.mode == "pread":
            with self._lock:
                return len(self._cache) * self.row_bytes
        addr, length = self._span()
        pages = (length + PAGE - 1) // PAGE
        vec = (ctypes.c_ubyte * pages)()
        if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(length), vec) != 0:
            return -1
        return int(np.frombuffer(vec, dtype=np.uint8).astype(bool).sum()) * PAGE

    def stats(self) -> PLEStats:
        def percentiles(seconds) -> dict:
            us = np.array(seconds) * 1e6
            return {f"p{p}": float(np.percentile(us, p)) for p in (50, 90, 99)} | {"mean": float(us.mean())} \
                if len(us) else {}

        return PLEStats(self.mode, self.lookups, self.cache_hits, self.rows_read, self.bytes_read,
                        self.resident_bytes(), self.n_rows * self.row_bytes, percentiles(self._latency),
                        percentiles(self._waits))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self.mode == "pread":
            os.close(self._fd)


class _ReadNow(Future):
    """The handle of a read `fetch` made on the caller's thread: done when returned."""
