"""KV caches: an append cache for global layers, a ring of `sliding_window`
entries for sliding ones, and none at all for KV-shared layers."""

from __future__ import annotations

import numpy as np

from edgert.config import LayerSpec, ModelConfig


class KVCache:
    """K/V of one layer that owns them. `capacity` slots of (n_kv, head_dim);
    a sliding layer's slots form a ring indexed by position % capacity."""

    def __init__(self, capacity: int, n_kv: int, head_dim: int, ring: bool, dtype=np.float32):
        self.k = np.zeros((capacity, n_kv, head_dim), dtype=dtype)  # (slot, n_kv, head_dim)
        self.v = np.zeros((capacity, n_kv, head_dim), dtype=dtype)
        self.pos = np.full(capacity, -1, dtype=np.int64)  # position held by each slot, -1 empty
        self.ring = ring
        self._undo = None  # ring entries a step in flight overwrote, until it commits

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.pos.nbytes

    def update(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray):
        """Store k, v (n, n_kv, head_dim) at positions `pos` (consecutive) and return the
        (k, v, pos) that the queries at `pos` may attend to (masking is the caller's)."""
        cap, n = len(self.pos), len(pos)
        if not self.ring:
            end = int(pos[-1]) + 1
            if end > cap:
                raise IndexError(f"position {end - 1} is past the cache's {cap} slots")
            self.k[pos[0]:end], self.v[pos[0]:end], self.pos[pos[0]:end] = k, v, pos
            return self.k[:end], self.v[:end], self.pos[:end]
        if n == 1:
            # one new entry evicts the key one window back, which no query needs any more
            slot = int(pos[0]) % cap
            self.k[slot], self.v[slot], self.pos[slot] = k[0], v[0], pos[0]
            return self.k, self.v, self.pos
        # many: earlier queries of the chunk still need entries the chunk will overwrite
        view = (np.concatenate([self.k, k]), np.concatenate([self.v, v]), np.concatenate([self.pos, pos]))
        keep = slice(max(0, n - cap), n)
        slots = pos[keep] % cap
        self._undo = (slots, self.k[slots].copy(), self.v[slots].copy(), self.pos[slots].copy())
        self.k[slots], self.v[slots], self.pos[slots] = k[keep], v[keep], pos[keep]
        return view

    def commit(self) -> None:
        """The step finished: its writes stand."""
        self._undo = None

    def rollback(self, n: int) -> None:
        """A step did not finish: restore what it evicted and forget positions >= n."""
        if self._undo is not None:
            slots, k, v, pos = self._undo
            self.k[slots], self.v[slots], self.pos[slots] = k, v, pos
            self._undo = None
        self.pos[self.pos >= n] = -1


def make_caches(cfg: ModelConfig, n_ctx: int) -> dict[int, KVCache]:
    """One cache per layer that owns K/V; sliding layers hold `sliding_window` entries."""

    def make(s: LayerSpec) -> KVCache:
        ring = s.sliding and cfg.sliding_window < n_ctx
        return KVCache(cfg.sliding_window if ring else n_ctx, s.n_kv_heads, s.head_dim, ring)

    return {s.index: make(s) for s in cfg.kv_layers}
