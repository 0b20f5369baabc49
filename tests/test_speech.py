"""Speech through the model: an audio message's logits against transformers'
Gemma4ForConditionalGeneration on a small random model with an audio tower, converted by
`edgert convert`; the encoder's cache; and bad audio."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import edgert
from audio.features import log_mel
from audio.files import load_audio
from edgert.files.convert import convert
from edgert.errors import EdgeRTError
from edgert.gemma4 import SoftTokens
from edgert.text.sessions import hear_messages
from tests.reference import AUDIO_IDS, build_audio_checkpoint

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("speech") / "hf"
    return build_audio_checkpoint(directory), directory


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wav") / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello there, how are you?"], check=True)
    return path


def _message(path) -> list[dict]:
    return [{"role": "user", "content": [{"type": "audio", "audio": str(path)},
                                         {"type": "text", "text": "What did I say?"}]}]


@pytest.mark.parametrize("qtype, tolerance", [("f32", 1e-4), ("f16", 2e-2)])
def test_audio_message_logits_equal_transformers(checkpoint, speech, tmp_path, qtype, tolerance):
    hf, directory = checkpoint
    model = edgert.load(convert(directory, tmp_path / f"m-{qtype}.gguf", qtype), kv_type="f32")
    messages, rows = hear_messages(model, _message(speech))
    ids = model.tokenizer.encode(model.format.render(messages))
    mask = np.asarray(ids) == AUDIO_IDS["audio_token_id"]
    assert mask.sum() == len(rows) > 10 and "<boa>" in messages[0]["content"][0]["text"]
    got = model.prefill(model.new_state(), ids, logits="all", soft=SoftTokens(mask, rows))
    features, feature_mask = log_mel(load_audio(speech).samples)
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor([ids]), input_features=torch.from_numpy(features)[None],
                      input_features_mask=torch.from_numpy(feature_mask)[None]).logits[0].numpy()
    assert np.abs(got - expected).max() < tolerance * np.abs(expected).max()


def test_chat_with_audio_answers_from_the_soft_tokens(checkpoint, speech, tmp_path):
    _, directory = checkpoint
    model = edgert.load(convert(directory, tmp_path / "m.gguf", "q8_0"))
    messages, rows = hear_messages(model, _message(speech))
    ids = model.tokenizer.encode(model.format.render(messages))
    logits = model.prefill(model.new_state(), ids, soft=SoftTokens(np.asarray(ids) == AUDIO_IDS["audio_token_id"], rows))
    first = int(np.argmax(logits))
    reply = model.chat(_message(speech), max_new_tokens=8, temperature=0)
    tokens = list(reply._tokens)
    assert tokens[:1] == ([] if first in model.stop_ids else [first])


def test_encoder_is_cached_beside_the_model_and_rebuilt_when_it_changes(checkpoint, tmp_path):
    _, directory = checkpoint
    path = convert(directory, tmp_path / "m.gguf", "q8_0")
    model = edgert.load(path)
    first = model.hear(np.zeros(16000, dtype=np.float32), rate=16000)
    cache = Path(f"{path}.audio.onnx")
    assert cache.is_file()
    built = cache.stat().st_mtime_ns
    again = edgert.load(path).hear(np.zeros(16000, dtype=np.float32), rate=16000)
    np.testing.assert_array_equal(first, again)
    assert cache.stat().st_mtime_ns == built  # read, not rebuilt
    os.utime(path, ns=(built + 10**9, built + 10**9))  # the model file changed
    edgert.load(path).hear(np.zeros(8000, dtype=np.float32), rate=16000)
    assert cache.stat().st_mtime_ns != built


def test_audio_that_cannot_be_heard_gets_clear_errors(checkpoint, tmp_path):
    _, directory = checkpoint
    model = edgert.load(convert(directory, tmp_path / "m.gguf", "q8_0"))
    with pytest.raises(EdgeRTError, match="at most 30 s"):
        model.hear(np.zeros(16000 * 31, dtype=np.float32), rate=16000)
    with pytest.raises(EdgeRTError, match="no samples"):
        model.hear(np.zeros(0, dtype=np.float32), rate=16000)
    with pytest.raises(EdgeRTError, match="too short"):
        model.hear(np.zeros(40, dtype=np.float32), rate=16000)


def test_a_model_without_an_audio_tower_says_so(checkpoints, speech):
    model = edgert.load(checkpoints.gguf("e2b", "q8_0"))
    with pytest.raises(EdgeRTError, match="no audio encoder"):
        model.chat(_message(speech))


def _cli(*argv, hide_sounddevice=False) -> subprocess.CompletedProcess:
    import sys

    pre = "import sys; sys.modules['sounddevice'] = None; " if hide_sounddevice else "import sys; "
    code = pre + f"from tools.cli import main; sys.exit(main({list(argv)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)


def test_voice_answers_a_wav_with_timings(checkpoint, speech, tmp_path):
    _, directory = checkpoint
    path = convert(directory, tmp_path / "m.gguf", "q8_0")
    done = _cli("voice", str(path), "--wav", str(speech), "-v", "--temperature", "0", "-n", "6")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "speech end to first token" in done.stderr and "real-time factor" in done.stderr


def test_voice_runs_the_tool_a_spoken_command_calls(checkpoint, tmp_path):
    """A spoken "turn on the kitchen light", a tools file, and a small model whose constrained
    decoding must call a tool: the function runs with valid arguments, and the model's answer
    to its result is produced."""
    _, directory = checkpoint
    path = convert(directory, tmp_path / "m.gguf", "q8_0")
    wav = tmp_path / "command.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "turn on the kitchen light"], check=True)
    log = tmp_path / "lights.log"
    home = tmp_path / "home.py"
    home.write_text(
        "from typing import Literal\n\n"
        "def set_light(room: Literal['kitchen', 'hall', 'bedroom'], on: bool) -> dict:\n"
        "    \"\"\"Switch a light.\n\n    Args:\n        room: which room\n        on: True for on\n    \"\"\"\n"
        f"    open({str(log)!r}, 'a').write(f'{{room}} {{on}}\\n')\n"
        "    return {'room': room, 'on': on, 'ok': True}\n")
    done = _cli("voice", str(path), "--wav", str(wav), "--tools", str(home), "--tool-choice", "required",
                "--temperature", "0", "-n", "40")
    assert done.returncode == 0, done.stderr[-2000:]
    room, on = log.read_text().split()
    assert room in ("kitchen", "hall", "bedroom") and on in ("True", "False")
    assert f"[tool] set_light({{'on': {on}, 'room': '{room}'}})" in done.stderr
    assert "'ok': true" in done.stderr.replace('"', "'")
    assert done.stdout.count("\n") >= 2  # the (empty) call turn, then the answer to its result


def test_voice_without_a_microphone_suggests_wav(checkpoint, tmp_path):
    _, directory = checkpoint
    path = convert(directory, tmp_path / "m.gguf", "q8_0")
    done = _cli("voice", str(path), hide_sounddevice=True)
    assert done.returncode == 2 and "--wav FILE" in done.stderr and "Traceback" not in done.stderr


def test_voice_on_a_model_without_audio_says_so(checkpoints, speech):
    done = _cli("voice", str(checkpoints.gguf("e2b", "q8_0")), "--wav", str(speech))
    assert done.returncode == 2 and "no audio encoder" in done.stderr and "mmproj" in done.stderr


def test_voice_says_what_is_wrong_before_loading_a_model(checkpoints, tmp_path):
    """A missing or unreadable recording is reported before any model loads; without a model,
    voice says which files can hear rather than loading the text-only default."""
    model = str(checkpoints.gguf("e2b", "q8_0"))
    missing = _cli("voice", model, "--wav", "/nonexistent.wav")
    assert missing.returncode == 2 and "/nonexistent.wav" in missing.stderr and "no such file" in missing.stderr
    assert "loading" not in missing.stderr and "Traceback" not in missing.stderr
    text = tmp_path / "notes.wav"
    text.write_text("not sound at all")
    bad = _cli("voice", model, "--wav", str(text))
    assert bad.returncode == 2 and "not an audio file" in bad.stderr and "loading" not in bad.stderr
    none = _cli("voice", "--wav", str(text))
    assert none.returncode == 2 and "audio tower" in none.stderr and "mmproj" in none.stderr
    assert "loading" not in none.stderr
    short = _cli("voice", model, "--vad-silence", "100")
    assert short.returncode == 2 and "must be over 240 ms" in short.stderr and "loading" not in short.stderr


def test_session_keeps_audio_turns(checkpoint, speech, tmp_path):
    _, directory = checkpoint
    model = edgert.load(convert(directory, tmp_path / "m.gguf", "q8_0"))
    session = model.chat_session(temperature=0)
    session.send([{"type": "audio", "audio": str(speech)}], max_new_tokens=4)
    heard = int(np.sum(np.asarray(session.state.tokens) == AUDIO_IDS["audio_token_id"]))
    assert heard == len(model.hear(speech)) > 0
    session.send("And again?", max_new_tokens=4)
    assert session.state.pos > heard


def test_int8_encoder_stays_close_to_f32(checkpoint, speech, tmp_path):
    _, directory = checkpoint
    path = convert(directory, tmp_path / "m.gguf", "f32")
    exact = edgert.load(path).hear(speech)
    small = edgert.load(path, audio_int8=True).hear(speech)
    assert Path(f"{path}.audio-int8.onnx").is_file()
    error = np.sqrt(np.mean((small - exact) ** 2) / np.mean(exact ** 2))
    assert 0 < error < 0.25, error  # quantized (about 0.1 on this random tower), and not broken


def test_streamed_soft_tokens_equal_the_whole_clip(checkpoint, speech, tmp_path):
    from edgert.speech import StreamingEncoder

    _, directory = checkpoint
    model = edgert.load(convert(directory, tmp_path / "m.gguf", "f32"))
    samples = np.concatenate([load_audio(speech).samples] * 6)  # ~12 s: windows past the 7.2 s of context
    whole = model.hear(samples, rate=16000)
    stream = StreamingEncoder(model.audio_encoder)
    parts = [stream.push(samples[i:i + 3200]) for i in range(0, len(samples), 3200)]  # 200 ms at a time
    parts.append(stream.finish())
    assert sum(len(p) > 0 for p in parts) >= 5  # they came while the audio arrived, every 2 s
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5 * np.abs(whole).max())


@pytest.mark.parametrize("block, every", [(160, 1), (480, 3), (1600, 12), (3200, 12), (7000, 5), (32000, 12),
                                          (32000, 50)])
def test_the_stateful_stream_equals_the_whole_clip_and_encodes_each_frame_once(checkpoint, speech, tmp_path,
                                                                               block, every):
    """Pushes of 1 feature frame (10 ms) to 2 s, runs of 1 to 50 soft tokens: the state carried
    between runs gives the whole clip's soft tokens, and no run encodes a frame again (each
    takes its new frames and 4 of context; the tail at the end is only the tail)."""
    from edgert.speech import StreamingEncoder

    _, directory = checkpoint
    path = tmp_path / "m.gguf"
    model = edgert.load(path if path.exists() else convert(directory, path, "f32"))
    samples = np.concatenate([load_audio(speech).samples] * 2)
    whole = model.hear(samples, rate=16000)
    stream = StreamingEncoder(model.audio_encoder, every=every)
    runs = []
    run = stream.encoder.run
    stream.encoder.run = lambda f, *a: runs.append(len(f)) or run(f, *a)
    try:
        parts = []
        for n, i in enumerate(range(0, len(samples), block)):
            parts.append(stream.push(samples[i:i + block]))
            if n % 7 == 6:
                parts.append(stream.pause())  # the speaker paused: what is final is encoded now
        parts.append(stream.finish())
    finally:
        stream.encoder.run = run
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5 * np.abs(whole).max())
    assert sum(runs) <= 4 * len(whole) + 4 * len(runs) + 8  # every frame once, plus context and padding
    assert runs[-1] <= 4 * (every + block // 640 + 2) + 8  # the tail


@pytest.mark.parametrize("block", [480, 3200])
def test_a_finish_at_a_pause_leaves_the_state_of_what_is_final(checkpoint, speech, tmp_path, block):
    """finish_split at pauses that turn out not to be the end (an answer begun early): one run
    encodes what is final and the tail, and going back to its mark continues the stream as if
    only what is final had been encoded: the whole clip's soft tokens in the end."""
    from edgert.speech import StreamingEncoder

    _, directory = checkpoint
    path = tmp_path / "m.gguf"
    model = edgert.load(path if path.exists() else convert(directory, path, "f32"))
    samples = np.concatenate([load_audio(speech).samples] * 2)
    whole = model.hear(samples, rate=16000)
    stream = StreamingEncoder(model.audio_encoder, every=12)
    parts, splits = [], 0
    for n, i in enumerate(range(0, len(samples), block)):
        parts.append(stream.push(samples[i:i + block]))
        if n % 5 == 4:
            done = stream.done
            rows, final, mark = stream.finish_split()
            assert len(rows) >= final and mark[1] == done + final  # and the tail's tokens, if any
            parts.append(rows[:final])
            stream.back(mark)
            splits += final > 0
    parts.append(stream.finish())
    assert splits >= 2
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5 * np.abs(whole).max())


def test_streamed_turn_equals_the_whole_turn(checkpoint, speech, tmp_path):
    _, directory = checkpoint
    model = edgert.load(convert(directory, tmp_path / "m.gguf", "f32"))
    samples = load_audio(speech).samples
    batch = model.chat_session(system="Listen.", temperature=0)
    batch_tokens = list(batch.stream([{"type": "audio", "audio": samples, "rate": 16000},
                                      {"type": "text", "text": "Answer."}], max_new_tokens=6)._tokens)
    streamed = model.chat_session(system="Listen.", temperature=0)
    turn = streamed.listen(every=12)  # the clip is short: encode every 480 ms
    for i in range(0, len(samples), 1600):
        turn.push(samples[i:i + 1600])
    assert turn.soft_tokens > 0  # prefilled before the end of speech
    turn.pause()
    tokens = list(turn.finish("Answer.", max_new_tokens=6)._tokens)
    assert tokens == batch_tokens
    assert streamed.state.tokens == batch.state.tokens and len(batch.state.tokens) > turn.soft_tokens


def test_an_answer_begun_at_a_pause_is_dropped_if_the_speech_goes_on_and_is_the_answer_if_it_ends(
        checkpoint, speech, tmp_path):
    """AudioTurn.answer_early: at a pause, the reply is begun and read ahead; the speech going
    on takes the turn back to the pause (cache and encoder), and at the end the early reply is
    the very reply of the whole clip."""
    _, directory = checkpoint
    model = edgert.load(convert(directory, tmp_path / "m.gguf", "f32"))
    samples = load_audio(speech).samples
    batch = model.chat_session(system="Listen.", temperature=0)
    whole = batch.stream([{"type": "audio", "audio": samples, "rate": 16000},
                          {"type": "text", "text": "Answer."}], max_new_tokens=6)
    whole.result()
    streamed = model.chat_session(system="Listen.", temperature=0)
    turn = streamed.listen(every=12)
    half = len(samples) // 2 // 1600 * 1600
    for i in range(0, half, 1600):
        turn.push(samples[i:i + 1600])
    at_pause, soft = list(streamed.state.tokens), turn.soft_tokens
    early = turn.answer_early("Answer.", max_new_tokens=6)  # one encoder run for what is final and the tail
    early.read_ahead()  # the turn's end is prefilled and the first piece drawn, during the pause
    assert streamed.state.pos > len(at_pause) and early.token_count > 0
    turn.go_on()  # the speaker goes on: back to the pause, what was final there kept
    final = turn.soft_tokens - soft
    assert final > 0 and streamed.state.tokens == at_pause + [turn.audio_id] * final
    assert not streamed.state.pending and streamed.last is not early
    for i in range(half, len(samples), 1600):
        turn.push(samples[i:i + 1600])
    final = turn.answer_early("Answer.", max_new_tokens=6)
    while final.read_ahead():
        pass
    assert final.result() == whole.text and final.ids == whole.ids  # the read-ahead pieces come first, in order
    assert streamed.state.tokens == batch.state.tokens


FAKE_SOUNDDEVICE = '''
"""A stand-in for sounddevice: its input stream plays a WAV file, 100 ms a block, then Ctrl-C."""
import os, signal, threading, time
import numpy as np
from audio.files import load_audio

class PortAudioError(Exception):
    pass

def query_devices(kind=None):
    return {"name": "fake microphone"}

class InputStream:
    def __init__(self, samplerate, channels, dtype, blocksize, callback):
        self.callback, self.blocksize = callback, blocksize

    def __enter__(self):
        samples = load_audio(os.environ["FAKE_MIC_WAV"]).samples
        samples = np.concatenate([np.zeros(8000, np.float32), samples, np.zeros(24000, np.float32)])
        def play():
            for i in range(0, len(samples), self.blocksize):
                self.callback(samples[i:i + self.blocksize, None], self.blocksize, None, None)
            time.sleep(float(os.environ.get("FAKE_MIC_LINGER", "20")))
            while True:  # the user's Ctrl-C, again until it quits (one that lands on a reply stops only that)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(2)
        threading.Thread(target=play, daemon=True).start()
        return self

    def __exit__(self, *exc):
        return False
'''


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "not-streaming"])
def test_voice_from_a_microphone(checkpoint, speech, tmp_path, stream):
    import sys

    _, directory = checkpoint
    path = convert(directory, tmp_path / "m.gguf", "q8_0")
    (tmp_path / "sounddevice.py").write_text(FAKE_SOUNDDEVICE)
    argv = ["voice", str(path), "-v", "--temperature", "0", "-n", "4"] + ([] if stream else ["--no-stream"])
    env = {**os.environ, "FAKE_MIC_WAV": str(speech), "FAKE_MIC_LINGER": "8",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parent.parent)])}
    # Ctrl-C as a terminal delivers it, even where pytest itself runs with SIGINT ignored (started in
    # the background by a non-interactive shell, whose children Python then gives no KeyboardInterrupt)
    done = subprocess.run([sys.executable, "-m", "tools.cli", *argv], capture_output=True, text=True, timeout=300,
                          env=env, cwd=Path(__file__).resolve().parent.parent,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "listening on fake microphone" in done.stderr
    assert done.stderr.count("speech end to first token") == 1


def test_push_to_talk_takes_what_is_said_between_two_enters():
    import threading

    from tools.voice import push_to_talk

    talking = threading.Event()
    blocks = [np.full(1600, i, dtype=np.float32) for i in range(10)]

    def mic():
        for i, block in enumerate(blocks):
            if i in (3, 7):  # Enter, then Enter again
                talking.clear() if talking.is_set() else talking.set()
            yield block

    events = [e for batch in push_to_talk(mic(), talking) for e in batch]
    assert [kind for kind, _ in events] == ["speech"] * 4 + ["end"]
    np.testing.assert_array_equal(events[-1][1], np.concatenate(blocks[3:7]))


FAKE_SPEAKERS = '''
"""A stand-in for sounddevice's output: a stream that takes as long to write as the sound lasts."""
import time

class PortAudioError(Exception):
    pass

class OutputStream:
    def __init__(self, samplerate, channels, dtype):
        self.rate = samplerate
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def write(self, block):
        time.sleep(len(block) / self.rate)
'''


@pytest.fixture(scope="module")
def conversation(tmp_path_factory) -> Path:
    """Two utterances, the second begun 2.5 s after the first ends (while the answer is spoken)."""
    import soundfile

    d = tmp_path_factory.mktemp("conversation")
    parts = []
    for i, text in enumerate(["What will the weather be like today in the city?", "Stop. Tell me a joke instead."]):
        subprocess.run(["espeak-ng", "-w", str(d / f"{i}.wav"), text], check=True)
        parts.append(load_audio(d / f"{i}.wav").samples)
    samples = np.concatenate([np.zeros(8000, np.float32), parts[0], np.zeros(40000, np.float32), parts[1]])
    soundfile.write(d / "conversation.wav", samples, 16000)
    return d / "conversation.wav"


def test_speaking_over_the_reply_stops_it_and_keeps_what_it_said(checkpoint, conversation, tmp_path, monkeypatch,
                                                                 capsys):
    """A barge-in, in the library: the reply is being spoken when the second utterance starts;
    it stops (the speaking, and the writing if it was still going), what was heard of it (not
    all that was written: writing runs ahead of speech) stays in the conversation, and the
    second utterance is answered."""
    import types

    import audio.speak
    from tools import voice

    def play(samples, rate, stop):  # a sound card: writing takes as long as the sound lasts
        for i in range(0, len(samples), rate // 50):
            if stop.is_set():
                return
            time.sleep(0.02)

    monkeypatch.setattr(audio.speak, "play_sounddevice", play)
    _, directory = checkpoint
    model = edgert.load(convert(directory, tmp_path / "m.gguf", "q8_0"))
    session = model.chat_session(temperature=0)
    args = types.SimpleNamespace(vad="silero", vad_silence=800, early=True, stream=True, encode_every=12, prompt=None,
                                 max_new_tokens=60,
                                 functions=[], tool_choice="auto", say=True, verbose=False)
    replies = []
    real = session._reply

    def recording_reply(*a, **k):
        replies.append(real(*a, **k))
        return replies[-1]

    session._reply = recording_reply
    assert voice.converse(session, voice.Recording(load_audio(conversation).samples), args) == 2
    first, second = replies
    assert first.done and first.finish_reason == "interrupted" and second.done and second.finish_reason != "interrupted"
    out, err = capsys.readouterr()
    assert err.count("[barge-in] the reply stopped") == 1
    written = out[:out.index(" [interrupted]")]
    assert written.startswith(first.text) and 0 < len(first.text) < len(written)  # some heard, not all
    # the conversation holds the first reply's ids, then the turn closed and the second user turn
    tokens, tok, fmt = session.state.tokens, model.tokenizer, model.format
    after = tok.encode(f"{fmt.close}\n{fmt.open}user\n")
    n = len(first.ids)
    at = [i for i in range(len(tokens) - n) if tokens[i:i + n] == first.ids]
    assert at and tokens[at[0] + n:at[0] + n + len(after)] == after  # (the second reply may begin alike)


def test_voice_wav_conversation_with_a_barge_in(checkpoint, conversation, tmp_path):
    """`edgert voice --wav --say` through two utterances, the second spoken over the first answer:
    the first answer is cut off and said so, the second utterance is answered."""
    import sys

    _, directory = checkpoint
    path = convert(directory, tmp_path / "m.gguf", "q8_0")
    (tmp_path / "sounddevice.py").write_text(FAKE_SPEAKERS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parent.parent)])}
    done = subprocess.run([sys.executable, "-m", "tools.cli", "voice", str(path), "--wav", str(conversation), "--say",
                           "-v", "--temperature", "0", "-n", "60"], capture_output=True, text=True, timeout=300,
                          env=env, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.rstrip()
    assert out.count(" [interrupted]\n") == 1 and not out.endswith("[interrupted]")  # the second answer follows
    assert done.stderr.count("[barge-in] the reply stopped after") == 1 and "characters heard, stay" in done.stderr
    assert done.stderr.count("speech end to first token") == 2 and "speech end to first audio out" in done.stderr
    assert "written during the pause" in done.stderr  # answered at the pause, before the end was called
