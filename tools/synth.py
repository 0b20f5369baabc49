"""Synthetic full-size Gemma 4 GGUFs for the benchmarks.

Random weights with exactly the published E2B / E4B shapes, llama.cpp's tensor
names and metadata (the converter's own writer), written straight in the
file's block format with numpy and gguf: no torch, no checkpoint, and no claim
to be Gemma's weights. Speed and memory depend on shapes and formats only, so
these give honest figures; llama.cpp loads the same file for the comparison.

Every matrix takes the one type asked for (as `llama-quantize --pure`), the
tied embedding / LM head included. Weights are uniform random blocks whose scale makes each row's values have a
standard deviation of about 1/sqrt(columns), so activations stay finite
through all layers; norms and layer scalars are 1.

Such a model is chaotic: 35 random layers, each as strong as the embedding, amplify any
rounding (an f16 KV cache alone moves its first logits by 0.2 on a spread of 1), so two
engines' greedy tokens part within a few steps however right both are. `design="chain"`
makes a model that is live but stable, for checking agreement on full-size files:

- one layer's MLP (the first of the widest, F rows) is a lookup table: its gate and up
  rows are the directions of F tokens' embeddings, and its down columns those of each
  token's successor along one random cycle through them (the first F normal tokens, which
  hold every character and pair the synthetic vocabulary writes text with);
- that layer's MLP output norm is CHAIN_GAIN, every other output norm (attention, MLP,
  per-layer input) CHAIN_REST: each other layer still adds its random function, at a
  tenth of the embedding's size, and no chain of them grows.

The greedy continuation of any text is then the cycle (64 distinct tokens, not one
repeated), every position's top choice leads its runner-up by several logits, and the
logits of two engines stay close at every position: a kernel error shows in them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from edgert.config import config_from_hf, published, rope_freqs_factors, tensor_manifest
from edgert.files.convert import Progress, write_gguf
from edgert.text.tokenizer import BYTE, CONTROL, NORMAL, UNUSED, TokenizerData
from quant import BLOCKS, QType, dequantize, row_bytes

TYPES = {"q4_0": QType.Q4_0, "q8_0": QType.Q8_0, "f16": QType.F16}


def synthetic_vocab(n_vocab: int) -> TokenizerData:
    """A Gemma-shaped vocabulary: Gemma's special ids (0 pad, 1 eos, 2 bos, 3 unk, 105 <|turn>,
    106 <turn|>), 256 byte tokens, printable characters and their pairs (with merges), and
    unreachable filler up to n_vocab."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    types = [CONTROL] * 5
    tokens += [f"[unused{i}]" for i in range(105 - len(tokens))]
    types += [UNUSED] * (105 - len(types))
    tokens += ["<|turn>", "<turn|>"]
    types += [CONTROL] * 2
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    chars = ["\u2581"] + [chr(c) for c in range(33, 127)]
    tokens += chars
    types += [NORMAL] * len(chars)
    merges = []
    for a in chars:
        for b in chars[1:]:
            if len(tokens) < n_vocab:
                tokens.append(a + b)
                types.append(NORMAL)
                merges.append(f"{a} {b}")
    filler = n_vocab - len(tokens)
    tokens += [f"\u2581synthetic{i}" for i in range(filler)]
    types += [NORMAL] * filler
    return TokenizerData(model="gemma4", tokens=tokens, types=types, merges=merges, bos=2, eos=1, eot=106,
                         pad=0, unk=3, add_bos=True, chat_template=None)


class _RandomBlocks:
    """Rows of random blocks, written a chunk at a time (the PLE table is over a gigabyte)."""

    def __init__(self, rng: np.random.Generator, rows: int, cols: int, qtype: QType):
        self.rng, self.rows, self.cols, self.qtype = rng, rows, cols, qtype
        self.nbytes = rows * row_bytes(qtype, cols)
        self._scale = None  # the f16 scale that gives values of std 1 / sqrt(cols)

    def _chunk(self, n: int) -> np.ndarray:
        std = 1.0 / np.sqrt(self.cols)
        if self.qtype == QType.F16:
            return (self.rng.standard_normal((n, self.cols), dtype=np.float32) * std).astype(np.float16)
        block = BLOCKS[self.qtype]
        raw = np.frombuffer(self.rng.bytes(n * row_bytes(self.qtype, self.cols)), dtype=np.uint8)
        blocks = raw.reshape(-1, block.nbytes).copy()
        if self._scale is None:  # what random bytes with scales of 1 spread to: 4-bit q - 8 has std 4.6,
            spread = {QType.Q4_0: 4.6, QType.Q8_0: 74.0}.get(self.qtype)  # int8 74; the others measured once
            if spread is None:
                sample = blocks[:64].copy()
                for at in block.scales:
                    sample[:, at:at + 2] = np.frombuffer(np.float16(1.0).tobytes(), dtype=np.uint8)
                spread = dequantize(sample, self.qtype, block.values).std()
            self._scale = np.float16(std / spread)
        for at in block.scales:
            blocks[:, at:at + 2] = np.frombuffer(self._scale.tobytes(), dtype=np.uint8)
        return blocks

    def tofile(self, fout) -> None:
        per_chunk = max(1, (32 << 20) // row_bytes(self.qtype, self.cols))
        for start in range(0, self.rows, per_chunk):
            fout.write(self._chunk(min(per_chunk, self.rows - start)).tobytes())


CHAIN_GAIN = 2.5  # the lookup layer's MLP output norm, against the embedding's 1
CHAIN_REST = 0.1  # every other layer's output norms
CHAIN_MATCH = 4.0  # the lookup's gate (and up) value for the token it holds


def chain_weights(cfg, vocab: TokenizerData, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors that make the chain design (see the module's text), as float16 or float32
    arrays by tensor name, and the cycle {token: successor}."""
    manifest = tensor_manifest(cfg)
    n_vocab, width = manifest["token_embd.weight"]
    embd = rng.standard_normal((n_vocab, width), dtype=np.float32) / np.float32(np.sqrt(width))
    wide = max(range(cfg.n_layer), key=lambda i: (manifest[f"blk.{i}.ffn_gate.weight"][0], -i))
    rows = manifest[f"blk.{wide}.ffn_gate.weight"][0]
    normal = [i for i, t in enumerate(vocab.types) if t == NORMAL]
    if len(normal) < rows:
        raise ValueError(f"the chain design needs {rows} normal tokens, the vocabulary has {len(normal)}")
    held = np.array(normal[:rows])
    order = rng.permutation(held)
    successor = dict(zip(order.tolist(), np.roll(order, -1).tolist()))
    unit = embd[held] / np.linalg.norm(embd[held], axis=1, keepdims=True)
    # the MLP's input is the normed residual, of length sqrt(width) and mostly the token's direction
    key = unit * np.float32(CHAIN_MATCH / np.sqrt(width))
    value = embd[[successor[t] for t in held.tolist()]]
    value /= np.linalg.norm(value, axis=1, keepdims=True)
    out = {"token_embd.weight": embd.astype(np.float16),
           f"blk.{wide}.ffn_gate.weight": key.astype(np.float16),
           f"blk.{wide}.ffn_up.weight": key.astype(np.float16),
           f"blk.{wide}.ffn_down.weight": np.ascontiguousarray(value.T).astype(np.float16)}
    for i in range(cfg.n_layer):
        for norm in ("post_attention_norm", "post_ffw_norm", "post_norm"):
            name = f"blk.{i}.{norm}.weight"
            if name in manifest:
                gain = CHAIN_GAIN if (i, norm) == (wide, "post_ffw_norm") else CHAIN_REST
                out[name] = np.full(manifest[name], gain, dtype=np.float32)
    return out, successor


def write_synthetic(kind: str, out_path: str | Path, qtype: str = "q4_0", seed: int = 0,
                    progress: Progress | None = None, hf_config: dict | None = None,
                    stored: dict[str, QType] | None = None, design: str = "random") -> Path:
    """Write a random-weight GGUF with the published shapes of `kind` (or those of
    `hf_config`, a config.json as a dict); returns its path. stored: {tensor name: QType}
    for tensors kept in another type (random blocks of it). design: "random", or "chain"
    (f16 only: the live but stable model of the module's text)."""
    if qtype not in TYPES:
        raise ValueError(f"synthetic models come in {', '.join(TYPES)}, not {qtype!r}")
    if design not in ("random", "chain") or (design == "chain" and qtype != "f16"):
        raise ValueError(f"design is 'random' or 'chain' (in f16), not {design!r} in {qtype}")
    hf = hf_config if hf_config is not None else published(kind)
    cfg = config_from_hf(hf)
    rng = np.random.default_rng(seed)
    vocab = synthetic_vocab(cfg.n_vocab)
    fixed = chain_weights(cfg, vocab, rng)[0] if design == "chain" else {}
    tensors = []
    for name, shape in tensor_manifest(cfg).items():
        # every matrix in `qtype`, the LM head included, as `llama-quantize --pure` writes
        # (rows that do not fill whole blocks fall back to f16, as in the converter)
        t = TYPES[qtype] if len(shape) == 2 else QType.F32
        if len(shape) == 2 and shape[1] % BLOCKS[t].values:
            t = QType.F16
        t = (stored or {}).get(name, t)
        if name in fixed:
            payload = fixed[name]
        elif name == "rope_freqs.weight":
            payload = np.asarray(rope_freqs_factors(cfg), dtype=np.float32)
        elif len(shape) == 1:
            payload = np.ones(shape, dtype=np.float32)  # norms and layer scalars
        else:
            payload = _RandomBlocks(rng, shape[0], shape[1], t)
        tensors.append((name, shape, t, payload))
    return write_gguf(out_path, cfg, vocab, tensors, f"synthetic gemma4-{kind}",
                      TYPES[qtype], progress)


# Gemma 4's drafters (Gemma4AssistantForCausalLM) have no published config beside this repo's;
# these shapes are the public facts (4 layers, three sliding and one global, width 256, the
# target's head dims and KV heads, 2048 centroids of which 32 are scored) and two guesses,
# marked: 4 query heads and an MLP of 2048.
ASSISTANT_SHAPE = dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=2048,
                       layer_types=["sliding_attention"] * 3 + ["full_attention"])
ASSISTANT_GUESSED = ("num_attention_heads", "intermediate_size")


def assistant_config(kind: str) -> dict:
    """A drafter config.json for the published `kind`, with ASSISTANT_SHAPE."""
    target = published(kind)
    text = dict(target.get("text_config", target))
    text.update(ASSISTANT_SHAPE, hidden_size_per_layer_input=0, vocab_size_per_layer_input=0,
                use_double_wide_mlp=False, num_kv_shared_layers=ASSISTANT_SHAPE["num_hidden_layers"],
                model_type="gemma4_text")
    return dict(model_type="gemma4_assistant", text_config=text, backbone_hidden_size=text_hidden(target),
                use_ordered_embeddings=True, num_centroids=2048, centroid_intermediate_top_k=32)


def text_hidden(config: dict) -> int:
    return int(config.get("text_config", config)["hidden_size"])


def write_synthetic_assistant(kind: str, out_path: str | Path, qtype: str = "q4_0", seed: int = 1,
                              progress: Progress | None = None) -> Path:
    """A random-weight drafter for the synthetic `kind` model, in llama.cpp's gemma4-assistant
    layout with the centroid head (a random token ordering)."""
    from edgert.config import ASSISTANT_ARCH, assistant_config_from_hf, assistant_manifest

    cfg = assistant_config_from_hf(assistant_config(kind))
    rng = np.random.default_rng(seed)
    tensors = []
    for name, shape in assistant_manifest(cfg).items():
        if name == "masked_embd_ordering":
            tensors.append((name, shape, GGMLQuantizationType.I32, rng.permutation(shape[0]).astype(np.int32)))
        elif name == "rope_freqs.weight":
            tensors.append((name, shape, QType.F32, np.asarray(rope_freqs_factors(cfg.text), dtype=np.float32)))
        elif len(shape) == 1:
            tensors.append((name, shape, QType.F32, np.ones(shape, dtype=np.float32)))
        else:
            t = TYPES[qtype] if shape[1] % BLOCKS[TYPES[qtype]].values == 0 else QType.F16
            tensors.append((name, shape, t, _RandomBlocks(rng, shape[0], shape[1], t)))
    ints = {"embedding_length_out": cfg.n_backbone, "nextn_predict_layers": cfg.text.n_layer,
            "centroid_top_k": cfg.centroid_top_k}
    return write_gguf(out_path, cfg.text, None, tensors, f"synthetic gemma4-{kind}-assistant", TYPES[qtype],
                      progress, arch=ASSISTANT_ARCH, ints=ints)
