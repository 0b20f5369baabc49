"""Speech in: the model file's audio tower as an onnxruntime encoder, and audio turned into
soft tokens in the text model's space.

The ONNX graph (audio.encoder) is built from the file's weights on first use and cached
next to the model file as `<model>.audio.onnx`, tagged with the model file's size and
modification time so that a re-converted model rebuilds it. Where that folder cannot be
written, the graph lives in memory only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from audio.encoder import GRAPH_VERSION, AudioConfig, AudioEncoder, build, quantize_int8, zero_state
from audio.features import final_frames, log_mel
from audio.files import AudioError, load_audio
from edgert.errors import EdgeRTError, no_audio_tower

MAX_SOFT_TOKENS = 750  # Gemma 4 hears at most 30 s per clip: one soft token per 40 ms


def _too_long(seconds: float) -> EdgeRTError:
    return EdgeRTError(f"the audio lasts {seconds:.1f} s; Gemma 4 hears at most 30 s per clip: "
                       "trim it or send it in parts")


def _stamp(path: Path) -> str:
    """The model file's size and time, and the graph's version: either changed, the cached
    graph is rebuilt."""
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}-v{GRAPH_VERSION}"


def open_encoder(model_file, threads: int | None = None, int8: bool = False) -> AudioEncoder:
    """The audio encoder of an opened model file (edgert.files.loader.ModelFile); int8: with its
    matrix products in int8 (onnxruntime's dynamic quantization), cached apart."""
    import onnx

    tower = model_file.audio
    if tower is None:
        raise no_audio_tower(model_file.path)
    config = AudioConfig.from_hf(tower.config, text_hidden=int(tower.config["text_hidden_size"]))
    cache = Path(f"{tower.source}.audio{'-int8' if int8 else ''}.onnx")  # beside the weights' file
    stamp = _stamp(tower.source)
    if cache.is_file():
        model = onnx.load(str(cache))
        if {p.key: p.value for p in model.metadata_props}.get("edgert.model") == stamp:
            return AudioEncoder(model, config, threads)
    model = build(tower.weights("audio."), config, embed=tower.weights("audio_embed."))
    onnx.helper.set_model_props(model, {"edgert.model": stamp})
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        if int8:
            f32 = cache.with_name(f".{cache.name}.{os.getpid()}.f32.tmp")
            onnx.save(model, str(f32))
            try:
                quantize_int8(f32, tmp)
            finally:
                f32.unlink(missing_ok=True)
            model = onnx.load(str(tmp))
            onnx.helper.set_model_props(model, {"edgert.model": stamp})
        onnx.save(model, str(tmp))
        os.replace(tmp, cache)
    except OSError:
        if int8:
            raise EdgeRTError(f"the int8 audio encoder is made on disk, and {cache.parent} is not writable") from None
    finally:
        tmp.unlink(missing_ok=True)
    return AudioEncoder(model, config, threads)


def soft_tokens(encoder: AudioEncoder, audio, rate: int | None = None) -> np.ndarray:
    """Audio (a WAV path or an array with its rate) -> (n, H) soft tokens, one per 40 ms."""
    try:
        clip = load_audio(audio, rate)
    except AudioError as e:
        raise EdgeRTError(str(e)) from None
    if clip.seconds > MAX_SOFT_TOKENS * 0.04 + 0.04:  # refused before an hour of features is computed
        raise _too_long(clip.seconds)
    features, mask = log_mel(clip.samples)
    if len(features) == 0:
        raise EdgeRTError("the audio is too short to hear (under 10 ms)")
    out, out_mask = encoder(features, mask)
    rows = out[out_mask]
    if len(rows) > MAX_SOFT_TOKENS:
        raise _too_long(clip.seconds)
    return rows


class StreamingEncoder:
    """Soft tokens while the audio arrives, equal to those of the whole clip, each computed once.

    The encoder keeps its state between runs (audio.encoder.build: each conformer layer's last
    11 attention keys and values and 4 convolution inputs), and the log-mel frames are computed
    once each, as they become final. Soft token t is final once feature frame 4t + 3 exists
    (the subsampling convolutions look one frame ahead at each of their two stages); a push
    that makes `every` more tokens final encodes just those, after 4 frames of context for the
    subsampling, and so does `pause` whatever is final (the speaker paused: it may be the
    end). `finish` encodes the tail as the whole clip would (its padding and mask).

    A run reads every weight of the encoder once, whatever it encodes, so its cost per second
    of speech falls as runs grow; runs of 50 tokens (2 s) while speech goes on, and one at each
    pause that has 8 or more waiting, leave only the pause's last fraction of a second to
    encode at the end (BENCHMARKS.md measures the choice)."""

    def __init__(self, encoder: AudioEncoder, every: int = 50):
        self.encoder = encoder
        self.every = every  # soft tokens (40 ms each) per run while the speech goes on
        self.samples = np.zeros(0, dtype=np.float32)
        self.features = np.zeros((0, 128), dtype=np.float32)  # the final frames so far
        self.state = zero_state(encoder.config)
        self.done = 0  # soft tokens handed out so far
        self.encode_s = 0.0  # seconds spent in the encoder and the features

    def push(self, samples: np.ndarray, eager: bool = False) -> np.ndarray:
        """Append 16 kHz samples; the soft tokens encoded, (k, H): none until `every` more are
        final, or (eager) all that are."""
        t0 = time.perf_counter()
        self.samples = np.concatenate([self.samples, np.asarray(samples, dtype=np.float32)])
        n_final = final_frames(len(self.samples))
        if n_final > len(self.features):
            new, _ = log_mel(self.samples, start=len(self.features))
            self.features = np.concatenate([self.features, new[:n_final - len(self.features)]])
        final_tokens = self._final_tokens()
        rows = self._none()
        if final_tokens >= self.done + (1 if eager else self.every):
            start = max(0, 4 * self.done - 4)
            features = self.features[start:4 * final_tokens]
            rows = self._run(features, np.ones(len(features), dtype=bool))
        self.encode_s += time.perf_counter() - t0
        return rows

    def pause(self, least: int = 8) -> np.ndarray:
        """The speaker paused: encode what is final now, if it is at least `least` soft tokens
        (the end may come next; a run costs a pass over the weights, worth it for a few)."""
        if self._final_tokens() - self.done < least:
            return self._none()
        return self.push(np.zeros(0, dtype=np.float32), eager=True)

    def mark(self) -> tuple:
        """Where the stream is (the encoder's state, the tokens handed out), for `back`: a
        `finish` that turned out early (the speaker had only paused) is undone by going back."""
        return self.state, self.done

    def back(self, mark: tuple) -> None:
        self.state, self.done = mark

    def _final_tokens(self) -> int:
        """Soft tokens the final feature frames make: token t needs frames up to 4t + 3."""
        return max(0, (len(self.features) - 4) // 4 + 1)

    def _none(self) -> np.ndarray:
        return np.zeros((0, self.encoder.config.text_hidden), dtype=np.float32)

    def _run(self, features: np.ndarray, mask: np.ndarray, cut: int | None = None) -> np.ndarray:
        """Encode features after the state; the state kept is the one after `cut` of the output
        frames (None: all of them)."""
        out, out_mask, self.state = self.encoder.run(features, mask, self.state, self.done, 1 if self.done else 0,
                                                     cut)
        rows = out[out_mask]
        self.done += len(rows)
        if self.done > MAX_SOFT_TOKENS:
            raise EdgeRTError("the utterance lasted over 30 s; Gemma 4 hears at most 30 s per clip")
        return rows

    def finish(self) -> np.ndarray:
        """The remaining soft tokens, once the audio has ended."""
        return self.finish_split()[0]

    def finish_split(self) -> tuple[np.ndarray, int, tuple]:
        """`finish` at a pause that may not be the end: the remaining soft tokens in one run,
        how many of them are final (the same whatever audio comes next), and the `mark` of a
        stream that has encoded just those, to go `back` to if the speech goes on. One run
        where a pause's run and then a finish would be two: a run reads every weight."""
        t0 = time.perf_counter()
        tail, tail_mask = log_mel(self.samples, start=len(self.features))
        start = max(0, 4 * self.done - 4)
        features = np.concatenate([self.features[start:], tail])
        mask = np.concatenate([np.ones(len(self.features) - start, dtype=bool), tail_mask])
        done, final = self.done, max(0, self._final_tokens() - self.done)
        rows = self._run(features, mask, cut=final) if len(features) > 4 * done - start else self._none()
        mark = (self.state, done + final)  # _run kept the state after the final frames
        self.encode_s += time.perf_counter() - t0
        return rows, final, mark
