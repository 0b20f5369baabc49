"""Chat on top of generation: a model turn as it streams (Reply, with the thought channel
and tool calls kept apart), messages with audio rendered into placeholders and soft tokens,
a one-shot `chat`, and sessions that keep their KV cache between turns (ChatSession), across
tool calls and their results, with user turns of speech prefilled while they are spoken
(AudioTurn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import secrets

import numpy as np

from edgert.draft import drafter
from edgert.errors import ContextOverflowError, EdgeRTError, no_audio_tower
from edgert.gemma4 import SoftTokens
from edgert.generation import fit, generate_ids, take_pending
from edgert.sampling import Sampling
from edgert.text.constrain import Constraint, Structured, ToolCalls, constrained, response_schema
from edgert.text import tools as T

if TYPE_CHECKING:
    from edgert.model import Model


class Reply:
    """A model turn as it streams: iterating gives the answer's text pieces; the thought
    channel (`<|channel>thought ... <channel|>`) is collected apart in `.thought`, and the
    tool calls (`<|tool_call>call:NAME{…}<tool_call|>`) in `.tool_calls`, parsed. When it is
    done, `.finish_reason` says why it ended: "stop", "tool_calls" or "length"."""

    def __init__(self, model: "Model", tokens: Iterator[int], state=None, stop_ids: set[int] = frozenset(),
                 interruptible: bool = False):
        self.model, self._tokens = model, tokens
        self.state, self.stop_ids = state, stop_ids
        self.text, self.thought = "", ""
        self.tool_calls: list[T.ToolCall] = []
        self.token_count = 0
        self.ids: list[int] = []  # the turn's token ids, as they were drawn
        self._text_at: list[int] = []  # len(self.text) once each id was read
        self._interruptible = interruptible and state is not None
        self._start = None  # with interruptible: the state where the turn began (stop(heard=...) returns there)
        self._pieces: Iterator[str] | None = None
        self._ahead: list[str] = []  # pieces computed by read_ahead, not yet given
        self.done = False
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        while self._ahead or self.read_ahead():
            yield self._ahead.pop(0)

    def read_ahead(self) -> bool:
        """Compute the next piece and hold it for the reader (a reply begun before it is known
        to be wanted: the voice assistant answers at a pause, before the end is called);
        False once the reply is done."""
        if self._pieces is None:
            self._pieces = self._generate()
        piece = next(self._pieces, None)
        if piece is not None:
            self._ahead.append(piece)
        return piece is not None

    def _generate(self) -> Iterator[str]:
        tok = self.model.tokenizer
        open_id, close_id = self.model.channel_ids
        call_open, call_close = tok.token_id(T.CALL_OPEN), tok.token_id(T.CALL_CLOSE)
        answer, thought = tok.stream(special=False), tok.stream(special=False)
        in_thought, call, call_text = False, None, ""
        for t in self._tokens:
            if self._interruptible and self._start is None:  # fed: the prompt; pending: t
                self._start = self.state.checkpoint()
            self.token_count += 1
            self.ids.append(t)
            self._text_at.append(len(self.text))
            if call is not None:  # inside a call: its text, control tokens included (<|"|>)
                if t == call_close:
                    self._add_call(call_text + call.flush())
                    call = None
                else:
                    call_text += call.push(t)
                continue
            if t == call_open:
                call, call_text = tok.stream(special=True), ""
                continue
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
                self._text_at[-1] = len(self.text)
                yield piece
        if call is not None:
            self._add_call(call_text + call.flush(), cut=True)
        tail = answer.flush()
        self.thought += thought.flush()
        if self.thought.startswith("thought\n"):
            self.thought = self.thought[len("thought\n"):]
        self.thought = self.thought.strip()
        if tail:
            self.text += tail
            yield tail
        self.done = True
        stopped = self.state is not None and self.state.pending and self.state.pending[0] in self.stop_ids
        self.finish_reason = "tool_calls" if self.tool_calls else ("stop" if stopped else "length")

    def _add_call(self, raw: str, cut: bool = False) -> None:
        call_id = "call_" + secrets.token_hex(8)
        try:
            if cut:
                raise T.ToolError("the call was cut off before <tool_call|> (the token budget ran out)")
            name, arguments = T.parse_call(raw)
            self.tool_calls.append(T.ToolCall(name, arguments, call_id, raw))
        except T.ToolError as e:
            self.tool_calls.append(T.ToolCall("", {}, call_id, raw, str(e)))

    def stop(self, heard: int | None = None) -> None:
        """End the turn where it is (the user spoke over it): the rest is never computed, and
        finish_reason becomes "interrupted". What stays in the conversation is what was
        generated, or with `heard` (a spoken reply: how many characters of .text the user heard
        before speaking over it; needs an interruptible reply, as ChatSession makes) only the
        ids up to there: the cache goes back to where the turn began and they wait, pending, to
        be fed with the next turn. A reply that ended is cut back the same way."""
        close = getattr(self._tokens, "close", None)
        if close is not None and not self.done:
            close()  # the generator's own cleanup runs now (a draft's cache rollback)
            self.done = True
        self._ahead.clear()
        self.finish_reason = "interrupted"
        if heard is None or heard >= len(self.text):
            return
        if self._start is None:
            raise EdgeRTError("only an interruptible reply (a ChatSession's) can be cut back to what was heard")
        n = next(i + 1 for i, at in enumerate(self._text_at) if at >= heard) if heard > 0 else 0
        self.state.restore(self._start)
        self.state.pending = self.ids[:n]
        del self.ids[n:], self._text_at[n:]
        self.text, self.token_count, self.tool_calls = self.text[:heard], n, []

    def result(self) -> str:
        """Run to the end and return the answer."""
        for _ in self:
            pass
        return self.text


def hear_messages(model: "Model", messages: Sequence[dict]) -> tuple[list[dict], np.ndarray | None]:
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
        if model.file.audio is None:
            raise no_audio_tower(model.file.path)
        names = {k: model.tokenizer.tokens[v] for k, v in model.file.audio.tokens.items()}
        parts = []
        for part in content:
            if part.get("type") != "audio":
                parts.append(part)
                continue
            tokens = part["soft_tokens"] if "soft_tokens" in part else model.hear(part.get("audio"), part.get("rate"))
            parts.append({"type": "text", "text": names["boa"] + names["audio"] * len(tokens) + names["eoa"]})
            rows.append(tokens)
        out.append({**m, "content": parts})
    return out, (np.concatenate(rows) if rows else None)


def _soft(model: "Model", ids: list[int], rows: np.ndarray | None) -> SoftTokens | None:
    """The soft tokens of rendered ids: the rows, at the audio placeholders."""
    return None if rows is None else SoftTokens(np.asarray(ids) == model.file.audio.tokens["audio"], rows)


def constraint(model: "Model", tools: Sequence[dict], tool_choice=None, response_format=None, think: bool = False,
               constrain: bool = True) -> tuple[set[int], "Constraint | None"]:
    """The stop ids and the constraint of a model turn: with tools it may also stop where a
    call's result would begin (<|tool_response>); a response_format (a JSON schema) holds the
    whole answer to it, else tools hold each call to its schema (constrain=False: neither)."""
    stops = set(model.stop_ids)
    choice = T.tool_choice_name(tool_choice, tools)
    response_open = model.tokenizer.token_id(T.RESPONSE_OPEN)
    if tools and response_open is not None:
        stops.add(response_open)
    schema = response_schema(response_format)
    if not constrain:
        return stops, None
    if schema is not None:
        return stops, Structured(model.tokenizer, sorted(stops), schema, think)
    if tools:
        return stops, ToolCalls(model.tokenizer, sorted(stops), tools, choice, think)
    return stops, None


def prompt_ids(model: "Model", messages: Sequence[dict], think: bool = False, tools: Sequence = (),
               ) -> tuple[list[int], SoftTokens | None, int]:
    """The prompt of `messages` as ids, its soft tokens (audio), and where the generation
    prompt begins (what a later turn's prompt shares with this one ends there)."""
    messages, rows = hear_messages(model, messages)
    fmt, tok = model.format, model.tokenizer
    history = fmt.render(messages, add_generation_prompt=False, think=think, tools=tools)
    text = fmt.render(messages, think=think, tools=tools)
    ids, split = tok.encode_split(text, len(history) if text.startswith(history) else None)
    if split is None:  # the generation prompt does not begin with a control token: encode the history apart
        head = tok.encode(history)
        split = len(head) if ids[:len(head)] == head else 0
    return ids, _soft(model, ids, rows), split


def chat(model: "Model", messages: Sequence[dict], think: bool = False, max_new_tokens: int = 1024,
         truncate: bool = False, tools: Sequence = (), tool_choice=None, response_format=None,
         constrain: bool = True, draft: str = "auto", **sampling) -> Reply:
    """Model.chat: the answer to `messages` (see there)."""
    tools = T.tools_of(tools)
    stops, rule = constraint(model, tools, tool_choice, response_format, think, constrain)
    sampler = constrained(Sampling.of(sampling).sampler(), rule)
    ids, soft, _ = prompt_ids(model, messages, think, tools)
    if soft is not None and truncate:
        raise EdgeRTError("truncate=True cannot drop part of a prompt that holds audio; shorten it instead")
    ids = fit(model, ids, max_new_tokens, truncate)
    state = model.new_state()
    return Reply(model, generate_ids(model, state, ids, max_new_tokens, sampler, stops, soft, drafter(draft, model)),
                 state, stops)


def user_content(fmt, content) -> str:
    """A user message's text as its turn holds it (the chat format's own rendering)."""
    return fmt.turn("user", content)[len(f"{fmt.open}user\n"):-len(f"{fmt.close}\n")]


class ChatSession:
    """Turns appended to one KV cache: only each new turn is prefilled."""

    def __init__(self, model: "Model", system: str | None, think: bool, sampling: dict, tools: Sequence = (),
                 draft: str = "auto"):
        Sampling.of(sampling)  # an unknown option is an error now, not at the first turn
        self.model, self.think, self.sampling = model, think, dict(sampling)
        self.drafter = drafter(draft, model)
        self.system = system
        self.tools = T.tools_of(tools)
        self.last: Reply | None = None
        self.reset()

    def reset(self, system: str | None = None) -> None:
        """Forget the conversation (and change the system prompt when one is given)."""
        if system is not None:
            self.system = system or None
        self.state = self.model.new_state()
        fmt = self.model.format
        self._opening = self.model.tokenizer.encode("<bos>" + fmt.system_turn(self.system, self.think, self.tools))

    def stream(self, message, max_new_tokens: int = 1024, tool_choice=None, response_format=None) -> Reply:
        """Send a user message (text, or a list of parts: {"type": "text", "text": ...},
        {"type": "audio", "audio": path_or_array, "rate": ...}); iterate the reply for its pieces.
        tool_choice and response_format: as Model.chat takes them."""
        rows = None
        if not isinstance(message, str):
            [heard], rows = hear_messages(self.model, [{"role": "user", "content": message}])
            message = heard["content"]
        head, opened = self._head()
        text = opened + user_content(self.model.format, message) + self._tail()
        ids = head + self.model.tokenizer.encode(text)
        return self._reply(ids, max_new_tokens, _soft(self.model, ids, rows), tool_choice, response_format)

    def send(self, message, max_new_tokens: int = 1024, **options) -> str:
        """Send a user message and return the whole answer."""
        return self.stream(message, max_new_tokens, **options).result()

    def stream_results(self, results: Sequence, max_new_tokens: int = 1024, tool_choice=None) -> Reply:
        """Give the last reply's tool calls their results, and let the model go on with its
        turn. One result per call, in order: a value, or a message {"role": "tool",
        "tool_call_id" or "name", "content"}. Only the results are prefilled."""
        calls = self.last.tool_calls if self.last is not None else []
        if not calls:
            raise EdgeRTError("the last reply made no tool call; there is nothing to give results to")
        by_id = {c.id: c.name for c in calls}
        text = ""
        for i, r in enumerate(results):
            message = isinstance(r, dict) and (r.get("role") == "tool" or "tool_call_id" in r)
            name = (by_id.get(r.get("tool_call_id")) or r.get("name")) if message else None
            name = name or (calls[i].name if i < len(calls) else "unknown")
            text += T.render_response(name, T.response_value(r.get("content")) if message else r)
        if self.state.pending and self.state.pending[0] in self._stops:
            self.state.pending = []  # the stop (<|tool_response>) is written again with the results
        text += self.model.format.generation_prompt(self.think, after_results=True)
        return self._reply(self.model.tokenizer.encode(text), max_new_tokens, None, tool_choice)

    def listen(self, every: int = 50) -> "AudioTurn":
        """Start a user turn whose audio arrives while it is spoken: push() samples as they
        come (their soft tokens are encoded and prefilled at once), then finish() for the reply;
        only the tail is left to compute when the speaker stops. every: soft tokens (40 ms each)
        per encoder run; more cost less per second of speech and leave a longer tail."""
        return AudioTurn(self, every)

    def _head(self) -> tuple[list[int], str]:
        """What opens a user turn: ids (the conversation's opening) and text (closing the
        previous model turn, then the user turn's header)."""
        fmt = self.model.format
        first = not self.state.tokens
        text = f"{fmt.open}user\n" + (fmt.first_turn_prefix(self.system) if first else "")
        if not first:
            # close the previous model turn with "<turn|>\n"; a last sampled id that was not
            # fed (the budget ran out, or the reader stopped) goes in first, a stop id does not
            if self.state.pending and self.state.pending[0] in self._stops:
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

    @property
    def _stops(self) -> set[int]:
        return constraint(self.model, self.tools, constrain=False)[0]

    def _reply(self, ids: list[int], max_new_tokens: int, soft: SoftTokens | None = None, tool_choice=None,
               response_format=None) -> Reply:
        self._check_room(len(ids))
        budget = min(max_new_tokens, self.model.n_ctx - self.state.pos - len(self.state.pending) - len(ids))
        stops, rule = constraint(self.model, self.tools, tool_choice, response_format, self.think)
        sampler = constrained(Sampling.of(self.sampling).sampler(), rule)
        self.last = Reply(self.model, generate_ids(self.model, self.state, ids, budget, sampler, stops, soft,
                                                   self.drafter), self.state, stops, interruptible=True)
        return self.last


class AudioTurn:
    """A user turn of speech, prefilled while it is spoken (ChatSession.listen)."""

    def __init__(self, session: ChatSession, every: int = 50):
        from edgert.speech import StreamingEncoder

        model = session.model
        self.session, self.model = session, model
        self.stream = StreamingEncoder(model.audio_encoder, every)  # says so if the file has no audio tower
        self.audio_id = model.file.audio.tokens["audio"]
        boa = model.tokenizer.tokens[model.file.audio.tokens["boa"]]
        head, opened = session._head()
        self._feed(head + model.tokenizer.encode(opened + boa))
        self.soft_tokens = 0
        self._back = None  # answer_early's way back

    def _feed(self, ids: list[int], rows: np.ndarray | None = None) -> None:
        self.session._check_room(len(ids))
        soft = SoftTokens(np.ones(len(ids), dtype=bool), rows) if rows is not None else None
        feed, soft = take_pending(self.session.state, ids, soft)
        self.model.prefill(self.session.state, feed, logits="none", soft=soft)

    def push(self, samples: np.ndarray) -> int:
        """Append 16 kHz samples; returns how many soft tokens were prefilled."""
        return self._prefill(self.stream.push(samples))

    def pause(self) -> int:
        """The speaker paused (voice activity says so): encode and prefill what is final now,
        so that if this is the end, only the last fraction of a second is left."""
        return self._prefill(self.stream.pause())

    def answer_early(self, text: str | None = None, max_new_tokens: int = 1024, tool_choice=None) -> Reply:
        """The speaker paused: answer now as if this were the end (finish), keeping the way
        back (go_on) should the speech go on. The reply can be read ahead during the pause
        (Reply.read_ahead), and is the same reply `finish` would give at the end: a pause has
        all the speech the end will have. One encoder run for all that waits, in place of
        `pause` (which it makes needless): its final soft tokens are prefilled, the way back
        is kept there, then the rest."""
        rows, final, mark = self.stream.finish_split()
        self._prefill(rows[:final])
        self._back = (self.session.state.checkpoint(), mark, self.soft_tokens, self.session.last)
        self._prefill(rows[final:])
        return self._answer(text, max_new_tokens, tool_choice)

    def go_on(self) -> None:
        """The speech went on after answer_early: that reply is dropped, unread, and the turn
        is where it was at the pause, with what was final there encoded and prefilled."""
        early, (at, stream, self.soft_tokens, self.session.last) = self.session.last, self._back
        early.stop()
        self.session.state.restore(at)
        self.stream.back(stream)
        self._back = None

    def _prefill(self, rows: np.ndarray) -> int:
        if len(rows):
            self._feed([self.audio_id] * len(rows), rows)
            self.soft_tokens += len(rows)
        return len(rows)

    def finish(self, text: str | None = None, max_new_tokens: int = 1024, tool_choice=None) -> Reply:
        """The speaker stopped: the last soft tokens, `text` after the audio, and the reply."""
        self._prefill(self.stream.finish())
        return self._answer(text, max_new_tokens, tool_choice)

    def _answer(self, text: str | None, max_new_tokens: int, tool_choice) -> Reply:
        """The audio's end, `text` after it, and the reply."""
        eoa = self.model.tokenizer.tokens[self.model.file.audio.tokens["eoa"]]
        after = eoa + (user_content(self.model.format, text) if text else "") + self.session._tail()
        return self.session._reply(self.model.tokenizer.encode(after), max_new_tokens, None, tool_choice)
