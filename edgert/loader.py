"""Open a GGUF model file: memory-mapped through the `gguf` package, no copies of
the big tensors, every tensor's presence and shape checked against the config
that the file's own metadata describes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from edgert.config import ARCH, ModelConfig, config_from_gguf, tensor_manifest
from edgert.errors import ArchitectureError, ModelFileError, UnsupportedTypeError
from edgert.tokenizer import TokenizerData
from quant import QTensor, QType


@dataclass(frozen=True)
class ModelFile:
    path: Path
    config: ModelConfig
    tensors: dict[str, QTensor]  # views into the mapped file
    tokenizer: TokenizerData
    reader: gguf.GGUFReader  # owns the memory map


def _metadata(reader: gguf.GGUFReader) -> dict:
    return {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def open_model(path: str | os.PathLike) -> ModelFile:
    """Map and validate a model file. Raises ModelFileError, ArchitectureError, UnsupportedTypeError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}; convert a checkpoint with `edgert convert HF_DIR -o {path}`")
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # the reader raises ValueError, IndexError, ... on a damaged header
        raise ModelFileError(
            f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); it may be truncated or corrupt: "
            "convert or download it again"
        ) from None
    meta = _metadata(reader)
    arch = meta.get("general.architecture")
    if arch != ARCH:
        raise ArchitectureError(
            f"{path} holds a {arch!r} model; edgert runs Gemma 4 ('{ARCH}') files such as those "
            "`edgert convert` writes"
        )

    present: dict[str, gguf.ReaderTensor] = {t.name: t for t in reader.tensors}
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ModelFileError(
                f"{path} is truncated: tensor {t.name} ends at byte {end} but the file has {size} bytes; "
                "convert or download it again"
            )

    prefix = ARCH + "."
    arch_meta = {k[len(prefix):]: v for k, v in meta.items() if k.startswith(prefix)}

    def tensor(name: str) -> gguf.ReaderTensor:
        t = present.get(name)
        if t is None:
            raise ModelFileError(f"{path} lacks the tensor {name}; the file is incomplete: convert it again")
        return t

    def n_rows(name: str) -> int:
        return int(tensor(name).shape[-1])  # GGUF lists dims innermost first

    rope = present.get("rope_freqs.weight")
    try:
        cfg = config_from_gguf(
            arch_meta,
            rope_freqs=[float(v) for v in np.asarray(rope.data).ravel()] if rope is not None else None,
            n_vocab=n_rows("token_embd.weight"),
            n_vocab_ple=n_rows("per_layer_token_embd.weight") if arch_meta.get("embedding_length_per_layer_input") else 0,
        )
    except KeyError as e:
        raise ArchitectureError(f"{path} lacks the metadata key {prefix}{e.args[0]}; convert it again") from None

    tensors: dict[str, QTensor] = {}
    for name, shape in tensor_manifest(cfg).items():
        t = tensor(name)
        file_shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if file_shape != shape and not (len(shape) == 1 and int(np.prod(file_shape)) == shape[0]):
            raise ModelFileError(f"{path}: tensor {name} has shape {file_shape} but the metadata implies {shape}")
        try:
            qtype = QType(int(t.tensor_type))
        except ValueError:
            raise UnsupportedTypeError(
                f"{path}: tensor {name} is stored as {gguf.GGMLQuantizationType(int(t.tensor_type)).name}, "
                f"which edgert does not read yet; supported: {', '.join(q.name for q in QType)}"
            ) from None
        raw = t.data
        tensors[name] = QTensor(raw.reshape(shape[0], -1) if len(shape) > 1 else raw.reshape(-1), qtype, shape)

    def get(key, default=None):
        return meta.get(key, default)

    tok = TokenizerData(
        model=get("tokenizer.ggml.model", ""),
        tokens=list(get("tokenizer.ggml.tokens", [])),
        types=[int(v) for v in get("tokenizer.ggml.token_type", [])],
        merges=list(get("tokenizer.ggml.merges", [])),
        bos=get("tokenizer.ggml.bos_token_id"),
        eos=get("tokenizer.ggml.eos_token_id"),
        eot=get("tokenizer.ggml.eot_token_id"),
        pad=get("tokenizer.ggml.padding_token_id"),
        unk=get("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(get("tokenizer.ggml.add_bos_token", True)),
        chat_template=get("tokenizer.chat_template"),
    )
    if not tok.tokens:
        raise ModelFileError(f"{path} carries no tokenizer; convert it again with `edgert convert`")
    return ModelFile(path=path, config=cfg, tensors=tensors, tokenizer=tok, reader=reader)
