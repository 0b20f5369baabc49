"""Numba twins of the numpy reference ops (edgert.ops) where the forward pass spends time.

Each takes arrays and writes into `out`; the tests hold it to its twin in edgert.ops."""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from quant.cpu import kernel


@kernel(parallel=True)
def attention(q, k, v, q_pos, k_pos, window, out):
    """Causal GQA attention with scale 1, as ops.attention: q (n, n_head, d); k, v (m, n_kv, d)
    with positions k_pos (m,), -1 for an empty slot; out (n, n_head, d). Threads split
    (query, head) pairs; each keeps its scores in a row of m floats."""
    n, n_head, d = q.shape
    m, n_kv = k.shape[0], k.shape[1]
    group = n_head // n_kv
    for item in prange(n * n_head):
        t, h = item // n_head, item % n_head
        g = h // group
        scores = np.empty(m, dtype=np.float32)
        best = -np.inf
        for j in range(m):
            dist = q_pos[t] - k_pos[j]
            if k_pos[j] < 0 or dist < 0 or (window > 0 and dist >= window):
                scores[j] = -np.inf
                continue
            s = np.float32(0.0)
            for c in range(d):
                s += q[t, h, c] * k[j, g, c]
            scores[j] = s
            best = max(best, s)
        total = np.float32(0.0)
        for j in range(m):
            e = np.float32(math.exp(scores[j] - best)) if scores[j] != -np.inf else np.float32(0.0)
            scores[j] = e
            total += e
        for c in range(d):
            out[t, h, c] = 0.0
        for j in range(m):
            if scores[j] != 0.0:
                p = scores[j] / total
                for c in range(d):
                    out[t, h, c] += p * v[j, g, c]
