"""Audio in: WAV files of any common rate, depth and channel count, or arrays, as
16 kHz mono float32 in [-1, 1], the input of Gemma 4's audio encoder.

WAV is read with a small RIFF parser of our own (the standard library's `wave`
takes integer PCM only): PCM at 8, 16, 24 and 32 bits, IEEE float at 32 and 64,
and WAVE_FORMAT_EXTENSIBLE holding either. Channels are averaged; other rates are
resampled (audio.resample). What cannot be used raises AudioError saying why.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio.resample import resample
from edgert.errors import EdgeRTError

RATE = 16_000  # what the encoder hears
MAX_SECONDS = 30.0  # Gemma 4 takes at most 30 s of audio per clip (750 soft tokens)
PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE


class AudioError(EdgeRTError):
    """Audio that cannot be read or used: no samples, a format edgert does not read, a bad file."""


@dataclass(frozen=True)
class Clip:
    samples: np.ndarray  # (n,) float32 mono, RATE Hz, in [-1, 1]
    source_rate: int
    source_channels: int
    clipped: float  # fraction of samples at full scale in the source (0 if none)

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A WAV file as (frames, channels) float32 in [-1, 1] and its sample rate."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AudioError(f"cannot read {path}: {e.strerror}") from None
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError(f"{path} is not a WAV file (no RIFF/WAVE header); convert it, e.g. `sox in.mp3 out.wav`")
    fmt, body, pos = None, None, 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunk = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            fmt = chunk
        elif cid == b"data":
            body = chunk  # a truncated file keeps what it has
        pos += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise AudioError(f"{path} has no valid 'fmt ' chunk; the file is damaged")
    if body is None:
        raise AudioError(f"{path} has no 'data' chunk: there are no samples in it")
    tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the real tag
    if not ((tag == PCM and bits in (8, 16, 24, 32)) or (tag == FLOAT and bits in (32, 64))):
        kind = {PCM: "PCM", FLOAT: "float"}.get(tag, f"format tag {tag:#x}")
        raise AudioError(f"{path} holds {bits}-bit {kind} audio, which edgert does not read; "
                         "convert it to 16-bit PCM, e.g. `sox in.wav -b 16 out.wav`")
    if channels < 1 or rate < 1 or align != channels * bits // 8:
        raise AudioError(f"{path} has an inconsistent format ({channels} channels, {rate} Hz, {bits} bits)")
    width = bits // 8
    n = len(body) // align
    raw = np.frombuffer(body[:n * align], dtype=np.uint8).reshape(n, channels, width)
    if tag == PCM and bits == 8:
        x = (raw[..., 0].astype(np.float32) - 128) / 128
    elif tag == PCM:  # 16, 24 or 32 bits
        wide = np.zeros((n, channels, 4), dtype=np.uint8)
        wide[..., 4 - width:] = raw  # little-endian sample into the top bytes of an int32
        x = wide.view("<i4")[..., 0].astype(np.float32) / np.float32(2**31)
    else:  # float, 32 or 64 bits
        x = raw.reshape(n, -1).view("<f4" if bits == 32 else "<f8").reshape(n, channels).astype(np.float32)
    return x, rate


def load_audio(source, rate: int | None = None) -> Clip:
    """A WAV path or an array ((n,) or (n, channels), float in [-1, 1] or int16) as a 16 kHz
    mono clip. rate: the array's sample rate (required for arrays)."""
    if isinstance(source, (str, os.PathLike)):
        x, rate = read_wav(source)
    else:
        if rate is None:
            raise AudioError("an audio array needs its sample rate: pass rate=, e.g. rate=16000")
        x = np.asarray(source)
        if x.dtype == np.int16:
            x = x.astype(np.float32) / 32768
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
            raise AudioError(f"an audio array must be (samples,) or (samples, channels) of numbers, not {x.shape}")
        x = x.astype(np.float32)
    if len(x) == 0:
        raise AudioError("the audio has no samples; record or pass some sound")
    if not np.isfinite(x).all():
        raise AudioError("the audio contains NaN or infinite values")
    channels = x.shape[1]
    peak = np.abs(x).max()
    if peak > 1.0:  # float audio beyond full scale: bring it back rather than clip
        x = x / peak
    clipped = float(np.mean(np.abs(x) >= 0.999)) if peak >= 0.999 else 0.0
    if clipped > 0.01:
        warnings.warn(f"{clipped:.1%} of the samples are at full scale: the recording is clipped, which the "
                      "encoder hears as distortion; record at a lower level", stacklevel=2)
    mono = x.mean(axis=1) if channels > 1 else x[:, 0]
    mono = resample(mono, rate, RATE) if rate != RATE else mono
    return Clip(np.ascontiguousarray(mono, dtype=np.float32), rate, channels, clipped)
