"""Model files with tensors in the types llama-quantize writes: the PLE table, whose rows are
only looked up, may be in any of them (its rows read as gguf.quants reads them); a model whose
every matrix is in one of them runs its kernels and gives what the numpy twin of the products
gives; a matrix that no kernel takes is refused with a message that says so and what to do.
(Agreement with llama.cpp on files its own quantizer made: tools/filetypes.py.)"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

import edgert
from edgert import gemma4
from edgert.config import config_from_hf, tensor_manifest
from edgert.errors import UnsupportedTypeError
from quant import QTensor, QType
from quant.tensor import matmul, matmul_ref
from tests.reference import text_config
from tools.synth import write_synthetic

LOOKUP_TYPES = [QType.Q4_1, QType.Q5_1, QType.IQ4_NL, QType.Q2_K, QType.Q3_K, QType.Q5_K, QType.IQ4_XS]
PLE = "per_layer_token_embd.weight"


def tiny_config(vocab_size: int = 512) -> dict:
    # 15 layers x 256 PLE values per token, 256-wide rows: whole 256-value blocks everywhere
    return {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
            "text_config": {"model_type": "gemma4_text",
                            **text_config("e2b", vocab_size=vocab_size, hidden_size_per_layer_input=256,
                                          hidden_size=256, intermediate_size=512, head_dim=64,
                                          global_head_dim=128)}}


def tiny(tmp_path, stored: dict[str, QType], vocab_size: int = 512):
    name = "-".join(sorted({t.name for t in stored.values()}))
    return write_synthetic("e2b", tmp_path / f"{name}.gguf", "q8_0", hf_config=tiny_config(vocab_size),
                           stored=stored)


def matrices(vocab_size: int = 512) -> list[str]:
    return [n for n, shape in tensor_manifest(config_from_hf(tiny_config(vocab_size))).items() if len(shape) == 2]


@pytest.mark.parametrize("qtype", LOOKUP_TYPES)
def test_the_ple_table_may_be_in_any_type(tmp_path, qtype):
    path = tiny(tmp_path, {PLE: qtype})
    model = edgert.load(path, n_ctx=64)
    ple = model.weights.ple
    assert ple.table.qtype == qtype
    ids = np.array([0, 3, 200, 511])
    info = model.file.gguf.tensors[PLE]
    raw = model.file.gguf.array(info).reshape(info.shape[0], -1)[ids]
    with np.errstate(all="ignore"):
        want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(qtype))) * np.float32(256 ** 0.5)
        got = ple.rows(ids).reshape(len(ids), -1)
    np.testing.assert_array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("qtype", LOOKUP_TYPES, ids=lambda q: q.name)
def test_a_model_in_every_type_runs_its_kernels(tmp_path, qtype, monkeypatch):
    """Every matrix in one type, the LM head and the PLE table included. Each product the model
    makes, in prefill and in decode, gives what its numpy twin (weights dequantized, the same
    quantized activations, float64 sums) gives on the same activations, and the logits are
    live: a random model's rounding flips compound from layer to layer, so the products are
    compared one by one, where each flip would show."""
    model = edgert.load(tiny(tmp_path, {name: qtype for name in matrices()}), n_ctx=64)
    assert {t.qtype for t in model.file.tensors.values() if len(t.shape) == 2} == {qtype}
    worst = []

    def checked(x, w: QTensor):
        assert w.packed is not None  # through the x8 tiles
        got, want = matmul(x, w), matmul_ref(x, w)
        worst.append((np.abs(got - want) / (np.abs(x) @ np.abs(w.dequantize()).T + 1e-30)).max())
        return got

    ids = [2] + np.random.default_rng(int(qtype)).integers(300, 500, 20).tolist()

    def run():
        state = model.new_state()
        logits = model.prefill(state, ids, logits="all")
        return logits, model.decode_step(state, int(logits[-1].argmax()))

    compiled = run()  # each layer's blocks one compiled call each
    # their twins, one op at a time, so that each product can be checked
    monkeypatch.setattr(gemma4, "qkv", gemma4.qkv_ops)
    monkeypatch.setattr(gemma4, "after_attention", gemma4.after_attention_ops)
    monkeypatch.setattr(gemma4, "matmul", checked)
    monkeypatch.setattr(gemma4, "matmuls", lambda x, ws: [checked(x, w) for w in ws])
    logits, step = run()
    assert len(worst) > 100 and max(worst) < 2e-5, (len(worst), max(worst))
    assert (compiled[0] == logits).all() and (compiled[1] == step).all()  # the blocks: their twins bit for bit
    assert np.isfinite(logits).all() and np.isfinite(step).all()
    assert np.std(step) > 0.1  # logits that tell tokens apart: the random blocks make a live model


def test_a_matrix_no_kernel_takes_is_refused_clearly(tmp_path):
    """Q5_K's kernel takes rows eight at a time: a Q5_K LM head of 509 rows is refused at load,
    and a lone matrix of 7 rows when multiplied."""
    path = tiny(tmp_path, {"token_embd.weight": QType.Q5_K}, vocab_size=509)
    with pytest.raises(UnsupportedTypeError, match="token_embd.weight is stored as Q5_K with 509 rows.*llama-quantize"):
        edgert.load(path, n_ctx=64)
    w = QTensor(np.zeros((7, 176), np.uint8), QType.Q5_K, (7, 256))
    with pytest.raises(ValueError, match="rows must come in groups of 8"):
        matmul(np.ones((1, 256), np.float32), w)
