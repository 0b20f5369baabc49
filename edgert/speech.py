"""Speech in: the model file's audio tower as an onnxruntime encoder, and audio turned into
soft tokens in the text model's space.

The ONNX graph (audio.encoder) is built from the file's weights on first use and cached
next to the model file as `<model>.audio.onnx`, tagged with the model file's size and
modification time so that a re-converted model rebuilds it. Where that folder cannot be
written, the graph lives in memory only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from audio.encoder import AudioConfig, AudioEncoder, build, quantize_int8
from audio.features import log_mel
from audio.files import AudioError, load_audio
from edgert.errors import EdgeRTError, no_audio_tower

MAX_SOFT_TOKENS = 750  # Gemma 4 hears at most 30 s per clip: one soft token per 40 ms


def _too_long(seconds: float) -> EdgeRTError:
    return EdgeRTError(f"the audio lasts {seconds:.1f} s; Gemma 4 hears at most 30 s per clip: "
                       "trim it or send it in parts")


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


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
    """Soft tokens while the audio arrives, equal to those of the whole clip.

    Every layer of the encoder looks back only (attention: 11 frames, convolution: 4), and the
    subsampling convolutions look one frame ahead at each of their two stages, so soft token t
    is final once feature frame 4t + 3 exists, and it depends on nothing older than
    CONTEXT soft tokens back. A push that makes `every` more tokens final re-runs the encoder
    over that much context before them and keeps what is final; `finish` encodes the tail
    exactly as the whole clip would (its padding and mask included). Exact, but each run pays
    for the context again: a stateful encoder (each layer's last keys, values and convolution
    inputs kept between runs) would pay for the new frames only."""

    CONTEXT = 12 * (11 + 4)  # soft tokens of left context: 12 layers of attention and convolution

    def __init__(self, encoder: AudioEncoder, every: int = 25):
        self.encoder = encoder
        self.every = every  # encode once this many soft tokens (40 ms each) are final: re-encoding
        # the context costs as much as CONTEXT tokens, so each run should bring enough new ones
        self.samples = np.zeros(0, dtype=np.float32)
        self.done = 0  # soft tokens handed out so far

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append 16 kHz samples; the soft tokens that became final, (k, H)."""
        self.samples = np.concatenate([self.samples, np.asarray(samples, dtype=np.float32)])
        # feature frame i is final when its window [160 i - 160, 160 i + 160] has arrived, and the
        # whole-clip padding to 128 samples does not reach it
        n_final = max(0, (len(self.samples) - 160 - 128) // 160 + 1)
        final_tokens = max(0, (n_final - 4) // 4 + 1)  # token t needs feature frames up to 4t + 3
        if final_tokens < self.done + self.every:
            return np.zeros((0, self.encoder.config.text_hidden), dtype=np.float32)
        start = max(0, self.done - self.CONTEXT)  # in soft tokens; its features start at 4 * start
        features, _ = log_mel(self.samples)
        window = features[4 * start:4 * final_tokens + 4]
        out, _ = self.encoder(window, np.ones(len(window), dtype=bool))
        rows = out[self.done - start:final_tokens - start]
        self.done = final_tokens
        return rows

    def finish(self) -> np.ndarray:
        """The remaining soft tokens, once the audio has ended."""
        features, mask = log_mel(self.samples)
        start = max(0, self.done - self.CONTEXT)
        out, out_mask = self.encoder(features[4 * start:], mask[4 * start:])
        rows = out[self.done - start:][out_mask[self.done - start:]]
        self.done += len(rows)
        if self.done > MAX_SOFT_TOKENS:
            raise EdgeRTError("the utterance lasted over 30 s; Gemma 4 hears at most 30 s per clip")
        return rows
