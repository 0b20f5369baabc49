"""The memory-footprint profiler: its KV figures are the runtime's allocations, its device
answers are consistent, its JSON follows the schema, its picture renders, its measurement
agrees with its prediction, and bad input gets a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgert
from edgert import profile
from edgert.config import config_from_hf, published
from edgert.kv_cache import KV_TYPES, make_caches
from tests.reference import text_config
from tools.synth import write_synthetic

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "edgert" / "data" / "profile.schema.json").read_text())


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A small E2B-shaped file: few layers, narrow, but a PLE table and KV sharing."""
    cfg = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
           "text_config": {"model_type": "gemma4_text", **text_config("e2b", vocab_size=4096)}}
    return write_synthetic("e2b", tmp_path_factory.mktemp("profile") / "small.gguf", "q4_0", hf_config=cfg)


def _allocated(cfg, n_ctx, kv_type) -> dict:
    out = {"sliding": 0, "global": 0}
    for index, cache in make_caches(cfg, n_ctx, kv_type).items():
        out["sliding" if cfg.layers[index].sliding else "global"] += sum(a.nbytes for a in cache.arrays)
    return out


@pytest.mark.parametrize("kind", ["e2b", "e4b"])
@pytest.mark.parametrize("n_ctx", [100, 512, 4096, 32768])
@pytest.mark.parametrize("kv_type", KV_TYPES)
def test_kv_estimate_is_what_the_runtime_allocates(kind, n_ctx, kv_type):
    """To the byte, for every cache type."""
    cfg = config_from_hf(published(kind))
    assert profile.estimate(kind, n_ctx=n_ctx, kv_type=kv_type).kv == _allocated(cfg, n_ctx, kv_type)


@pytest.mark.parametrize("kv_type", KV_TYPES)
def test_kv_estimate_of_a_loaded_model_is_its_caches(small_model, kv_type):
    model = edgert.load(small_model, n_ctx=300, kv_type=kv_type)
    est = profile.estimate(small_model, n_ctx=300, kv_type=kv_type)
    assert sum(est.kv.values()) == model.new_state().kv_bytes
    assert profile.estimate(small_model, n_ctx=300).kv == profile.estimate(small_model, n_ctx=300, kv_type="f16").kv


def test_e2b_at_32k_keeps_kv_for_15_of_35_layers_and_512_positions_on_sliding_ones():
    shared = profile.estimate("e2b", n_ctx=32768, kv_type="f32")
    alone = profile.estimate("e2b", n_ctx=32768, kv_sharing=False, kv_type="f32")
    cfg = config_from_hf(published("e2b"))
    assert sum(shared.kv_layers.values()) == 15 and sum(alone.kv_layers.values()) == 35
    sliding = [s for s in cfg.layers if s.sliding and s.owns_kv]
    per_layer = 512 * sliding[0].n_kv_heads * sliding[0].head_dim * 4 * 2 + 512 * 8  # K, V in f32 and positions
    assert shared.kv["sliding"] == len(sliding) * per_layer
    assert alone.total - shared.total == sum(alone.kv.values()) - sum(shared.kv.values()) > 0
    f16 = profile.estimate("e2b", n_ctx=32768, kv_type="f16")
    q8 = profile.estimate("e2b", n_ctx=32768, kv_type="q8_0")
    assert sum(q8.kv.values()) < sum(f16.kv.values()) < sum(shared.kv.values())


def test_weights_of_a_file_are_its_tensors(small_model):
    model = edgert.load(small_model)
    est = profile.estimate(small_model)
    on_file = sum(model.file.gguf.tensors[name].nbytes for name in model.file.tensors)
    assert sum(est.weights.values()) + est.ple_table == on_file
    assert est.ple_table == model.file.gguf.tensors["per_layer_token_embd.weight"].nbytes
    types = {name: model.file.gguf.tensors[name].ggml_type for name in model.file.tensors}
    assert set(est.weights_by_type) == {profile.QType(t).name for n, t in types.items()
                                        if n != "per_layer_token_embd.weight"}


def test_device_fit_and_longest_context():
    small = profile.estimate("e2b", device="pi5-2gb")
    big = profile.estimate("e2b", device="pi5-8gb")
    assert big.device["fits"] and big.device["max_context"] > small.device["max_context"]
    n = small.device["max_context"]
    usable = small.device["usable"]
    if 0 < n < small.n_ctx_train:
        assert profile.estimate("e2b", n_ctx=n).total <= usable < profile.estimate("e2b", n_ctx=n + 1).total
    budget = profile.estimate("e4b", budget=profile.parse_size("3GB"))
    assert budget.device["usable"] == 3 * 2**30
    assert profile.estimate("e4b").total > profile.estimate("e2b").total


def _cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.cli", "profile", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=900)


def test_json_validates_against_the_schema(tmp_path):
    import jsonschema

    done = _cli("e2b", "--json", "--ctx", "4096,32768", "--device", "pi5-4gb")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert [e["n_ctx"] for e in doc["estimates"]] == [4096, 32768]


def test_measured_run_matches_the_prediction_and_the_picture_renders(small_model, tmp_path):
    import jsonschema

    png = tmp_path / "profile.png"
    done = _cli(str(small_model), "--measure", "--prompt", "200", "--gen", "16", "--ctx", "512", "--json",
                "--plot", str(png), "-t", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    jsonschema.validate(doc, SCHEMA)
    measured, est = doc["measured"], doc["estimates"][-1]
    assert measured["kv"][-1] == sum(est["kv"].values())  # the cache the run allocated, to the byte
    assert 0 < measured["ple_resident"][-1] <= 1.25 * est["ple_resident"]
    assert abs(measured["peak_rss"] - est["total"]) < 0.25 * est["total"]
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[0] >= 400 and image.shape[1] >= 1200 and image.std() > 0.05


@pytest.mark.parametrize("argv, message", [
    (["e2b", "--device", "toaster"], "unknown device 'toaster'"),
    (["e2b", "--ctx", "200000"], "beyond the model's maximum of 131072"),
    (["e2b", "--budget", "lots"], "is not a size"),
    (["nowhere.gguf"], "neither 'e2b', 'e4b', a config.json nor a GGUF file"),
])
def test_bad_input_gets_a_clear_error(argv, message):
    done = _cli(*argv)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_config_that_is_not_gemma_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32}))
    with pytest.raises(profile.ProfileError, match="not a Gemma 4 config"):
        profile.estimate(path)


def test_audio_tower_is_counted_from_the_config():
    est = profile.estimate("e2b")
    assert 250e6 < est.audio_tower / 2 < 400e6  # a ~300M-parameter conformer, in f16
    assert np.isfinite(est.total)
