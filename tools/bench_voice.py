"""edgert bench --voice: how soon the voice assistant answers, on the full-size synthetic E2B
and E4B with a random audio tower of the published shape (Gemma4AudioModel, built by
transformers with random weights, run as edgert's ONNX graph).

Each utterance (espeak-ng speech cut to 1, 3, 5 and 10 s, then silence) arrives as a microphone
delivers it, 100 ms at a time, through the voice-activity detector (Silero): the streaming
encoder (audio.encoder, stateful) encodes its speech and the soft tokens are prefilled while it
is spoken, a pause flushes the encoder, as `edgert voice` does (the work during speech is
timed, not slept through, and a clock of the turn as it would run live carries work that
falls behind the speech over to what comes after it). Then, from the moment the detector
calls the end (its wait after the last speech is reported apart), answered two ways: begun
when the end is called (`--no-early`), and begun at the last pause, read ahead while the
silence lasts (`--early`, the default; only what of it outlasts the silence is waited for):

- to the first token: the encoder's tail, its prefill, the turn's end, the first draw;
- to the first audio out: the reply's first piece as `edgert voice --say` cuts it
  (audio.speak.sentences: a sentence's end, a comma or FIRST_WORDS words; at most
  PIECE_TOKENS tokens, for random weights may write long words) decoded, then espeak-ng's
  first samples of it;
- decode tok/s over 32 tokens; and the encoder's work per second of speech, every run counted
  (while speech goes on, and the finish; --no-early also runs it at each pause): a real-time
  factor, f32 both ways, and int8 answered at the pause (the median of as many turns).

Random soft tokens are scaled by 0.02 before the prefill (the tower's weights are random)."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 16_000
SECONDS = (1, 3, 5, 10)
TEXT = ("Could you tell me what the weather will be like tomorrow morning in the city, and whether I should take "
        "an umbrella when I walk to the station, because last week I got completely soaked on the way to work.")
BLOCK = RATE // 10
PIECE_TOKENS = 16


def utterances() -> dict[int, np.ndarray]:
    from audio.files import load_audio

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "long.wav"
        subprocess.run(["espeak-ng", "-w", str(path), TEXT + " " + TEXT], check=True, capture_output=True)
        speech = load_audio(path).samples
    assert len(speech) >= RATE * max(SECONDS), "espeak-ng spoke under 10 s"
    return {s: speech[:RATE * s] for s in SECONDS}


def tower_encoders(models_dir: Path, text_hidden: int, threads: int):
    """(f32, int8) AudioEncoders of a random full-size audio tower, projecting into text_hidden,
    built once and kept in models_dir."""
    import onnx

    from audio.encoder import GRAPH_VERSION, AudioConfig, AudioEncoder, build, quantize_int8
    from edgert.config import published

    hf = published("e2b")["audio_config"]
    c = AudioConfig.from_hf(hf, text_hidden)
    f32_path = models_dir / f"audio-tower-random-{text_hidden}-v{GRAPH_VERSION}.onnx"
    int8_path = models_dir / f"audio-tower-random-{text_hidden}-v{GRAPH_VERSION}-int8.onnx"
    if not int8_path.exists():
        import torch
        from transformers import Gemma4AudioConfig
        from transformers.models.gemma4.modeling_gemma4 import Gemma4AudioModel

        torch.manual_seed(0)
        tower = Gemma4AudioModel(Gemma4AudioConfig(**hf)).eval()
        with torch.no_grad():
            for p in tower.parameters():
                p.normal_(0.0, p.shape[-1] ** -0.5 if p.ndim > 1 else 0.1).add_(1.0 if p.ndim == 1 else 0.0)
        weights = {k: v.detach().float().numpy() for k, v in tower.state_dict().items()}
        rng = np.random.default_rng(0)
        embed = {"embedding_projection.weight":
                 (rng.standard_normal((text_hidden, c.out_dims)) * c.out_dims ** -0.5).astype(np.float32)}
        onnx.save(build(weights, c, embed=embed), str(f32_path), save_as_external_data=True)
        quantize_int8(f32_path, int8_path)
    return AudioEncoder(str(f32_path), c, threads), AudioEncoder(str(int8_path), c, threads)


def first_audio(text: str) -> float:
    """Seconds until espeak-ng has the first samples of `text` (WAV on its stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(["espeak-ng", "--stdout", text or "okay"], stdout=subprocess.PIPE)
    p.stdout.read(44 + 320)  # the header, then 10 ms of samples
    seconds = time.perf_counter() - t0
    p.kill()
    p.wait()
    return seconds


def turn(model, encoder, utterance: np.ndarray, every: int | None = None) -> dict:
    """One spoken turn as `edgert voice` takes it: the utterance and 1.5 s of silence, 100 ms a
    block, through the voice-activity detector (Silero); its speech is streamed into the encoder
    and prefilled, its pauses flush the encoder, and its end starts the answer. Times from the
    end event, on a clock of the turn as it would run live (work that falls behind the speech
    delays the end's), two ways: answered when the end is called (--no-early), and answered at
    the last pause and read ahead while the silence lasts (--early, the default). every: the
    stream's soft tokens per run (default: StreamingEncoder's)."""
    from audio.speak import sentences
    from audio.vad import Segmenter
    from edgert.gemma4 import SoftTokens
    from edgert.speech import StreamingEncoder

    tok = model.tokenizer
    head, tail = tok.encode("<bos><|turn>user\n"), tok.encode("<turn|>\n<|turn>model\n")
    state = model.new_state()
    stream = StreamingEncoder(encoder) if every is None else StreamingEncoder(encoder, every=every)
    model.prefill(state, head, logits="none")

    def prefill_soft(rows):
        if len(rows):
            rows = (rows * 0.02).astype(np.float32)
            model.prefill(state, [tok.pad] * len(rows), logits="none",
                          soft=SoftTokens(np.ones(len(rows), dtype=bool), rows))

    def answer(decode: int = 0) -> dict:
        """The answer from here: seconds to the first token and to the first piece, then
        (decode > 0) decode tok/s over that many tokens."""
        t0 = time.perf_counter()
        prefill_soft(stream.finish())  # at a pause, one run for what is final and the tail, as answer_early
        token = int(np.argmax(model.prefill(state, tail)))
        out = dict(first_token=time.perf_counter() - t0)
        ids = [token]
        t_dec = time.perf_counter()
        for _ in range(max(decode, PIECE_TOKENS)):
            token = int(np.argmax(model.decode_step(state, token)))
            ids.append(token)
            if "piece" in out:  # the rest only times decode
                continue
            piece, _ = sentences(tok.decode(ids), first=True)
            if piece or len(ids) >= PIECE_TOKENS:
                out.update(piece=time.perf_counter() - t0, text=piece[0] if piece else tok.decode(ids),
                           piece_ids=len(ids))
                if not decode:
                    break
        if decode:
            out["decode_tps"] = decode / (time.perf_counter() - t_dec)
        return out

    # A clock of the turn as it would run live: block i arrives at its audio time, and its work
    # starts once the work before it is done, so that work which falls behind the speech (a
    # slow machine, a large model) delays what comes after it, the end included.
    audio = np.concatenate([utterance, np.zeros(int(1.5 * RATE), dtype=np.float32)])
    segmenter, during, heard, ended, early, clock = Segmenter("silero"), 0.0, 0, None, None, 0.0
    encode_early = 0.0  # the encoder's runs in the answers begun at pauses (each one's finish)
    paused = 0.0  # the pauses' own runs, which --early does not make (its finish encodes what they would)
    for i in range(0, len(audio), BLOCK):
        events = segmenter.push(audio[i:i + BLOCK])
        clock = max(clock, (i + BLOCK) / RATE)  # the block has arrived, the work before it is done
        t0 = time.perf_counter()
        for kind, samples in events:
            if kind == "speech":
                prefill_soft(stream.push(samples))
                heard += len(samples)
            elif kind == "pause":
                # --early's answer from here (one encoder run for what is final and the tail),
                # timed alone; then back, and --no-early's way: the pause's own run
                during += time.perf_counter() - t0
                clock += time.perf_counter() - t0
                at, mark, spent = state.checkpoint(), stream.mark(), stream.encode_s
                early = answer()
                early["start"] = clock
                encode_early += stream.encode_s - spent
                state.restore(at)
                stream.back(mark)
                stream.encode_s = spent
                t0 = time.perf_counter()
                prefill_soft(stream.pause())
                paused += stream.encode_s - spent
            elif kind == "end":
                ended = (i + BLOCK) / RATE
        if ended is not None:
            break
        during += time.perf_counter() - t0
        clock += time.perf_counter() - t0
    if ended is None:
        raise RuntimeError("the voice-activity detector heard no end of the utterance")
    spent = stream.encode_s  # the runs while speech went on, and the pauses' own
    late = answer(decode=32)  # --no-early: the end called, then the answer begun
    behind = clock - ended  # > 0: the work before the end was still going when it was called
    seconds = len(utterance) / RATE
    out = dict(first_token=behind + late["first_token"], first_audio=behind + late["piece"] + first_audio(late["text"]),
               piece_ids=late["piece_ids"], decode_tps=late["decode_tps"], encoder_late=stream.encode_s / seconds,
               work_rtf=during / seconds,
               # --early: the same runs, and the finish of each answer begun at a pause
               encoder_rtf=(spent - paused + encode_early) / seconds, wait=ended - seconds, behind=behind)
    if early is not None:
        # read ahead from when the pause's work was done; the first piece's sound is made
        # ready in the silence too (a held Speaker)
        out.update(early_first_token=max(0.0, early["start"] + early["first_token"] - ended),
                   early_first_audio=max(0.0, early["start"] + early["piece"] + first_audio(early["text"]) - ended))
    return out


def measure(kind: str, model_path: Path, models_dir: Path, threads: int, reps: int = 3, log=print) -> dict:
    import edgert

    model = edgert.load(model_path, n_ctx=2048, threads=threads)
    f32, int8 = tower_encoders(models_dir, model.config.n_embd, threads)
    speech = utterances()
    turn(model, f32, speech[1])  # warm-up: kernels compiled or loaded from their cache
    rows = []
    for seconds, utterance in speech.items():
        for _ in range(reps):
            rows.append(dict(seconds=seconds, **turn(model, f32, utterance)))
        rows[-1]["int8_rtf"] = float(np.median([turn(model, int8, utterance)["encoder_rtf"] for _ in range(reps)]))
        log(f"  {kind} {seconds} s done")
    return dict(kind=kind, rows=rows)


def _pct(values, q) -> float:
    return float(np.percentile(values, q))


def section(results: list[dict]) -> list[str]:
    lines = ["| model | utterance | end called to first token, p50 / p95: answered at the end | "
             "answered at the pause | to first audio out, p50: at the end | at the pause | decode | "
             "encoder work per s of speech, every run: f32 at the pause / at the end; int8 at the pause | "
             "all work during speech, per s | the detector's wait | tokens in the first piece |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def row(r, rows, label, bold=False):
        b = "**" if bold else ""
        ft = [x["first_token"] for x in rows]
        eft = [x.get("early_first_token", x["first_token"]) for x in rows]
        efa = [x.get("early_first_audio", x["first_audio"]) for x in rows]
        cells = [f"{b}{_pct(ft, 50):.2f} / {_pct(ft, 95):.2f} s{b}", f"{b}{_pct(eft, 50):.2f} / {_pct(eft, 95):.2f} s{b}",
                 f"{b}{_pct([x['first_audio'] for x in rows], 50):.2f} s{b}", f"{b}{_pct(efa, 50):.2f} s{b}"]
        if not bold:
            int8 = next(x["int8_rtf"] for x in rows if "int8_rtf" in x)
            cells += [f"{np.median([x['decode_tps'] for x in rows]):.1f} tok/s",
                      f"{np.median([x['encoder_rtf'] for x in rows]):.3f} / "
                      f"{np.median([x['encoder_late'] for x in rows]):.3f}; {int8:.3f}",
                      f"{np.median([x['work_rtf'] for x in rows]):.2f}",
                      f"{np.median([x['wait'] for x in rows]):.2f} s", f"{np.median([x['piece_ids'] for x in rows]):.0f}"]
        else:
            cells += [""] * 5
        lines.append(f"| {r['kind'].upper()} | {label} | " + " | ".join(cells) + " |")

    for r in results:
        for seconds in SECONDS:
            row(r, [x for x in r["rows"] if x["seconds"] == seconds], f"{seconds} s")
        row(r, r["rows"], "all", bold=True)
    return lines
