"""The Gemma 4 text decoder (E2B, E4B): weights and one forward step, top to bottom.

Counterpart: transformers.models.gemma4.modeling_gemma4 (Gemma4TextModel,
Gemma4TextDecoderLayer, Gemma4TextAttention). Per-layer facts come resolved in
`LayerSpec`; the loop below only follows them.

Gemma 3's text model (llama.cpp's `gemma3` graph) runs through the same code: it has
no PLE and no KV sharing, so those steps fall away; its attention scale is folded into
the q-norm weight at load; it has no value norm (`cfg.v_norm`) and no layer scalar (1).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from edgert import kernels, ops
from edgert.kernels import add_norm, attention, gelu_mul, norm_rope, rms_norm, softcap
from edgert.config import LayerSpec, ModelConfig
from edgert.kv_cache import KVCache, KVView
from edgert.rss import release_free_heap
from ple_store import PLEStore
from quant import QTensor, matmul, matmuls
from quant import kernels as quant_kernels
from quant.tensor import exact_rows

F32 = np.float32


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: np.ndarray  # (H,)
    wq: QTensor  # (n_head * head_dim, H)
    q_norm: np.ndarray  # (head_dim,), times the attention scale (1 in Gemma 4)
    wk: QTensor | None  # (n_kv * head_dim, H); None on KV-shared layers
    wv: QTensor | None  # (n_kv * head_dim, H)
    k_norm: np.ndarray | None  # (head_dim,); v_norm has no weight
    wo: QTensor  # (H, n_head * head_dim)
    post_attn_norm: np.ndarray  # (H,)
    ffn_norm: np.ndarray  # (H,)
    w_gate: QTensor  # (ffn_dim, H)
    w_up: QTensor  # (ffn_dim, H)
    w_down: QTensor  # (H, ffn_dim)
    post_ffn_norm: np.ndarray  # (H,)
    ple_gate: QTensor | None  # (P, H)
    ple_proj: QTensor | None  # (H, P)
    ple_norm: np.ndarray | None  # (H,)
    scalar: np.float32  # layer_scalar (1 in Gemma 3)
    inv_freq: np.ndarray  # (head_dim / 2,) RoPE inverse frequencies, 0 where a pair does not rotate

    @cached_property
    def compiled(self) -> bool:  # the blocks take x8 tiles and float weights; the file's rows go op by op
        ws = (self.wq, self.wk, self.wv, self.wo, self.w_gate, self.w_up, self.w_down, self.ple_gate, self.ple_proj)
        return all(w.kernel_args[0] != quant_kernels.BLOCKS for w in ws if w is not None)

    # the matrices as the compiled blocks take them (quant.kernels.product), made once
    @cached_property
    def qkv_args(self) -> tuple:  # three slots: q, k, v; q alone (thrice) where K/V are borrowed
        return tuple(w.kernel_args for w in ((self.wq, self.wk, self.wv) if self.wk is not None else (self.wq,) * 3))

    @cached_property
    def gate_up_args(self) -> tuple:  # three slots, two used
        return self.w_gate.kernel_args, self.w_up.kernel_args, self.w_gate.kernel_args

    @cached_property
    def ple_args(self) -> tuple:  # (gate, projection, norm); the output matrix and norm stand in where there is no PLE
        if self.ple_gate is None:
            return self.wo.kernel_args, self.wo.kernel_args, self.post_attn_norm
        return self.ple_gate.kernel_args, self.ple_proj.kernel_args, self.ple_norm


@dataclass(frozen=True)
class Weights:
    token_embd: QTensor  # (n_vocab, H)
    output: QTensor  # (n_vocab, H), the LM head: token_embd itself when tied
    ple: PLEStore | None  # rows of (n_vocab_ple, L * P), on disk
    ple_model_proj: QTensor | None  # (L * P, H)
    ple_proj_norm: np.ndarray | None  # (P,)
    output_norm: np.ndarray  # (H,)
    layers: tuple[LayerWeights, ...]


# tables only ever read a row at a time: they keep the file's layout (the PLE table stays on disk)
LOOKUP_ONLY = ("per_layer_token_embd.weight",)


def load_weights(cfg: ModelConfig, t: dict[str, QTensor], ple: PLEStore | None = None) -> Weights:
    """Plain named arrays from the loader's tensors; small vectors are read into DRAM.
    ple: how the PLE table is held (default: rows read from the mapping)."""

    def vec(name: str) -> np.ndarray:
        return np.array(t[name].dequantize(), dtype=F32).reshape(-1)

    def opt(name: str):
        return t.get(name)

    layers = []
    for s in cfg.layers:
        b = f"blk.{s.index}."
        layers.append(LayerWeights(
            attn_norm=vec(b + "attn_norm.weight"),
            wq=t[b + "attn_q.weight"],
            # exact where the scale is a power of two (1; 1/16 at head_dim 256), one rounding otherwise
            q_norm=vec(b + "attn_q_norm.weight") * F32(cfg.attn_scale),
            wk=opt(b + "attn_k.weight") if s.owns_kv else None,
            wv=opt(b + "attn_v.weight") if s.owns_kv else None,
            k_norm=vec(b + "attn_k_norm.weight") if s.owns_kv else None,
            wo=t[b + "attn_output.weight"],
            post_attn_norm=vec(b + "post_attention_norm.weight"),
            ffn_norm=vec(b + "ffn_norm.weight"),
            w_gate=t[b + "ffn_gate.weight"],
            w_up=t[b + "ffn_up.weight"],
            w_down=t[b + "ffn_down.weight"],
            post_ffn_norm=vec(b + "post_ffw_norm.weight"),
            ple_gate=opt(b + "inp_gate.weight") if cfg.ple_dim else None,
            ple_proj=opt(b + "proj.weight") if cfg.ple_dim else None,
            ple_norm=vec(b + "post_norm.weight") if cfg.ple_dim else None,
            scalar=F32(vec(b + "layer_output_scale.weight")[0]) if cfg.layer_scalar else F32(1.0),
            inv_freq=ops.rope_inv_freq(s.head_dim, s.rope_dims, s.rope_theta) * F32(s.rope_scale),
        ))
    return Weights(
        token_embd=t["token_embd.weight"],
        output=t.get("output.weight", t["token_embd.weight"]),
        ple=(ple or PLEStore(t["per_layer_token_embd.weight"], cfg.n_layer, cfg.ple_dim)) if cfg.ple_dim else None,
        ple_model_proj=opt("per_layer_model_proj.weight"),
        ple_proj_norm=vec("per_layer_proj_norm.weight") if cfg.ple_dim else None,
        output_norm=vec("output_norm.weight"),
        layers=tuple(layers),
    )


def embed(cfg: ModelConfig, w: Weights, ids: np.ndarray) -> np.ndarray:
    """(n,) ids -> (n, H) embeddings scaled by sqrt(H) (Gemma4TextScaledWordEmbedding)."""
    return w.token_embd.rows(ids) * F32(cfg.n_embd ** 0.5)


def per_layer_inputs(cfg: ModelConfig, w: Weights, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(L, n, P): as Gemma4TextModel.get_per_layer_inputs + project_per_layer_inputs:
    (norm(proj(x) * H^-1/2) + PLE rows * sqrt(P)) * 2^-1/2, with rows (n, L, P) from the PLE
    store; layer by layer, so that each layer's (n, P) is one contiguous array."""
    n = len(x)
    proj = matmul(x, w.ple_model_proj) * F32(cfg.n_embd ** -0.5)
    proj = rms_norm(proj.reshape(n, cfg.n_layer, cfg.ple_dim), w.ple_proj_norm, cfg.rms_eps)  # (n, L, P)
    return np.ascontiguousarray(((proj + rows) * F32(2.0 ** -0.5)).transpose(1, 0, 2))


@dataclass(frozen=True, eq=False)
class SoftTokens:
    """Embeddings that take the place of some of a prompt's ids (audio soft tokens, as
    Gemma4Model.forward merges multimodal features): `mask` (n_ids,) bool marks the positions,
    `rows` (mask.sum(), H) float32 are their embeddings, in order."""

    mask: np.ndarray
    rows: np.ndarray

    def after(self, n: int) -> "SoftTokens":
        """The same soft tokens, for ids that come after n others."""
        return SoftTokens(np.concatenate([np.zeros(n, dtype=bool), self.mask]), self.rows)

    def part(self, start: int, end: int) -> "SoftTokens | None":
        """Those of ids start..end-1 (None if there are none)."""
        mask = self.mask[start:end]
        if not mask.any():
            return None
        first = int(self.mask[:start].sum())
        return SoftTokens(mask, np.asarray(self.rows[first:first + int(mask.sum())], dtype=np.float32))


def forward(cfg: ModelConfig, w: Weights, caches: dict[int, KVCache], ids: np.ndarray, pos: np.ndarray,
            keep: np.ndarray | None, soft: SoftTokens | None = None, exact: bool = False,
            threads: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """One step over `ids` at positions `pos`, writing K/V of the owning layers to `caches`.

    keep: indices of the positions whose logits are wanted (None: none). From the first
    KV-shared layer on, only those positions are computed: shared layers write no cache,
    so the rest of the prompt has no further use there. Returns (len(keep), n_vocab) logits
    with the final-normed hidden states they were read from, (len(keep), H), or None.
    soft: embeddings that replace those of the masked positions (audio soft tokens; their
    ids are the pad id, which their PLE rows use). exact: each position's logits bit for bit
    those of decoding it alone after the ones before (a draft's verification): products row
    by row as one-row products (quant.tensor.exact_rows), attention query by query over the
    cache as that query alone would have seen it. threads: those the kernels run on, which
    plan the attention's work (None: asked of Numba at every layer, 11 us when cold)."""
    # PLE rows come off the disk on a background thread; the first layer needs them after its attention
    ple_rows = w.ple.fetch(ids) if w.ple is not None else None
    x = embed(cfg, w, ids)  # (n, H)
    if soft is not None:
        x[soft.mask] = soft.rows
    x0, ple = x, None  # ple: (L, n, P) per-layer inputs, made when first needed
    lent: dict[int, KVView] = {}  # layer -> the K/V that later, KV-shared layers attend to
    pos = np.asarray(pos, dtype=np.int64)

    for s, lw in zip(cfg.layers, w.layers):
        if s.index == cfg.first_shared:
            if keep is None:
                return None
            dropped = len(pos) - len(keep)
            x, pos = x[keep], pos[keep]
            ple = ple[:, keep] if ple is not None else None
            if dropped:  # a prompt step's big buffers are gone; the rest of the weights map in next
                release_free_heap()

        q, k, v = qkv(cfg, s, lw, x, pos, exact)
        if s.owns_kv:
            view = caches[s.index].update(k, v, pos)
            if s.lends_kv:
                lent[s.index] = view
            source = caches[s.index]
        else:  # KV-shared layers reuse an earlier layer's K/V
            view, source = lent[s.kv_source], caches[s.kv_source]
        window = cfg.sliding_window if s.sliding else 0
        if exact and len(pos) > 1:
            a = np.empty((len(pos), cfg.n_head * s.head_dim), dtype=np.float32)
            for i, alone in source.views_alone(pos):
                a[i] = attention(q[i:i + 1], alone, pos[i:i + 1], window, threads)[0]
        else:
            a = attention(q, view, pos, window, threads)

        if w.ple is not None and ple is None:  # once; then the fetched rows and x0 have no further use
            ple, ple_rows, x0 = per_layer_inputs(cfg, w, x0, w.ple.wait(ple_rows)), None, None
        x = after_attention(cfg, lw, x, a, ple[s.index] if ple is not None else None, exact)

    if keep is None:
        return None
    if cfg.first_shared >= cfg.n_layer:  # no shared layers: select at the end
        x = x[keep]
    x = rms_norm(x, w.output_norm, cfg.rms_eps)
    logits = matmul(x, w.output)  # (k, n_vocab)
    return softcap(logits, cfg.final_softcap), x


# A layer's two blocks around its attention, each one compiled call (edgert.kernels), so that no
# Python runs between their kernels: called one op at a time from here, the same kernels took an
# E2B decode step 5-9% longer (BENCHMARKS.md). Their twins below (`*_ops`) do just that, bit for
# bit the same: the tests hold the blocks to them, tools.speed_model times them op by op, and a
# layer whose matrices are read in the file's rows (layout="rows") runs through them.

def qkv(cfg: ModelConfig, s: LayerSpec, lw: LayerWeights, x: np.ndarray, pos: np.ndarray,
        exact: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gemma4TextAttention up to its cache, for x (n, H): q (n, n_head, head_dim) normed and
    rotated; on a layer that owns K/V, k (n, n_kv, head_dim) normed and rotated and v normed
    (without a weight, where cfg.v_norm), else None for both."""
    if not lw.compiled:
        return qkv_ops(cfg, s, lw, x, pos, exact)
    q, k, v = kernels.qkv_block(np.ascontiguousarray(x, dtype=F32), lw.attn_norm, F32(cfg.rms_eps), lw.qkv_args,
                                3 if s.owns_kv else 1, lw.q_norm, lw.k_norm if s.owns_kv else lw.q_norm, cfg.v_norm,
                                pos, lw.inv_freq, cfg.n_head, s.n_kv_heads, s.head_dim, exact)
    return (q, k, v) if s.owns_kv else (q, None, None)


def after_attention(cfg: ModelConfig, lw: LayerWeights, x: np.ndarray, a: np.ndarray, ple: np.ndarray | None,
                    exact: bool = False) -> np.ndarray:
    """The rest of Gemma4TextDecoderLayer after the attention a (n, n_head * head_dim): its
    output projection, the MLP, the per-layer embedding gate with this layer's inputs ple (n, P)
    (None without PLE), and the layer's scalar, each joining the residual stream x (n, H)."""
    if not lw.compiled:
        return after_attention_ops(cfg, lw, x, a, ple, exact)
    gate, proj, norm = lw.ple_args
    ple = np.empty((len(x), 0), dtype=F32) if ple is None else np.ascontiguousarray(ple, dtype=F32)
    return kernels.after_attention_block(
        np.ascontiguousarray(x, dtype=F32), np.ascontiguousarray(a, dtype=F32), lw.wo.kernel_args, lw.post_attn_norm,
        lw.ffn_norm, lw.gate_up_args, lw.w_down.kernel_args, lw.post_ffn_norm, gate, proj, norm, ple, lw.scalar,
        F32(cfg.rms_eps), exact)


def qkv_ops(cfg: ModelConfig, s: LayerSpec, lw: LayerWeights, x: np.ndarray, pos: np.ndarray, exact: bool = False):
    """`qkv`, one op at a time."""
    n = len(pos)
    with _exact(exact):
        h = rms_norm(x, lw.attn_norm, cfg.rms_eps)
        q, *kv = matmuls(h, (lw.wq, lw.wk, lw.wv) if s.owns_kv else (lw.wq,))  # one call: h quantized once
    q = norm_rope(q.reshape(n, cfg.n_head, s.head_dim), lw.q_norm, cfg.rms_eps, pos, lw.inv_freq)
    if not s.owns_kv:
        return q, None, None
    k = norm_rope(kv[0].reshape(n, s.n_kv_heads, s.head_dim), lw.k_norm, cfg.rms_eps, pos, lw.inv_freq)
    v = kv[1].reshape(n, s.n_kv_heads, s.head_dim)
    return q, k, rms_norm(v, None, cfg.rms_eps) if cfg.v_norm else v


def after_attention_ops(cfg: ModelConfig, lw: LayerWeights, x: np.ndarray, a: np.ndarray, ple: np.ndarray | None,
                        exact: bool = False) -> np.ndarray:
    """`after_attention`, one op at a time."""
    with _exact(exact):
        x = add_norm(x, matmul(a, lw.wo), lw.post_attn_norm, cfg.rms_eps)
        x = ffn(cfg, lw, x)
        if ple is None:
            return x * lw.scalar
        # per-layer embedding gate: x + norm(proj(gelu_tanh(gate(x)) * ple)); then the layer's scalar
        h = gelu_mul(matmul(x, lw.ple_gate), ple)
        return add_norm(x, matmul(h, lw.ple_proj), lw.ple_norm, cfg.rms_eps, lw.scalar)


def _exact(exact: bool):
    return exact_rows() if exact else contextlib.nullcontext()


def ffn(cfg: ModelConfig, lw: LayerWeights, x: np.ndarray) -> np.ndarray:
    """The MLP block with its residual: x + norm(down(gelu_tanh(gate(h)) * up(h))), h = norm(x)."""
    h = rms_norm(x, lw.ffn_norm, cfg.rms_eps)
    h = matmul(gelu_mul(*matmuls(h, (lw.w_gate, lw.w_up))), lw.w_down)
    return add_norm(x, h, lw.post_ffn_norm, cfg.rms_eps)
