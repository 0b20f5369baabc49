"""llama.cpp's mmproj file for Gemma 4's audio tower (edgert.files.mmproj), written for a small
random checkpoint as llama.cpp's converter writes it (tests.reference.write_mmproj): an audio
message through it gives the logits of edgert's own conversion of the same checkpoint, whether
the file is named or found beside the model; and what is not Gemma 4's audio is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import numpy as np
import pytest

import edgert
from edgert.errors import EdgeRTError, ModelFileError
from edgert.files.convert import convert
from edgert.files import mmproj
from edgert.files.mmproj import edgert_name
from edgert.gemma4 import SoftTokens
from edgert.text.sessions import hear_messages
from tests.reference import AUDIO_IDS, build_audio_checkpoint, write_mmproj

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The checkpoint converted by edgert (f16: the audio tower's matrices in f16, as in the
    mmproj), the same without its audio tower, and llama.cpp's mmproj of it."""
    root = tmp_path_factory.mktemp("mmproj")
    hf = root / "hf"
    build_audio_checkpoint(hf)
    own = convert(hf, root / "own" / "model.gguf", "f16")
    text_only = root / "hf-text"
    shutil.copytree(hf, text_only)
    config = json.loads((text_only / "config.json").read_text())
    del config["audio_config"]
    (text_only / "config.json").write_text(json.dumps(config))
    text = convert(text_only, root / "text" / "model.gguf", "f16")
    mmproj = write_mmproj(hf, root / "mmproj-test-f16.gguf")
    return dict(hf=hf, own=own, text=text, mmproj=mmproj, root=root)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    path = tmp_path_factory.mktemp("wav") / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello there, how are you?"], check=True)
    return path


def _audio_logits(model, speech) -> np.ndarray:
    messages, rows = hear_messages(model, [{"role": "user", "content": [{"type": "audio", "audio": str(speech)},
                                                               {"type": "text", "text": "What did I say?"}]}])
    ids = model.tokenizer.encode(model.format.render(messages))
    mask = np.asarray(ids) == AUDIO_IDS["audio_token_id"]
    assert mask.sum() == len(rows) > 10
    return model.prefill(model.new_state(), ids, logits="all", soft=SoftTokens(mask, rows))


def test_every_audio_tensor_of_the_checkpoint_has_a_name_in_the_file(files):
    from edgert.files.gguf_file import GGUFFile

    own = {n for n in edgert.load(files["own"]).file.audio.tensors}
    read = {edgert_name(n)[0] for n in GGUFFile(files["mmproj"]).tensors if edgert_name(n)}
    assert read == own  # the norms gguf swaps included: each lands on its own name once


def test_an_audio_message_through_the_mmproj_equals_edgerts_own_conversion(files, speech):
    """The same checkpoint's audio tower, from edgert's own file and from llama.cpp's mmproj (named,
    on a model that has its own: the mmproj's is taken). The bound is the stored precision's: the
    mmproj keeps the subsampling projection in F32 where edgert's f16 file has it in F16."""
    own = _audio_logits(edgert.load(files["own"], kv_type="f32"), speech)
    with pytest.warns(UserWarning, match=r"vision tower \(2 tensors\) is ignored"):
        model = edgert.load(files["own"], kv_type="f32", mmproj=files["mmproj"])
    assert model.file.audio.source == files["mmproj"]
    got = _audio_logits(model, speech)
    assert np.abs(got - own).max() < 2e-3 * np.abs(own).max(), np.abs(got - own).max() / np.abs(own).max()
    assert (got.argmax(1) == own.argmax(1)).mean() > 0.95


def test_an_mmproj_beside_a_model_without_audio_is_found(files, speech, tmp_path):
    text = tmp_path / "model.gguf"
    shutil.copy(files["text"], text)
    with pytest.raises(EdgeRTError, match="no audio encoder.*mmproj"):
        _audio_logits(edgert.load(text), speech)
    shutil.copy(files["mmproj"], tmp_path / "mmproj-model-f16.gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = edgert.load(text, kv_type="f32")
        named = edgert.load(files["text"], kv_type="f32", mmproj=files["mmproj"])
    assert found.file.audio.source == tmp_path / "mmproj-model-f16.gguf"
    np.testing.assert_array_equal(_audio_logits(found, speech), _audio_logits(named, speech))


def _rewritten(src, out, drop: str | None = None, narrow: str | None = None):
    """src's tensors and keys again, less `drop`, with the rows of `narrow` halved."""
    import gguf

    reader = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(out, "clip")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(field.name, value)
        else:
            w.add_key_value(field.name, value, vtype)
    for t in reader.tensors:
        if t.name == drop:
            continue
        data = np.array(t.data)
        w.add_tensor(t.name, data[: data.shape[0] // 2] if t.name == narrow else data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_what_is_not_gemma_4s_audio_is_refused_clearly(files, tmp_path):
    hf, text = files["hf"], files["text"]
    cases = [
        (write_mmproj(hf, tmp_path / "other.gguf", projector="gemma3na"),
         r"holds a 'gemma3na' audio projector; edgert reads Gemma 4's \('gemma4a'\)"),
        (write_mmproj(hf, tmp_path / "vision.gguf", audio=False), "has no audio encoder \\(a vision-only projector\\)"),
        (text, "is not a multimodal projector file"),
        (tmp_path / "missing.gguf", "no mmproj file at"),
    ]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(files["mmproj"].read_bytes()[:1000])
    cases.append((cut, "is not a readable GGUF file"))
    for path, message in cases:
        with pytest.raises(ModelFileError, match=message):
            edgert.load(text, mmproj=path)
    # a block short of a tensor, and one whose attention is of another width
    short = _rewritten(files["mmproj"], tmp_path / "short.gguf", drop="a.blk.1.attn_v.weight")
    with pytest.raises(ModelFileError, match=r"not Gemma 4's audio tower: it lacks audio.layers.1.self_attn.v_proj"):
        edgert.load(text, mmproj=short)
    narrow = _rewritten(files["mmproj"], tmp_path / "narrow.gguf", narrow="a.blk.0.attn_q.weight")
    with pytest.raises(ModelFileError, match=r"self_attn\.q_proj\.linear\.weight has shape \(32, 64\), not \(64, 64\)"):
        edgert.load(text, mmproj=narrow)
    # an mmproj of another model: its projection does not meet the text model's width
    with pytest.raises(ModelFileError, match="projects audio into a text width of 64, but the model's is 96"):
        mmproj.read(files["mmproj"], 96, lambda text: 0)
