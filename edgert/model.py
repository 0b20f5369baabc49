"""`edgert.load` and `Model`: a model file made ready to run, as a function from a state
(its KV caches), token ids and soft tokens to logits, with prefill apart from the decode step.

Generation (sampling, stop strings, truncation) lives in edgert.generation and chat turns and
sessions in edgert.text.sessions; `Model.generate`, `Model.chat` and `Model.chat_session`
are their front doors. The library yields and never prints."""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numba
import numpy as np

from edgert import gemma4, generation
from edgert.errors import ContextOverflowError, EdgeRTError
from edgert.files import layouts
from edgert.files import mmproj as mmproj_file
from edgert.files.loader import ModelFile, assistant_beside, open_assistant, open_model
from edgert.gemma4 import SoftTokens
from edgert.kv_cache import DEFAULT_KV, KV_TYPES, KVCache, make_caches
from edgert.profile import prompt_step
from edgert.text import chat as chat_format
from edgert.text import sessions
from edgert.text.sessions import ChatSession, Reply
from edgert.text.tokenizer import Tokenizer
from ple_store import PLEError, PLEStats, PLEStore, TableRegion
from quant import cpu
from quant.tensor import exact_rows

DEFAULT_CTX = 4096


@dataclass
class State:
    """One conversation's place in the model: its caches and the tokens they hold."""

    caches: dict[int, KVCache]
    tokens: list[int] = field(default_factory=list)  # ids whose K/V are in the caches
    pending: list[int] = field(default_factory=list)  # sampled ids not yet fed to the model
    unconfirmed: int = 0  # ids fed by a verify step that `Model.keep` has not yet confirmed
    hidden: np.ndarray | None = None  # (H,) final-normed, where the last logits were read (drafters start there)
    _checked: np.ndarray | None = None  # a verify step's hidden states, one per id, until `keep`

    @property
    def pos(self) -> int:
        return len(self.tokens)

    @property
    def kv_bytes(self) -> int:
        return sum(c.nbytes for c in self.caches.values())

    def checkpoint(self) -> "Checkpoint":
        """A place to come back to (restore): the tokens held, and copies of the sliding rings
        (E2B: about 6 MB), whose entries later tokens overwrite."""
        return Checkpoint(self.pos, {i: c.save() for i, c in self.caches.items()}, self.hidden)

    def restore(self, at: "Checkpoint") -> None:
        """Forget every token fed since `at` was taken (and any pending one)."""
        for i, cache in self.caches.items():
            cache.restore(at.saved[i], at.pos)
        del self.tokens[at.pos:]
        self.pending, self.unconfirmed, self.hidden, self._checked = [], 0, at.hidden, None


@dataclass(frozen=True)
class Checkpoint:
    """State.checkpoint: how many tokens stood, and what each cache needs to return there."""

    pos: int
    saved: dict[int, tuple | None]
    hidden: np.ndarray | None


LAYOUTS = ("x8", "rows")


@dataclass(frozen=True)
class Options:
    """How a model is loaded: edgert.load's keyword options, with their defaults written here
    once (the command line's flags read them here too).

    n_ctx: the context length the caches hold (capped at the model's trained length);
    n_batch: how many prompt tokens one prefill step takes (default: edgert.profile.prompt_step,
    128, or 64 where a step's buffers would pass 32 MB: E2B and E4B);
    threads: kernel threads (default: the physical cores);
    ple: how the per-layer embedding table is held: "mmap" (rows read from the mapping),
    "pread" (rows read into a cache of ple_cache_mb, nothing else in DRAM) or "ram";
    ple_prefetch: read a step's rows on a background thread while the first layer runs (a
    decode step's rows already in memory are read at once: ple_store);
    audio_int8: run the audio encoder's matrix products in int8;
    layout: "x8" (the matrices that have it are read in edgert's interleaved layout, built
    once into a cache file under ~/.cache/edgert/layouts: see edgert.files.layouts) or
    "rows" (every matrix read in the file's own layout);
    kv_type: how the KV cache holds its entries: "f16" (as llama.cpp), "q8_0" (34 bytes per 32
    values) or "f32" (exact): see edgert.kv_cache."""

    n_ctx: int = DEFAULT_CTX
    n_batch: int | None = None
    threads: int | None = None
    ple: str = "mmap"
    ple_cache_mb: float = 64.0
    ple_prefetch: bool = True
    audio_int8: bool = False
    layout: str = "x8"
    kv_type: str = DEFAULT_KV

    @classmethod
    def of(cls, options: dict) -> "Options":
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown load options {sorted(unknown)}; "
                            f"they are {', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**options)


def load(path: str | os.PathLike, progress: Callable[[int, int, str], None] | None = None,
         mmproj: str | os.PathLike | None = None, drafter: str | os.PathLike | None = None, **options) -> "Model":
    """Open a GGUF model file (memory-mapped) and make it ready to generate.

    options: Options' fields (n_ctx, threads, kv_type, ...);
    progress(done, total, what): called while the layout cache is built, the first time;
    mmproj: llama.cpp's multimodal projector file to take the audio tower from (projector
    "gemma4a"); without it, a model file that has no audio tower takes the one mmproj*.gguf
    beside it, if there is one (edgert.files.mmproj);
    drafter: Gemma 4's drafter for this model (a `gemma4-assistant` file, converted from
    Google's *-assistant checkpoint); without it, the one *assistant*.gguf beside the model
    that drafts for it, if there is one. With a drafter, decoding drafts with it by default
    (draft="auto")."""
    return Model(open_model(path), progress=progress, mmproj=mmproj, drafter=drafter, **options)


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
    def __init__(self, file: ModelFile, progress: Callable[[int, int, str], None] | None = None,
                 mmproj: str | os.PathLike | None = None, drafter: str | os.PathLike | None = None, **options):
        opts = self.options = Options.of(options)
        n_ctx, n_batch, layout, kv_type = opts.n_ctx, opts.n_batch, opts.layout, opts.kv_type
        if n_ctx < 1 or (n_batch is not None and n_batch < 1):
            raise EdgeRTError(f"n_ctx and n_batch must be positive (got {n_ctx}, {n_batch})")
        if layout not in LAYOUTS:
            raise EdgeRTError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if kv_type not in KV_TYPES:
            raise EdgeRTError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
        if kv_type == "q8_0" and any(s.head_dim % 32 for s in file.config.layers):
            raise EdgeRTError("kv_type='q8_0' needs head dimensions divisible by 32 (its blocks); "
                              f"this model has {sorted({s.head_dim for s in file.config.layers})}: use 'f16'")
        try:
            self.threads = cpu.set_threads(opts.threads)
        except ValueError as e:
            raise EdgeRTError(str(e)) from None
        self.file = file
        self.config = file.config
        self.n_ctx = min(n_ctx, self.config.n_ctx_train)
        self.n_batch = n_batch or prompt_step(self.config, self.threads)
        # a verify step's queries each read the ring as if decoded alone, which needs the whole
        # step inside the ring: no more ids than a sliding window (E2B: 512; small test models: 8)
        self.max_verify = min(self.n_batch, self.config.sliding_window or self.n_batch)
        self.tokenizer = Tokenizer(file.tokenizer)
        file = self.file = _with_mmproj(file, mmproj, self.tokenizer)
        file.gguf.release_header()  # the tokenizer's index is built; lookups map back single pages
        ple_store = self._ple_store(opts.ple, opts.ple_cache_mb, opts.ple_prefetch)
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
        # a file without a chat template is taken for a base (pretrained) model: `generate`
        # continues its text rather than answering it as a user turn
        self.has_chat_template = self.config.arch == "gemma4" or bool(file.tokenizer.chat_template)
        tok = self.tokenizer
        self.stop_ids = {i for i in (tok.eos, tok.eot, tok.token_id(self.format.close)) if i is not None}
        self.channel_ids = (tok.token_id(chat_format.CHANNEL_OPEN), tok.token_id(chat_format.CHANNEL_CLOSE))
        self.assistant = None
        path = drafter if drafter is not None else assistant_beside(file.path, self.config)
        if path is not None:
            from edgert.draft.mtp import Assistant

            self.assistant = Assistant(open_assistant(path), self)

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
        return State(make_caches(self.config, self.n_ctx, self.options.kv_type))

    def prefill(self, state: State, ids: Sequence[int], logits: str = "last",
                soft: SoftTokens | None = None) -> np.ndarray | None:
        """Feed `ids` after what `state` holds, in steps of n_batch. logits: "last" -> (n_vocab,),
        "all" -> (len(ids), n_vocab), "none" -> None. soft: embeddings that take the place of
        some of the ids (audio soft tokens), its mask as long as `ids`."""
        ids = np.asarray(ids, dtype=np.int64)
        feed = ids  # what the model reads: soft-token positions read the pad id
        if soft is not None:
            soft = SoftTokens(np.asarray(soft.mask, dtype=bool), soft.rows)
            if len(soft.mask) != len(ids) or soft.mask.sum() != len(soft.rows):
                raise EdgeRTError(f"{int(soft.mask.sum())} soft-token positions among {len(ids)} ids, "
                                  f"but {len(soft.rows)} soft tokens")
            feed = np.where(soft.mask, self.tokenizer.pad if self.tokenizer.pad is not None else 0, ids)
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
            chunk_soft = soft.part(start, start + len(chunk)) if soft is not None else None
            step = self._step(state, feed[start:start + len(chunk)], pos, keep, chunk_soft)
            for cache in state.caches.values():
                cache.commit()
            state.tokens.extend(int(i) for i in chunk)
            if step is not None:
                out.append(step[0])
                state.hidden = step[1][-1]
        if logits == "none" or not out:
            return None
        return out[-1][-1] if logits == "last" else np.concatenate(out)

    def verify(self, state: State, ids: Sequence[int]) -> np.ndarray:
        """Feed `ids` (a token and the draft after it, at most max_verify) in one step and return
        the logits at every one of them, (len(ids), n_vocab); the caches hold them only until
        `keep` says how many stand. (Speculative decoding: one pass checks a whole draft.)"""
        ids = np.asarray(ids, dtype=np.int64)
        if not 1 < len(ids) <= self.max_verify or state.pos + len(ids) > self.n_ctx:
            raise EdgeRTError(f"a draft of {len(ids) - 1} tokens does not fit the batch or the context")
        with exact_rows():
            logits, state._checked = self._step(state, ids, np.arange(state.pos, state.pos + len(ids)),
                                                np.arange(len(ids)), exact=True)
        state.tokens.extend(int(i) for i in ids)
        state.unconfirmed = len(ids)
        return logits

    def _step(self, state: State, ids: np.ndarray, pos: np.ndarray, keep: np.ndarray | None,
              soft: SoftTokens | None = None, exact: bool = False):
        """One pass of the model (gemma4.forward) after what `state` holds; cut short (Ctrl-C),
        its partial cache writes are undone."""
        numba.set_num_threads(self.threads)  # a per-thread setting: the caller may be any thread
        try:
            return gemma4.forward(self.config, self.weights, state.caches, ids, pos, keep, soft, exact=exact,
                                  threads=self.threads)
        except BaseException:
            for cache in state.caches.values():
                cache.rollback(state.pos)
            raise

    def keep(self, state: State, n: int) -> None:
        """After `verify`: the first n of its ids stand, the rest are forgotten (the sliding
        layers' rings get back what those evicted)."""
        start = state.pos - state.unconfirmed
        for cache in state.caches.values():
            cache.rollback(start + n)
        del state.tokens[start + n:]
        state.unconfirmed = 0
        state.hidden, state._checked = state._checked[n - 1], None

    def decode_step(self, state: State, token: int) -> np.ndarray:
        """Feed one token; its logits (n_vocab,)."""
        return self.prefill(state, [token], logits="last")

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of `ids` from an empty context: (len(ids), n_vocab)."""
        return self.prefill(self.new_state(), ids, logits="all")

    # --- front doors: generation (edgert.generation) and chat (edgert.text.sessions) -------------

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 256, stop: Sequence[str] = (),
                 raw: bool = False, truncate: bool = False, special: bool = False, draft: str = "auto",
                 **sampling) -> Iterator[str]:
        """Stream the continuation of `prompt` as text pieces (always whole UTF-8 characters).

        A string prompt is sent as one user turn in the model's chat format, unless raw=True
        or the model file carries no chat template (a base model: its text is continued);
        a list of ids is fed as it is. Stops at <eos> or the end of the turn, at any of `stop`, after
        `max_new_tokens`, or when the context is full. Control tokens the model writes (<eoa>,
        <|turn>...) are left out of the text unless special=True, as in llama.cpp and Ollama.
        sampling: edgert.sampling.Sampling's fields (temperature, top_k, top_p, min_p,
        repetition_penalty, seed). draft="lookup": guesses from the text so far (prompt lookup),
        checked several per pass (edgert.draft); the same tokens, faster where the answer
        repeats the prompt."""
        return generation.generate(self, prompt, max_new_tokens, stop, raw, truncate, special, draft, **sampling)

    def chat(self, messages: Sequence[dict], think: bool = False, max_new_tokens: int = 1024,
             truncate: bool = False, tools: Sequence = (), tool_choice=None, response_format=None,
             constrain: bool = True, draft: str = "auto", **sampling) -> Reply:
        """Answer `messages` ([{"role", "content"}]); iterate the result for the answer's pieces,
        then read `.text`, `.thought` (the thought channel, never mixed into the answer) and
        `.tool_calls`.

        tools: OpenAI-style tools ({"type": "function", "function": {"name", "description",
        "parameters"}}) or Python functions with type hints and a docstring; a call's results go
        back as {"role": "tool", "tool_call_id", "content"} messages after the assistant message
        that holds the calls. tool_choice: "auto", "none", "required" or {"type": "function",
        "function": {"name": ...}}. Each call is decoded under its tool's JSON schema, and
        with response_format (a JSON schema, or OpenAI's {"type": "json_schema", ...}) the whole
        answer is one JSON value valid against it; constrain=False turns both off. draft: as
        `generate` takes it."""
        return sessions.chat(self, messages, think, max_new_tokens, truncate, tools, tool_choice, response_format,
                             constrain, draft, **sampling)

    def chat_session(self, system: str | None = None, think: bool = False, tools: Sequence = (),
                     draft: str = "auto", **sampling) -> ChatSession:
        """A conversation that keeps its KV cache between turns, and across tool calls and their
        results (ChatSession.stream_results)."""
        return ChatSession(self, system, think, sampling, tools, draft)

    # --- audio --------------------------------------------------------------------------------

    @property
    def audio_encoder(self):
        """The audio encoder of the model file (an onnxruntime session), built on first use."""
        if self._audio_encoder is None:
            from edgert.speech import open_encoder

            self._audio_encoder = open_encoder(self.file, self.threads, int8=self.options.audio_int8)
        return self._audio_encoder

    def hear(self, audio, rate: int | None = None) -> np.ndarray:
        """Audio (a WAV path, or an array with its rate) -> its soft tokens in the text model's
        space: (n, H), one per 40 ms, at most 750 (30 s)."""
        from edgert.speech import soft_tokens

        return soft_tokens(self.audio_encoder, audio, rate)
