"""edgert bench --vad: the two voice-activity detectors (audio.vad) on espeak-ng speech mixed
with noise and with music at several signal-to-noise ratios.

Each mixture: 1 s of background, then three sentences with 1.5 s of background between them,
then 1.5 s more; the background runs throughout, scaled so that speech stands `snr` dB over
it (speech power over its active samples). The truth is where the clean speech is active
(its 10 ms level over -45 dBFS, gaps under 200 ms bridged). Per detector frame, against the
truth at its middle: precision and recall of "speech". Per sentence, through the Segmenter:
how many utterances it cut (3 is right) and the end-of-speech delay, from the true end of a
sentence to the "end" event of the utterance holding it (its 800 ms hangover included).
Also a mixture of background alone, where any utterance is a false alarm."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 16_000
SENTENCES = ("Turn on the kitchen light, please.", "What is the weather like tomorrow morning?",
             "Set a timer for ten minutes.")
SNRS = (20, 10, 5, 0)


def speech() -> list[np.ndarray]:
    from audio.files import load_audio

    out = []
    with tempfile.TemporaryDirectory() as d:
        for i, text in enumerate(SENTENCES):
            path = Path(d) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
            out.append(load_audio(path).samples)
    return out


def white(n: int, rng) -> np.ndarray:
    return rng.standard_normal(n)


def pink(n: int, rng) -> np.ndarray:
    """1/f noise: white noise shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum))
    spectrum[1:] /= np.sqrt(f[1:])
    return np.fft.irfft(spectrum, n)


def music(n: int, rng) -> np.ndarray:
    """A synthetic band: notes of 250 ms (a random walk over a pentatonic scale) with five
    harmonics and a decaying envelope, a bass line, and a noise burst (a snare) every 500 ms."""
    t = np.arange(n) / RATE
    out = np.zeros(n)
    scale = [0, 2, 4, 7, 9, 12, 14, 16]
    step, note = int(0.25 * RATE), 3
    for start in range(0, n, step):
        note = int(np.clip(note + rng.integers(-2, 3), 0, len(scale) - 1))
        f0 = 262.0 * 2 ** (scale[note] / 12)
        seg = slice(start, min(n, start + step))
        tt = t[seg] - t[start]
        env = np.exp(-tt * 6)
        out[seg] += env * sum(np.sin(2 * np.pi * f0 * h * tt) / h for h in range(1, 6))
        out[seg] += 0.6 * env * np.sin(2 * np.pi * f0 / 4 * tt)
        if (start // step) % 2 == 1:
            burst = min(n - start, int(0.08 * RATE))
            out[start:start + burst] += 0.8 * rng.standard_normal(burst) * np.exp(-np.arange(burst) / 400)
    return out


BACKGROUNDS = {"white noise": white, "pink noise": pink, "music": music}


def truth(clean: np.ndarray) -> np.ndarray:
    """Per sample: the clean speech is active."""
    hop = RATE // 100
    n = len(clean) // hop
    level = 10 * np.log10(np.mean(clean[:n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    active = level > -45
    idx = np.flatnonzero(active)
    for a, b in zip(idx[:-1], idx[1:]):
        if 1 < b - a <= 20:  # bridge gaps under 200 ms
            active[a:b] = True
    return np.repeat(active, hop)[:len(clean)].tolist() + [False] * (len(clean) - n * hop)


def mixture(sentences, background, snr: float | None, rng):
    """(mixture, truth per sample, [(start, end)] of each sentence's active span)."""
    gap, lead = int(1.5 * RATE), RATE
    clean = [np.zeros(lead)]
    for s in sentences:
        clean += [s, np.zeros(gap)]
    clean = np.concatenate(clean)
    active = np.asarray(truth(clean), dtype=bool)
    spans, at = [], lead
    for s in sentences:
        a = np.flatnonzero(active[at:at + len(s)])
        spans.append((at + a[0], at + a[-1] + 1))
        at += len(s) + gap
    noise = BACKGROUNDS[background](len(clean), rng)
    speech_power = np.mean(clean[active] ** 2)
    if snr is None:  # the background alone, at the level of the 10 dB mixture
        clean, snr = np.zeros_like(clean), 10
    noise *= np.sqrt(speech_power / np.mean(noise ** 2) / 10 ** (snr / 10))
    x = clean + noise
    return (x / max(1.0, np.abs(x).max())).astype(np.float32), active, spans


def run(kind: str, x: np.ndarray, active: np.ndarray, spans) -> dict:
    """One detector over one mixture: frame precision and recall; the Segmenter's utterances
    (fed 100 ms blocks, as a microphone delivers them) and end-of-speech delays."""
    from audio.vad import Segmenter, detector

    vad = detector(kind)
    frames = np.array([vad(x[i * vad.frame:(i + 1) * vad.frame]) for i in range(len(x) // vad.frame)])
    true = active[np.arange(len(frames)) * vad.frame + vad.frame // 2]  # the truth at each frame's middle
    tp = int(np.sum(frames & true))

    seg, ends, block = Segmenter(kind), [], RATE // 10
    t0 = time.perf_counter()
    for start in range(0, len(x), block):
        chunk = x[start:start + block]
        ends += [start + len(chunk) for k, _ in seg.push(chunk) if k == "end"]
    ends += [len(x) for k, _ in seg.flush() if k == "end"]
    seconds = time.perf_counter() - t0
    delays = [(next(e for e in ends if e >= b) - b) / RATE for a, b in spans if any(e >= b for e in ends)]
    return dict(precision=tp / max(1, int(frames.sum())), recall=tp / max(1, int(true.sum())),
                utterances=len(ends), delays=delays, rtf=seconds / (len(x) / RATE))


def measure(log=print) -> list[dict]:
    sentences = speech()
    rows = []
    for background in BACKGROUNDS:
        for snr in (*SNRS, None):
            rng = np.random.default_rng(hash((background, snr)) % 2**32)
            x, active, spans = mixture(sentences, background, snr, rng)
            for kind in ("silero", "energy"):
                r = run(kind, x, active, spans if snr is not None else [])
                r.update(background=background, snr=snr, detector=kind)
                rows.append(r)
        log(f"  {background} done")
    return rows


def section(rows: list[dict]) -> list[str]:
    lines = ["| background | SNR | detector | precision | recall | utterances (3 right) | end-of-speech delay, mean / max |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        snr = "alone" if r["snr"] is None else f"{r['snr']} dB"
        if r["snr"] is None:
            lines.append(f"| {r['background']} | {snr} | {r['detector']} | - | - | {r['utterances']} (0 right) | - |")
            continue
        d = r["delays"]
        delay = f"{np.mean(d):.2f} / {max(d):.2f} s" if d else "-"
        lines.append(f"| {r['background']} | {snr} | {r['detector']} | {r['precision']:.2f} | {r['recall']:.2f} "
                     f"| {r['utterances']} | {delay} |")
    silero = [r["rtf"] for r in rows if r["detector"] == "silero"]
    energy = [r["rtf"] for r in rows if r["detector"] == "energy"]
    lines += ["", f"Cost per second of audio (one thread): Silero {np.median(silero) * 1e3:.1f} ms, "
              f"energy {np.median(energy) * 1e3:.1f} ms."]
    return lines
