"""Gemma 4's drafter (Gemma4AssistantForCausalLM): converted, loaded beside its model, and run
as transformers runs it; then drafting with it gives exactly the tokens of plain decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgert
from edgert.draft import Mtp, drafter
from edgert.errors import ArchitectureError
from edgert.files.convert import convert
from edgert.generation import generate_ids
from edgert.sampling import make_sampler
from tests.reference import assert_same_caches, build_assistant, hf_draft, plain_ids, rel_err

KINDS = ["e2b", "e4b"]


@pytest.fixture(scope="module", params=[(k, c) for k in KINDS for c in (True, False)],
                ids=lambda p: f"{p[0]}-{'centroids' if p[1] else 'full-head'}")
def pair(request, checkpoints, tmp_path_factory):
    """(torch target, torch drafter, edgert model with the drafter, drafter file)."""
    kind, centroids = request.param
    target, _ = checkpoints.hf(kind)
    directory = tmp_path_factory.mktemp(f"assistant-{kind}")
    assistant = build_assistant(directory / "hf", kind, target.config.vocab_size, centroids=centroids)
    path = convert(directory / "hf", directory / f"{kind}-assistant-f32.gguf", "f32")
    model = edgert.load(checkpoints.gguf(kind, "f32"), drafter=path, kv_type="f32")
    return target, assistant, model, path


@pytest.mark.parametrize("n", [5, 21])  # inside the sliding window of 8, and past it
def test_drafter_logits_equal_transformers(pair, n):
    target, assistant, model, _ = pair
    prompt = [2] + [(37 * i) % 400 + 20 for i in range(n - 1)]
    want_logits, want_hidden = hf_draft(target, assistant, prompt, [123, 77, 301], model.config.sliding_window)
    state = model.new_state()
    model.prefill(state, prompt)
    hidden = state.hidden
    for i, token in enumerate([123, 77, 301]):
        x, hidden = model.assistant.step(state, token, hidden, len(prompt))
        assert rel_err(model.assistant.head.logits(x), want_logits[i]) < 1e-4
        assert rel_err(hidden, want_hidden[i]) < 1e-4
        assert model.assistant.head.best(x) == int(np.argmax(want_logits[i]))


def test_the_drafter_beside_the_model_is_found(pair, tmp_path):
    _, _, model, path = pair
    (tmp_path / "model.gguf").symlink_to(model.file.path)
    (tmp_path / "gemma-assistant.gguf").symlink_to(path)
    found = edgert.load(tmp_path / "model.gguf")
    assert found.assistant is not None and isinstance(drafter("auto", found), Mtp)
    alone = edgert.load(model.file.path)
    assert alone.assistant is None and drafter("auto", alone) is None
    with pytest.raises(ValueError, match="needs a drafter"):
        drafter("mtp", alone)


def test_a_drafter_for_another_model_is_refused(pair, checkpoints):
    _, _, model, path = pair
    other = "e4b" if model.config.layers[0].n_kv_heads == 1 else "e2b"
    with pytest.raises(ArchitectureError, match="does not lend|drafter made for it"):
        edgert.load(checkpoints.gguf(other, "q8_0"), drafter=path)
    with pytest.raises(ArchitectureError, match="is a Gemma 4 drafter"):
        edgert.load(path)


def _both(model, prompt, n, sampler, d):
    a, b = model.new_state(), model.new_state()
    plain = list(plain_ids(model, a, prompt, n, sampler(), model.stop_ids))
    fast = list(drafted(model, b, prompt, n, sampler(), model.stop_ids, d))
    return plain, fast, a, b


_prompts = st.lists(st.integers(3, 470), min_size=2, max_size=30).map(lambda p: [2] + p)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=_prompts, n=st.integers(0, 30), seed=st.integers(0, 2**16))
def test_drafting_gives_the_plain_tokens_and_cache(pair, prompt, n, seed):
    """Greedy and seeded sampling alike: the same ids, the same cache and the same hidden state."""
    _, _, model, _ = pair
    for sampler in (lambda: make_sampler(temperature=0),
                    lambda: make_sampler(temperature=0.8, rng=np.random.default_rng(seed))):
        d = Mtp(model, k=3)
        plain, fast, a, b = _both(model, prompt, n, sampler, d)
        assert fast == plain and a.tokens == b.tokens
        if n > 2:
            assert d.drafted > 0
        assert_same_caches(a, b)


def test_the_hidden_state_after_accepted_guesses_is_plain_decoding_s(pair):
    """Verification keeps the hidden state of the last token that stands (prompt lookup has
    guesses accepted; the drafter then starts where plain decoding would)."""
    from edgert.draft import Lookup

    _, _, model, _ = pair
    prompt = [2] + list(range(200, 230)) * 3
    d = Lookup()
    plain, fast, a, b = _both(model, prompt, 40, lambda: make_sampler(temperature=0), d)
    assert fast == plain and d.accepted > 0
    np.testing.assert_array_equal(a.hidden, b.hidden)


def test_a_drafter_that_keeps_missing_pauses():
    d = Mtp.__new__(Mtp)
    super(Mtp, d).__init__(2, 1, 8, patience=2)
    budgets = []
    for _ in range(12):
        k = d.budget(10)
        budgets.append(k)
        if k:
            d.update(k, 0)
    assert budgets[:2] == [2, 1] and 0 in budgets  # fell to 1, then paused
    assert budgets.count(0) >= 2 + 4 - 1  # pauses of 2, then 4
    d.update(1, 1)
    assert d.pause == 2 and d.k == 2


def test_the_file_has_llama_cpps_names_and_keys(pair):
    import gguf

    _, _, model, path = pair
    r = gguf.GGUFReader(path)
    names = {t.name for t in r.tensors}
    assert {"nextn.pre_projection.weight", "nextn.post_projection.weight", "token_embd.weight",
            "output_norm.weight", "blk.0.attn_q.weight", "blk.1.layer_output_scale.weight"} <= names
    assert not any(".attn_k." in n or ".attn_v." in n for n in names)  # queries only
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    assert arch == "gemma4-assistant"
    assert int(r.fields[f"{arch}.embedding_length_out"].parts[-1][0]) == model.config.n_embd


def test_command_line_converts_and_drafts(pair, tmp_path):
    import subprocess
    import sys

    _, assistant, model, _ = pair
    assistant.save_pretrained(tmp_path / "hf")
    out = tmp_path / "drafter.gguf"
    cli = [sys.executable, "-m", "tools.cli"]
    done = subprocess.run(cli + ["convert", str(tmp_path / "hf"), "-o", str(out), "--type", "q8_0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    texts = []
    for draft in ("none", "mtp"):
        run = subprocess.run(cli + ["run", str(model.file.path), "--drafter", str(out), "--draft", draft, "-p",
                                    "hello there", "-n", "12", "--temperature", "0"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        texts.append(run.stdout)
    assert texts[0] == texts[1] and texts[0].strip()


def test_chat_and_sessions_draft_with_it_by_default(pair):
    _, _, model, _ = pair
    messages = [{"role": "user", "content": "hello there"}]
    plain = model.chat(messages, max_new_tokens=16, temperature=0, draft="none").result()
    assert model.chat(messages, max_new_tokens=16, temperature=0).result() == plain  # draft="auto": the drafter
    a, b = model.chat_session(temperature=0, draft="none"), model.chat_session(temperature=0)
    assert isinstance(b.drafter, Mtp)
    for turn in ("hello there", "and again"):
        assert b.send(turn, max_new_tokens=10) == a.send(turn, max_new_tokens=10)


def drafted(model, state, prompt, n, sampler, stop_ids, d, soft=None):
    return generate_ids(model, state, prompt, n, sampler, stop_ids, soft, d)
