"""The generation API: `edgert.load`, `Model.forward`, `Model.generate`,
`Model.chat` and chat sessions that keep their KV cache between turns.

The library yields and never prints. Prefill and the decode step are separate;
generation is a generator over token ids, and text streams on top of it."""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numba
import numpy as np

from edgert.text import chat as chat_format
from edgert import gemma4
from edgert.errors import ContextOverflowError, EdgeRTError, no_audio_tower
from edgert.profile import prompt_step
from edgert.kv_cache import DEFAULT_KV, KV_TYPES, KVCache, make_caches
from edgert.files import layouts
from edgert.files import mmproj as mmproj_file
from edgert.files.loader import ModelFile, open_model
from edgert.sampling import make_sampler
from edgert.text.tokenizer import StreamDecoder, Tokenizer
from ple_store import PLEError, PLEStats, PLEStore, TableRegion
from quant import cpu

DEFAULT_CTX = 4096


@dataclass
class State:
    """One conversation's place in the model: its caches and the tokens they hold."""

    caches: dict[int, KVCache]
    tokens: list[int] = field(default_factory=list)  # ids whose K/V are in the caches
    pending: list[int] = field(default_factory=list)  # sampled ids not yet fed to the model

    @property
    def pos(self) -> int:
        return len(self.tokens)

    @property
    def kv_bytes(self) -> int:
        return sum(c.nbytes for c in self.caches.values())


LAYOUTS = ("x8", "rows")


def load(path: str | os.PathLike, n_ctx: int = DEFAULT_CTX, n_batch: int | None = None,
         threads: int | None = None, ple: str = "mmap", ple_cache_mb: float = 64.0,
         ple_prefetch: bool = True, audio_int8: bool = False, layout: str = "x8", kv_type: str = DEFAULT_KV,
         progress: Callable[[int, int, str], None] | None = None,
         mmproj: str | os.PathLike | None = None) -> "Model":
    """Open a GGUF model file (memory-mapped) and make it ready to generate.

    n_ctx: the context length the caches hold (capped at the model's trained length);
    n_batch: how many prompt tokens one prefill step takes (default: edgert.profile.prompt_step,
    128, or 64 where a step's buffers would pass 32 MB: E2B and E4B);
    threads: kernel threads (default: the physical cores);
    ple: how the per-layer embedding table is held: "mmap" (rows read from the mapping),
    "pread" (rows read into a cache of ple_cache_mb, nothing else in DRAM) or "ram";
    ple_prefetch: read a step's rows on a background thread while the first layer runs;
    audio_int8: run the audio encoder's matrix products in int8;
    layout: "x8" (the matrices that have it are read in edgert's interleaved layout, built
    once into a cache file under ~/.cache/edgert/layouts: see edgert.files.layouts) or
    "rows" (every matrix read in the file's own layout);
    kv_type: how the KV cache holds its entries: "f16" (as llama.cpp), "q8_0" (34 bytes per 32
    values) or "f32" (exact): see edgert.kv_cache;
    progress(done, total, what): called while the layout cache is built, the first time;
    mmproj: llama.cpp's multimodal projector file to take the audio tower from (projector
    "gemma4a"); without it, a model file that has no audio tower takes the one mmproj*.gguf
    beside it, if there is one (edgert.files.mmproj)."""
    return Model(open_model(path), n_ctx=n_ctx, n_batch=n_batch, threads=threads, ple=ple,
                 ple_cache_mb=ple_cache_mb, ple_prefetch=ple_prefetch, audio_int8=audio_int8, layout=layout,
                 kv_type=kv_type, progress=progress, mmproj=mmproj)


def _with_mmproj(file: ModelFile, mmproj, tokenizer: Tokenizer) -> ModelFile:
    """The model file with the audio tower of `mmproj` (given, or the one found beside a model
    that has none), saying what of it is ignored."""
    if mmproj is None and (file.audio is not None or file.config.arch != "gemma4"):
        return file
    path = mmproj if mmproj is not None else mmproj_file.find_beside(file.path)
    if path is None:
        return file
    tower, ignored = mmproj_file.read(path, file.config.n_embd, tokenizer.token_id)
    for part, count in ignored.items():
        warnings.warn(f"{path}: its {part} ({count} tensors) is ignored; edgert reads the audio tower", stacklevel=3)
    return dataclasses.replace(file, audio=tower)


class Model:
    def __init__(self, file: ModelFile, n_ctx: int = DEFAULT_CTX, n_batch: int | None = None,
                 threads: int | None = None, ple: str = "mmap", ple_cache_mb: float = 64.0,
                 ple_prefetch: bool = True, audio_int8: bool = False, layout: str = "x8",
                 kv_type: str = DEFAULT_KV, progress: Callable[[int, int, str], None] | None = None,
                 mmproj: str | os.PathLike | None = None):
        if n_ctx < 1 or (n_batch is not None and n_batch < 1):
            raise EdgeRTError(f"n_ctx and n_batch must be positive (got {n_ctx}, {n_batch})")
        if layout not in LAYOUTS:
            raise EdgeRTError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if kv_type not in KV_TYPES:
            raise EdgeRTError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
        if kv_type == "q8_0" and any(s.head_dim % 32 for s in file.config.layers):
            raise EdgeRTError("kv_type='q8_0' needs head dimensions divisible by 32 (its blocks); "
                              f"this model has {sorted({s.head_dim for s in file.config.layers})}: use 'f16'")
        self.kv_type = kv_type
        try:
            self.threads = cpu.set_threads(threads)
        except ValueError as e:
            raise EdgeRTError(str(e)) from None
        self.file = file
        self.config = file.config
        self.n_ctx = min(n_ctx, self.config.n_ctx_train)
        self.n_batch = n_batch or prompt_step(self.config, self.threads)
        self.tokenizer = Tokenizer(file.tokenizer)
        file = self.file = _with_mmproj(file, mmproj, self.tokenizer)
        file.gguf.release_header()  # the tokenizer's index is built; lookups map back single pages
        ple_store = self._ple_store(ple, ple_cache_mb, ple_prefetch)
        tensors, self.layout_cache = file.tensors, None
        if layout == "x8":
            try:
                tensors, self.layout_cache = layouts.with_layouts(
                    file.path, tensors, layouts.packable(tensors, skip=gemma4.LOOKUP_ONLY), file.gguf.data, progress)
            except OSError as e:
                raise EdgeRTError(f"the weight layout cache could not be mapped ({e}); "
                                  "load again, or load with layout='rows'") from None
        self.weights = gemma4.load_weights(self.config, tensors, ple_store)
        self.format = chat_format.FORMATS[self.config.arch]
        self._audio_encoder = None
        self.audio_int8 = audio_int8
        # a file without a chat template is taken for a base (pretrained) model: `generate`
        # continues its text rather than answering it as a user turn
        self.has_chat_template = self.config.arch == "gemma4" or bool(file.tokenizer.chat_template)
        tok = self.tokenizer
        self.stop_ids = {i for i in (tok.eos, tok.eot, tok.token_id(self.format.close)) if i is not None}
        self.channel_ids = (tok.token_id(chat_format.CHANNEL_OPEN), tok.token_id(chat_format.CHANNEL_CLOSE))

    def _ple_store(self, mode: str, cache_mb: float, prefetch: bool) -> PLEStore | None:
        name = "per_layer_token_embd.weight"
        if not self.config.ple_dim:
            return None
        try:
            return PLEStore(self.file.tensors[name], self.config.n_layer, self.config.ple_dim, mode, cache_mb,
                            TableRegion(self.file.path, self.file.gguf.tensors[name].offset), prefetch)
        except PLEError as e:
            raise EdgeRTError(str(e)) from None

    def ple_stats(self) -> PLEStats | None:
        """Lookups, cache hits, rows and bytes read, resident table bytes, lookup latency."""
        return self.weights.ple.stats() if self.weights.ple is not None else None

    # --- the model as a function ------------------------------------------------------------

    def new_state(self) -> State:
        return State(make_caches(self.config, self.n_ctx, self.kv_type))

    def prefill(self, state: State, ids: Sequence[int], logits: str = "last",
                soft: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray | None:
        """Feed `ids` after what `state` holds, in steps of n_batch. logits: "last" -> (n_vocab,),
        "all" -> (len(ids), n_vocab), "none" -> None. soft: (mask (len(ids),), rows (mask.sum(), H)),
        embeddings that take the place of the masked ids (audio soft tokens)."""
        ids = np.asarray(ids, dtype=np.int64)
        feed = ids  # what the model reads: soft-token positions read the pad id
        if soft is not None:
            mask = np.asarray(soft[0], dtype=bool)
            if len(mask) != len(ids) or mask.sum() != len(soft[1]):
                raise EdgeRTError(f"{int(mask.sum())} soft-token positions but {len(soft[1])} soft tokens")
            feed = np.where(mask, self.tokenizer.pad if self.tokenizer.pad is not None else 0, ids)
            first_row = np.concatenate([[0], np.cumsum(mask)])  # rows before each position
        if state.pos + len(ids) > self.n_ctx:
            raise ContextOverflowError(
                f"{state.pos + len(ids)} tokens do not fit in the context of {self.n_ctx}; "
                "shorten the prompt, load with a larger n_ctx, or ask for truncation (truncate=True)"
            )
        if len(ids) and (ids.min() < 0 or ids.max() >= self.config.n_vocab):
            raise EdgeRTError(f"token ids must lie in 0..{self.config.n_vocab - 1}")
        out = []
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start:start + self.n_batch]
            last_chunk = start + self.n_batch >= len(ids)
            if logits == "all":
                keep = np.arange(len(chunk))
            elif logits == "last" and last_chunk:
                keep = np.array([len(chunk) - 1])
            else:
                keep = None
            pos = np.arange(state.pos, state.pos + len(chunk))
            chunk_soft = None
            if soft is not None and mask[start:start + len(chunk)].any():
                chunk_soft = (mask[start:start + len(chunk)],
                              np.asarray(soft[1][first_row[start]:first_row[start + len(chunk)]], dtype=np.float32))
            numba.set_num_threads(self.threads)  # a per-thread setting: the caller may be any thread
            try:
                step = gemma4.forward(self.config, self.weights, state.caches, feed[start:start + len(chunk)], pos,
                                      keep, chunk_soft)
            except BaseException:  # Ctrl-C mid-step: undo its partial cache writes
                for cache in state.caches.values():
                    cache.rollback(state.pos)
                raise
            for cache in state.caches.values():
                cache.commit()
            state.tokens.extend(int(i) for i in chunk)
            if step is not None:
                out.append(step)
        if logits == "none" or not out:
            return None
        return out[-1][-1] if logits == "last" else np.concatenate(out)

    def decode_step(self, state: State, token: int) -> np.ndarray:
        """Feed one token; its logits (n_vocab,)."""
        return self.prefill(state, [token], logits="last")

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of `ids` from an empty context: (len(ids), n_vocab)."""
        return self.prefill(self.new_state(), ids, logits="all")

    # --- generation -------------------------------------------------------------------------

    def generate_ids(self, state: State, prompt: Sequence[int], max_new_tokens: int,
                     sampler: Callable, stop_ids: set[int], soft: tuple | None = None) -> Iterator[int]:
        """Prefill `prompt` (after any pending ids), then sample until a stop id, the token
        budget or the context runs out. Sampled ids are yielded before they are fed, so a
        consumer that stops early leaves the last one in `state.pending`. soft: soft tokens
        of the prompt, as `prefill` takes them."""
        feed, soft = _take_pending(state, list(prompt), soft)
        start = state.pos
        try:
            logits = self.prefill(state, feed, soft=soft)
        except BaseException:  # interrupted: what was not fed is fed next time (soft tokens cannot be)
            state.pending = feed[state.pos - start:] if soft is None else []
            raise
        history = list(state.tokens)
        for n in range(max_new_tokens):
            token = sampler(logits, history)
            if token in stop_ids:
                state.pending = [token]
                return
            history.append(token)
            state.pending = [token]
            yield token
            if n + 1 == max_new_tokens or state.pos + 1 >= self.n_ctx:
                return
            state.pending = []
            try:
                logits = self.decode_step(state, token)
            except BaseException:
                state.pending = [token]  # not in the cache: feed it again next time
                raise

    def _fit(self, ids: list[int], max_new_tokens: int, truncate: bool, start: int = 0) -> list[int]:
        room = self.n_ctx - start - max(1, min(max_new_tokens, self.n_ctx // 2))
        if len(ids) <= room:
            return ids
        if not truncate:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens but the context of {self.n_ctx} has room for {room} "
                f"with {max_new_tokens} new tokens; shorten it, load with a larger n_ctx, or pass truncate=True"
            )
        head = ids[:1] if ids and ids[0] == self.tokenizer.bos else []
        return head + ids[len(ids) - (room - len(head)):]

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 256, temperature: float = 1.0,
                 top_k: int = 64, top_p: float = 0.95, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 seed: int | None = None, stop: Sequence[str] = (), raw: bool = False,
                 truncate: bool = False, special: bool = False) -> Iterator[str]:
        """Stream the continuation of `prompt` as text pieces (always whole UTF-8 characters).

        A string prompt is sent as one user turn in the model's chat format, unless raw=True
        or the model file carries no chat template (a base model: its text is continued);
        a list of ids is fed as it is. Stops at <eos> or the end of the turn, at any of `stop`, after
        `max_new_tokens`, or when the context is full. Control tokens the model writes (<eoa>,
        <|turn>...) are left out of the text unless special=True, as in llama.cpp and Ollama."""
        if isinstance(prompt, str):
            raw = raw or not self.has_chat_template
            text = prompt if raw else self.format.render([{"role": "user", "content": prompt}])
            ids = self.tokenizer.encode(text, add_bos=raw and self.tokenizer.add_bos)
        else:
            ids = [int(i) for i in prompt]
        ids = self._fit(ids, max_new_tokens, truncate)
        sampler = make_sampler(temperature, top_k, top_p, min_p, repetition_penalty, np.random.default_rng(seed))
        tokens = self.generate_ids(self.new_state(), ids, max_new_tokens, sampler, self.stop_ids)
        yield from _stop_strings(_text(tokens, self.tokenizer.stream(special)), stop)

    def chat(self, messages: Sequence[dict], think: bool = False, max_new_tokens: int = 1024,
             truncate: bool = False, **sampling) -> "Reply":
        """Answer `messages` ([{"role", "content"}]); iterate the result for the answer's pieces,
        then read `.text` and `.thought` (the thought channel, never mixed into the answer)."""
        messages, rows = self._hear(messages)
        ids = self.tokenizer.encode(self.format.render(messages, think=think))
        soft = None
        if rows is not None:
            if truncate:
                raise EdgeRTError("truncate=True cannot drop part of a prompt that holds audio; shorten it instead")
            soft = (np.asarray(ids) == self.file.audio.tokens["audio"], rows)
        ids = self._fit(ids, max_new_tokens, truncate)
        sampler = _sampler(sampling)
        return Reply(self, self.generate_ids(self.new_state(), ids, max_new_tokens, sampler, self.stop_ids, soft))

    # --- audio --------------------------------------------------------------------------------

    @property
    def audio_encoder(self):
        """The audio encoder of the model file (an onnxruntime session), built on first use."""
        if self._audio_encoder is None:
            from edgert.speech import open_encoder

            self._audio_encoder = open_encoder(self.file, self.threads, int8=self.audio_int8)
        return self._audio_encoder

    def hear(self, audio, rate: int | None = None) -> np.ndarray:
        """Audio (a WAV path, or an array with its rate) -> its soft tokens in the text model's
        space: (n, H), one per 40 ms, at most 750 (30 s)."""
        from edgert.speech import soft_tokens

        return soft_tokens(self.audio_encoder, audio, rate)

    def _hear(self, messages: Sequence[dict]) -> tuple[list[dict], np.ndarray | None]:
        """Messages whose audio parts are replaced by their placeholders (<boa>, one audio token
        per soft token, <eoa>), and the soft tokens in order (None if there is no audio). An audio
        part is {"type": "audio", "audio": path_or_array, "rate": ...}, or {"type": "audio",
        "soft_tokens": model.hear(...)} when it was heard already."""
        out, rows = [], []
        for m in messages:
            content = m.get("content")
            if isinstance(content, str) or not any(p.get("type") == "audio" for p in content or []):
                out.append(m)
                continue
            if self.file.audio is None:
                raise no_audio_tower(self.file.path)
            names = {k: self.tokenizer.tokens[v] for k, v in self.file.audio.tokens.items()}
            parts = []
            for part in content:
                if part.get("type") != "audio":
                    parts.append(part)
                    continue
                tokens = part["soft_tokens"] if "soft_tokens" in part else self.hear(part.get("audio"), part.get("rate"))
                parts.append({"type": "text", "text": names["boa"] + names["audio"] * len(tokens) + names["eoa"]})
                rows.append(tokens)
            out.append({**m, "content": parts})
        return out, (np.concatenate(rows) if rows else None)

    def chat_session(self, system: str | None = None, think: bool = False, **sampling) -> "ChatSession":
        """A conversation that keeps its KV cache between turns."""
        return ChatSession(self, system, think, sampling)


def _take_pending(state: State, ids: list[int], soft: tuple | None) -> tuple[list[int], tuple | None]:
    """The ids to feed: the state's pending ones (sampled, not yet fed), then `ids`; soft tokens,
    given for `ids`, shifted past the pending ones. The state's pending list is emptied."""
    feed = state.pending + ids
    if soft is not None:
        soft = (np.concatenate([np.zeros(len(state.pending), dtype=bool), soft[0]]), soft[1])
    state.pending = []
    return feed, soft


def _sampler(sampling: dict):
    seed = sampling.pop("seed", None)
    unknown = set(sampling) - {"temperature", "top_k", "top_p", "min_p", "repetition_penalty"}
    if unknown:
        raise TypeError(f"unknown sampling options {sorted(unknown)}")
    return make_sampler(**sampling, rng=np.random.default_rng(seed))


def _text(tokens: Iterator[int], decoder: StreamDecoder) -> Iterator[str]:
    for t in tokens:
        piece = decoder.push(t)
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail


def _stop_strings(pieces: Iterator[str], stop: Sequence[str]) -> Iterator[str]:
    """Pass text through, ending before the first stop string; text that might begin one is
    held back until it is clear."""
    stop = [s for s in stop if s]
    if not stop:
        yield from pieces
        return
    buf = ""
    for piece in pieces:
        buf += piece
        hits = [buf.find(s) for s in stop if s in buf]
        if hits:
            if min(hits):
                yield buf[:min(hits)]
            return
        hold = max((k for s in stop for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        if len(buf) > hold:
            yield buf[:len(buf) - hold]
            buf = buf[len(buf) - hold:]
    if buf:
        yield buf


class Reply:
    """A model turn as it streams: iterating gives the answer's text pieces; the thought
    channel (`<|channel>thought ... <channel|>`) is collected apart in `.thought`."""

    def __init__(self, model: Model, tokens: Iterator[int]):
        self.model, self._tokens = model, tokens
        self.text, self.thought = "", ""
        self.token_count = 0
        self.done = False

    def __iter__(self) -> Iterator[str]:
        tok = self.model.tokenizer
        open_id, close_id = self.model.channel_ids
        answer, thought = tok.stream(special=False), tok.stream(special=False)
        in_thought = False
        for t in self._tokens:
            self.token_count += 1
            if t == open_id:
                in_thought = True
                continue
            if t == close_id:
                in_thought = False
                continue
            if in_thought:
                self.thought += thought.push(t)
                continue
            piece = answer.push(t)
            if piece:
                self.text += piece
                yield piece
        tail = answer.flush()
        self.thought += thought.flush()
        if self.thought.startswith("thought\n"):
            self.thought = self.thought[len("thought\n"):]
        self.thought = self.thought.strip()
        if tail:
            self.text += tail
            yield tail
        self.done = True

    def result(self) -> str:
        """Run to the end and return the answer."""
        for _ in self:
            pass
        return self.text


def fmt_content(fmt, content) -> str:
    """A user message's text as its turn holds it (the chat format's own rendering)."""
    return fmt.turn("user", content)[len(f"{fmt.open}user\n"):-len(f"{fmt.close}\n")]


class AudioTurn:
    """A user turn of speech, prefilled while it is spoken (ChatSession.listen)."""

    def __init__(self, session: "ChatSession"):
        from edgert.speech import StreamingEncoder

        model = session.model
        self.session, self.model = session, model
        self.stream = StreamingEncoder(model.audio_encoder)  # says so if the file has no audio tower
        self.audio_id = model.file.audio.tokens["audio"]
        boa = model.tokenizer.tokens[model.file.audio.tokens["boa"]]
        head, opened = session._head()
        self._feed(head + model.tokenizer.encode(opened + boa))
        self.soft_tokens = 0

    def _feed(self, ids: list[int], rows: np.ndarray | None = None) -> None:
        self.session._check_room(len(ids))
        soft = (np.ones(len(ids), dtype=bool), rows) if rows is not None else None
        feed, soft = _take_pending(self.session.state, ids, soft)
        self.model.prefill(self.session.state, feed, logits="none", soft=soft)

    def push(self, samples: np.ndarray) -> int:
        """Append 16 kHz samples; returns how many soft tokens were prefilled."""
        rows = self.stream.push(samples)
        if len(rows):
            self._feed([self.audio_id] * len(rows), rows)
            self.soft_tokens += len(rows)
        return len(rows)

    def finish(self, text: str | None = None, max_new_tokens: int = 1024) -> Reply:
        """The speaker stopped: the last soft tokens, `text` after the audio, and the reply."""
        rows = self.stream.finish()
        if len(rows):
            self._feed([self.audio_id] * len(rows), rows)
            self.soft_tokens += len(rows)
        eoa = self.model.tokenizer.tokens[self.model.file.audio.tokens["eoa"]]
        after = eoa + (fmt_content(self.model.format, text) if text else "") + self.session._tail()
        return self.session._reply(self.model.tokenizer.encode(after), max_new_tokens)


class ChatSession:
    """Turns appended to one KV cache: only each new turn is prefilled."""

    def __init__(self, model: Model, system: str | None, think: bool, sampling: dict):
        self.model, self.think, self.sampling = model, think, dict(sampling)
        self.system = system
        self.reset()

    def reset(self, system: str | None = None) -> None:
        """Forget the conversation (and change the system prompt when one is given)."""
        if system is not None:
            self.system = system or None
        self.state = self.model.new_state()
        fmt = self.model.format
        self._opening = self.model.tokenizer.encode("<bos>" + fmt.system_turn(self.system, self.think))

    def stream(self, message, max_new_tokens: int = 1024) -> Reply:
        """Send a user message (text, or a list of parts: {"type": "text", "text": ...},
        {"type": "audio", "audio": path_or_array, "rate": ...}); iterate the reply for its pieces."""
        rows = None
        if not isinstance(message, str):
            [heard], rows = self.model._hear([{"role": "user", "content": message}])
            message = heard["content"]
        head, opened = self._head()
        text = opened + fmt_content(self.model.format, message) + self._tail()
        ids = head + self.model.tokenizer.encode(text)
        soft = (np.asarray(ids) == self.model.file.audio.tokens["audio"], rows) if rows is not None else None
        return self._reply(ids, max_new_tokens, soft)

    def listen(self) -> "AudioTurn":
        """Start a user turn whose audio arrives while it is spoken: push() samples as they
        come (their soft tokens are encoded and prefilled at once), then finish() for the reply;
        only the tail is left to compute when the speaker stops."""
        return AudioTurn(self)

    def _head(self) -> tuple[list[int], str]:
        """What opens a user turn: ids (the conversation's opening) and text (closing the
        previous model turn, then the user turn's header)."""
        fmt = self.model.format
        first = not self.state.tokens
        text = f"{fmt.open}user\n" + (fmt.first_turn_prefix(self.system) if first else "")
        if not first:
            # close the previous model turn with "<turn|>\n"; a last sampled id that was not
            # fed (the budget ran out, or the reader stopped) goes in first, a stop id does not
            if self.state.pending and self.state.pending[0] in self.model.stop_ids:
                self.state.pending = []
            text = f"{fmt.close}\n" + text
        return (self._opening if first else []), text

    def _tail(self) -> str:
        fmt = self.model.format
        return f"{fmt.close}\n" + fmt.generation_prompt()

    def _check_room(self, n: int) -> None:
        """n more ids, after what is pending, and one to answer with, must fit."""
        if self.state.pos + len(self.state.pending) + n + 1 > self.model.n_ctx:
            raise ContextOverflowError(
                f"the conversation has reached the context of {self.model.n_ctx} tokens; "
                "start again with reset() or load with a larger n_ctx"
            )

    def _reply(self, ids: list[int], max_new_tokens: int, soft=None) -> Reply:
        self._check_room(len(ids))
        budget = min(max_new_tokens, self.model.n_ctx - self.state.pos - len(self.state.pending) - len(ids))
        return Reply(self.model, self.model.generate_ids(self.state, ids, budget, _sampler(dict(self.sampling)),
                                                         self.model.stop_ids, soft))

    def send(self, message, max_new_tokens: int = 1024) -> str:
        """Send a user message and return the whole answer."""
        return self.stream(message, max_new_tokens).result()
