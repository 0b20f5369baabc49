"""KV caches: an append cache for global layers, a ring of `sliding_window`
entries for sliding ones, and none at all for KV-shared layers.

Entries are stored in one of three types, chosen at load (`kv_type`), as llama.cpp's
`--cache-type-k/-v`:

- "f32": float32, exact;
- "f16": IEEE half, kept as its 16 bits (uint16: Numba has no float16), the default;
- "q8_0": blocks of 32 values along head_dim, int8 values and one half scale per block
  (34 bytes per 32 values, llama.cpp's Q8_0): d = max|x| / 127, q = round(x / d).

A layer's K (and V) is then a pair (values, scales): values (slots, n_kv, head_dim) of
float32, uint16 or int8, and scales (slots, n_kv, head_dim / 32) of half bits for q8_0
or (slots, n_kv, 0) for the others. edgert.kernels.attention reads all three."""

from __future__ import annotations

import mmap
from typing import NamedTuple

import numpy as np

from edgert.config import LayerSpec, ModelConfig
from edgert.kernels import encode_kv, store_kv

KV_TYPES = ("f16", "q8_0", "f32")
DEFAULT_KV = "f16"  # as llama.cpp
Q8_BLOCK = 32
_STORED = {"f32": np.float32, "f16": np.uint16, "q8_0": np.int8}  # how each type's values are kept


class KVView(NamedTuple):
    """What the queries of a step may attend to (masking is the attention's): K and V as
    (values, scales) pairs, and the position each slot holds (-1: empty)."""

    k: np.ndarray
    k_scale: np.ndarray
    v: np.ndarray
    v_scale: np.ndarray
    pos: np.ndarray


def encode(x: np.ndarray, kv_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, n_kv, head_dim) float32 -> (values, scales) as the cache stores them: numpy's
    reference, which the cache's compiled writes (edgert.kernels.store_kv, encode_kv) are held
    to bit for bit by the tests."""
    x = np.asarray(x, dtype=np.float32)
    if kv_type == "f32":
        return x, np.empty(x.shape[:-1] + (0,), dtype=np.uint16)
    if kv_type == "f16":
        return x.astype(np.float16).view(np.uint16), np.empty(x.shape[:-1] + (0,), dtype=np.uint16)
    blocks = x.reshape(x.shape[:-1] + (-1, Q8_BLOCK))
    d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d > 0)
    q = np.rint(blocks * inv).astype(np.int8).reshape(x.shape)
    return q, d[..., 0].astype(np.float16).view(np.uint16)


def decode(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 entries that (values, scales) stand for: the attention kernel's reading."""
    if values.dtype == np.float32:
        return values
    if values.dtype == np.uint16:
        return values.view(np.float16).astype(np.float32)
    blocks = values.reshape(values.shape[:-1] + (-1, Q8_BLOCK)).astype(np.float32)
    return (blocks * scales.view(np.float16).astype(np.float32)[..., None]).reshape(values.shape)


class KVCache:
    """K/V of one layer that owns them. `capacity` slots of (n_kv, head_dim);
    a sliding layer's slots form a ring indexed by position % capacity."""

    def __init__(self, capacity: int, n_kv: int, head_dim: int, ring: bool, kv_type: str = DEFAULT_KV):
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
        if kv_type == "q8_0" and head_dim % Q8_BLOCK:
            raise ValueError(f"a q8_0 cache needs head_dim divisible by {Q8_BLOCK}, got {head_dim}")
        self.kv_type = kv_type
        values, scales = _STORED[kv_type], (head_dim // Q8_BLOCK if kv_type == "q8_0" else 0)
        # An append cache (a global layer's) fills as the context does: mapped on its own, a page
        # of it is resident once written (E2B at 4K: 13 MiB less at the bench's peak). A ring fills
        # within one window and comes from the heap: mapped rings cost Gemma 3 270M's prefill 8%.
        # (Mapped append caches cost E2B's prefill 8% too, and not through their page faults:
        # pre-written pages cost the same. BENCHMARKS.md has the figures.)
        zeros = np.zeros if ring else _mapped_zeros
        self.k = zeros((capacity, n_kv, head_dim), values)  # (slot, n_kv, head_dim)
        self.k_scale = zeros((capacity, n_kv, scales), np.uint16)  # (slot, n_kv, head_dim / 32 or 0)
        self.v, self.v_scale = zeros(self.k.shape, values), zeros(self.k_scale.shape, np.uint16)
        self.pos = np.full(capacity, -1, dtype=np.int64)  # position held by each slot, -1 empty
        self.ring = ring
        self._undo = None  # ring entries a step in flight overwrote, until it commits

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.k, self.k_scale, self.v, self.v_scale, self.pos

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def _store(self, where, entries: tuple[np.ndarray, ...]) -> None:
        for a, e in zip(self.arrays, entries):
            a[where] = e

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """encode(x, self.kv_type), bit for bit, in one compiled pass (edgert.kernels.encode_kv)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        values = np.empty(x.shape, dtype=self.k.dtype)
        scales = np.empty(x.shape[:-1] + self.k_scale.shape[-1:], dtype=np.uint16)
        encode_kv(x, values, scales)
        return values, scales

    def update(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray) -> KVView:
        """Store k, v (n, n_kv, head_dim) float32 at positions `pos` (consecutive) and return
        what the queries at `pos` may attend to."""
        cap, n = len(self.pos), len(pos)
        end = int(pos[-1]) + 1
        if not self.ring and end > cap:
            raise IndexError(f"position {end - 1} is past the cache's {cap} slots")
        if n == 1:  # decode: encoded and stored in one compiled call
            # in a ring, one new entry evicts the key one window back, which no query needs any more
            slot = end - 1 if not self.ring else (end - 1) % cap
            store_kv(np.ascontiguousarray(k[0], dtype=np.float32), np.ascontiguousarray(v[0], dtype=np.float32),
                     end - 1, slot, *self.arrays)
            return KVView(*self.arrays) if self.ring else KVView(*(a[:end] for a in self.arrays))
        entries = (*self._encode(k), *self._encode(v), pos)
        if not self.ring:
            self._store(slice(int(pos[0]), end), entries)
            return KVView(*(a[:end] for a in self.arrays))
        # many: earlier queries of the chunk still need entries the chunk will overwrite
        view = KVView(*(np.concatenate([a, e]) for a, e in zip(self.arrays, entries)))
        keep = slice(max(0, n - cap), n)
        slots = pos[keep] % cap
        self._undo = (slots, tuple(a[slots].copy() for a in self.arrays), pos[keep])
        self._store(slots, tuple(e[keep] for e in entries))
        return view

    def view(self, end: int) -> KVView:
        """The entries a query at position `end` may read after the step that wrote end - 1 (a
        drafter's, which writes nothing): an append cache's first `end` slots; a ring whole."""
        return KVView(*self.arrays) if self.ring else KVView(*(a[:end] for a in self.arrays))

    def views_alone(self, pos: np.ndarray):
        """After `update` stored a step at `pos`: for each of its queries, last first, (i, the
        view that query would have had if decoded alone): an append cache's entries up to it;
        a ring with the later entries of the step not yet written (their slots get back, one
        by one, what the step evicted, and the step's entries are stored again at the end)."""
        if not self.ring:
            for i in range(len(pos) - 1, -1, -1):
                yield i, KVView(*(a[:int(pos[i]) + 1] for a in self.arrays))
            return
        slots, saved, written = self._undo
        step = tuple(a[slots].copy() for a in self.arrays)
        for i in range(len(pos) - 1, -1, -1):
            yield i, KVView(*self.arrays)
            j = int(np.flatnonzero(written == pos[i])[0])
            self._store(slots[j], tuple(a[j] for a in saved))
        self._store(slots, step)

    def commit(self) -> None:
        """The step finished: its writes stand."""
        self._undo = None

    def save(self) -> tuple[np.ndarray, ...] | None:
        """What `restore` needs to bring this cache back to now: a copy of a ring's entries, or
        None for an append cache, which restore rolls back instead (it only ever appended)."""
        return tuple(a.copy() for a in self.arrays) if self.ring else None

    def restore(self, saved: tuple[np.ndarray, ...] | None, n: int) -> None:
        """Back to what `save` found, when positions < n stood."""
        if saved is None:
            self.rollback(n)
            return
        self._undo = None
        for a, s in zip(self.arrays, saved):
            a[...] = s

    def rollback(self, n: int) -> None:
        """Keep the positions < n of the step in flight, then commit: what it wrote for later
        positions is forgotten, and a ring gets back the entries those writes evicted (a step
        that did not finish, or a draft's tokens that verification rejected)."""
        if self._undo is not None:
            slots, saved, written = self._undo
            back = written >= n
            self._store(slots[back], tuple(a[back] for a in saved))
            self._undo = None
        self.pos[self.pos >= n] = -1


def _mapped_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros (0.0 in every stored type) in a mapping of their own: a page becomes resident when
    first written, so a 4K context costs memory as it fills, whatever state the heap is in."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE), dtype=dtype).reshape(shape)


def make_caches(cfg: ModelConfig, n_ctx: int, kv_type: str = DEFAULT_KV) -> dict[int, KVCache]:
    """One cache per layer that owns K/V; sliding layers hold `sliding_window` entries."""

    def make(s: LayerSpec) -> KVCache:
        ring = s.sliding and cfg.sliding_window < n_ctx
        return KVCache(cfg.sliding_window if ring else n_ctx, s.n_kv_heads, s.head_dim, ring, kv_type)

    return {s.index: make(s) for s in cfg.kv_layers}
