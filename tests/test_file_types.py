"""Model files with tensors in the types llama-quantize writes: the PLE table, whose rows are
only looked up, may be in any of them (its rows read as gguf.quants reads them); a matrix in
a type that has no kernel yet is refused with a message that says so and what to do."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

import edgert
from edgert.errors import UnsupportedTypeError
from quant import MATMUL_TYPES, QType
from tests.reference import text_config
from tools.synth import write_synthetic

LOOKUP_TYPES = [QType.Q4_1, QType.Q5_1, QType.IQ4_NL, QType.Q2_K, QType.Q3_K, QType.Q5_K, QType.IQ4_XS]
PLE = "per_layer_token_embd.weight"


def tiny(tmp_path, stored: dict[str, QType]):
    # 15 layers x 256 PLE values per token: rows of whole 256-value blocks
    cfg = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
           "text_config": {"model_type": "gemma4_text",
                           **text_config("e2b", vocab_size=512, hidden_size_per_layer_input=256)}}
    name = "-".join(f"{t.name}" for t in stored.values())
    return write_synthetic("e2b", tmp_path / f"{name}.gguf", "q8_0", hf_config=cfg, stored=stored)


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


@pytest.mark.parametrize("qtype", [q for q in LOOKUP_TYPES if q not in MATMUL_TYPES])
def test_a_matrix_without_a_kernel_is_refused_clearly(tmp_path, qtype):
    path = tiny(tmp_path, {"blk.0.proj.weight": qtype})  # (64, 256): whole blocks of every type
    with pytest.raises(UnsupportedTypeError, match=f"blk.0.proj.weight is stored as {qtype.name}.*llama-quantize"):
        edgert.load(path, n_ctx=64)
