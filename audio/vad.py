"""Voice-activity detection: cut a stream of 16 kHz samples into utterances.

Energy-based, as small assistants do: 30 ms frames; a frame is speech when its level is
12 dB above the noise floor (the quietest recent frames, tracked as a slow running
minimum) and above -50 dBFS. An utterance starts at the first speech frame (with 240 ms
of what came before, so that a soft onset is kept) and ends after 800 ms without speech;
shorter than 300 ms of speech, it is dropped as a click.
"""

from __future__ import annotations

import numpy as np

RATE = 16_000
FRAME = 480  # 30 ms
MARGIN_DB, FLOOR_DB = 12.0, -50.0
PRE_ROLL, HANGOVER, MIN_SPEECH = 8, 27, 10  # frames: 240 ms, 810 ms, 300 ms


def level_db(frame: np.ndarray) -> float:
    return 10.0 * np.log10(float(np.mean(np.square(frame, dtype=np.float64))) + 1e-12)


class Segmenter:
    """push(samples) -> events, in order:

    - ("speech", samples): the newest samples of an utterance, once it has enough speech not
      to be a click (the first such event starts at its pre-roll), so that a listener can
      encode it while it is spoken;
    - ("end", utterance): the whole utterance, when it has ended.

    The "speech" events of an utterance add up to its "end" event."""

    def __init__(self):
        self._pending = np.zeros(0, dtype=np.float32)  # samples short of a whole frame
        self._history: list[np.ndarray] = []  # recent frames before an utterance (pre-roll)
        self._utterance: list[np.ndarray] = []
        self._given = 0  # frames of the utterance already sent as "speech"
        self._speech_frames = 0
        self._silent = 0
        self.noise_db = None  # the running noise floor

    @property
    def in_speech(self) -> bool:
        return bool(self._utterance)

    def _give(self, events: list) -> None:
        if self._speech_frames >= MIN_SPEECH and self._given < len(self._utterance):
            events.append(("speech", np.concatenate(self._utterance[self._given:])))
            self._given = len(self._utterance)

    def _end(self, events: list) -> None:
        if self._speech_frames >= MIN_SPEECH:
            self._give(events)
            events.append(("end", np.concatenate(self._utterance)))
        self._utterance, self._history, self._given, self._speech_frames = [], [], 0, 0

    def push(self, samples: np.ndarray) -> list[tuple[str, np.ndarray]]:
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        n = len(data) // FRAME
        self._pending = data[n * FRAME:]
        events: list = []
        for i in range(n):
            frame = data[i * FRAME:(i + 1) * FRAME]
            db = level_db(frame)
            self.noise_db = db if self.noise_db is None else min(db, self.noise_db + 0.05)  # rises slowly
            speech = db > max(self.noise_db + MARGIN_DB, FLOOR_DB)
            if not self._utterance:
                if speech:
                    self._utterance = self._history + [frame]
                    self._speech_frames, self._silent = 1, 0
                else:
                    self._history = (self._history + [frame])[-PRE_ROLL:]
                continue
            self._utterance.append(frame)
            if speech:
                self._speech_frames += 1
                self._silent = 0
            else:
                self._silent += 1
                if self._silent >= HANGOVER:
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
