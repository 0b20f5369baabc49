"""edgert voice MODEL: an offline voice assistant. Speech goes straight into Gemma 4's own
audio encoder (no speech recogniser); the reply streams as text, and is spoken with
espeak-ng when asked and installed.

    edgert voice model.gguf                 # microphone: speak, pause; or press Enter to talk
    edgert voice model.gguf --wav q.wav -v  # answer a recorded file, with timings
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

from edgert.errors import EdgeRTError
from tools.common import add_model_argument, add_sampling_arguments, load_model, sampling

RATE = 16_000
NO_MIC = ("no microphone could be opened ({why}); answer a recording instead with "
          "`edgert voice MODEL --wav FILE`")


def add_parser(sub) -> None:
    p = sub.add_parser("voice", help="talk to a model: microphone or --wav, reply streamed")
    add_model_argument(p)
    p.add_argument("--wav", help="answer this recording instead of listening to the microphone")
    p.add_argument("--prompt", default=None, help="text sent after the audio (default: none)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--say", action="store_true", help="speak the reply with espeak-ng")
    p.add_argument("--audio-int8", action="store_true", help="run the audio encoder in int8")
    p.add_argument("--push-to-talk", action="store_true",
                   help="Enter starts and ends an utterance, instead of voice-activity detection")
    add_sampling_arguments(p)
    p.set_defaults(func=main)


def _answer(session, samples: np.ndarray, args, speech_end: float) -> None:
    """Send one utterance and stream the reply, with --verbose timings."""
    model = session.model
    t0 = time.perf_counter()
    rows = model.hear(samples, rate=RATE)
    encode_s = time.perf_counter() - t0
    parts = [{"type": "audio", "soft_tokens": rows}]  # heard above, so that the encoder is timed apart
    if args.prompt:
        parts.append({"type": "text", "text": args.prompt})
    reply = session.stream(parts, max_new_tokens=args.max_new_tokens)
    first, n = None, 0
    text = []
    try:
        for piece in reply:
            if first is None:
                first = time.perf_counter()
            n += 1
            text.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    done = time.perf_counter()
    if args.verbose:
        seconds = len(samples) / RATE
        ttft = (first or done) - speech_end
        decode = (n - 1) / (done - first) if first and n > 1 and done > first else 0.0
        print(f"speech end to first token {ttft:.2f} s; encoder {encode_s:.2f} s for {seconds:.1f} s of audio "
              f"(real-time factor {encode_s / max(seconds, 1e-9):.3f}); {n} pieces, decode {decode:.1f}/s",
              file=sys.stderr)
    if args.say:
        _say("".join(text))


def _say(text: str) -> None:
    if not text.strip():
        return
    if shutil.which("espeak-ng") is None:
        print("(--say needs espeak-ng: apt-get install espeak-ng)", file=sys.stderr)
        return
    done = subprocess.run(["espeak-ng", text], capture_output=True, text=True)
    if done.returncode:
        print(f"(espeak-ng could not speak: {done.stderr.strip()[:200]})", file=sys.stderr)


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


def _listen(session, args) -> int:
    from audio.vad import Segmenter

    sd, device = _microphone()
    chunks: queue.Queue = queue.Queue()

    def callback(indata, frames, at, status):
        chunks.put(indata[:, 0].copy())

    print(f"listening on {device['name']} ({'Enter to talk' if args.push_to_talk else 'speak, then pause'}; "
          "Ctrl-C to leave)", file=sys.stderr)
    talking = threading.Event()
    if args.push_to_talk:
        def keys():
            for _ in sys.stdin:
                talking.clear() if talking.is_set() else talking.set()
        threading.Thread(target=keys, daemon=True).start()
    segmenter, held = Segmenter(), []
    try:
        with sd.InputStream(samplerate=RATE, channels=1, dtype="float32", callback=callback):
            while True:
                block = chunks.get()
                if args.push_to_talk:
                    if talking.is_set():
                        held.append(block)
                    elif held:
                        utterance, held = np.concatenate(held), []
                        _answer(session, utterance, args, time.perf_counter())
                    continue
                for utterance in segmenter.push(block):
                    _answer(session, utterance, args, time.perf_counter())
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 0
    except sd.PortAudioError as e:
        raise EdgeRTError(NO_MIC.format(why=str(e))) from None


def main(args) -> int:
    model = load_model(args)
    model.audio_int8 = args.audio_int8
    if model.file.audio is None:
        raise EdgeRTError(f"{model.file.path} has no audio encoder; convert a Gemma 4 checkpoint that has one "
                          "(E2B and E4B do)")
    session = model.chat_session(system=args.system, **sampling(args))
    if args.wav:
        from audio.wav import load_audio

        start = time.perf_counter()
        clip = load_audio(args.wav)
        _answer(session, clip.samples, args, start)
        return 0
    return _listen(session, args)
