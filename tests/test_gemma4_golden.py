"""Gemma 4 parity without torch at run time: a small random E2B-like checkpoint (4 sliding + 1
global layers, KV sharing, double-wide MLP, PLE) is committed with transformers' logits on it
(tests/data/gemma4-e2b-tiny, written by `python -m tests.reference`). edgert converts the
checkpoint and must reproduce them, on this machine and on the emulated Raspberry Pi 5.
Where torch is installed, the committed logits are checked against transformers first."""

import numpy as np
import pytest

import edgert
from edgert.files.convert import convert
from edgert.sampling import make_sampler
from edgert import generation
from tests.reference import GOLDEN_DIR, hf_decode_logits, hf_greedy, hf_logits, rel_err

pytestmark = pytest.mark.aarch64

GOLDEN = dict(np.load(GOLDEN_DIR / "golden.npz"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = convert(GOLDEN_DIR, tmp_path_factory.mktemp("golden") / "e2b-tiny-f32.gguf", "f32")
    return edgert.load(path, n_ctx=256, kv_type="f32")  # exact: the cache types have their own bounds


def test_committed_logits_are_transformers_own():
    """The golden output still is what transformers computes on the committed checkpoint."""
    torch = pytest.importorskip("torch", reason="transformers is the reference; the Pi job has no torch")
    from transformers import Gemma4ForCausalLM

    hf = Gemma4ForCausalLM.from_pretrained(GOLDEN_DIR, dtype=torch.float32).eval()
    prompt, steps = GOLDEN["prompt"].tolist(), GOLDEN["steps"].tolist()
    assert rel_err(hf_logits(hf, prompt), GOLDEN["prefill"]) < 1e-5
    assert rel_err(hf_decode_logits(hf, prompt, steps), GOLDEN["decode"]) < 1e-5
    assert hf_greedy(hf, prompt, len(GOLDEN["greedy"])) == GOLDEN["greedy"].tolist()


def test_prefill_logits_match_transformers(model):
    ours = model.forward(GOLDEN["prompt"].tolist())
    assert ours.shape == GOLDEN["prefill"].shape
    assert rel_err(ours, GOLDEN["prefill"]) < 1e-4


def test_decode_past_the_window_matches_transformers(model):
    state = model.new_state()
    ours = [model.prefill(state, GOLDEN["prompt"].tolist())]
    for t in GOLDEN["steps"].tolist():
        ours.append(model.decode_step(state, t))
    for i, (a, b) in enumerate(zip(ours, GOLDEN["decode"])):
        assert rel_err(a, b) < 1e-4, f"step {i}"


def test_greedy_tokens_identical(model):
    greedy = GOLDEN["greedy"].tolist()
    ours = generation.generate_ids(model, model.new_state(), GOLDEN["prompt"].tolist(), len(greedy), make_sampler(temperature=0),
                              stop_ids=set())
    assert list(ours) == greedy
