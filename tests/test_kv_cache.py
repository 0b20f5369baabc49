"""Only layers that own K/V have a cache; sliding layers hold a ring of sliding_window entries."""

import numpy as np

from edgert.config import config_from_hf
from edgert.kv_cache import KVCache, make_caches
from tests.reference import published


def test_published_e2b_cache_layout():
    cfg = config_from_hf(published("e2b"))
    caches = make_caches(cfg, 32768, "f32")
    assert sorted(caches) == list(range(15))  # 15 of 35 layers
    for i, c in caches.items():
        spec = cfg.layers[i]
        assert c.k.shape == ((512 if spec.sliding else 32768), 1, spec.head_dim)
    # 12 sliding rings of 512 x 256 and 3 global caches of 32768 x 512, K and V, f32
    assert sum(c.k.nbytes + c.v.nbytes for c in caches.values()) == 2 * 4 * (12 * 512 * 256 + 3 * 32768 * 512)


def test_ring_keeps_the_last_window_and_views_whole_chunks():
    c = KVCache(4, 1, 2, ring=True, kv_type="f32")
    k = np.arange(20, dtype=np.float32).reshape(10, 1, 2)
    view_k, _, _, _, view_pos = c.update(k, k, np.arange(10))
    assert list(view_pos[-10:]) == list(range(10))  # a chunk sees all of itself
    assert sorted(c.pos) == [6, 7, 8, 9]
    view_k, _, _, _, view_pos = c.update(k[:1] + 100, k[:1], np.array([10]))
    assert sorted(view_pos) == [7, 8, 9, 10] and view_k[10 % 4, 0, 0] == 100


def test_rollback_restores_what_an_unfinished_step_evicted():
    c = KVCache(4, 1, 1, ring=True, kv_type="f32")
    x = np.arange(8, dtype=np.float32).reshape(8, 1, 1)
    c.update(x[:4], x[:4], np.arange(4))
    c.commit()
    c.update(x[4:], x[4:], np.arange(4, 8))
    c.rollback(4)
    assert sorted(c.pos) == [0, 1, 2, 3] and sorted(c.k.ravel()) == [0, 1, 2, 3]


def test_q8_0_ring_rolls_back_its_scales_too():
    """A q8_0 entry is its int8 values and its block scales: an unfinished step's evictions
    are undone for both, so the cache decodes to what it held before the step."""
    c = KVCache(4, 1, 32, ring=True, kv_type="q8_0")
    x = np.random.default_rng(0).standard_normal((8, 1, 32)).astype(np.float32)
    c.update(x[:4], x[:4] * 2, np.arange(4))
    c.commit()
    before = [a.copy() for a in c.arrays]
    c.update(x[4:] * 10, x[4:], np.arange(4, 8))
    assert not np.array_equal(c.k_scale, before[1])
    c.rollback(4)
    assert all(np.array_equal(a, b) for a, b in zip(c.arrays, before))
    assert c.nbytes == 2 * 4 * 34 + 4 * 8  # 34 bytes per 32 values, as llama.cpp's q8_0
