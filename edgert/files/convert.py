"""Hugging Face Gemma 4 checkpoint -> GGUF, with llama.cpp's gemma4 names and keys.

Reads config.json, the safetensors shards (bf16/f16/f32, parsed here: no torch)
and tokenizer.json; writes one GGUF through the `gguf` package. It follows
llama.cpp's converter (conversion/gemma.py, Gemma4Model): no norm shift,
`layer_scalar` -> `blk.N.layer_output_scale.weight`, a `rope_freqs` tensor for
the proportional RoPE of global layers, tokenizer model "gemma4" with merges.

Norms and other 1-D tensors stay f32; `qtype` picks the type of the matrices.
The output is written to a temporary file beside the target and renamed only
when complete, so an interrupted conversion never leaves a half-written model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

from edgert.config import (ARCH, ASSISTANT_ARCH, AUDIO_CONFIG, AUDIO_SHAPES, AUDIO_TOKENS, ModelConfig,
                           assistant_config_from_hf, assistant_manifest, config_from_hf,
                           rope_freqs_factors, tensor_manifest)
from edgert.errors import CheckpointError, UnsupportedTypeError
from edgert.text.tokenizer import TokenizerData
from quant import QType, dequantize, quantize, row_bytes
from quant.formats import BLOCKS

TYPES = {"f32": QType.F32, "f16": QType.F16, "bf16": QType.BF16, "q8_0": QType.Q8_0, "q4_0": QType.Q4_0}

# Tokens llama.cpp's converter marks USER_DEFINED so that they are always rendered.
VISIBLE_TOKENS = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                  "<tool_response|>", '<|"|>'}

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "I32": np.int32}

Progress = Callable[[int, int, str], None]  # (done, total, what)


# --- safetensors, read without torch ----------------------------------------------------------

@dataclass(frozen=True)
class SafeTensor:
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file

    def array(self) -> np.ndarray:
        """The tensor as a read-only memory map in its stored dtype (bf16 as uint16)."""
        count = int(np.prod(self.shape)) if self.shape else 1
        mm = np.memmap(self.path, dtype=_ST_DTYPES[self.dtype], mode="r", offset=self.offset, shape=(count,))
        return mm.reshape(self.shape) if self.shape else mm

    def rows_f32(self, start: int, stop: int, flat: bool = False) -> np.ndarray:
        """Rows start..stop as float32; a 1-D tensor is one row, and so is any tensor when flat."""
        a = self.array()
        a = a.reshape(1, -1) if a.ndim < 2 or flat else a
        part = np.asarray(a[start:stop])
        if self.dtype == "BF16":
            return (part.astype(np.uint32) << 16).view(np.float32)
        return part.astype(np.float32)


def read_safetensors(directory: Path) -> dict[str, SafeTensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {directory}; point at a Hugging Face checkpoint directory")
    tensors: dict[str, SafeTensor] = {}
    for path in files:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name} is truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", head)
            try:
                header = json.loads(f.read(n))
            except (ValueError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{path.name} has a corrupt safetensors header: {e}") from None
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _ST_DTYPES:
                raise CheckpointError(f"{path.name}: tensor {name} has dtype {info['dtype']}; expected BF16, F16 or F32")
            start, end = info["data_offsets"]
            if 8 + n + end > size:
                raise CheckpointError(f"{path.name} is truncated: tensor {name} ends past the end of the file")
            tensors[name] = SafeTensor(path, info["dtype"], tuple(info["shape"]), 8 + n + start)
    return tensors


# --- names --------------------------------------------------------------------------------------

_SKIP = re.compile(r"^(lm_head\.|model\.(audio_tower|embed_audio|vision_tower|embed_vision)\.)")
_VISION = re.compile(r"^model\.(vision_tower|embed_vision)\.")  # skipped: edgert has no vision path


def _plain(hf_name: str) -> str:
    """The text model's names as Gemma4ForCausalLM writes them, whichever class saved the checkpoint."""
    return hf_name.replace("model.language_model.", "model.", 1)


def gguf_name(hf_name: str, name_map: gguf.TensorNameMap) -> str | None:
    """HF tensor name -> llama.cpp gemma4 name; None for tensors of other towers or the tied head."""
    name = _plain(hf_name)
    if _SKIP.match(name):
        return None
    if name.endswith("layer_scalar"):
        name += ".weight"  # as llama.cpp's Gemma4Model.filter_tensors
    mapped = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise CheckpointError(f"tensor {hf_name} has no llama.cpp gemma4 name; is this a Gemma 4 checkpoint?")
    return mapped


# --- tokenizer ----------------------------------------------------------------------------------

def _token_id(tokens: list[str], value) -> int | None:
    if isinstance(value, dict):
        value = value.get("content")
    if value is None:
        return None
    try:
        return tokens.index(value)
    except ValueError:
        return None


def read_vocab(directory: Path) -> TokenizerData:
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no tokenizer.json; the converter stores the tokenizer in the model file")
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model", {})
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise CheckpointError("tokenizer.json is not a byte-fallback BPE tokenizer, as Gemma 4's is")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for text, i in vocab.items():
        tokens[i] = text
    types = []
    for i, text in enumerate(tokens):
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            types.append(gguf.TokenType.BYTE)
        elif text in VISIBLE_TOKENS or (text in added and not added[text].get("special")):
            types.append(gguf.TokenType.USER_DEFINED)
        elif text in added:
            types.append(gguf.TokenType.CONTROL)
        elif text.startswith("[PAD"):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    cfg_path = directory / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    template = tcfg.get("chat_template")
    jinja = directory / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    bos = _token_id(tokens, tcfg.get("bos_token", "<bos>"))
    eos = _token_id(tokens, tcfg.get("eos_token", "<eos>"))
    return TokenizerData(
        model="gemma4",
        tokens=tokens,
        types=[int(t) for t in types],
        merges=merges,
        bos=bos,
        eos=eos,
        eot=_token_id(tokens, "<turn|>"),
        pad=_token_id(tokens, tcfg.get("pad_token", "<pad>")),
        unk=_token_id(tokens, model.get("unk_token") or tcfg.get("unk_token")),
        add_bos=True,
        chat_template=template if isinstance(template, str) else None,
    )


# --- the conversion -----------------------------------------------------------------------------

PLE_TABLE = "per_layer_token_embd.weight"


def matrix_type(name: str, shape: tuple[int, ...], qtype: QType) -> QType:
    """The stored type of one tensor: 1-D stays f32; matrices take `qtype`, except that the tied
    embedding / LM head keeps Q8_0 under Q4_0 (llama.cpp likewise keeps its output tensor at
    higher precision), and rows that do not fill whole blocks fall back to f16."""
    if len(shape) < 2 or qtype == QType.F32:
        return QType.F32
    if qtype == QType.Q4_0 and name == "token_embd.weight":
        qtype = QType.Q8_0
    if shape[-1] % BLOCKS[qtype].values:
        return QType.F16
    return qtype


class _ChunkedTensor:
    """Duck-typed for GGUFWriter.write_tensor_data: converts and writes `rows_per_chunk` rows at a
    time, so that a multi-gigabyte table never sits in memory whole."""

    def __init__(self, source: SafeTensor, rows: int, qtype: QType, nbytes: int, rows_per_chunk: int):
        self.source, self.rows, self.qtype, self.nbytes, self.chunk = source, rows, qtype, nbytes, rows_per_chunk
        self.err2 = self.ref2 = 0.0  # squared error and squared values over the rows sampled

    def tofile(self, fout) -> None:
        for start in range(0, self.rows, self.chunk):
            x = self.source.rows_f32(start, min(start + self.chunk, self.rows))
            x = x.reshape(x.shape[0], -1)
            stored = quantize(x, self.qtype)
            sample = slice(0, 64)  # the error is measured on the first rows of each chunk
            back = dequantize(stored[sample], self.qtype, x.shape[1])
            self.err2 += float(np.sum((back.astype(np.float64) - x[sample]) ** 2))
            self.ref2 += float(np.sum(x[sample].astype(np.float64) ** 2))
            fout.write(stored.tobytes())

    @property
    def relative_error(self) -> float:
        """RMS error over RMS value of the sampled rows, once written."""
        return (self.err2 / self.ref2) ** 0.5 if self.ref2 else 0.0


class _FlatTensor:
    """A tensor of the audio tower, written flat: f16 for matrices (f32 in an f32 file), f32 for
    the rest."""

    def __init__(self, source: SafeTensor, matrices: QType):
        self.source = source
        self.size = int(np.prod(source.shape)) if source.shape else 1
        self.qtype = matrices if len(source.shape) > 1 else QType.F32
        self.nbytes = row_bytes(self.qtype, self.size)

    def tofile(self, fout) -> None:
        fout.write(quantize(self.source.rows_f32(0, 1, flat=True), self.qtype).tobytes())


def convert(
    hf_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    qtype: str = "q8_0",
    progress: Progress | None = None,
    ple_type: str | None = None,
    errors: dict[str, float] | None = None,
    skipped: dict[str, int] | None = None,
) -> Path:
    """Convert the checkpoint in `hf_dir` to a GGUF file at `out_path`; returns its path.

    ple_type: store the per-layer embedding table in another type than `qtype` (it is read
    a row per token from disk, so a smaller type saves flash and I/O, not compute).
    errors: if given, filled with each quantized matrix's relative RMS error (sampled rows).
    skipped: if given, filled with what the file leaves out: {part: tensor count}, such as
    {"vision tower": 412} for Google's checkpoints (edgert reads text and audio)."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    for flag, value in (("--type", qtype), ("--ple-type", ple_type)):
        if value is not None and value not in TYPES:
            raise UnsupportedTypeError(f"{flag} {value!r} is not supported; choose one of {', '.join(TYPES)}")
    if not (hf_dir / "config.json").is_file():
        raise CheckpointError(f"{hf_dir} has no config.json; point at a Hugging Face checkpoint directory")
    hf_config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    if hf_config.get("model_type") == "gemma4_assistant":
        return convert_assistant(hf_dir, hf_config, out_path, qtype, progress)
    cfg = config_from_hf(hf_config)
    vocab = read_vocab(hf_dir)
    sources = read_safetensors(hf_dir)

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, cfg.n_layer)
    found: dict[str, SafeTensor] = {}
    for hf_name, st in sources.items():
        name = gguf_name(hf_name, name_map)
        if name is not None:
            found[name] = st
        elif skipped is not None and _VISION.match(_plain(hf_name)):
            skipped["vision tower"] = skipped.get("vision tower", 0) + 1

    manifest = tensor_manifest(cfg)
    n_vocab_tok = len(vocab.tokens)
    plan = []  # (name, source or None, rows of source to take, shape, qtype)
    for name, shape in manifest.items():
        if name == "rope_freqs.weight":
            plan.append((name, None, shape, QType.F32))
            continue
        st = found.get(name)
        if st is None:
            raise CheckpointError(f"the checkpoint lacks {name} (expected shape {shape}); it is incomplete")
        st_shape = st.shape if st.shape else (1,)
        want = shape
        if name == "token_embd.weight" and st_shape[0] > n_vocab_tok:
            # as llama.cpp's Gemma3Model: drop embedding rows past the tokenizer's vocabulary
            want = (n_vocab_tok, shape[1])
            st_shape = (n_vocab_tok, st_shape[1])
        if tuple(st_shape) != tuple(want):
            raise CheckpointError(f"{name} has shape {tuple(st.shape)} but config.json implies {shape}")
        chosen = TYPES[ple_type] if ple_type and name == PLE_TABLE else TYPES[qtype]
        plan.append((name, st, want, matrix_type(name, want, chosen)))

    extra = sorted(set(found) - set(manifest))
    if extra:
        raise CheckpointError(f"the checkpoint has tensors this config does not use: {extra[:5]}")
    audio, audio_meta = _audio_tower(hf_config, sources)

    n_vocab = next(shape[0] for name, _, shape, _ in plan if name == "token_embd.weight")
    cfg_out = dataclasses.replace(cfg, n_vocab=n_vocab)  # after trimming rows past the tokenizer
    tensors = []
    for name, st, shape, t in plan:
        if st is None:  # rope_freqs
            tensors.append((name, shape, QType.F32, np.asarray(rope_freqs_factors(cfg), dtype=np.float32)))
            continue
        tensors.append((name, shape, t, _matrix_payload(st, shape, t)))
    for name, st in audio:  # flat: the shapes are in the metadata
        flat = _FlatTensor(st, QType.F32 if TYPES[qtype] == QType.F32 else QType.F16)
        tensors.append((name, (flat.size,), flat.qtype, flat))
    out = write_gguf(out_path, cfg_out, vocab, tensors, hf_config.get("_name_or_path") or "gemma4",
                     TYPES[qtype], progress, audio_meta)
    if errors is not None:
        errors.update({name: p.relative_error for name, _, t, p in tensors
                       if isinstance(p, _ChunkedTensor) and t not in (QType.F32,)})
    return out


def _matrix_payload(st: SafeTensor, shape: tuple[int, ...], t: QType) -> _ChunkedTensor:
    rows, cols = (shape[0] if len(shape) > 1 else 1), shape[-1]
    return _ChunkedTensor(st, rows, t, rows * row_bytes(t, cols), max(1, (64 << 20) // max(1, cols * 4)))


# the drafter's own tensors, by their Hugging Face names (Gemma4AssistantForCausalLM)
ASSISTANT_NAMES = {"pre_projection.weight": "nextn.pre_projection.weight",
                   "post_projection.weight": "nextn.post_projection.weight",
                   "masked_embedding.centroids.weight": "masked_embd_centroids.weight",
                   "masked_embedding.token_ordering": "masked_embd_ordering"}


def convert_assistant(hf_dir: Path, hf_config: dict, out_path: Path, qtype: str = "q8_0",
                      progress: Progress | None = None) -> Path:
    """A Gemma 4 drafter checkpoint (Gemma4AssistantForCausalLM) -> a `gemma4-assistant` GGUF
    with llama.cpp's names and keys, plus the centroid head (masked_embd_centroids.weight and
    the token ordering as I32 masked_embd_ordering, the names llama.cpp's loader gives them;
    its converter leaves them out and scores the whole vocabulary). The tokenizer is stored
    when the checkpoint has one; the drafter reads no text of its own."""
    cfg = assistant_config_from_hf(hf_config)
    sources = read_safetensors(hf_dir)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, cfg.text.n_layer)
    found: dict[str, SafeTensor] = {}
    for hf_name, st in sources.items():
        name = ASSISTANT_NAMES.get(hf_name) or gguf_name(hf_name, name_map)
        if name is not None:
            found[name] = st
    manifest = assistant_manifest(cfg)
    missing = [name for name in manifest if name not in found and name != "rope_freqs.weight"]
    if missing:
        raise CheckpointError(f"the drafter checkpoint lacks {missing[:3]}; it is incomplete")
    tensors = []
    for name, shape in manifest.items():
        if name == "rope_freqs.weight":
            tensors.append((name, shape, QType.F32, np.asarray(rope_freqs_factors(cfg.text), dtype=np.float32)))
            continue
        st = found[name]
        if tuple(st.shape or (1,)) != shape and int(np.prod(st.shape or (1,))) != int(np.prod(shape)):
            raise CheckpointError(f"{name} has shape {tuple(st.shape)} but config.json implies {shape}")
        if name == "masked_embd_ordering":
            ordering = np.asarray(st.array(), dtype=np.int64)
            if sorted(ordering.tolist()) != list(range(cfg.text.n_vocab)):
                raise CheckpointError("the drafter's token ordering is not a permutation of the vocabulary")
            tensors.append((name, shape, gguf.GGMLQuantizationType.I32, ordering.astype(np.int32)))
            continue
        stored = matrix_type(name, shape, TYPES[qtype])  # 1-D: f32
        tensors.append((name, shape, stored, _matrix_payload(st, shape, stored)))
    vocab = read_vocab(hf_dir) if (hf_dir / "tokenizer.json").is_file() else None
    ints = {"embedding_length_out": cfg.n_backbone, "nextn_predict_layers": cfg.text.n_layer}
    if cfg.n_centroids:
        ints["centroid_top_k"] = cfg.centroid_top_k
    return write_gguf(out_path, cfg.text, vocab, tensors, hf_config.get("_name_or_path") or "gemma4-assistant",
                      TYPES[qtype], progress, arch=ASSISTANT_ARCH, ints=ints)


AUDIO_PREFIXES = {"model.audio_tower.": "audio.", "model.embed_audio.": "audio_embed."}


def _audio_tower(hf_config: dict, sources: dict[str, SafeTensor]) -> tuple[list, dict]:
    """The audio encoder's tensors, renamed audio.* (Gemma4AudioModel) and audio_embed.*
    (embed_audio), and the metadata that describes them: the audio config, each tensor's
    shape and the audio token ids."""
    audio_cfg = hf_config.get("audio_config")
    if not audio_cfg:
        return [], {}
    tensors = []
    for hf_name, st in sources.items():
        for prefix, short in AUDIO_PREFIXES.items():
            if hf_name.startswith(prefix):
                tensors.append((short + hf_name[len(prefix):], st))
    if not any(name.startswith("audio_embed.") for name, _ in tensors):
        raise CheckpointError("config.json has an audio_config but the checkpoint has no audio tower weights")
    tensors.sort(key=lambda item: item[0])
    text_hidden = int((hf_config.get("text_config") or {}).get("hidden_size", 0))
    tokens = {"boa": hf_config.get("boa_token_id"), "eoa": hf_config.get("eoa_token_index",
                                                                          hf_config.get("eoa_token_id")),
              "audio": hf_config.get("audio_token_id")}
    meta = {AUDIO_CONFIG: json.dumps({**audio_cfg, "text_hidden_size": text_hidden}),
            AUDIO_SHAPES: json.dumps({name: list(st.shape) for name, st in tensors}),
            AUDIO_TOKENS: json.dumps(tokens)}
    return tensors, meta


def write_gguf(out_path: str | os.PathLike, cfg: ModelConfig, vocab: TokenizerData | None, tensors, name: str,
               qtype: QType, progress: Progress | None = None, extra: dict[str, str] | None = None,
               arch: str = ARCH, ints: dict[str, int] | None = None) -> Path:
    """Write a gemma4 GGUF with llama.cpp's keys and names; returns its path.

    tensors: (gguf name, logical shape, stored QType or GGML type, payload) in file order; a
    payload is a numpy array or has `nbytes` and `tofile(f)`, writing the stored bytes. The file
    is written beside `out_path` under a temporary name and renamed when complete. extra: more
    string metadata (edgert's own keys, such as the audio tower's); ints: more integer keys
    under the architecture's prefix (a drafter's embedding_length_out). arch: "gemma4", or
    "gemma4-assistant" for a drafter (then vocab may be None)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        _write(tmp, cfg, vocab, tensors, name, qtype, progress, extra or {}, arch, ints or {})
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_path


def _write(tmp: Path, cfg: ModelConfig, vocab: TokenizerData | None, tensors, name: str, qtype: QType,
           progress: Progress | None, extra: dict[str, str], arch: str, ints: dict[str, int]) -> None:
    w = gguf.GGUFWriter(tmp, arch)
    w.add_name(name)
    w.add_file_type({QType.F32: gguf.LlamaFileType.ALL_F32, QType.F16: gguf.LlamaFileType.MOSTLY_F16,
                     QType.BF16: gguf.LlamaFileType.MOSTLY_BF16, QType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
                     QType.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0}[qtype])
    w.add_context_length(cfg.n_ctx_train)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    ffn = [s.ffn_dim for s in cfg.layers]
    w.add_feed_forward_length(ffn if len(set(ffn)) > 1 else ffn[0])
    w.add_head_count(cfg.n_head)
    kv = [s.n_kv_heads for s in cfg.layers]
    w.add_head_count_kv(kv if len(set(kv)) > 1 else kv[0])
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    glob = next((s for s in cfg.layers if not s.sliding), cfg.layers[0])
    swa = next((s for s in cfg.layers if s.sliding), cfg.layers[0])
    w.add_key_length(glob.head_dim)
    w.add_value_length(glob.head_dim)
    w.add_key_length_swa(swa.head_dim)
    w.add_value_length_swa(swa.head_dim)
    w.add_rope_freq_base(glob.rope_theta)
    w.add_rope_freq_base_swa(swa.rope_theta)
    w.add_rope_dimension_count(glob.head_dim)  # "proportional": rope_freqs masks the rest
    w.add_rope_dimension_count_swa(swa.rope_dims * 2)
    if cfg.final_softcap:
        w.add_final_logit_softcapping(cfg.final_softcap)
    w.add_sliding_window(cfg.sliding_window)
    w.add_sliding_window_pattern([s.sliding for s in cfg.layers])
    w.add_shared_kv_layers(cfg.n_kv_shared)
    w.add_embedding_length_per_layer_input(cfg.ple_dim)
    w.add_vocab_size(cfg.n_vocab)
    for key, number in ints.items():
        w.add_uint32(f"{arch}.{key}", number)
    if vocab is not None:
        _write_vocab(w, vocab)
    for key, value in extra.items():
        w.add_string(key, value)

    payloads = []
    for tensor_name, shape, t, payload in tensors:
        rows = shape[0] if len(shape) > 1 else 1
        raw = gguf.GGMLQuantizationType(int(t))
        nbytes = payload.nbytes if raw == gguf.GGMLQuantizationType.I32 else rows * row_bytes(t, shape[-1])
        # logical (rows, cols) shape; 1-D tensors keep their 1-D shape
        w.add_tensor_info(tensor_name, shape, np.float32 if t == QType.F32 else np.float16, nbytes, raw_dtype=raw)
        payloads.append((tensor_name, payload))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for i, (name, payload) in enumerate(payloads):
        if progress:
            progress(i, len(payloads), name)
        w.write_tensor_data(payload)
    if progress:
        progress(len(payloads), len(payloads), "done")
    w.close()


def _write_vocab(w: gguf.GGUFWriter, vocab: TokenizerData) -> None:
    w.add_tokenizer_model("gemma4")
    w.add_token_list(vocab.tokens)
    w.add_token_scores([-1000.0] * len(vocab.tokens))
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    for setter, value in ((w.add_bos_token_id, vocab.bos), (w.add_eos_token_id, vocab.eos),
                          (w.add_eot_token_id, vocab.eot), (w.add_pad_token_id, vocab.pad),
                          (w.add_unk_token_id, vocab.unk)):
        if value is not None:
            setter(value)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)
