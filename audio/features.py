"""Log-mel features exactly as transformers' Gemma4AudioFeatureExtractor computes them.

16 kHz mono in; 20 ms frames (320 samples) every 10 ms (160), the first centred at
t = 0 (160 zeros in front, "semicausal"); a periodic Hann window; a 512-point FFT;
magnitudes through 128 triangular HTK-mel filters from 0 to 8 kHz (no area
normalisation); log(mel + 0.001). The clip is first padded with silence to a
multiple of 128 samples; a frame counts as audio only if its whole window does,
and frames that do not are zeroed.
"""

from __future__ import annotations

import numpy as np

FRAME, HOP, FFT, MELS = 320, 160, 512, 128
MEL_FLOOR = 1e-3
PAD_MULTIPLE = 128


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filters(n_bins: int = FFT // 2 + 1, n_mels: int = MELS, f_min: float = 0.0, f_max: float = 8000.0,
                rate: int = 16_000) -> np.ndarray:
    """(n_bins, n_mels) triangular filters on the HTK mel scale, peaks of height 1."""
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    bins = np.linspace(0, rate // 2, n_bins)
    slopes = edges[None, :] - bins[:, None]  # (n_bins, n_mels + 2)
    width = np.diff(edges)
    down = -slopes[:, :-2] / width[:-1]
    up = slopes[:, 2:] / width[1:]
    return np.maximum(0.0, np.minimum(down, up))


_FILTERS = mel_filters()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / FRAME)).astype(np.float32)  # periodic Hann


def log_mel(samples: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n,) 16 kHz float samples -> features (frames, 128) float32 and mask (frames,) bool.
    start: compute only the frames from `start` on, from the samples they read (the same values;
    a stream computes each frame once, at a cost that does not grow with what came before)."""
    n = len(samples)
    length = -(-n // PAD_MULTIPLE) * PAD_MULTIPLE + FRAME // 2  # the clip, padded, after FRAME // 2 zeros
    n_frames = (length - (FRAME + 1)) // HOP + 1
    if n_frames <= start:
        return np.zeros((0, MELS), dtype=np.float32), np.zeros(0, dtype=bool)
    first = start * HOP  # the first sample of that padded wave the frames from `start` read
    wave = np.zeros(length - first)
    real = max(first, FRAME // 2)  # where the clip's samples begin in it, from `first` on
    wave[real - first:FRAME // 2 + n - first] = samples[real - FRAME // 2:]
    starts = np.arange(start, n_frames) * HOP
    frames = wave[(starts - first)[:, None] + np.arange(FRAME)[None, :]] * _WINDOW  # (frames, 320)
    spectrum = np.abs(np.fft.rfft(frames, n=FFT, axis=-1))  # (frames, 257)
    features = np.log(spectrum @ _FILTERS + MEL_FLOOR).astype(np.float32)
    mask = starts + FRAME < FRAME // 2 + n  # the last sample of each frame's 321-sample window is the clip's
    return features * mask[:, None], mask


def final_frames(n_samples: int) -> int:
    """How many leading frames of a stream of n_samples so far are final: frame i's window
    [160 i - 160, 160 i + 160] has arrived, and the whole clip's padding to 128 samples cannot
    reach it."""
    return max(0, (n_samples - HOP - PAD_MULTIPLE) // HOP + 1)
