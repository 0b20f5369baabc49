"""llama.cpp's multimodal projector file (`mmproj-*.gguf`) for Gemma 4's audio tower, read as
edgert's own AudioTower (edgert.files.loader): projector type "gemma4a".

llama.cpp's converter (convert_hf_to_gguf.py, Gemma4VisionAudioModel) writes the checkpoint's
model.audio_tower.* and model.embed_audio.* under gguf's multimodal names (a.*, mm.a.*), with
three transforms that are undone here:
- per_dim_scale is stored softplus-ed, in F32: the inverse gives the checkpoint's parameter;
- the depthwise convolution's (C, 1, K) weight is stored as (C, K);
- scalars (the clipped linears' input and output bounds) are stored as 1-element vectors.
Its names come from gguf's tensor_mapping.py, which swaps two norms of the convolution block:
the file's `conv_norm` is the checkpoint's lconv1d.pre_layer_norm, and `norm_conv` is its
lconv1d.conv_norm (llama.cpp's clip.cpp loads them the other way round for the same reason).

The vision tower in the same file (v.*, mm.*) is left alone, and said to be. The settings the
file does not carry (attention chunk, context, logit cap, residual weight, norm epsilon: the
converter writes llama.cpp's 1e-5, not the checkpoint's) are Gemma 4's published ones.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from edgert.errors import ModelFileError
from edgert.files.gguf_file import GGUFFile, GGUFFormatError
from quant import QTensor, QType

PROJECTOR = "gemma4a"

# Gemma 4's audio settings that an mmproj file does not carry (google/gemma-4-e2b-it's config.json)
PUBLISHED = {"attention_chunk_size": 12, "attention_context_left": 13, "attention_context_right": 0,
             "attention_logit_cap": 50.0, "attention_invalid_logits_value": -1e9, "residual_weight": 0.5,
             "gradient_clipping": 1e10, "rms_norm_eps": 1e-6, "use_clipped_linears": True, "hidden_act": "silu"}

# the file's names -> edgert's (the checkpoint's, under audio. and audio_embed.)
_TOP = {
    "a.input_projection.weight": "audio.subsample_conv_projection.input_proj_linear.weight",
    "a.pre_encode.out.weight": "audio.output_proj.weight",
    "a.pre_encode.out.bias": "audio.output_proj.bias",
    "mm.a.input_projection.weight": "audio_embed.embedding_projection.weight",
}
_CONV = re.compile(r"a\.conv1d\.(\d+)\.(norm\.)?weight")
_BLOCK = re.compile(r"a\.blk\.(\d+)\.(\w+)\.(weight|bias|input_min|input_max|output_min|output_max)")
# per block: the file's name -> (the checkpoint's module, whether it is a clipped linear)
_LAYER = {
    "attn_q": ("self_attn.q_proj", True), "attn_k": ("self_attn.k_proj", True),
    "attn_v": ("self_attn.v_proj", True), "attn_out": ("self_attn.post", True),
    "attn_k_rel": ("self_attn.relative_k_proj", False), "per_dim_scale": ("self_attn.per_dim_scale", False),
    "attn_pre_norm": ("norm_pre_attn", False), "attn_post_norm": ("norm_post_attn", False),
    "ln2": ("norm_out", False),
    "ffn_norm": ("feed_forward1.pre_layer_norm", False), "ffn_post_norm": ("feed_forward1.post_layer_norm", False),
    "ffn_up": ("feed_forward1.ffw_layer_1", True), "ffn_down": ("feed_forward1.ffw_layer_2", True),
    "ffn_norm_1": ("feed_forward2.pre_layer_norm", False), "ffn_post_norm_1": ("feed_forward2.post_layer_norm", False),
    "ffn_up_1": ("feed_forward2.ffw_layer_1", True), "ffn_down_1": ("feed_forward2.ffw_layer_2", True),
    "conv_pw1": ("lconv1d.linear_start", True), "conv_pw2": ("lconv1d.linear_end", True),
    "conv_dw": ("lconv1d.depthwise_conv1d", False),
    "conv_norm": ("lconv1d.pre_layer_norm", False),  # swapped by gguf's tensor_mapping: see above
    "norm_conv": ("lconv1d.conv_norm", False),
}
# the checkpoint's audio-token strings, by role (Gemma 4's first, then the small test vocabularies')
_TOKENS = {"boa": ("<|audio>", "<boa>"), "eoa": ("<audio|>", "<eoa>"), "audio": ("<|audio|>",)}


def find_beside(model: str | os.PathLike) -> Path | None:
    """An mmproj file next to the model (`mmproj*.gguf`, as llama.cpp's downloads name them), if
    there is exactly one."""
    found = sorted(Path(model).parent.glob("mmproj*.gguf"))
    return found[0] if len(found) == 1 else None


def edgert_name(name: str) -> tuple[str, str] | None:
    """The file's tensor name -> (edgert's name, its transform: "", "softplus", "depthwise" or
    "scalar"), or None for a tensor that is not the audio tower's."""
    if name in _TOP:
        return _TOP[name], ""
    m = _CONV.fullmatch(name)
    if m:
        return f"audio.subsample_conv_projection.layer{m[1]}.{'norm' if m[2] else 'conv'}.weight", ""
    m = _BLOCK.fullmatch(name)
    if not m or m[2] not in _LAYER:
        return None
    module, clipped = _LAYER[m[2]]
    base = f"audio.layers.{m[1]}.{module}"
    if m[2] == "per_dim_scale":
        return base, "softplus"
    if m[3] != "weight" and m[3] != "bias":
        return f"{base}.{m[3]}", "scalar"
    suffix = f"linear.{m[3]}" if clipped else m[3]
    return f"{base}.{suffix}", "depthwise" if m[2] == "conv_dw" else ""


def read(path: str | os.PathLike, text_hidden: int, token_id: Callable[[str], int | None]):
    """The audio tower of an mmproj file, for a text model of width `text_hidden` whose
    vocabulary token_id(text) looks up; returns (AudioTower, what it ignored: {"vision tower":
    n} or {})."""
    from edgert.files.loader import AudioTower

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no mmproj file at {path}")
    try:
        file = GGUFFile(path)
    except (GGUFFormatError, OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not a readable GGUF file ({e}); it may be truncated: download it again") from None
    meta = file.metadata
    if meta.get("general.architecture") != "clip":
        raise ModelFileError(f"{path} is not a multimodal projector file (its architecture is "
                             f"{meta.get('general.architecture')!r}, not llama.cpp's 'clip'); pass the mmproj-*.gguf "
                             "that goes with the model")
    projector = meta.get("clip.audio.projector_type") or (meta.get("clip.projector_type")
                                                          if meta.get("clip.has_audio_encoder") else None)
    if not meta.get("clip.has_audio_encoder") or projector is None:
        raise ModelFileError(f"{path} has no audio encoder (a vision-only projector); edgert takes speech through "
                             "Gemma 4's audio tower: use an mmproj file converted from a checkpoint with one")
    if projector != PROJECTOR:
        raise ModelFileError(f"{path} holds a {projector!r} audio projector; edgert reads Gemma 4's ('{PROJECTOR}')")

    tensors, ignored = {}, 0
    for name, info in file.tensors.items():
        mapped = edgert_name(name)
        if mapped is None:
            ignored += name.startswith(("v.", "mm.")) and not name.startswith("mm.a.")
            continue
        ours, transform = mapped
        try:
            qtype = QType(info.ggml_type)
        except ValueError:
            raise ModelFileError(f"{path}: tensor {name} is stored in ggml type {info.ggml_type}, which edgert does "
                                 "not read; convert the mmproj again with --outtype f16") from None
        values = QTensor(file.array(info), qtype, (int(np.prod(info.shape)),)).dequantize()
        shape = tuple(info.shape)
        if transform == "softplus":  # stored softplus(p): p = log(exp(y) - 1), in float64
            values = np.log(np.expm1(values.astype(np.float64))).astype(np.float32)
        elif transform == "depthwise":
            shape = (shape[0], 1, shape[1]) if len(shape) == 2 else shape
        elif transform == "scalar":
            shape = ()
        tensors[ours] = (QTensor(values, QType.F32, (values.size,)), shape)
    blocks = 1 + max((int(n.split(".")[2]) for n in tensors if n.startswith("audio.layers.")), default=-1)
    _check(path, tensors, blocks, text_hidden)
    config = {**PUBLISHED,
              "hidden_size": tensors["audio.subsample_conv_projection.input_proj_linear.weight"][1][0],
              "num_hidden_layers": blocks,
              "num_attention_heads": int(meta.get("clip.audio.attention.head_count", 0)),
              "subsampling_conv_channels": [tensors[f"audio.subsample_conv_projection.layer{i}.conv.weight"][1][0]
                                            for i in range(2)],
              "conv_kernel_size": tensors["audio.layers.0.lconv1d.depthwise_conv1d.weight"][1][-1],
              "output_proj_dims": tensors["audio.output_proj.weight"][1][0],
              "text_hidden_size": text_hidden}
    if not config["num_attention_heads"] or config["hidden_size"] % config["num_attention_heads"]:
        raise ModelFileError(f"{path} does not say how many attention heads its audio encoder has "
                             "(clip.audio.attention.head_count); convert it again with llama.cpp's converter")
    return AudioTower(config=config, tokens=_token_ids(path, token_id), tensors=tensors, source=path), (
        {"vision tower": ignored} if ignored else {})


def _check(path: Path, tensors: dict, blocks: int, text_hidden: int) -> None:
    """Every tensor the encoder reads is there, in the shapes of one width; the projection
    meets the text model's width."""
    need = list(_TOP.values()) + [f"audio.subsample_conv_projection.layer{i}.{p}.weight" for i in range(2)
                                  for p in ("conv", "norm")]
    for b in range(max(blocks, 1)):
        for key, (module, clipped) in _LAYER.items():
            name = f"audio.layers.{b}.{module}"
            need.append(name if key == "per_dim_scale" else f"{name}.linear.weight" if clipped else f"{name}.weight")
    lacking = [n for n in need if n not in tensors]
    if lacking:
        raise ModelFileError(f"{path} is not Gemma 4's audio tower: it lacks {', '.join(lacking[:3])}"
                             f"{' and more' if len(lacking) > 3 else ''}; use the mmproj file made from the same "
                             "Gemma 4 checkpoint as the model")
    hidden = tensors["audio.subsample_conv_projection.input_proj_linear.weight"][1][0]
    wrong = [n for n in need if n.endswith(("q_proj.linear.weight", "k_proj.linear.weight", "post.linear.weight"))
             and tensors[n][1] != (hidden, hidden)]
    if wrong:
        raise ModelFileError(f"{path}: {wrong[0]} has shape {tensors[wrong[0]][1]}, not ({hidden}, {hidden}) as the "
                             "encoder's width implies: it is not Gemma 4's audio tower, or it is damaged")
    embed = tensors["audio_embed.embedding_projection.weight"][1]
    if len(embed) != 2 or embed[0] != text_hidden:
        raise ModelFileError(f"{path} projects audio into a text width of {embed[0]}, but the model's is {text_hidden}: "
                             "it belongs to another model (E2B and E4B each have their own mmproj)")


def _token_ids(path: Path, token_id: Callable[[str], int | None]) -> dict[str, int]:
    ids = {}
    for role, spellings in _TOKENS.items():
        found = [i for i in map(token_id, spellings) if i is not None]
        if not found:
            raise ModelFileError(f"the model's vocabulary has no {' or '.join(spellings)} token, which audio needs: "
                                 f"{path} goes with a Gemma 4 model")
        ids[role] = found[0]
    return ids
