"""The numpy reference kernels of the forward pass: small pure functions over
float32 arrays. Faster twins must match these (the kernels issue)."""

import numpy as np

F32 = np.float32


def rms_norm(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """Gemma4RMSNorm: x * (mean(x^2) + eps)^-1/2 * weight, in float32 (no `1 + weight`)."""
    x = x.astype(F32, copy=False)
    out = x * np.power(np.mean(x * x, axis=-1, keepdims=True) + F32(eps), F32(-0.5))
    return out * weight if weight is not None else out


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """gelu_pytorch_tanh."""
    return F32(0.5) * x * (F32(1.0) + np.tanh(F32(np.sqrt(2.0 / np.pi)) * (x + F32(0.044715) * x * x * x)))


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    return np.tanh(x / F32(cap)) * F32(cap) if cap else x


def rope_inv_freq(head_dim: int, rope_dims: int, theta: float) -> np.ndarray:
    """(head_dim/2,) inverse frequencies; pairs past `rope_dims` do not rotate. The exponent
    divides by the full head_dim, as transformers' default and "proportional" RoPE do."""
    exponent = np.arange(0, 2 * rope_dims, 2, dtype=F32) / F32(head_dim)
    inv = F32(1.0) / np.power(F32(theta), exponent)
    return np.concatenate([inv, np.zeros(head_dim // 2 - rope_dims, dtype=F32)])


def rope(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotate (n, heads, head_dim) by position: dim i pairs with dim i + head_dim/2
    (rotate_half / NeoX order)."""
    angles = pos.astype(F32)[:, None] * inv_freq[None, :]  # (n, head_dim/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
              window: int, block: int = 128) -> np.ndarray:
    """Causal GQA attention with scale 1 (q/k norms replace 1/sqrt(d)).

    q (n, n_head, d); k, v (m, n_kv, d) with positions k_pos (m,), -1 for empty slots, in any
    order. A key is visible when 0 <= q_pos - k_pos and, if window > 0, q_pos - k_pos < window.
    Returns (n, n_head * d)."""
    n, n_head, d = q.shape
    n_kv = k.shape[1]
    group = n_head // n_kv
    qg = q.reshape(n, n_kv, group, d)
    out = np.empty((n, n_kv, group, d), dtype=F32)
    for s in range(0, n, block):
        e = min(n, s + block)
        dist = q_pos[s:e, None] - k_pos[None, :]  # (b, m)
        visible = (dist >= 0) & (k_pos[None, :] >= 0)
        if window:
            visible &= dist < window
        scores = np.einsum("bkgd,mkd->kgbm", qg[s:e], k, optimize=True)
        scores = np.where(visible[None, None], scores, F32(-np.inf))
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out[s:e] = np.einsum("kgbm,mkd->bkgd", p, v, optimize=True)
    return out.reshape(n, n_head * d)
