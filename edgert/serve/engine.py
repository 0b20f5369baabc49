"""The server's one model: requests wait in a bounded queue and run one at a time on a
worker thread; a conversation that resends its history reuses the KV cache of what it shares
with the previous request; a client that goes away stops its generation at the next token."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from edgert.draft import drafter
from edgert.errors import EdgeRTError
from edgert.generation import fit, generate_ids
from edgert.sampling import Sampling
from edgert.text import tools as T
from edgert.text.constrain import constrained
from edgert.text.sessions import Reply, constraint, prompt_ids

if TYPE_CHECKING:
    from edgert.model import Checkpoint, Model, State


class Busy(EdgeRTError):
    """The queue is full."""


@dataclass
class Limits:
    max_body_bytes: int = 32 << 20  # a request's JSON (audio included)
    max_tokens: int = 4096  # the most new tokens a request may ask for
    max_queue: int = 16  # requests waiting, besides the one running


@dataclass
class Job:
    """One chat turn to run: its messages and options, as Model.chat takes them."""

    messages: list
    max_tokens: int
    think: bool = False
    tools: list = field(default_factory=list)
    tool_choice: object = None
    response_format: object = None
    sampling: dict = field(default_factory=dict)
    raw_prompt: str | None = None  # a completion: this text, without the chat format
    files: list = field(default_factory=list)  # temporary files of the request (audio), removed after it
    draft: str = "auto"  # speculative decoding (edgert.draft)


class PromptCache:
    """The state of the last request, with a checkpoint taken where its prompt's history ended
    (before the generation prompt): a next request that starts with that history (the same
    conversation, one turn on) goes on from there."""

    def __init__(self, model: "Model"):
        self.model = model
        self.state: State | None = None
        self.history: list[int] = []
        self.at: Checkpoint | None = None
        self.reused = 0  # tokens not prefilled again, over the server's life

    def start(self, ids: list[int]) -> "State":
        """A state holding the longest cached head of `ids` (the marked history or nothing)."""
        n = len(self.history)
        if self.state is not None and n and ids[:n] == self.history and len(ids) > n:
            self.state.restore(self.at)
            self.reused += n
            return self.state
        self.state, self.history, self.at = self.model.new_state(), [], None
        return self.state

    def mark(self, state: "State") -> None:
        self.history, self.at = list(state.tokens), state.checkpoint()

    def forget(self) -> None:
        self.state, self.history, self.at = None, [], None


class Engine:
    """Runs jobs one at a time on one worker thread; `stream` is what a route awaits.

    One thread, always the same: OpenMP (Numba's threading layer) gives each thread that
    starts parallel work a team of its own, and two teams on two cores measured each request
    at twice the time of one (libgomp stops spinning when its threads outnumber the cores)."""

    def __init__(self, model: "Model", limits: Limits):
        self.model, self.limits = model, limits
        self.cache = PromptCache(model)
        self._lock = threading.Lock()
        self._waiting = 0
        self._gate = asyncio.Semaphore(1)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="edgert-model")

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def _reply(self, job: Job, cancelled: threading.Event) -> Reply:
        model = self.model
        tools = T.tools_of(job.tools)
        stops, rule = constraint(model, tools, job.tool_choice, job.response_format, job.think)
        sampler = constrained(Sampling.of(job.sampling).sampler(), rule)
        if job.raw_prompt is not None:
            ids = fit(model, model.tokenizer.encode(job.raw_prompt, add_bos=model.tokenizer.add_bos),
                      job.max_tokens, False)
            soft, boundary = None, 0
        else:
            ids, soft, boundary = prompt_ids(model, job.messages, job.think, tools)
            fit(model, ids, job.max_tokens, False)  # a prompt too long is an error that says so
        if soft is not None:  # audio: soft tokens cannot be cached by their ids
            self.cache.forget()
            state, feed = model.new_state(), ids
        else:
            state = self.cache.start(ids)
            feed = ids[state.pos:]
            if boundary > state.pos:
                model.prefill(state, ids[state.pos:boundary], logits="none")
                self.cache.mark(state)
                feed = ids[boundary:]
        budget = min(job.max_tokens, model.n_ctx - state.pos - len(feed))

        def tokens() -> Iterator[int]:
            for t in generate_ids(model, state, feed, budget, sampler, stops, soft, drafter(job.draft, model)):
                if cancelled.is_set():
                    return
                yield t

        return Reply(model, tokens(), state, stops)

    async def stream(self, job: Job, is_disconnected: Callable) -> "asyncio.Queue":
        """Queue `job`; yields ("piece", text) as it comes, then ("done", reply), or ("error", exc)."""
        if self._waiting >= self.limits.max_queue + 1:
            raise Busy(f"the server is busy: {self._waiting} requests are queued; try again shortly")
        self._waiting += 1
        out: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()

        def work():
            try:
                with self._lock:
                    reply = self._reply(job, cancelled)
                    for piece in reply:
                        loop.call_soon_threadsafe(out.put_nowait, ("piece", piece))
                loop.call_soon_threadsafe(out.put_nowait, ("done", reply))
            except BaseException as e:  # noqa: B902 - handed to the route, which answers with it
                self.cache.forget()
                loop.call_soon_threadsafe(out.put_nowait, ("error", e))
            finally:
                for path in job.files:
                    os.unlink(path)

        async def run():
            try:
                async with self._gate:
                    task = loop.run_in_executor(self._worker, work)
                    while not task.done():
                        if await is_disconnected():
                            cancelled.set()
                        await asyncio.wait([task], timeout=0.05)
            finally:
                self._waiting -= 1

        asyncio.ensure_future(run())
        return out
