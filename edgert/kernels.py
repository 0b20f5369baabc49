"""Numba twins of the numpy reference ops (edgert.ops): what the forward pass calls.

Private `_*` kernels take arrays and write into `out`; the public functions have
the signatures of their twins in edgert.ops, which the tests hold them to. In
decode each op sees one token, so what these save is numpy's per-call overhead
(a dozen temporaries per RMSNorm) as much as arithmetic."""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from quant.cpu import kernel


F32 = np.float32
NEGLIGIBLE = np.float32(-30.0)  # log of the smallest attention weight kept, relative to the largest


def rms_norm(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """ops.rms_norm over the last axis."""
    x = np.ascontiguousarray(x, dtype=F32)
    out = np.empty_like(x)
    w = weight if weight is not None else np.ones(x.shape[-1], dtype=F32)
    _rms_norm(x.reshape(-1, x.shape[-1]), w, F32(eps), out.reshape(-1, x.shape[-1]))
    return out


def gelu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ops.gelu_tanh(gate) * up."""
    out = np.empty_like(gate)
    _gelu_mul(gate.reshape(-1), np.ascontiguousarray(up).reshape(-1), out.reshape(-1))
    return out


def rope(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """ops.rope: (n, heads, head_dim) rotated by position, NeoX halves."""
    x = np.ascontiguousarray(x, dtype=F32)
    out = np.empty_like(x)
    _rope(x, pos.astype(np.int64), inv_freq, out)
    return out


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """ops.softcap: tanh(x / cap) * cap."""
    if not cap:
        return x
    out = np.empty_like(x)
    _softcap(np.ascontiguousarray(x).reshape(-1), F32(cap), out.reshape(-1))
    return out


def attention(q, k, v, q_pos, k_pos, window: int) -> np.ndarray:
    """ops.attention: (n, n_head, d) queries -> (n, n_head * d)."""
    out = np.empty(q.shape, dtype=F32)
    _attention(np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v), q_pos, k_pos, window, out)
    return out.reshape(len(q), -1)


@kernel(inline="always")
def _tanh(x):
    """tanh as a rational function (Eigen's float tanh): within 4e-7 of tanh everywhere, and
    plain arithmetic, so loops over it vectorize where libm's tanhf would be called per value."""
    c = min(max(x, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    x2 = c * c
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return c * p / q


@kernel
def _rms_norm(x, w, eps, out):
    n, d = x.shape
    for t in range(n):
        ss = np.float32(0.0)
        for j in range(d):
            ss += x[t, j] * x[t, j]
        scale = np.float32(1.0) / np.sqrt(ss / np.float32(d) + eps)
        for j in range(d):
            out[t, j] = x[t, j] * scale * w[j]


@kernel
def _gelu_mul(gate, up, out):
    c = np.float32(np.sqrt(2.0 / np.pi))
    for i in range(gate.shape[0]):
        g = gate[i]
        out[i] = np.float32(0.5) * g * (np.float32(1.0) + _tanh(c * (g + np.float32(0.044715) * g * g * g))) * up[i]


@kernel
def _rope(x, pos, inv_freq, out):
    n, heads, d = x.shape
    half = d // 2
    for t in range(n):
        for i in range(half):
            angle = np.float32(pos[t]) * inv_freq[i]
            c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
            for h in range(heads):
                x1, x2 = x[t, h, i], x[t, h, i + half]
                out[t, h, i] = x1 * c - x2 * s
                out[t, h, i + half] = x2 * c + x1 * s


@kernel
def _softcap(x, cap, out):
    for i in range(x.shape[0]):
        out[i] = _tanh(x[i] / cap) * cap


@kernel(parallel=True)
def _attention(q, k, v, q_pos, k_pos, window, out):
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
            # weights below e^-30 are dropped: with at most 2^15 keys they add up to under
            # 3e-9 of the sum, and left in they become subnormal floats, which cost x86
            # a microcode assist on every multiply (4x the whole attention time, measured)
            e = np.float32(math.exp(scores[j] - best)) if scores[j] - best > NEGLIGIBLE else np.float32(0.0)
            scores[j] = e
            total += e
        for c in range(d):
            out[t, h, c] = 0.0
        for j in range(m):
            if scores[j] != 0.0:
                p = scores[j] / total
                for c in range(d):
                    out[t, h, c] += p * v[j, g, c]
