"""Model configuration: parsed once, frozen, with every per-layer fact resolved.

Two sources give the same `ModelConfig`: a Hugging Face `config.json` (in the
converter) and a GGUF file's metadata (in the loader). No other module reads
raw metadata. `tensor_manifest` says which tensors a config needs and their
shapes; the converter and the loader both check against it.

Two architectures share the decoder: Gemma 4 (E2B, E4B) and Gemma 3, whose text
model is Gemma 4's without per-layer embeddings, KV sharing, the value norm and
the layer scalar, and with attention scaled by 1/sqrt(head_dim) instead of 1.
Those differences are facts in the config; the forward pass has no Gemma 3 branch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from edgert.errors import ArchitectureError

ARCH = "gemma4"  # what `edgert convert` writes
ARCHS = ("gemma4", "gemma3")  # what the loader runs
ASSISTANT_ARCH = "gemma4-assistant"  # Gemma 4's drafter, as llama.cpp names it
PUBLISHED = ("e2b", "e4b")  # the published configs shipped in edgert/data
# edgert's own keys for the audio tower (JSON strings): its config, its tensors' shapes, its token ids
AUDIO_CONFIG, AUDIO_SHAPES, AUDIO_TOKENS = "edgert.audio.config", "edgert.audio.shapes", "edgert.audio.tokens"


def published(kind: str) -> dict:
    """The published Gemma 4 config.json of 'e2b' or 'e4b' (copied from the model cards)."""
    if kind not in PUBLISHED:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(PUBLISHED)}")
    return json.loads((Path(__file__).resolve().parent / "data" / f"gemma4-{kind}.config.json").read_text())


@dataclass(frozen=True)
class LayerSpec:
    """What one decoder layer does; the layer loop only follows this."""

    index: int
    sliding: bool  # sliding-window attention, else global
    head_dim: int  # 256 on sliding layers, 512 on global ones (E2B/E4B)
    n_kv_heads: int
    rope_theta: float
    rope_scale: float  # position multiplier: 1, or 1/factor under linear RoPE scaling (Gemma 3 4B+, global)
    rope_dims: int  # leading dims of each half that rotate: head_dim/2 sliding, 64 of 256 global
    owns_kv: bool  # computes K/V and keeps a cache
    kv_source: int  # the layer whose K/V it attends to (itself when owns_kv)
    lends_kv: bool  # KV-shared layers further on attend to its K/V
    ffn_dim: int  # doubled on KV-shared layers when use_double_wide_mlp


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "gemma4" or "gemma3"
    n_vocab: int
    n_embd: int  # hidden size H
    n_layer: int
    n_head: int
    n_ctx_train: int  # max_position_embeddings
    sliding_window: int
    n_kv_shared: int  # the last n_kv_shared layers reuse earlier K/V
    ple_dim: int  # hidden_size_per_layer_input (0: no per-layer embeddings)
    n_vocab_ple: int
    rms_eps: float
    final_softcap: float  # 0.0: none
    attn_scale: float  # on q before q.k: 1 in Gemma 4 (its q/k norms replace it), 1/sqrt(head_dim) in Gemma 3
    v_norm: bool  # Gemma 4 RMS-normalises V (no weight); Gemma 3 does not
    layer_scalar: bool  # Gemma 4 scales each layer's output by a learned scalar
    layers: tuple[LayerSpec, ...]

    @property
    def first_shared(self) -> int:
        return self.n_layer - self.n_kv_shared

    @property
    def kv_layers(self) -> tuple[LayerSpec, ...]:
        return tuple(s for s in self.layers if s.owns_kv)


_GEMMA4_FACTS = dict(attn_scale=1.0, v_norm=True, layer_scalar=True)


def _resolve_layers(
    *,
    sliding: list[bool],
    head_dim_swa: int,
    head_dim_full: int,
    kv_heads: list[int],
    theta_swa: float,
    theta_full: float,
    rope_dims_swa: int,
    rope_dims_full: int,
    ffn: list[int],
    n_kv_shared: int,
    rope_scale_full: float = 1.0,
) -> tuple[LayerSpec, ...]:
    n_layer = len(sliding)
    first_shared = n_layer - n_kv_shared
    # KV-shared layers read the K/V of the last non-shared layer of the same type,
    # as Gemma4TextConfig.kv_sharing_modes ("store" producers, "reuse" consumers).
    last_of_type = {}
    for i in range(first_shared):
        last_of_type[sliding[i]] = i
    specs = []
    for i in range(n_layer):
        owns = i < first_shared
        if not owns and sliding[i] not in last_of_type:
            raise ArchitectureError(
                f"layer {i} reuses K/V of an earlier {'sliding' if sliding[i] else 'global'} layer, "
                "but no non-shared layer of that type exists"
            )
        specs.append(
            LayerSpec(
                index=i,
                sliding=sliding[i],
                head_dim=head_dim_swa if sliding[i] else head_dim_full,
                n_kv_heads=kv_heads[i],
                rope_theta=theta_swa if sliding[i] else theta_full,
                rope_scale=1.0 if sliding[i] else rope_scale_full,
                rope_dims=rope_dims_swa if sliding[i] else rope_dims_full,
                owns_kv=owns,
                kv_source=i if owns else last_of_type[sliding[i]],
                lends_kv=owns and i == last_of_type[sliding[i]] and sliding[i] in sliding[first_shared:],
                ffn_dim=ffn[i],
            )
        )
    return tuple(specs)


def config_from_hf(config: dict) -> ModelConfig:
    """From a Gemma 4 `config.json` (Gemma4ForConditionalGeneration or Gemma4ForCausalLM)."""
    model_type = config.get("model_type")
    text = config.get("text_config", config) if model_type == "gemma4" else config
    if model_type not in ("gemma4", "gemma4_text") or text.get("model_type", "gemma4_text") != "gemma4_text":
        raise ArchitectureError(
            f"config.json says model_type={model_type!r}; edgert converts Gemma 4 checkpoints "
            "(model_type 'gemma4' or 'gemma4_text')"
        )
    if text.get("enable_moe_block") or text.get("attention_k_eq_v"):
        raise ArchitectureError(
            "this is a Gemma 4 MoE or k=v checkpoint; edgert runs the edge models (E2B, E4B) only"
        )
    n_layer = int(text["num_hidden_layers"])
    layer_types = text.get("layer_types") or [
        "sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n_layer)
    ]
    sliding = [t == "sliding_attention" for t in layer_types]
    rope = text.get("rope_parameters") or {}
    full = rope.get("full_attention", {"rope_theta": 1e6, "partial_rotary_factor": 0.25})
    swa = rope.get("sliding_attention", {"rope_theta": 1e4})
    if full.get("rope_type", "proportional") != "proportional" or swa.get("rope_type", "default") != "default":
        raise ArchitectureError(f"unexpected RoPE types {rope}; Gemma 4 uses default (sliding) and proportional (global)")
    head_dim_swa = int(text.get("head_dim", 256))
    n_kv = int(text.get("num_key_value_heads", 1))
    # transformers writes the global layers' overrides as per_layer_config; published
    # configs say global_head_dim
    overrides = [(text.get("per_layer_config") or {}).get(str(i), {}) for i in range(n_layer)]
    full_override = next((o for o, sl in zip(overrides, sliding) if not sl and o), {})
    head_dim_full = int(text.get("global_head_dim") or full_override.get("head_dim", 512))
    kv_heads = [int(o.get("num_key_value_heads", n_kv)) for o in overrides]
    n_kv_shared = int(text.get("num_kv_shared_layers", 0))
    n_ff = int(text["intermediate_size"])
    double = bool(text.get("use_double_wide_mlp", False))
    ffn = [n_ff * 2 if double and i >= n_layer - n_kv_shared else n_ff for i in range(n_layer)]
    ple_dim = int(text.get("hidden_size_per_layer_input") or 0)
    return ModelConfig(
        arch="gemma4",
        n_vocab=int(text["vocab_size"]),
        n_embd=int(text["hidden_size"]),
        n_layer=n_layer,
        n_head=int(text["num_attention_heads"]),
        n_ctx_train=int(text.get("max_position_embeddings", 131072)),
        sliding_window=int(text.get("sliding_window", 512)),
        n_kv_shared=n_kv_shared,
        ple_dim=ple_dim,
        n_vocab_ple=int(text.get("vocab_size_per_layer_input", text["vocab_size"])) if ple_dim else 0,
        rms_eps=float(text.get("rms_norm_eps", 1e-6)),
        final_softcap=float(text.get("final_logit_softcapping") or 0.0),
        **_GEMMA4_FACTS,
        layers=_resolve_layers(
            sliding=sliding,
            head_dim_swa=head_dim_swa,
            head_dim_full=head_dim_full,
            kv_heads=kv_heads,
            theta_swa=float(swa["rope_theta"]),
            theta_full=float(full["rope_theta"]),
            rope_dims_swa=int(head_dim_swa * float(swa.get("partial_rotary_factor", 1.0))) // 2,
            rope_dims_full=int(head_dim_full * float(full.get("partial_rotary_factor", 1.0))) // 2,
            ffn=ffn,
            n_kv_shared=n_kv_shared,
        ),
    )


@dataclass(frozen=True)
class AssistantConfig:
    """Gemma 4's drafter (transformers' Gemma4AssistantConfig): a small Gemma 4 decoder whose
    layers read the target's K/V (they have no K/V projections of their own), between a
    projection from [target embedding, target hidden] (2 * n_backbone) down to its width and one
    back up; its LM head is its own tied table, or that table narrowed by centroids."""

    text: ModelConfig  # every layer KV-shared: owns_kv False, kv_source -1 (the target's)
    n_backbone: int  # the target's hidden size
    n_centroids: int  # 0: the full head; else the table's rows fall in this many clusters
    centroid_top_k: int  # clusters whose tokens are scored per step


def _reading(cfg: ModelConfig) -> ModelConfig:
    """cfg with every layer reading K/V from elsewhere (a drafter's layers read the target's)."""
    layers = tuple(dataclasses.replace(s, owns_kv=False, kv_source=-1, lends_kv=False) for s in cfg.layers)
    return dataclasses.replace(cfg, n_kv_shared=cfg.n_layer, layers=layers)


def assistant_config_from_hf(config: dict) -> AssistantConfig:
    """From a Gemma4AssistantForCausalLM `config.json` (model_type 'gemma4_assistant')."""
    text = dict(config.get("text_config") or {})
    if not text:
        raise ArchitectureError("the assistant's config.json has no text_config")
    if text.get("hidden_size_per_layer_input") or text.get("enable_moe_block"):
        raise ArchitectureError("a Gemma 4 assistant has no per-layer embeddings and no MoE block")
    text.update(model_type="gemma4_text", num_kv_shared_layers=0, use_double_wide_mlp=False)
    ordered = bool(config.get("use_ordered_embeddings", False))
    return AssistantConfig(
        text=_reading(config_from_hf(text)),
        n_backbone=int(config.get("backbone_hidden_size", 1536)),
        n_centroids=int(config.get("num_centroids", 2048)) if ordered else 0,
        centroid_top_k=int(config.get("centroid_intermediate_top_k", 32)),
    )


def assistant_config_from_gguf(meta: dict, rope_freqs: list[float] | None, n_vocab: int,
                               n_centroids: int) -> AssistantConfig:
    """From a `gemma4-assistant` file's metadata (keys without the prefix), as llama.cpp's
    converter writes it: the gemma4 keys, and embedding_length_out for the target's width.
    n_centroids: the rows of masked_embd_centroids.weight (0 when the file has none)."""
    if "embedding_length_out" not in meta:
        raise ArchitectureError(f"the drafter file lacks {ASSISTANT_ARCH}.embedding_length_out (the target's width)")
    text = _config_from_gguf_gemma4({**meta, "attention.shared_kv_layers": 0}, rope_freqs, n_vocab, 0)
    return AssistantConfig(
        text=_reading(text),
        n_backbone=int(meta["embedding_length_out"]),
        n_centroids=n_centroids,
        centroid_top_k=int(meta.get("centroid_top_k", 32)),
    )


def assistant_manifest(cfg: AssistantConfig) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> shape for a drafter: llama.cpp's gemma4-assistant names, and the
    centroid head as llama.cpp's loader names it (masked_embd_centroids, masked_embd_ordering)."""
    m = tensor_manifest(cfg.text)
    H = cfg.text.n_embd
    m["nextn.pre_projection.weight"] = (H, 2 * cfg.n_backbone)
    m["nextn.post_projection.weight"] = (cfg.n_backbone, H)
    if cfg.n_centroids:
        m["masked_embd_centroids.weight"] = (cfg.n_centroids, H)
        m["masked_embd_ordering"] = (cfg.text.n_vocab,)
    return m


def rope_freqs_factors(cfg: ModelConfig) -> list[float]:
    """llama.cpp's `rope_freqs` for global layers: 1 for the rotating pairs, 1e30
    (frequency ~ 0) for the rest, as its Gemma 4 converter writes."""
    glob = next((s for s in cfg.layers if not s.sliding), None)
    if glob is None:
        return []
    return [1.0] * glob.rope_dims + [1e30] * (glob.head_dim // 2 - glob.rope_dims)


def config_from_gguf(arch: str, meta: dict, rope_freqs: list[float] | None, n_vocab: int,
                     n_vocab_ple: int) -> ModelConfig:
    """From GGUF metadata as llama.cpp's loader reads it, for either architecture.
    `meta` maps keys without the `{arch}.` prefix to values."""
    if arch == "gemma3":
        return _config_from_gguf_gemma3(meta, n_vocab)
    return _config_from_gguf_gemma4(meta, rope_freqs, n_vocab, n_vocab_ple)


def _config_from_gguf_gemma3(meta: dict, n_vocab: int) -> ModelConfig:
    """Gemma 3 as llama.cpp's `gemma3` loader reads it. Some facts are not in the file and
    llama.cpp hard-codes them: every sixth layer is global, the others slide with RoPE base
    10000; the attention scale is 1/sqrt(head_dim), or 1/sqrt(n_embd/n_head) on the 27B
    (62 layers), after gemma_pytorch. Norm weights are stored with Gemma's `1 +` folded in."""
    n_layer, n_embd, n_head = int(meta["block_count"]), int(meta["embedding_length"]), int(meta["attention.head_count"])
    window = int(meta.get("attention.sliding_window", 0))
    sliding = [bool(window) and (i + 1) % 6 != 0 for i in range(n_layer)]
    head_dim = int(meta.get("attention.key_length", n_embd // n_head))
    kv = meta.get("attention.head_count_kv", n_head)
    scale = 1.0
    if meta.get("rope.scaling.type", "none") == "linear":
        scale = 1.0 / float(meta.get("rope.scaling.factor", 1.0))
    ffn = meta["feed_forward_length"]
    return ModelConfig(
        arch="gemma3",
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_ctx_train=int(meta.get("context_length", 131072)),
        sliding_window=window,
        n_kv_shared=0,
        ple_dim=0,
        n_vocab_ple=0,
        rms_eps=float(meta.get("attention.layer_norm_rms_epsilon", 1e-6)),
        final_softcap=float(meta.get("final_logit_softcapping", 0.0)),
        attn_scale=(n_embd // n_head if n_layer == 62 else head_dim) ** -0.5,
        v_norm=False,
        layer_scalar=False,
        layers=_resolve_layers(
            sliding=sliding,
            head_dim_swa=head_dim,
            head_dim_full=head_dim,
            kv_heads=[int(v) for v in kv] if isinstance(kv, list) else [int(kv)] * n_layer,
            theta_swa=10000.0,
            theta_full=float(meta.get("rope.freq_base", 10000.0)),
            rope_dims_swa=head_dim // 2,
            rope_dims_full=head_dim // 2,
            ffn=[int(v) for v in ffn] if isinstance(ffn, list) else [int(ffn)] * n_layer,
            n_kv_shared=0,
            rope_scale_full=scale,
        ),
    )


def _config_from_gguf_gemma4(meta: dict, rope_freqs: list[float] | None, n_vocab: int, n_vocab_ple: int) -> ModelConfig:
    """From GGUF metadata as llama.cpp's gemma4 loader reads it. `rope_freqs` is that tensor;
    the vocabulary sizes come from the embedding tables' shapes, as in llama.cpp."""
    n_layer = int(meta["block_count"])

    def per_layer(key: str, default=None) -> list:
        value = meta.get(key, default)
        if value is None:
            raise ArchitectureError(f"the model file lacks gemma4.{key}; re-convert it with `edgert convert`")
        return [int(v) for v in value] if isinstance(value, list) else [int(value)] * n_layer

    sliding = [bool(v) for v in meta.get("attention.sliding_window_pattern", [])]
    if len(sliding) != n_layer:
        raise ArchitectureError("gemma4.attention.sliding_window_pattern must give one entry per layer")
    head_dim_full = int(meta["attention.key_length"])
    head_dim_swa = int(meta.get("attention.key_length_swa", head_dim_full))
    rope_full = int(meta.get("rope.dimension_count", head_dim_full)) // 2
    if rope_freqs is not None:
        # pairs with a huge divisor do not rotate (proportional RoPE, partial factor)
        rope_full = sum(1 for f in rope_freqs[:rope_full] if f < 1e20)
    ple_dim = int(meta.get("embedding_length_per_layer_input", 0))
    return ModelConfig(
        arch="gemma4",
        n_vocab=n_vocab,
        n_embd=int(meta["embedding_length"]),
        n_layer=n_layer,
        n_head=int(meta["attention.head_count"]),
        n_ctx_train=int(meta.get("context_length", 131072)),
        sliding_window=int(meta["attention.sliding_window"]),
        n_kv_shared=int(meta.get("attention.shared_kv_layers", 0)),
        ple_dim=ple_dim,
        n_vocab_ple=n_vocab_ple if ple_dim else 0,
        rms_eps=float(meta.get("attention.layer_norm_rms_epsilon", 1e-6)),
        final_softcap=float(meta.get("final_logit_softcapping", 0.0)),
        **_GEMMA4_FACTS,
        layers=_resolve_layers(
            sliding=sliding,
            head_dim_swa=head_dim_swa,
            head_dim_full=head_dim_full,
            kv_heads=per_layer("attention.head_count_kv"),
            theta_swa=float(meta.get("rope.freq_base_swa", 1e4)),
            theta_full=float(meta.get("rope.freq_base", 1e6)),
            rope_dims_swa=int(meta.get("rope.dimension_count_swa", head_dim_swa)) // 2,
            rope_dims_full=rope_full,
            ffn=per_layer("feed_forward_length"),
            n_kv_shared=int(meta.get("attention.shared_kv_layers", 0)),
        ),
    )


def tensor_manifest(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> logical shape (numpy order: rows, cols) for this config.
    Names are llama.cpp's (gguf.MODEL_TENSORS[MODEL_ARCH.GEMMA4] and GEMMA3). A separate
    `output.weight` (an untied LM head) is optional and not listed."""
    H, P, L = cfg.n_embd, cfg.ple_dim, cfg.n_layer
    m: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (cfg.n_vocab, H),
        "output_norm.weight": (H,),
    }
    if cfg.arch == "gemma4" and any(not s.sliding for s in cfg.layers):
        m["rope_freqs.weight"] = (cfg.layers[next(i for i, s in enumerate(cfg.layers) if not s.sliding)].head_dim // 2,)
    if P:
        m["per_layer_token_embd.weight"] = (cfg.n_vocab_ple, L * P)
        m["per_layer_model_proj.weight"] = (L * P, H)
        m["per_layer_proj_norm.weight"] = (P,)
    for s in cfg.layers:
        b, q, kv, hd = f"blk.{s.index}.", cfg.n_head * s.head_dim, s.n_kv_heads * s.head_dim, s.head_dim
        m[b + "attn_norm.weight"] = (H,)
        m[b + "attn_q.weight"] = (q, H)
        m[b + "attn_q_norm.weight"] = (hd,)
        if s.owns_kv:
            m[b + "attn_k.weight"] = (kv, H)
            m[b + "attn_v.weight"] = (kv, H)
            m[b + "attn_k_norm.weight"] = (hd,)
        m[b + "attn_output.weight"] = (H, q)
        m[b + "post_attention_norm.weight"] = (H,)
        m[b + "ffn_norm.weight"] = (H,)
        m[b + "ffn_gate.weight"] = (s.ffn_dim, H)
        m[b + "ffn_up.weight"] = (s.ffn_dim, H)
        m[b + "ffn_down.weight"] = (H, s.ffn_dim)
        m[b + "post_ffw_norm.weight"] = (H,)
        if cfg.layer_scalar:
            m[b + "layer_output_scale.weight"] = (1,)
        if P:
            m[b + "inp_gate.weight"] = (P, H)
            m[b + "proj.weight"] = (H, P)
            m[b + "post_norm.weight"] = (H,)
    return m
