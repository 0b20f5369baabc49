"""Open a GGUF model file: memory-mapped, no copies of the big tensors, every
tensor's presence and shape checked against the config that the file's own
metadata describes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from edgert.config import (ARCHS, ASSISTANT_ARCH, AUDIO_CONFIG, AUDIO_SHAPES, AUDIO_TOKENS, AssistantConfig,
                           ModelConfig, assistant_config_from_gguf, assistant_manifest, config_from_gguf,
                           tensor_manifest)
from edgert.files.gguf_file import GGUFFile, GGUFFormatError, TensorInfo
from edgert.errors import ArchitectureError, ModelFileError, UnsupportedTypeError
from edgert.text.tokenizer import TokenizerData
from edgert.gemma4 import LOOKUP_ONLY
from quant import QTensor, QType, has_kernel


@dataclass(frozen=True)
class AudioTower:
    """Gemma 4's audio encoder as `edgert convert` stores it: flat tensors named audio.* and
    audio_embed.*, their shapes, the audio config and the audio token ids."""

    config: dict  # the checkpoint's audio_config, plus text_hidden_size
    tokens: dict  # "boa", "eoa", "audio" -> token id
    tensors: dict[str, tuple[QTensor, tuple[int, ...]]]
    source: Path  # the file the weights come from: the model's, or an mmproj file

    def weights(self, prefix: str) -> dict[str, np.ndarray]:
        """The tensors under `prefix` ("audio." or "audio_embed."), float32, in their shapes."""
        return {name[len(prefix):]: t.dequantize().reshape(shape) for name, (t, shape) in self.tensors.items()
                if name.startswith(prefix)}


@dataclass(frozen=True)
class ModelFile:
    path: Path
    config: ModelConfig
    tensors: dict[str, QTensor]  # views into the mapped file
    tokenizer: TokenizerData
    gguf: GGUFFile  # owns the memory map
    audio: AudioTower | None = None


def _map(path: Path, what: str = "model") -> GGUFFile:
    """The GGUF file at path, mapped, every tensor inside it."""
    if not path.is_file():
        raise ModelFileError(f"no {what} file at {path}; convert a checkpoint with `edgert convert HF_DIR -o {path}`")
    size = path.stat().st_size
    try:
        file = GGUFFile(path)
    except (GGUFFormatError, OSError, ValueError) as e:
        raise ModelFileError(
            f"{path} is not a readable GGUF file ({e}); it may be truncated or corrupt: convert or download it again"
        ) from None
    for t in file.tensors.values():
        end = t.offset + t.nbytes
        if end > size:
            raise ModelFileError(
                f"{path} is truncated: tensor {t.name} ends at byte {end} but the file has {size} bytes; "
                "convert or download it again"
            )
    return file


def _arch_meta(file: GGUFFile, arch: str) -> dict:
    """The file's metadata under `{arch}.`, without the prefix."""
    prefix = arch + "."
    return {k[len(prefix):]: v for k, v in file.metadata.items() if k.startswith(prefix)}


def _tensor_info(file: GGUFFile, name: str) -> TensorInfo:
    t = file.tensors.get(name)
    if t is None:
        raise ModelFileError(f"{file.path} lacks the tensor {name}; the file is incomplete: convert it again")
    return t


def _rope_freqs(file: GGUFFile) -> list[float] | None:
    rope = file.tensors.get("rope_freqs.weight")
    return file.array(rope).view(np.float32).tolist() if rope is not None else None


def open_model(path: str | os.PathLike) -> ModelFile:
    """Map and validate a model file. Raises ModelFileError, ArchitectureError, UnsupportedTypeError."""
    path = Path(path)
    file = _map(path)
    meta = file.metadata
    arch = meta.get("general.architecture")
    if arch == ASSISTANT_ARCH:
        raise ArchitectureError(f"{path} is a Gemma 4 drafter (assistant), not a model: load the model it drafts "
                                f"for, with this file as its drafter (edgert.load(model, drafter=...), --drafter)")
    if arch not in ARCHS:
        raise ArchitectureError(
            f"{path} holds a {arch!r} model; edgert runs Gemma 4 files ('gemma4', as `edgert convert` "
            "writes them) and llama.cpp's Gemma 3 files ('gemma3')"
        )
    prefix = arch + "."
    arch_meta = _arch_meta(file, arch)

    def tensor(name: str) -> TensorInfo:
        return _tensor_info(file, name)

    def n_rows(name: str) -> int:
        return int(tensor(name).shape[0])

    try:
        cfg = config_from_gguf(
            arch,
            arch_meta,
            rope_freqs=_rope_freqs(file),
            n_vocab=n_rows("token_embd.weight"),
            n_vocab_ple=n_rows("per_layer_token_embd.weight") if arch_meta.get("embedding_length_per_layer_input") else 0,
        )
    except KeyError as e:
        raise ArchitectureError(f"{path} lacks the metadata key {prefix}{e.args[0]}; convert it again") from None

    manifest = tensor_manifest(cfg)
    if "output.weight" in file.tensors:  # an untied LM head
        manifest["output.weight"] = (cfg.n_vocab, cfg.n_embd)
    tensors = _read_tensors(file, manifest)

    def get(key, default=None):
        return meta.get(key, default)

    tok = TokenizerData(
        model=get("tokenizer.ggml.model", ""),
        tokens=get("tokenizer.ggml.tokens", []),
        scores=get("tokenizer.ggml.scores"),
        types=np.asarray(get("tokenizer.ggml.token_type", []), dtype=np.int32),
        merges=get("tokenizer.ggml.merges", []),
        bos=get("tokenizer.ggml.bos_token_id"),
        eos=get("tokenizer.ggml.eos_token_id"),
        eot=get("tokenizer.ggml.eot_token_id"),
        pad=get("tokenizer.ggml.padding_token_id"),
        unk=get("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(get("tokenizer.ggml.add_bos_token", True)),
        add_space_prefix=bool(get("tokenizer.ggml.add_space_prefix", False)),
        chat_template=get("tokenizer.chat_template"),
    )
    if not len(tok.tokens):
        raise ModelFileError(f"{path} carries no tokenizer; convert it again with `edgert convert`")
    return ModelFile(path=path, config=cfg, tensors=tensors, tokenizer=tok, gguf=file, audio=_audio(file, tensor))


def _read_tensors(file: GGUFFile, manifest: dict[str, tuple[int, ...]]) -> dict[str, QTensor]:
    """The manifest's tensors as views into the mapping, each checked for shape and type."""
    tensors: dict[str, QTensor] = {}
    for name, shape in manifest.items():
        t = _tensor_info(file, name)
        file_shape = t.shape
        if file_shape != shape and not (len(shape) == 1 and int(np.prod(file_shape)) == shape[0]):
            raise ModelFileError(f"{file.path}: tensor {name} has shape {file_shape} but the metadata implies {shape}")
        try:
            qtype = QType(t.ggml_type)
        except ValueError:
            raise UnsupportedTypeError(
                f"{file.path}: tensor {name} is stored as {gguf.GGMLQuantizationType(t.ggml_type).name}, "
                f"which edgert does not read yet; supported: {', '.join(q.name for q in QType)}"
            ) from None
        if len(shape) == 2 and not has_kernel(qtype, shape) and name not in LOOKUP_ONLY:
            raise UnsupportedTypeError(
                f"{file.path}: tensor {name} is stored as {qtype.name} with {shape[0]} rows: edgert's {qtype.name} "
                f"kernel takes rows eight at a time, and only Q4_0, Q5_0, Q8_0, Q4_K, Q6_K and float matrices "
                "may have any number; make the file again with llama-quantize as one of those"
            )
        raw = file.array(t)
        if qtype in _FLOAT_DTYPES:
            raw = raw.view(_FLOAT_DTYPES[qtype])
        tensors[name] = QTensor(raw.reshape(shape[0], -1) if len(shape) > 1 else raw.reshape(-1), qtype, shape)

    return tensors


@dataclass(frozen=True)
class AssistantFile:
    """A Gemma 4 drafter's file (`gemma4-assistant`): its config and tensors; the ordering of
    its centroid head as an int array (None without one)."""

    path: Path
    config: AssistantConfig
    tensors: dict[str, QTensor]
    ordering: np.ndarray | None
    gguf: GGUFFile


def open_assistant(path: str | os.PathLike) -> AssistantFile:
    """Map and validate a drafter file, as `edgert convert` or llama.cpp's converter writes it."""
    path = Path(path)
    file = _map(path, "drafter")
    arch = file.metadata.get("general.architecture")
    if arch != ASSISTANT_ARCH:
        raise ArchitectureError(f"{path} holds a {arch!r} model, not a Gemma 4 drafter ({ASSISTANT_ARCH!r}); "
                                "convert Google's *-assistant checkpoint with `edgert convert`")
    centroids = file.tensors.get("masked_embd_centroids.weight")
    try:
        cfg = assistant_config_from_gguf(_arch_meta(file, arch), _rope_freqs(file),
                                         int(_tensor_info(file, "token_embd.weight").shape[0]),
                                         int(centroids.shape[0]) if centroids is not None else 0)
    except KeyError as e:
        raise ArchitectureError(f"{path} lacks the metadata key {arch}.{e.args[0]}; convert it again") from None
    manifest = assistant_manifest(cfg)
    ordering = None
    if cfg.n_centroids:
        del manifest["masked_embd_ordering"]  # an index table, read here
        info = _tensor_info(file, "masked_embd_ordering")
        ordering = file.array(info).view(np.int32)
        if len(ordering) != cfg.text.n_vocab or cfg.text.n_vocab % cfg.n_centroids:
            raise ModelFileError(f"{path}: the centroid head's ordering does not cover {cfg.text.n_vocab} tokens "
                                 f"in {cfg.n_centroids} equal clusters; convert it again")
        ordering = ordering.reshape(cfg.n_centroids, -1)
    return AssistantFile(path, cfg, _read_tensors(file, manifest), ordering, file)


def assistant_beside(model: str | os.PathLike, cfg: ModelConfig) -> Path | None:
    """The drafter next to the model (`*assistant*.gguf`, as Google's and llama.cpp's uploads
    name them) that drafts for a model of its width, if there is exactly one."""
    found = []
    for path in sorted(Path(model).parent.glob("*assistant*.gguf")):
        try:
            meta = GGUFFile(path).metadata
        except (GGUFFormatError, OSError, ValueError):
            continue
        if meta.get("general.architecture") == ASSISTANT_ARCH and \
                meta.get(f"{ASSISTANT_ARCH}.embedding_length_out") == cfg.n_embd:
            found.append(path)
    return found[0] if len(found) == 1 else None


def _audio(file: GGUFFile, tensor) -> AudioTower | None:
    meta = file.metadata
    if AUDIO_CONFIG not in meta:
        return None
    try:
        shapes = json.loads(meta[AUDIO_SHAPES])
        config, tokens = json.loads(meta[AUDIO_CONFIG]), json.loads(meta[AUDIO_TOKENS])
    except (KeyError, ValueError) as e:
        raise ModelFileError(f"{file.path}: the audio tower's metadata is damaged ({e}); convert it again") from None
    tensors = {}
    for name, shape in shapes.items():
        t = tensor(name)
        qtype = QType(t.ggml_type)
        raw = file.array(t)
        if qtype in _FLOAT_DTYPES:
            raw = raw.view(_FLOAT_DTYPES[qtype])
        tensors[name] = (QTensor(raw.reshape(-1), qtype, (int(np.prod(shape)) if shape else 1,)), tuple(shape))
    return AudioTower(config=config, tokens=tokens, tensors=tensors, source=Path(file.path))


_FLOAT_DTYPES = {QType.F32: np.float32, QType.F16: np.float16, QType.BF16: np.uint16}
