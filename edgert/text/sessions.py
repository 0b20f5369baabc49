"""Chat on top of generation: a model turn as it streams (Reply, with the thought channel
kept apart), messages with audio rendered into placeholders and soft tokens, a one-shot
`chat`, and sessions that keep their KV cache between turns (ChatSession), with user turns
of speech prefilled while they are spoken (AudioTurn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from edgert.errors import ContextOverflowError, EdgeRTError, no_audio_tower
from edgert.gemma4 import SoftTokens
from edgert.generation import fit, generate_ids, take_pending
from edgert.sampling import Sampling

if TYPE_CHECKING:
    from edgert.model import Model


class Reply:
    """A model turn as it streams: iterating gives the answer's text pieces; the thought
    channel (`<|channel>thought ... <channel|>`) is collected apart in `.thought`."""

    def __init__(self, model: "Model", tokens: Iterator[int]):
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


def chat(model: "Model", messages: Sequence[dict], think: bool = False, max_new_tokens: int = 1024,
         truncate: bool = False, **sampling) -> Reply:
    """Model.chat: the answer to `messages` (see there)."""
    messages, rows = hear_messages(model, messages)
    ids = model.tokenizer.encode(model.format.render(messages, think=think))
    if rows is not None and truncate:
        raise EdgeRTError("truncate=True cannot drop part of a prompt that holds audio; shorten it instead")
    soft = _soft(model, ids, rows)
    ids = fit(model, ids, max_new_tokens, truncate)
    sampler = Sampling.of(sampling).sampler()
    return Reply(model, generate_ids(model, model.new_state(), ids, max_new_tokens, sampler, model.stop_ids, soft))


def user_content(fmt, content) -> str:
    """A user message's text as its turn holds it (the chat format's own rendering)."""
    return fmt.turn("user", content)[len(f"{fmt.open}user\n"):-len(f"{fmt.close}\n")]


class ChatSession:
    """Turns appended to one KV cache: only each new turn is prefilled."""

    def __init__(self, model: "Model", system: str | None, think: bool, sampling: dict):
        Sampling.of(sampling)  # an unknown option is an error now, not at the first turn
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
            [heard], rows = hear_messages(self.model, [{"role": "user", "content": message}])
            message = heard["content"]
        head, opened = self._head()
        text = opened + user_content(self.model.format, message) + self._tail()
        ids = head + self.model.tokenizer.encode(text)
        return self._reply(ids, max_new_tokens, _soft(self.model, ids, rows))

    def send(self, message, max_new_tokens: int = 1024) -> str:
        """Send a user message and return the whole answer."""
        return self.stream(message, max_new_tokens).result()

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

    def _reply(self, ids: list[int], max_new_tokens: int, soft: SoftTokens | None = None) -> Reply:
        self._check_room(len(ids))
        budget = min(max_new_tokens, self.model.n_ctx - self.state.pos - len(self.state.pending) - len(ids))
        sampler = Sampling.of(self.sampling).sampler()
        return Reply(self.model, generate_ids(self.model, self.state, ids, budget, sampler, self.model.stop_ids, soft))


class AudioTurn:
    """A user turn of speech, prefilled while it is spoken (ChatSession.listen)."""

    def __init__(self, session: ChatSession):
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
        soft = SoftTokens(np.ones(len(ids), dtype=bool), rows) if rows is not None else None
        feed, soft = take_pending(self.session.state, ids, soft)
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
        after = eoa + (user_content(self.model.format, text) if text else "") + self.session._tail()
        return self.session._reply(self.model.tokenizer.encode(after), max_new_tokens)
