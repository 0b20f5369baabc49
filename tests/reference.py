"""Reference checkpoints for the parity tests: a Gemma-style byte-fallback BPE
tokenizer.json built with `tokenizers`, and random-weight Gemma 4 models built
and saved with `transformers` (the reference implementation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgert.config import published  # noqa: F401  (the published E2B/E4B configs)

# Gemma's id layout for the ids that matter: 0 pad, 1 eos, 2 bos, 3 unk, 105 <|turn>, 106 <turn|>.
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
CONTROL = ["<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>", "<boa>", "<eoa>", "<|audio|>",
           "<|tool_call>", "<tool_call|>", "<|tool>", "<tool|>", "<|tool_response>", "<tool_response|>", '<|"|>']

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Why is the sky blue? Because of Rayleigh scattering of sunlight in the atmosphere.",
    "Hello world! How are you today? I am fine, thank you.",
    "def forward(self, x):\n    return self.proj(x) + x\n",
    "for i in range(10):\n\tprint(i * i)\n",
    "Café, naïve, résumé, façade, Zürich, São Paulo, Øresund.",
    "日本語のテキストと中文文本。",
    "Emoji: 🙂 🚀 👍🏽 ❤️",
    "    indented   with    runs of     spaces\n\n\nand newlines",
    "Gemma runs on a Raspberry Pi with per-layer embeddings kept on flash.",
    "<|turn>user\nHi there<turn|>\n<|turn>model\nHello!<turn|>\n",
] * 3


def build_tokenizer(directory: Path, vocab_size: int = 480) -> int:
    """Write tokenizer.json and tokenizer_config.json; return the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], show_progress=False)
    trainer_tok.train_from_iterator(CORPUS, trainer)
    learned = json.loads(trainer_tok.to_str())["model"]

    unused = [f"<unused{i}>" for i in range(105 - len(SPECIALS))]
    head = SPECIALS + unused + CONTROL  # <|turn> lands on 105, <turn|> on 106
    vocab = {t: i for i, t in enumerate(head)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(t, len(vocab))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                                                     for m in learned["merges"]],
                               unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS + CONTROL])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "add_bos_token": True,
    }))
    return tok.get_vocab_size()


def text_config(kind: str, vocab_size: int, **overrides) -> dict:
    """Small shapes with the real architecture. e2b: 4 sliding + 1 global, 1 KV head, KV sharing
    with double-wide MLP, PLE. e4b: 5 sliding + 1 global, 2 KV heads, no double-wide MLP."""
    if kind == "e2b":
        layer_types = (["sliding_attention"] * 4 + ["full_attention"]) * 3
        cfg = dict(num_hidden_layers=15, num_key_value_heads=1, num_kv_shared_layers=5, use_double_wide_mlp=True)
    elif kind == "e4b":
        layer_types = (["sliding_attention"] * 5 + ["full_attention"]) * 2
        cfg = dict(num_hidden_layers=12, num_key_value_heads=2, num_kv_shared_layers=4, use_double_wide_mlp=False)
    else:
        raise ValueError(kind)
    cfg.update(
        vocab_size=vocab_size, vocab_size_per_layer_input=vocab_size, hidden_size=64, intermediate_size=96,
        num_attention_heads=4, head_dim=32, global_head_dim=64, sliding_window=8, layer_types=layer_types,
        hidden_size_per_layer_input=16, final_logit_softcapping=30.0, max_position_embeddings=512,
        rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=2, eos_token_id=[1, 106],
    )
    cfg.update(overrides)
    return cfg


def randomize(model, seed: int) -> None:
    """Random weights: norms and layer scalars in [0.75, 1.25], away from 1 so that a
    `1 + weight` or a forgotten scalar shows in the logits. (A wider spread amplifies float32
    rounding in transformers itself past 1e-4: both it and edgert then drift ~3e-4 from a
    float64 run.)"""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(0.75 + 0.5 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (p.shape[-1] ** -0.5))
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.75 + 0.5 * torch.rand(b.shape, generator=g))
        # Trained models learn small q/k norm weights; with weights near 1 the attention
        # scores of a random model have std ~sqrt(head_dim), softmaxes are near one-hot and
        # the network turns any perturbation (f16 rounding included) into large logit changes.
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.mul_(0.5)


def build_checkpoint(directory: Path, kind: str, seed: int = 0, **overrides):
    """Save a random-weight Gemma4ForCausalLM and its tokenizer; return the torch model (eval)."""
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    vocab = build_tokenizer(directory)
    config = Gemma4TextConfig(**text_config(kind, vocab, **overrides))
    torch.manual_seed(seed)
    model = Gemma4ForCausalLM(config).eval()
    randomize(model, seed)
    model.save_pretrained(directory)
    return model


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference from the reference b, relative to b's largest magnitude."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """All-position logits (n, vocab) from transformers."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=False)
    return out.logits[0].float().numpy()


def hf_decode_logits(model, prompt: list[int], steps: list[int]) -> np.ndarray:
    """Prefill `prompt` with a cache, then feed `steps` one token at a time; the logits of
    the last prompt position followed by each step's: (1 + len(steps), vocab)."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        rows = [out.logits[0, -1].float().numpy()]
        cache = out.past_key_values
        for t in steps:
            out = model(torch.tensor([[t]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            rows.append(out.logits[0, -1].float().numpy())
    return np.stack(rows)


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens from transformers, with its KV cache (no stop tokens)."""
    import torch

    out_ids = []
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        for _ in range(n):
            t = int(out.logits[0, -1].argmax())
            out_ids.append(t)
            out = model(torch.tensor([[t]]), past_key_values=out.past_key_values, use_cache=True)
    return out_ids


def build_assistant(directory: Path, kind: str, vocab_size: int, seed: int = 7, centroids: bool = True):
    """Save a random-weight Gemma4AssistantForCausalLM (Gemma 4's drafter) for the small `kind`
    model of `vocab_size` tokens: two layers (sliding, global) with the target's head dims and KV
    heads, width 32, and a centroid head of 19 clusters (top 4; 19 divides the small tokenizer's
    836 ids) over a random token ordering, or the full head; return the torch model (eval)."""
    import torch
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4_assistant import Gemma4AssistantConfig, Gemma4AssistantForCausalLM

    text = text_config(kind, vocab_size, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
                       hidden_size=32, intermediate_size=48, num_attention_heads=2 if kind == "e4b" else 4,
                       hidden_size_per_layer_input=0, vocab_size_per_layer_input=0, use_double_wide_mlp=False,
                       num_kv_shared_layers=2)
    config = Gemma4AssistantConfig(text_config=Gemma4TextConfig(**text), backbone_hidden_size=64,
                                   use_ordered_embeddings=centroids, num_centroids=19, centroid_intermediate_top_k=4)
    torch.manual_seed(seed)
    model = Gemma4AssistantForCausalLM(config).eval()
    randomize(model, seed)
    if centroids:
        g = torch.Generator().manual_seed(seed)
        model.masked_embedding.token_ordering.copy_(torch.randperm(vocab_size, generator=g))
    model.save_pretrained(directory)
    return model


def hf_draft(target, assistant, prompt: list[int], tokens: list[int], window: int):
    """transformers' draft steps after `prompt`, as its SinglePositionMultiTokenCandidateGenerator
    takes them, teacher-forced: tokens[0] is the token after the prompt, each next one the
    previous step's guess. The target's sliding K/V are its last `window` entries, as its cache
    holds them after a decode step. Returns the logits and the handed-on hidden of each step."""
    import torch

    with torch.no_grad():
        out = target(torch.tensor([prompt]), output_hidden_states=True, return_shared_kv_states=True, use_cache=False)
        kv = dict(out.shared_kv_states)
        kv["sliding_attention"] = tuple(t[:, :, -window:] for t in kv["sliding_attention"])
        hidden = out.hidden_states[-1][:, -1:]
        logits, hiddens = [], []
        for t in tokens:
            e = target.model.embed_tokens(torch.tensor([[t]]))
            step = assistant(inputs_embeds=torch.cat([e, hidden], dim=-1), shared_kv_states=kv,
                             position_ids=torch.tensor([[len(prompt)]]))
            hidden = step.last_hidden_state
            logits.append(step.logits[0, -1].float().numpy())
            hiddens.append(hidden[0, -1].float().numpy())
    return np.stack(logits), np.stack(hiddens)


AUDIO_IDS = dict(boa_token_id=110, eoa_token_index=111, audio_token_id=112)  # <boa>, <eoa>, <|audio|> above


def build_audio_checkpoint(directory: Path, seed: int = 3):
    """Save a random-weight Gemma4ForConditionalGeneration with an E2B-like text model and a
    narrow audio tower of the real structure; return the torch model (eval)."""
    import torch
    from transformers import Gemma4AudioConfig, Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig

    vocab = build_tokenizer(directory)
    audio = Gemma4AudioConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              subsampling_conv_channels=[128, 8], output_proj_dims=48)
    config = Gemma4Config(text_config=Gemma4TextConfig(**text_config("e2b", vocab)).to_dict(),
                          audio_config=audio.to_dict(), vision_config=None, **AUDIO_IDS)
    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(config).eval()
    randomize(model, seed)
    model.save_pretrained(directory)
    return model


# --- committed golden output, for machines without torch (the emulated Raspberry Pi 5 job) -------

GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "gemma4-e2b-tiny"
GOLDEN_PROMPT, GOLDEN_STEPS, GOLDEN_GREEDY = 40, 24, 16  # prompt of five windows; decode past them


def golden_ids(vocab: int) -> tuple[list[int], list[int]]:
    """The golden case's prompt (<bos> + ordinary tokens) and the tokens fed in decode after it."""
    rng = np.random.default_rng(11)
    prompt = [2] + [int(i) for i in rng.integers(300, vocab, GOLDEN_PROMPT - 1)]
    return prompt, [int(i) for i in rng.integers(300, vocab, GOLDEN_STEPS)]


def write_golden(directory: Path = GOLDEN_DIR) -> None:
    """Save the small E2B-like checkpoint of the parity tests (seed 1) with transformers' logits on
    it: every prompt position, each decode step, and a greedy continuation (golden.npz)."""
    model = build_checkpoint(directory, "e2b", seed=1)
    vocab = model.config.vocab_size
    prompt, steps = golden_ids(vocab)
    np.savez_compressed(directory / "golden.npz", prompt=np.array(prompt), steps=np.array(steps),
                        prefill=hf_logits(model, prompt), decode=hf_decode_logits(model, prompt, steps),
                        greedy=np.array(hf_greedy(model, prompt, GOLDEN_GREEDY)))


if __name__ == "__main__":  # python -m tests.reference: rewrite the committed golden output
    write_golden()
    print(f"wrote {GOLDEN_DIR}")


# --- llama.cpp's mmproj file, written as its converter writes it ------------------------------------

def write_mmproj(checkpoint: Path, out: Path, projector: str = "gemma4a", audio: bool = True,
                 vision: bool = True) -> Path:
    """The audio tower of a Gemma 4 checkpoint as llama.cpp's convert_hf_to_gguf.py writes it
    into an mmproj file (Gemma4VisionAudioModel, --outtype f16): gguf's own multimodal names
    (gguf.get_tensor_name_map(MMPROJ)), per_dim_scale softplus-ed, the depthwise kernel as
    (C, K), scalars as 1-element vectors; convolutions, vectors and scalars in F32, the other
    matrices in F16; its clip.* keys. vision: two stand-in vision tensors beside it, as in
    Google's checkpoints (their vision tower is not built here)."""
    import gguf
    import torch
    from safetensors import safe_open

    config = json.loads((checkpoint / "config.json").read_text())
    audio_cfg, text_cfg = config["audio_config"], config["text_config"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, audio_cfg["num_hidden_layers"])
    w = gguf.GGUFWriter(out, "clip")
    w.add_clip_has_vision_encoder(vision)
    w.add_clip_has_audio_encoder(audio)
    if audio:
        w.add_clip_audio_projector_type(projector)
        w.add_audio_num_mel_bins(audio_cfg.get("input_feat_size", 128))
        w.add_audio_embedding_length(audio_cfg["hidden_size"])
        w.add_audio_feed_forward_length(audio_cfg["hidden_size"] * 4)
        w.add_audio_block_count(audio_cfg["num_hidden_layers"])
        w.add_audio_head_count(audio_cfg["num_attention_heads"])
        w.add_audio_projection_dim(text_cfg["hidden_size"])
        w.add_audio_attention_layernorm_eps(1e-5)
    if vision:
        w.add_clip_vision_projector_type("gemma4v")
        w.add_tensor("v.patch_embd.weight", np.zeros((8, 3, 2, 2), np.float32))
        w.add_tensor("mm.input_projection.weight", np.zeros((text_cfg["hidden_size"], 8), np.float16))
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        for name in f.keys() if audio else []:
            if "audio_tower" not in name and "embed_audio" not in name:
                continue
            data = f.get_tensor(name).float()
            if data.dim() == 0:
                data = data.unsqueeze(0)
            n = name.replace("model.audio_tower.", "conformer.").replace(".linear.", ".")
            if n.endswith("per_dim_key_scale") or n.endswith("per_dim_scale"):
                n += ".weight"
                data = torch.nn.functional.softplus(data)
            if "lconv1d.depthwise_conv1d" in n and n.endswith(".weight"):
                data = data.reshape(data.shape[0], data.shape[2])
            new = names.get_name(n, try_suffixes=(".weight", ".bias", ".input_max", ".input_min", ".output_max",
                                                  ".output_min"))
            assert new is not None, n
            f32 = data.dim() <= 1 or ".conv" in name or ("_conv" in name and ".weight" in name)
            w.add_tensor(new, data.numpy().astype(np.float32 if f32 else np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def plain_ids(model, state, prompt, max_new_tokens, sampler, stop_ids) -> list[int]:
    """The obvious decoding loop, one token per step: the slow twin edgert's one loop (with
    or without a drafter) is checked against."""
    logits = model.prefill(state, list(prompt))
    out, history = [], list(state.tokens)
    for _ in range(max_new_tokens):
        token = sampler(logits, history)
        state.pending = [token]  # drawn, not fed
        if token in stop_ids:
            break
        out.append(token)
        history.append(token)
        if len(out) == max_new_tokens or state.pos + 1 >= model.n_ctx:
            break
        state.pending = []
        logits = model.decode_step(state, token)
    return out


def assert_same_caches(a, b) -> None:
    """Two states hold the same K/V: every layer's slots hold the same positions, and the held
    slots the same entries. An empty slot (position -1) is never read, so what it keeps does not
    count: a verify step that a stop id or a rejected guess cut short leaves its entries there,
    as llama.cpp leaves a removed cell's."""
    assert a.caches.keys() == b.caches.keys()
    for i, x in a.caches.items():
        y = b.caches[i]
        np.testing.assert_array_equal(x.pos, y.pos, err_msg=f"layer {i}: the slots hold other positions")
        held = x.pos >= 0
        for name in ("k", "k_scale", "v", "v_scale"):
            np.testing.assert_array_equal(getattr(x, name)[held], getattr(y, name)[held],
                                          err_msg=f"layer {i}: {name} differs at a held slot")
