"""Bad model files and bad requests get typed errors that say what to do."""

import gguf
import numpy as np
import pytest

import edgert
from edgert.errors import ArchitectureError, ContextOverflowError, EdgeRTError, ModelFileError


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="edgert convert"):
        edgert.load(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"this is not a model" * 100)
    with pytest.raises(ModelFileError, match="not a readable GGUF"):
        edgert.load(p)


def test_truncated_file(checkpoints, tmp_path):
    src = checkpoints.gguf("e2b", "q8_0")
    p = tmp_path / "cut.gguf"
    p.write_bytes(src.read_bytes()[: src.stat().st_size - 1000])
    with pytest.raises(ModelFileError, match="truncated"):
        edgert.load(p)


def test_truncated_header(checkpoints, tmp_path):
    src = checkpoints.gguf("e2b", "q8_0")
    p = tmp_path / "cut.gguf"
    p.write_bytes(src.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        edgert.load(p)


def test_wrong_architecture(tmp_path):
    p = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(p, "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(ArchitectureError, match="'llama' model"):
        edgert.load(p)


def _rewrite(src, dst, change):
    """Copy a GGUF file, passing each tensor through change(name, data, type) -> (data, type)
    or None to leave it out."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, "gemma4")
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = f.types[0]
        extra = {"sub_type": f.types[-1]} if vtype == gguf.GGUFValueType.ARRAY else {}
        w.add_key_value(name, f.contents(), vtype, **extra)
    for t in r.tensors:
        out = change(t.name, np.asarray(t.data), t.tensor_type)
        if out is not None:
            data, qtype = out
            w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=qtype)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()


def test_missing_tensor(checkpoints, tmp_path):
    p = tmp_path / "partial.gguf"
    _rewrite(checkpoints.gguf("e2b", "f32"), p,
             lambda name, data, qtype: None if name == "blk.7.ffn_down.weight" else (data, qtype))
    with pytest.raises(ModelFileError, match=r"lacks the tensor blk\.7\.ffn_down\.weight"):
        edgert.load(p)


def test_unsupported_tensor_type(checkpoints, tmp_path):
    from edgert.errors import UnsupportedTypeError

    def to_q8_1(name, data, qtype):
        if name != "blk.0.ffn_up.weight":
            return data, qtype
        # Q8_1 (llama.cpp's activation type, never a weight's): 40 bytes per 32 values
        return np.zeros((data.shape[0], data.shape[1] // 32 * 40), np.uint8), gguf.GGMLQuantizationType.Q8_1

    p = tmp_path / "q8_1.gguf"
    _rewrite(checkpoints.gguf("e2b", "f32"), p, to_q8_1)
    with pytest.raises(UnsupportedTypeError, match="blk.0.ffn_up.weight is stored as Q8_1, which edgert does not"):
        edgert.load(p)


def test_prompt_longer_than_context(checkpoints):
    model = edgert.load(checkpoints.gguf("e2b", "q8_0"), n_ctx=32)
    with pytest.raises(ContextOverflowError, match="context of 32"):
        list(model.generate("word " * 100, max_new_tokens=4))
    with pytest.raises(ContextOverflowError):
        model.forward(list(range(3, 40)))


def test_truncation_when_asked(checkpoints):
    model = edgert.load(checkpoints.gguf("e2b", "q8_0"), n_ctx=32)
    out = list(model.generate("word " * 100, max_new_tokens=4, truncate=True, temperature=0))
    assert isinstance("".join(out), str)


def test_a_misspelt_option_names_the_right_ones(checkpoints):
    """Load and sampling options are records (edgert.model.Options, edgert.sampling.Sampling):
    a misspelt one is refused with the list of those that exist, wherever it is given."""
    with pytest.raises(TypeError, match=r"unknown load options \['n_cxt'\]; they are n_ctx, n_batch"):
        edgert.load(checkpoints.gguf("e2b", "q8_0"), n_cxt=32)
    model = edgert.load(checkpoints.gguf("e2b", "q8_0"), n_ctx=32)
    with pytest.raises(TypeError, match=r"unknown sampling options \['temprature'\]; they are temperature"):
        list(model.generate("hi", max_new_tokens=2, temprature=0))
    with pytest.raises(TypeError, match="temprature"):
        model.chat([{"role": "user", "content": "hi"}], temprature=0)
    with pytest.raises(TypeError, match="temprature"):
        model.chat_session(temprature=0)


def test_errors_share_one_base():
    for cls in (ModelFileError, ArchitectureError, ContextOverflowError):
        assert issubclass(cls, EdgeRTError)
