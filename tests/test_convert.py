"""The converter writes exactly llama.cpp's gemma4 names and metadata, and refuses bad
checkpoints with a clear message."""

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgert.config import config_from_hf, tensor_manifest
from edgert.files.convert import convert
from edgert.errors import ArchitectureError, CheckpointError, UnsupportedTypeError
from tests.reference import published


@pytest.mark.parametrize("kind", ["e2b", "e4b"])
def test_manifest_names_are_llama_cpp_gemma4_names(kind):
    """Every tensor name is one llama.cpp's gemma4 architecture declares."""
    cfg = config_from_hf(published(kind))
    allowed = set()
    for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GEMMA4]:
        name = gguf.TENSOR_NAMES[t]
        allowed |= {name.format(bid=i) + ".weight" for i in range(cfg.n_layer)} if "{bid}" in name else {name + ".weight"}
    assert set(tensor_manifest(cfg)) <= allowed


def test_published_e2b_facts():
    cfg = config_from_hf(published("e2b"))
    assert cfg.n_layer == 35 and cfg.first_shared == 15
    assert [s.index for s in cfg.kv_layers] == list(range(15))
    assert {s.kv_source for s in cfg.layers[15:] if s.sliding} == {13}
    assert {s.kv_source for s in cfg.layers[15:] if not s.sliding} == {14}
    assert {s.ffn_dim for s in cfg.layers[15:]} == {12288} and {s.ffn_dim for s in cfg.layers[:15]} == {6144}
    glob = cfg.layers[4]
    assert (glob.head_dim, glob.rope_dims, glob.rope_theta) == (512, 64, 1e6)
    assert (cfg.layers[0].head_dim, cfg.layers[0].rope_dims) == (256, 128)
    # the PLE table: 2.35 B of the text decoder's 4.63 B parameters (46% of 5.1 B with the
    # audio and vision towers)
    m = tensor_manifest(cfg)
    total = sum(int(np.prod(s)) for s in m.values())
    assert np.prod(m["per_layer_token_embd.weight"]) == 262144 * 35 * 256
    assert 0.50 < np.prod(m["per_layer_token_embd.weight"]) / total < 0.52


def test_published_e4b_facts():
    cfg = config_from_hf(published("e4b"))
    assert cfg.n_layer == 42 and cfg.first_shared == 24
    assert {s.n_kv_heads for s in cfg.layers} == {2}
    assert {s.ffn_dim for s in cfg.layers} == {10240}
    assert {s.kv_source for s in cfg.layers[24:] if s.sliding} == {22}
    assert {s.kv_source for s in cfg.layers[24:] if not s.sliding} == {23}


def test_written_metadata_is_llama_cpps(checkpoints):
    path = checkpoints.gguf("e2b", "q8_0")
    r = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    a = "gemma4."
    assert f["general.architecture"] == "gemma4"
    assert f[a + "block_count"] == 15 and f[a + "embedding_length"] == 64
    assert f[a + "attention.key_length"] == 64 and f[a + "attention.key_length_swa"] == 32
    assert f[a + "rope.freq_base"] == 1e6 and f[a + "rope.freq_base_swa"] == 1e4
    assert f[a + "rope.dimension_count"] == 64 and f[a + "rope.dimension_count_swa"] == 32
    assert f[a + "attention.shared_kv_layers"] == 5
    assert f[a + "attention.sliding_window"] == 8
    assert f[a + "attention.sliding_window_pattern"] == [True] * 4 + [False] + [True] * 4 + [False] + [True] * 4 + [False]
    assert f[a + "feed_forward_length"] == [96] * 10 + [192] * 5
    assert f[a + "embedding_length_per_layer_input"] == 16
    assert f[a + "final_logit_softcapping"] == 30.0
    assert f["tokenizer.ggml.model"] == "gemma4"
    assert f["tokenizer.ggml.bos_token_id"] == 2 and f["tokenizer.ggml.eos_token_id"] == 1
    assert len(f["tokenizer.ggml.merges"]) > 0
    tensors = {t.name: t for t in r.tensors}
    rope = np.asarray(tensors["rope_freqs.weight"].data)
    assert rope.tolist() == np.float32([1.0] * 8 + [1e30] * 24).tolist()  # 0.25 x 64 / 2 pairs rotate
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert "blk.12.attn_k.weight" not in tensors  # KV-shared layers have no K/V weights
    assert tuple(tensors["blk.0.attn_q.weight"].shape) == (64, 128)  # ggml order: (cols, rows)


def test_conversion_leaves_no_temporary_files(checkpoints):
    out = checkpoints.gguf("e2b", "f16")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".") and "tmp" in p.name]


def _copy(checkpoints, tmp_path) -> Path:
    _, src = checkpoints.hf("e2b")
    dst = tmp_path / "ck"
    shutil.copytree(src, dst)
    return dst


def test_refuses_other_architecture(checkpoints, tmp_path):
    d = _copy(checkpoints, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchitectureError, match="model_type='llama'"):
        convert(d, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_refuses_missing_tensor(checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy(checkpoints, tmp_path)
    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks blk\.3\.ffn_up\.weight"):
        convert(d, tmp_path / "out.gguf")


def test_refuses_shape_disagreeing_with_config(checkpoints, tmp_path):
    d = _copy(checkpoints, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"ffn_gate\.weight has shape \(96, 64\) but config\.json implies \(128, 64\)"):
        convert(d, tmp_path / "out.gguf")


def test_refuses_directory_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        convert(tmp_path, tmp_path / "out.gguf")


def test_refuses_unknown_type(checkpoints, tmp_path):
    with pytest.raises(UnsupportedTypeError, match="q3_k"):
        convert(checkpoints.hf("e2b")[1], tmp_path / "out.gguf", "q3_k")


def test_truncated_safetensors(checkpoints, tmp_path):
    d = _copy(checkpoints, tmp_path)
    st = d / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        convert(d, tmp_path / "out.gguf")


def test_bf16_checkpoint_converts_like_f32(checkpoints, tmp_path):
    """A bf16 checkpoint (as released) reads without torch and gives the same file contents
    as the f32 one rounded to bf16."""
    from safetensors.numpy import load_file

    from edgert.files.loader import open_model
    from quant import QType, dequantize, quantize

    d = _copy(checkpoints, tmp_path)
    tensors = load_file(d / "model.safetensors")
    bf16 = {k: quantize(v.reshape(1, -1), QType.BF16).view(np.uint16).reshape(v.shape) for k, v in tensors.items()}
    # safetensors.numpy has no bf16: write the header by hand
    header, blobs, off = {}, [], 0
    for k, v in bf16.items():
        header[k] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [off, off + v.nbytes]}
        blobs.append(v.tobytes())
        off += v.nbytes
    h = json.dumps(header).encode()
    (d / "model.safetensors").write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))
    out = open_model(convert(d, tmp_path / "bf16.gguf", "f32"))
    expect = dequantize(bf16["model.layers.0.self_attn.q_proj.weight"].view(np.uint8), QType.BF16, 64)
    np.testing.assert_array_equal(out.tensors["blk.0.attn_q.weight"].dequantize(), expect)


def test_checkpoint_with_a_vision_tower_converts_without_it(tmp_path):
    """Google's layout: Gemma4ForConditionalGeneration with a vision_config. The vision weights
    are skipped and said to be; the text model is the checkpoint's (its logits); the -it
    chat template is kept in the file."""
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig, Gemma4VisionConfig

    import edgert
    from tests.reference import build_tokenizer, hf_logits, randomize, rel_err, text_config

    vocab = build_tokenizer(tmp_path)
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=16)
    config = Gemma4Config(text_config=Gemma4TextConfig(**text_config("e2b", vocab)).to_dict(),
                          vision_config=vision.to_dict(), audio_config=None)
    torch.manual_seed(5)
    hf = Gemma4ForConditionalGeneration(config).eval()
    randomize(hf, 5)
    hf.save_pretrained(tmp_path)
    template = "{% for m in messages %}<|turn>{{ m.role }}\n{{ m.content }}<turn|>\n{% endfor %}{# tools #}"
    (tmp_path / "chat_template.jinja").write_text(template)
    n_vision = sum(1 for name, _ in hf.named_parameters() if "vision" in name)
    assert n_vision > 0

    skipped: dict[str, int] = {}
    out = convert(tmp_path, tmp_path / "vision.gguf", "f32", skipped=skipped)
    assert skipped == {"vision tower": n_vision}
    model = edgert.load(out, n_ctx=64, kv_type="f32")  # exact arithmetic: the f16 cache rounds
    assert model.file.tokenizer.chat_template == template
    assert not any("vision" in name or name.startswith("v.") for name in model.file.gguf.tensors)
    ids = [2] + list(range(300, 320))
    state = model.new_state()
    ours = model.prefill(state, ids, logits="all")
    assert rel_err(ours, hf_logits(hf, ids)) < 1e-4
