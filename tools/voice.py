"""edgert voice MODEL: an offline voice assistant. Speech goes straight into Gemma 4's own
audio encoder (no speech recogniser); the reply streams as text, and is spoken with
espeak-ng when asked and installed.

    edgert voice model.gguf                 # microphone: speak, then pause
    edgert voice model.gguf --wav q.wav -v  # answer a recorded file, with timings
    edgert voice model.gguf --tools home.py # the functions of home.py as tools the model calls
"""

from __future__ import annotations

import importlib.util
import inspect
import queue
import sys
import threading
import time

import numpy as np

from audio.vad import HANGOVER_MS, POST_ROLL_MS
from edgert.errors import EdgeRTError, no_audio_tower
from tools.common import add_model_argument, add_sampling_arguments, load_model, sampling

RATE = 16_000
BLOCK = RATE // 10  # 100 ms, as the microphone delivers it
NO_MIC = ("no microphone could be opened ({why}); answer a recording instead with "
          "`edgert voice MODEL --wav FILE`")


def add_parser(sub) -> None:
    p = sub.add_parser("voice", help="talk to a model: microphone or --wav, reply streamed")
    add_model_argument(p)
    p.add_argument("--wav", help="answer this recording instead of listening to the microphone")
    p.add_argument("--prompt", default=None, help="text sent after the audio (default: none)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--say", action="store_true",
                   help="speak the reply with espeak-ng, a sentence at a time while it is written (the first "
                        "after its first comma or four words)")
    p.add_argument("--audio-int8", action="store_true", help="run the audio encoder in int8")
    p.add_argument("--no-stream", dest="stream", action="store_false",
                   help="encode an utterance only once it has ended (default: while it is spoken)")
    p.add_argument("--encode-every", type=int, default=50, metavar="N",
                   help="soft tokens (40 ms each) per run of the streaming encoder while speech goes on (default "
                        "50, and one run at each pause): more cost less per second of speech")
    p.add_argument("--tools", metavar="FILE.py", default=None,
                   help="a Python file whose functions (type hints and docstrings) are tools the model may "
                        "call; each call runs, and the model answers from its result")
    p.add_argument("--tool-choice", default="auto", choices=("auto", "required", "none"),
                   help="whether the model may (auto), must (required) or must not (none) call a tool first")
    p.add_argument("--vad", default="auto", choices=("auto", "silero", "energy"),
                   help="voice-activity detector: silero (Silero VAD, which noise and music do not fool), energy "
                        "(a level threshold), or auto (Silero where it loads)")
    p.add_argument("--vad-silence", type=int, default=HANGOVER_MS, metavar="MS",
                   help=f"silence that ends an utterance, in ms (default {HANGOVER_MS}; shorter answers sooner, and may "
                        "take a pause for the end)")
    p.add_argument("--no-early", dest="early", action="store_false",
                   help="wait for the end of an utterance before answering (default: begin the answer at each pause, "
                        "and drop it if the speech goes on)")
    p.add_argument("--push-to-talk", action="store_true",
                   help="Enter starts and ends an utterance (microphone), instead of voice-activity detection")
    add_sampling_arguments(p)
    p.set_defaults(func=main)


def load_tools(path: str) -> list:
    """The public functions defined in a Python file."""
    spec = importlib.util.spec_from_file_location("edgert_voice_tools", path)
    if spec is None:
        raise EdgeRTError(f"--tools {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (OSError, SyntaxError) as e:
        raise EdgeRTError(f"--tools {path}: {e}") from None
    functions = [f for name, f in vars(module).items() if inspect.isfunction(f) and not name.startswith("_")
                 and f.__module__ == module.__name__]
    if not functions:
        raise EdgeRTError(f"--tools {path} defines no function; write one with type hints and a docstring")
    return functions


def _answer(session, reply, args, speech_end: float, encode_s: float, seconds: float, heard=None,
            voice: "Voice | None" = None) -> None:
    """Speak a reply; while it calls tools, run them and speak what the model makes of the
    results (a few rounds at most; the last may not call again). heard(): whether the user has
    begun to speak meanwhile, which stops the reply (a barge-in). voice: the reply's held Voice,
    when it was begun at a pause."""
    for round_ in range(4):
        if _speak_reply(reply, args, speech_end, encode_s, seconds, heard, voice):
            return
        if not reply.tool_calls or not args.functions:
            return
        from edgert.text.tools import run_calls

        results = run_calls(reply.tool_calls, args.functions)
        for call, result in zip(reply.tool_calls, results):
            print(f"[tool] {call.name}({call.arguments}) -> {result['content']}", file=sys.stderr)
        reply = session.stream_results(results, max_new_tokens=args.max_new_tokens,
                                       tool_choice="none" if round_ == 2 else "auto")
        speech_end, encode_s, voice = time.perf_counter(), 0.0, None


class Voice:
    """A reply spoken a sentence at a time as it is written (--say): `feed` passes on what the
    reply has written since the last call, `finish` the rest. Held, its speaker makes the first
    sentence's sound ready and plays nothing until released (a reply begun at a pause, before
    the end is called)."""

    def __init__(self, reply, held: bool = False):
        from audio.speak import Speaker

        self.reply, self.speaker = reply, Speaker(held=held)
        self.fed, self.pending, self.at = 0, "", 0  # text passed on; not yet a sentence; where said text ends

    def feed(self) -> None:
        from audio.speak import sentences

        text = self.reply.text
        done, self.pending = sentences(self.pending + text[self.fed:], first=self.at == 0)
        self.fed = len(text)
        self._say(done)

    def finish(self) -> None:
        self.feed()
        rest, self.pending = self.pending.strip(), ""
        self._say([rest] if rest else [])

    def _say(self, pieces) -> None:
        for sentence in pieces:
            self.at = self.reply.text.index(sentence, self.at) + len(sentence)
            self.speaker.say(sentence, end=self.at)

    def drop(self) -> None:
        self.speaker.stop()
        self.speaker.close()


def _speak_reply(reply, args, speech_end: float, encode_s: float, seconds: float, heard=None,
                 voice: Voice | None = None) -> bool:
    """Stream the reply's text and, with --say, speak it a sentence at a time as it is written;
    then the --verbose timings. Returns whether the user spoke over it (heard()): the reply
    stops there, writing and speaking, and the conversation keeps what was heard of it (spoken,
    in whole words), or without --say what was written."""
    if voice is not None:
        voice.speaker.release()
    elif args.say:
        voice = Voice(reply)
    speaker = voice.speaker if voice is not None else None
    first, n, barged = None, 0, False
    ahead = len(reply.text)  # written during the pause, before the end was called (--early)
    try:
        for piece in reply:
            if first is None:
                first = time.perf_counter()
            n += 1
            sys.stdout.write(piece)
            sys.stdout.flush()
            if voice is not None:
                voice.feed()
            if heard is not None and heard():
                barged = True
                break
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
        if speaker is not None:
            speaker.stop()
    done = time.perf_counter()
    if speaker is not None and not barged:
        voice.finish()
        while speaker.speaking and not barged:  # the reply is written; it is still being spoken
            time.sleep(0.02)
            barged = heard is not None and heard()
    if speaker is not None:
        if barged:
            speaker.stop()
        speaker.close()
        if speaker.error is not None:
            print(f"(could not speak: {speaker.error})", file=sys.stderr)
    if barged:
        written = reply.token_count
        spoken = speaker is not None and speaker.error is None
        reply.stop(heard=speaker.heard if spoken else None)
        sys.stdout.write(" [interrupted]")
    sys.stdout.write("\n")
    if barged:
        kept = (f"{reply.token_count} of them, the {len(reply.text)} characters heard, stay" if spoken
                else "they stay")
        print(f"[barge-in] the reply stopped after {written} tokens written; {kept} in the conversation",
              file=sys.stderr)
    if args.verbose:
        decode = (n - 1) / (done - first) if first and n > 1 and done > first else 0.0
        audio = (f"; speech end to first audio out {speaker.first_audio - speech_end:.2f} s"
                 if speaker is not None and speaker.first_audio else "")
        early = f" ({ahead} characters of it written during the pause)" if ahead else ""
        print(f"speech end to first token {(first or done) - speech_end:.2f} s{early}{audio}; encoder {encode_s:.2f} s "
              f"for {seconds:.1f} s of audio (real-time factor {encode_s / max(seconds, 1e-9):.3f}); "
              f"{n} pieces, decode {decode:.1f}/s", file=sys.stderr)
    return barged


class Recording:
    """A recording as the microphone would hear it: 100 ms blocks, then a second of silence.
    While the assistant listens, the blocks come at once; while it answers (`answering`), the
    recording plays on in real time, so that speaking over the reply in a file is heard when
    it would be live (a barge-in)."""

    def __init__(self, samples: np.ndarray):
        samples = np.concatenate([samples, np.zeros(RATE, dtype=np.float32)])
        self.blocks = [samples[i:i + BLOCK] for i in range(0, len(samples), BLOCK)]
        self.at, self._since = 0, None

    def __iter__(self):
        while self.at < len(self.blocks):
            self.at += 1
            yield self.blocks[self.at - 1]

    def answering(self, on: bool) -> None:
        self._since = (time.perf_counter(), self.at) if on else None

    def idle(self) -> bool:
        """No block is due yet (while answering: the blocks come in real time)."""
        if self._since is None:
            return False
        t0, at0 = self._since
        return self.at >= at0 + int((time.perf_counter() - t0) * RATE / BLOCK)

    def arrived(self) -> list[np.ndarray]:
        """The blocks heard since the last call, while answering."""
        if self._since is None:
            return []
        t0, at0 = self._since
        due = min(len(self.blocks), at0 + int((time.perf_counter() - t0) * RATE / BLOCK))
        out, self.at = self.blocks[self.at:due], max(self.at, due)
        return out


class Microphone:
    """The microphone's blocks, as its callback queues them."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()

    def callback(self, indata, frames, at, status) -> None:
        self.queue.put(indata[:, 0].copy())

    def __iter__(self):
        while True:
            try:
                yield self.queue.get(timeout=0.2)  # a timeout keeps Ctrl-C responsive
            except queue.Empty:
                continue

    def answering(self, on: bool) -> None:
        pass

    def idle(self) -> bool:
        """No block is waiting."""
        return self.queue.empty()

    def arrived(self) -> list[np.ndarray]:
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out


def converse(session, source, args, events=None) -> int:
    """Answer the utterances in a stream of 16 kHz blocks (a Microphone, or a Recording).
    Voice-activity detection cuts them (or `events`, a function from blocks to lists of the same
    events, for push-to-talk); with streaming (the default), each is encoded and prefilled while
    it is spoken, so that its end leaves only the tail to compute. At a pause, the answer is
    begun at once and read ahead while the silence lasts (--early, the default): if the pause
    is the end, the reply is under way when the end is called; if the speech goes on, the turn
    goes back to the pause. While a reply is written and spoken, the source is still heard:
    speech (300 ms of it) stops the reply, and is the next utterance. Returns the number of
    utterances answered."""
    from audio.vad import Segmenter

    turn, encode_s, answered, early, voice = None, 0.0, 0, None, None
    segmenter = Segmenter(args.vad, args.vad_silence) if events is None else None
    held: list = []  # events heard while answering
    choice = args.tool_choice if args.functions else None

    def heard() -> bool:
        for block in source.arrived():
            held.extend(segmenter.push(block))
        return any(kind == "speech" for kind, _ in held)

    def handle(batch):
        nonlocal turn, encode_s, answered, early, voice
        todo = list(batch)
        while todo:
            kind, samples = todo.pop(0)
            if kind == "speech" and args.stream:
                t0 = time.perf_counter()
                if early is not None:  # it was a pause, not the end
                    turn.go_on()
                    if voice is not None:
                        voice.drop()
                    early, voice = None, None
                    source.answering(False)
                turn = turn or session.listen(args.encode_every)
                turn.push(samples)
                encode_s += time.perf_counter() - t0
            elif kind == "pause" and args.stream and turn is not None:
                t0 = time.perf_counter()
                if args.early:  # one encoder run for what is final and the tail, then the answer from there
                    early = turn.answer_early(args.prompt, max_new_tokens=args.max_new_tokens, tool_choice=choice)
                    voice = Voice(early, held=True) if args.say else None  # its first sound made ready too
                    source.answering(True)  # a recording plays on in real time while the answer is read ahead
                else:
                    turn.pause()  # the encoder runs for what is final, if 8 or more soft tokens wait
                encode_s += time.perf_counter() - t0
            elif kind == "end":
                speech_end = time.perf_counter()
                if early is not None:
                    reply, early = early, None
                elif args.stream:
                    reply = turn.finish(args.prompt, max_new_tokens=args.max_new_tokens, tool_choice=choice)
                else:
                    parts = [{"type": "audio", "audio": samples, "rate": RATE}]
                    parts += [{"type": "text", "text": args.prompt}] if args.prompt else []
                    reply = session.stream(parts, max_new_tokens=args.max_new_tokens, tool_choice=choice)
                source.answering(True)
                try:
                    _answer(session, reply, args, speech_end, encode_s, len(samples) / RATE,
                            heard if segmenter is not None else None, voice)
                finally:
                    source.answering(False)
                turn, encode_s, answered, voice = None, 0.0, answered + 1, None
                todo += held  # what was said over the reply is the next utterance
                held.clear()

    if events is not None:
        for batch in events(iter(source)):
            handle(batch)
        return answered
    for block in source:
        handle(segmenter.push(block))
        while early is not None and source.idle() and early.read_ahead():
            if voice is not None:  # the silence goes on: read the answer ahead, until the next block is due
                voice.feed()
    handle(segmenter.flush())
    return answered


def _microphone():
    """sounddevice, and the default input device, or a clear error."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:  # OSError: the PortAudio library is missing
        raise EdgeRTError(NO_MIC.format(why=f"sounddevice: {e}; install PortAudio, e.g. apt-get install "
                                            "libportaudio2")) from None
    try:
        device = sd.query_devices(kind="input")
    except Exception as e:  # PortAudioError, ValueError: no input device
        raise EdgeRTError(NO_MIC.format(why=str(e) or "no input device")) from None
    return sd, device


def push_to_talk(blocks, talking: threading.Event):
    """The blocks that arrive while `talking` is set, as voice-activity events: ("speech",
    block) each, then ("end", utterance) once it is cleared."""
    held = []
    for block in blocks:
        if talking.is_set():
            held.append(block)
            yield [("speech", block)]
        elif held:
            yield [("end", np.concatenate(held))]
            held = []
    if held:
        yield [("end", np.concatenate(held))]


def _enter_toggles(talking: threading.Event) -> None:
    for _ in sys.stdin:
        talking.clear() if talking.is_set() else talking.set()
        print("(talking: Enter to stop)" if talking.is_set() else "(stopped)", file=sys.stderr)


def _listen(session, args) -> int:
    sd, device = _microphone()
    mic = Microphone()
    how = "Enter to talk, Enter to stop" if args.push_to_talk else "speak, then pause"
    print(f"listening on {device['name']} ({how}; Ctrl-C to leave)", file=sys.stderr)

    try:
        with sd.InputStream(samplerate=RATE, channels=1, dtype="float32", blocksize=BLOCK, callback=mic.callback):
            if args.push_to_talk:
                talking = threading.Event()
                threading.Thread(target=_enter_toggles, args=(talking,), daemon=True).start()
                converse(session, mic, args, events=lambda blocks: push_to_talk(blocks, talking))
            else:
                converse(session, mic, args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 0
    except sd.PortAudioError as e:
        raise EdgeRTError(NO_MIC.format(why=str(e))) from None
    return 0


HEARS = ("edgert voice needs a model that can hear: a Gemma 4 file with its audio tower (`edgert convert` of an "
         "E2B or E4B checkpoint), or a Gemma 4 GGUF with llama.cpp's mmproj*.gguf beside it (or --mmproj FILE); "
         "the default model reads text only")


def main(args) -> int:
    if args.model is None:
        raise EdgeRTError(HEARS)
    if args.vad_silence <= POST_ROLL_MS:
        raise EdgeRTError(f"--vad-silence {args.vad_silence}: the silence that ends an utterance must be over "
                          f"{POST_ROLL_MS} ms, the speech's post-roll (default {HANGOVER_MS})")
    clip = None
    if args.wav:  # a file that cannot be used is said before any model loads
        from audio.files import load_audio

        clip = load_audio(args.wav)
    args.functions = load_tools(args.tools) if args.tools else []
    if args.say:
        from audio.speak import Speaker

        if not Speaker.available():
            print("(--say needs espeak-ng: apt-get install espeak-ng)", file=sys.stderr)
            args.say = False
    model = load_model(args, audio_int8=args.audio_int8)
    if model.file.audio is None:
        raise no_audio_tower(model.file.path)
    session = model.chat_session(system=args.system, tools=args.functions, **sampling(args))
    if clip is not None:
        if not converse(session, Recording(clip.samples), args):
            print("(no speech found in the recording)", file=sys.stderr)
        return 0
    return _listen(session, args)
