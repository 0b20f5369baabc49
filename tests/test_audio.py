"""Audio in: files in every common format (WAV of every depth, FLAC, OGG Vorbis and Opus,
MP3), resampling, and log-mel features against transformers' Gemma4AudioFeatureExtractor on
real speech (espeak-ng makes it)."""

from __future__ import annotations

import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from audio.features import log_mel
from audio.files import RATE, AudioError, load_audio, read_audio


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """A sentence spoken by espeak-ng: 22050 Hz, 16-bit, mono."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "The quick brown fox jumps over the lazy dog."], check=True)
    return path


def _sox(src: Path, dst: Path, *options: str) -> Path:
    subprocess.run(["sox", str(src), *options, str(dst)], check=True)
    return dst


def test_features_equal_transformers_on_speech(speech):
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

    clip = load_audio(speech)
    assert clip.source_rate == 22050 and abs(clip.seconds - len(read_audio(speech)[0]) / 22050) < 1e-3
    expected = Gemma4AudioFeatureExtractor()([clip.samples], return_tensors="np")
    features, mask = log_mel(clip.samples)
    np.testing.assert_array_equal(mask, expected["input_features_mask"][0])
    np.testing.assert_allclose(features, expected["input_features"][0], atol=1e-4)
    assert features[mask].std() > 1.0  # speech, not silence


@pytest.mark.parametrize("n", [1, 127, 128, 161, 16000, 16001])
def test_features_equal_transformers_at_awkward_lengths(n):
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

    x = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    expected = Gemma4AudioFeatureExtractor()([x], return_tensors="np")
    features, mask = log_mel(x)
    assert features.shape == expected["input_features"][0].shape
    np.testing.assert_array_equal(mask, expected["input_features_mask"][0])
    np.testing.assert_allclose(features, expected["input_features"][0], atol=1e-4)


@pytest.mark.parametrize("n", [1, 161, 481, 16000, 16001, 160_000])
def test_features_from_a_frame_on_are_the_whole_clips_from_there(n):
    """A stream asks for the frames from `start` on, reading only the samples they need; they
    are the whole clip's, bit for bit, and so is their mask (the padding's frames included)."""
    x = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    whole, whole_mask = log_mel(x)
    k = len(whole)
    for start in {s for s in (0, 1, 2, k // 2, k - 3, k - 1, k, k + 4) if s >= 0}:
        features, mask = log_mel(x, start=start)
        np.testing.assert_array_equal(features, whole[start:])
        np.testing.assert_array_equal(mask, whole_mask[start:])


def _tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def resample(x, src: int, dst: int) -> np.ndarray:
    assert dst == RATE
    return load_audio(np.asarray(x, dtype=np.float32), rate=src).samples


@pytest.mark.parametrize("src", [8000, 22050, 44100, 48000])
def test_resampling_keeps_a_tone_and_its_level(src):
    y = resample(_tone(1000.0, src), src, RATE)
    assert len(y) == -(-src // src * RATE)  # ceil(n * dst / src) for one second
    middle = y[2000:-2000]  # away from the edges, where the filter sees the zero padding
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    assert abs(np.argmax(spectrum) * RATE / len(middle) - 1000.0) < 2.0
    assert abs(np.sqrt(2) * middle.std() - 0.5) < 0.5 * 0.005  # level within 0.5%


def test_resampling_removes_what_16_khz_cannot_hold():
    for f in (8600.0, 12000.0, 20000.0):  # would alias to 7.4, 4 and 3.9 kHz
        y = resample(_tone(f, 44100), 44100, RATE)
        assert 20 * np.log10(y[2000:-2000].std() / (0.5 / np.sqrt(2))) < -100
    np.testing.assert_allclose(resample(np.full(44100, 0.5), 44100, RATE)[100:-100], 0.5, atol=1e-5)


def test_the_passband_is_flat_to_7_khz():
    y = resample(_tone(7000.0, 44100), 44100, RATE)
    assert abs(np.sqrt(2) * y[2000:-2000].std() - 0.5) < 0.5 * 0.01


@pytest.mark.parametrize("options", [["-b", "8"], ["-b", "24"], ["-b", "32"], ["-e", "floating-point", "-b", "32"],
                                     ["-e", "floating-point", "-b", "64"], ["-c", "2"], ["-r", "48000"]],
                         ids=["8-bit", "24-bit", "32-bit", "float32", "float64", "stereo", "48k"])
def test_every_common_wav_format_reads_the_same(speech, tmp_path, options):
    reference = load_audio(speech).samples
    other = load_audio(_sox(speech, tmp_path / "other.wav", *options))
    n = min(len(reference), len(other.samples))
    error = np.abs(other.samples[:n] - reference[:n]).max()
    assert error < (0.02 if "8" in options else 0.002), error


@pytest.mark.parametrize("fmt, subtype, tolerance", [("FLAC", "PCM_16", 0.0), ("OGG", "VORBIS", None),
                                                      ("OGG", "OPUS", None), ("MP3", "MPEG_LAYER_III", None)])
def test_flac_ogg_opus_and_mp3_read_as_the_wav_does(speech, tmp_path, fmt, subtype, tolerance):
    """FLAC is lossless: the same samples. The lossy codecs keep the speech: the same length,
    and a waveform that correlates with the original's."""
    import soundfile

    x, rate = soundfile.read(speech, dtype="float32")
    if subtype == "OPUS":  # Opus runs at 48 kHz
        x, rate = resample(x, rate, RATE), RATE
    path = tmp_path / f"speech.{subtype.lower()}"
    soundfile.write(path, x, rate, format=fmt, subtype=subtype)
    reference, other = load_audio(speech).samples, load_audio(path)
    if tolerance is not None:
        np.testing.assert_array_equal(other.samples, reference)
        return
    assert abs(other.seconds - len(x) / rate) < 0.1
    a, b = reference, other.samples
    best = max(np.corrcoef(a[:len(a) - 2000], b[d:d + len(a) - 2000])[0, 1] for d in range(0, 1200, 8)
               if d + len(a) - 2000 <= len(b))
    assert best > 0.8, best


def test_8_khz_audio_is_upsampled(speech, tmp_path):
    clip = load_audio(_sox(speech, tmp_path / "8k.wav", "-r", "8000"))
    assert clip.source_rate == 8000 and abs(clip.seconds - load_audio(speech).seconds) < 0.01


def test_arrays_in_and_stereo_mixed_down():
    x = np.stack([_tone(440, RATE), -_tone(440, RATE) * 0.5], axis=1).astype(np.float32)
    clip = load_audio(x, rate=RATE)
    np.testing.assert_allclose(clip.samples, (x[:, 0] + x[:, 1]) / 2, atol=1e-6)
    assert load_audio((x[:, 0] * 32767).astype(np.int16), rate=RATE).samples.max() == pytest.approx(0.5, abs=1e-3)


def test_truncated_wav_keeps_what_it_has(speech, tmp_path):
    data = speech.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:len(data) // 2 + 1])  # an odd byte count: half a sample at the end
    assert 0.4 < load_audio(cut).seconds / load_audio(speech).seconds < 0.6


def test_clipped_audio_warns_and_loud_float_audio_is_scaled(tmp_path):
    x = np.clip(_tone(300, RATE, amplitude=3.0), -1, 1)
    with pytest.warns(UserWarning, match="clipped"):
        clip = load_audio(x, rate=RATE)
    assert clip.clipped > 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.abs(load_audio(_tone(300, RATE, amplitude=4.0), rate=RATE).samples).max() <= 1.0


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\x3e\x00\x00"
                             b"\x00\x7d\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00"), "no samples"),
    (lambda p: p.write_bytes(b"this is a text file, not sound"), "not an audio file edgert reads"),
    (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x02\x00\x01\x00\x80\x3e\x00\x00"
                             b"\x00\x7d\x00\x00\x02\x00\x04\x00data\x02\x00\x00\x00\x00\x00"), "not an audio file"),
    (lambda p: None, "no such file"),
])
def test_bad_files_get_clear_errors(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=message):
        load_audio(path)


def test_bad_arrays_get_clear_errors():
    with pytest.raises(AudioError, match="sample rate"):
        load_audio(np.zeros(100))
    with pytest.raises(AudioError, match="NaN"):
        load_audio(np.full(100, np.nan), rate=RATE)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(np.zeros(0), rate=RATE)


def test_silence_is_valid_audio():
    features, mask = log_mel(load_audio(np.zeros(RATE), rate=RATE).samples)
    assert mask.sum() == 99 and np.allclose(features[mask], np.log(1e-3))


@pytest.mark.parametrize("vad", ["silero", "energy"])
def test_voice_activity_cuts_two_utterances(speech, vad):
    from audio.vad import Segmenter, utterances

    voice = load_audio(speech).samples
    rng = np.random.default_rng(0)
    silence = (rng.standard_normal(RATE * 3 // 2) * 1e-3).astype(np.float32)  # -60 dBFS of noise
    stream = np.concatenate([silence, voice, silence, voice, silence])
    segmenter = Segmenter(vad)
    events = []
    for start in range(0, len(stream), 1600):  # 100 ms blocks, as a microphone delivers them
        events += segmenter.push(stream[start:start + 1600])
    events += segmenter.flush()
    found = utterances(events)
    assert len(found) == 2
    for utterance in found:
        assert len(voice) <= len(utterance) <= len(voice) + RATE  # all of it, and less than a second more
    # the speech came out while it was spoken, and adds up to the utterance
    first_end = next(i for i, (kind, _) in enumerate(events) if kind == "end")
    assert sum(kind == "speech" for kind, _ in events[:first_end]) > 5
    np.testing.assert_array_equal(np.concatenate([s for k, s in events[:first_end] if k == "speech"]), found[0])


def test_a_pause_is_announced_its_silence_held_back_and_the_end_trimmed(speech):
    """Speech, half a second of silence (a pause, shorter than the hangover), speech again: one
    utterance; the pause is announced once all speech so far is out, its silence is given only
    when the speech goes on, and the utterance ends 240 ms after its last speech."""
    from audio.vad import Segmenter

    voice = load_audio(speech).samples
    gap = np.zeros(RATE // 2, dtype=np.float32)
    stream = np.concatenate([np.zeros(RATE, np.float32), voice, gap, voice, np.zeros(RATE * 2, np.float32)])
    segmenter = Segmenter("silero")
    events = []
    for start in range(0, len(stream), 1600):
        events += [(kind, samples, start) for kind, samples in segmenter.push(stream[start:start + 1600])]
    kinds = [k for k, _, _ in events]
    assert kinds.count("end") == 1 and kinds.count("pause") >= 2  # in the gap, and at the end
    first_pause = kinds.index("pause")
    given = sum(len(s) for k, s, _ in events[:first_pause] if k == "speech")
    assert given < RATE + len(voice) + RATE // 4  # the gap's silence was not given before the pause
    end = next(s for k, s, _ in events if k == "end")
    np.testing.assert_array_equal(np.concatenate([s for k, s, _ in events if k == "speech"]), end)
    # the utterance: pre-roll, speech, gap, speech, then at most the post-roll of silence
    assert len(end) <= 0.24 * RATE + 2 * len(voice) + len(gap) + 0.3 * RATE


@pytest.mark.parametrize("vad", ["silero", "energy"])
def test_voice_activity_ignores_silence_and_clicks(vad):
    from audio.vad import Segmenter

    quiet = (np.random.default_rng(1).standard_normal(RATE * 3) * 1e-3).astype(np.float32)
    quiet[RATE:RATE + 800] = 0.5  # a 50 ms click
    segmenter = Segmenter(vad)
    assert segmenter.push(quiet) == [] and segmenter.flush() == []


@pytest.mark.parametrize("background", ["white noise", "music"])
def test_silero_finds_speech_in_noise_and_music_that_fool_the_level_detector(background):
    """Three sentences at 0 dB SNR: Silero cuts all three, the energy detector does not; the
    background alone is no utterance to Silero."""
    from tools.bench_vad import mixture, run, speech

    rng = np.random.default_rng(3)
    x, active, spans = mixture(speech(), background, 0, rng)
    silero, energy = run("silero", x, active, spans), run("energy", x, active, spans)
    assert silero["utterances"] == 3 and silero["precision"] > 0.85 and silero["recall"] > 0.85
    assert energy["utterances"] != 3 or energy["recall"] < 0.5
    alone, _, _ = mixture(speech(), background, None, rng)
    assert run("silero", alone, np.zeros(len(alone), dtype=bool), [])["utterances"] == 0


def test_an_unknown_detector_is_named():
    from audio.vad import Segmenter

    with pytest.raises(ValueError, match="auto, silero, energy"):
        Segmenter("webrtc")


def test_a_streamed_reply_is_cut_into_sentences_as_it_comes():
    from audio.speak import sentences

    pieces, text, spoken = ["Sure", ". The light", " is on", "! Anything", " else?", " Bye"], "", []
    for piece in pieces:
        done, text = sentences(text + piece)
        spoken += done
    assert spoken == ["Sure.", "The light is on!", "Anything else?"] and text == "Bye"
    long = "word " * 12 + "and a clause, then more words that go on for a while without an end"
    done, rest = sentences(long)
    assert done == [long[:long.index(",") + 1].strip()] and rest.startswith("then")


def test_a_replys_first_piece_is_cut_after_a_few_words_or_its_first_comma():
    """The first piece waits for FIRST_WORDS whole words, a comma or a sentence's end, whichever
    comes first; the pieces after it are sentences again."""
    from audio.speak import FIRST_WORDS, sentences

    words = [f"w{i}" for i in range(12)]
    spoken, text, first = [], "", True
    for word in words:
        done, text = sentences(text + word + " ", first=first)
        spoken += done
        first = first and not done
    assert spoken == [" ".join(words[:FIRST_WORDS])] and text.strip() == " ".join(words[FIRST_WORDS:])
    assert sentences("Well, the light is on. Yes", first=True) == (["Well,", "the light is on."], "Yes")
    assert sentences("Sure! Anything", first=True) == (["Sure!"], "Anything")
    assert sentences("one two thr", first=True) == ([], "one two thr")  # a word is whole once its space shows


def test_the_speaker_speaks_in_order_and_stops_at_once():
    """espeak-ng's samples, played by a stand-in output: in order, the first audio timed; a
    stop cuts the sentence playing and drops the queue (a barge-in)."""
    import threading
    import time

    from audio.speak import Speaker

    played, started = [], threading.Event()

    def play(samples, rate, stop):
        played.append((len(samples), rate))
        started.set()
        for _ in range(int(len(samples) / rate / 0.01)):  # "plays" in real time, 10 ms a step
            if stop.is_set():
                return
            time.sleep(0.01)

    speaker = Speaker(play=play)
    t0 = time.perf_counter()
    for text in ("One.", "Two.", "Three."):
        speaker.say(text)
    speaker.close()
    assert speaker.spoken == ["One.", "Two.", "Three."] and speaker.error is None
    assert all(n > 0.2 * rate for n, rate in played) and speaker.first_audio > t0

    played.clear()
    started.clear()
    speaker = Speaker(play=play)
    speaker.say("This sentence is long enough to be cut off in the middle of it.")
    speaker.say("And this one is never heard.")
    assert started.wait(10)
    speaker.stop()
    speaker.close()
    assert len(played) == 1 and speaker.spoken == ["This sentence is long enough to be cut off in the middle of it."]


def test_what_was_heard_of_a_cut_off_reply_is_whole_words():
    """Speaker.heard: where the listener got to in the text spoken, at the end of each piece
    played whole, and inside a piece cut off by its share of the sound, back to a word's end."""
    import threading

    from audio.speak import Speaker, words_heard

    assert words_heard("one two three", 1.0) == "one two three"
    assert words_heard("one two three", 0.55) == "one two"  # 7 of 13 characters: "one two", a space next
    assert words_heard("one two three", 0.45) == "one"  # "one t" : "two" is cut
    assert words_heard("one two three", 0.1) == "" and words_heard("one", 0.9) == ""

    whole = "First piece. And the second one is cut off half way."
    first, second = "First piece.", whole[len("First piece. "):]
    started = []

    def play(samples, rate, stop):  # 1 s of sound each, played in 10 ms steps
        started.append(threading.Event())
        started[-1].set()
        for _ in range(100):
            if stop.wait(0.01):
                return

    speaker = Speaker(synth=lambda text: (np.zeros(16000, np.float32), 16000), play=play)
    speaker.say(first, end=len(first))
    speaker.say(second, end=len(whole))
    while len(started) < 2:
        time.sleep(0.01)
    time.sleep(0.5)
    speaker.stop()
    speaker.close()
    assert whole[:speaker.heard].startswith(first + " And the")  # half of the second piece, in whole words
    assert len(first) + 10 < speaker.heard < len(whole) - 10 and whole[speaker.heard] == " "


def test_a_held_speaker_makes_its_sound_ready_and_plays_only_once_released():
    """Speaker(held=True): a reply begun at a pause is synthesized during the silence, and
    heard only if the end is called (release); dropped (stop), nothing is played."""
    import threading

    from audio.speak import Speaker

    made, played = threading.Event(), []

    def synth(text):
        made.set()
        return np.zeros(160, np.float32), 16000

    speaker = Speaker(synth=synth, play=lambda samples, rate, stop: played.append(len(samples)), held=True)
    speaker.say("Ready.")
    assert made.wait(10)
    time.sleep(0.1)
    assert played == [] and speaker.first_audio is None and speaker.speaking
    t0 = time.perf_counter()
    speaker.release()
    speaker.close()
    assert played == [160] and speaker.first_audio >= t0

    dropped = Speaker(synth=synth, play=lambda samples, rate, stop: played.append(len(samples)), held=True)
    dropped.say("Never heard.")
    dropped.stop()
    dropped.close()
    assert played == [160] and dropped.first_audio is None


def test_a_speaker_without_a_sound_card_says_why_once():
    from audio.speak import Speaker

    def play(samples, rate, stop):
        raise OSError("no output device")

    speaker = Speaker(play=play)
    speaker.say("Hello.")
    speaker.say("Again.")
    speaker.close()
    assert isinstance(speaker.error, OSError) and speaker.spoken == [] and speaker.first_audio is None
