"""Speech out: a reply spoken a sentence at a time while it is still being written.

`sentences` cuts streamed text at sentence ends (and at a clause's comma once it is long), so
that the first sentence is spoken while the model writes the second. The reply's first piece
is cut sooner, at its first comma or after its first FIRST_WORDS words, as RealtimeTTS's fast
first fragment is: the first sound waits for a few words, not a sentence. `Speaker` synthesizes
each with espeak-ng (its WAV on stdout, read by soundfile) and plays it (sounddevice) on a
thread of its own, in order; `stop` cuts it off at once (a barge-in) and drops what was
queued. A held Speaker makes its sound ready and plays it only once released (a reply written
at a pause, before the end is called). `first_audio` is when the first samples went out; `heard` is how far into the
speaker's text the listener got, in whole words (what a cut-off reply keeps)."""

from __future__ import annotations

import io
import queue
import re
import shutil
import subprocess
import threading
import time
from typing import Callable

import numpy as np

_END = re.compile(r"[.!?;:](?=\s)|\n")  # a sentence's end, once the space after it shows
_CLAUSE = re.compile(r",(?=\s)")
LONG = 80  # characters after which a clause's comma ends a piece too
FIRST_WORDS = 4  # words after which the reply's first piece ends, if no punctuation came sooner
_WORDS = re.compile(r"\s*(?:\S+\s+){%d}" % FIRST_WORDS)  # the first words, once the space after them shows


def sentences(text: str, first: bool = False) -> tuple[list[str], str]:
    """The complete pieces at the start of `text`, and what is left to be continued. first:
    `text` begins the reply, so its first piece ends at the first of a sentence's end, a comma
    or FIRST_WORDS words."""
    pieces = []
    while True:
        ends = [m.end() for m in (_END.search(text),) if m]
        if first and not pieces:
            ends += [m.end() for m in (_CLAUSE.search(text), _WORDS.match(text)) if m]
        elif not ends and len(text) > LONG:
            ends = [c.end() for c in _CLAUSE.finditer(text) if c.end() >= LONG // 2][:1]
        if not ends:
            return pieces, text
        end = min(ends)
        piece, text = text[:end].strip(), text[end:].lstrip()
        if piece:
            pieces.append(piece)


def espeak(text: str) -> tuple[np.ndarray, int]:
    """text -> (samples float32, rate), spoken by espeak-ng."""
    import soundfile

    text = "".join(c for c in text if c.isprintable() or c.isspace())  # no NUL or other control bytes
    done = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True)
    if done.returncode:
        raise RuntimeError(f"espeak-ng could not speak: {done.stderr.decode(errors='replace').strip()[:200]}")
    samples, rate = soundfile.read(io.BytesIO(done.stdout), dtype="float32")
    return samples, rate


def play_sounddevice(samples: np.ndarray, rate: int, stop: threading.Event) -> None:
    """Play through the default output, 50 ms at a time, until done or stopped."""
    import sounddevice as sd

    block = rate // 20
    with sd.OutputStream(samplerate=rate, channels=1, dtype="float32") as out:
        for i in range(0, len(samples), block):
            if stop.is_set():
                return
            out.write(samples[i:i + block].reshape(-1, 1))


def words_heard(text: str, fraction: float) -> str:
    """The words of `text` wholly said when `fraction` of its sound had played (speech is taken
    to go at an even pace through the characters)."""
    said = text[:max(0, int(fraction * len(text)))]
    if len(said) == len(text) or text[len(said)].isspace():
        return said.rstrip()
    return said[:said.rfind(" ") + 1].rstrip() if " " in said else ""


class Speaker:
    """Speaks queued text in order, on its own thread. synth: text -> (samples, rate) (espeak-ng);
    play: (samples, rate, stop event) -> None, returning when done or stopped (sounddevice)."""

    def __init__(self, synth: Callable | None = None, play: Callable | None = None, held: bool = False):
        self.synth, self.play = synth or espeak, play or play_sounddevice
        self._go = threading.Event()  # held: synthesize, but play nothing until release()
        if not held:
            self._go.set()
        self.first_audio: float | None = None
        self.spoken: list[str] = []  # what was played (to its end or to a stop), in order
        self.heard = 0  # characters of the text said so far (say's `end`) that were played, in whole words
        self._stopped_at: float | None = None
        self.error: Exception | None = None
        self._queue: queue.Queue = queue.Queue()
        self._busy = 0  # texts queued or playing
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def available() -> bool:
        return shutil.which("espeak-ng") is not None

    def say(self, text: str, end: int | None = None) -> None:
        """Queue `text`; end: where it ends in the whole text being spoken (for `heard`)."""
        if text.strip():
            self._busy += 1
            self._queue.put((text, end))

    @property
    def speaking(self) -> bool:
        """Something is queued or playing."""
        return self._busy > 0

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._speak(*item)
            finally:
                self._busy -= 1

    def _speak(self, text: str, end: int | None) -> None:
        if self._stop.is_set() or self.error is not None:
            return
        try:
            samples, rate = self.synth(text)
            self._go.wait()
            if self._stop.is_set():
                return
            first = self.first_audio is None
            start = time.perf_counter()
            if first:
                self.first_audio = start
            try:
                self.play(samples, rate, self._stop)
            except Exception:
                if first:
                    self.first_audio = None  # nothing was heard
                raise
            self.spoken.append(text)
            if end is not None:
                cut = self._stopped_at is not None and self._stopped_at < start + len(samples) / rate
                part = words_heard(text, (self._stopped_at - start) * rate / len(samples)) if cut else text
                self.heard = end - len(text) + len(part)
        except Exception as e:  # noqa: BLE001 - a voice that cannot speak says so once, and goes on in text
            self.error = e

    def release(self) -> None:
        """A held speaker plays what it has made ready, and what comes next, from now on."""
        self._go.set()

    def stop(self) -> None:
        """Cut off what is playing and drop what is queued (the user spoke over it)."""
        self._stopped_at = time.perf_counter()
        self._stop.set()
        self._go.set()

    def close(self) -> None:
        """Wait until everything queued is spoken (or stopped), then end the thread."""
        self._queue.put(None)
        self._thread.join()
