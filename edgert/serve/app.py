"""The HTTP app (Starlette, served by uvicorn): OpenAI's /v1 routes and Ollama's /api routes
over one model. Each route turns its request into a Job (edgert.serve.engine), awaits the
pieces, and writes them in its API's shape: one JSON answer, SSE events (OpenAI) or JSON
lines (Ollama). Bad requests get a 4xx with a message saying what was wrong."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
import time
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from edgert.draft import DRAFTS
from edgert.errors import ContextOverflowError, EdgeRTError
from edgert.serve.engine import Busy, Engine, Job, Limits


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def create_app(model, name: str = "edgert", api_key: str | None = None, limits: Limits | None = None,
               draft: str = "auto") -> Starlette:
    """The app over `model`; draft: the speculative decoding every request gets (edgert.draft),
    unless it asks for another with "draft"."""
    limits = limits or Limits()
    engine = Engine(model, limits)
    created = int(time.time())

    async def body(request: Request) -> dict:
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            raise HTTPError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'", "authentication_error")
        size = int(request.headers.get("content-length") or 0)
        if size > limits.max_body_bytes:
            raise HTTPError(413, f"the request has {size} bytes; the limit is {limits.max_body_bytes}")
        raw = await request.body()
        if len(raw) > limits.max_body_bytes:
            raise HTTPError(413, f"the request has {len(raw)} bytes; the limit is {limits.max_body_bytes}")
        try:
            data = json.loads(raw or b"{}")
        except json.JSONDecodeError as e:
            raise HTTPError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        if data.get("model") not in (None, "", name):
            raise HTTPError(404, f"model {data['model']!r} is not served here; this server has {name!r}",
                            "model_not_found")
        return data

    def max_tokens(value, default: int = 1024) -> int:
        n = min(default, limits.max_tokens) if value is None else value
        if not isinstance(n, int) or n < 1:
            raise HTTPError(400, f"max_tokens must be a positive integer, got {value!r}")
        if n > limits.max_tokens:
            raise HTTPError(400, f"max_tokens {n} is above this server's limit of {limits.max_tokens}")
        return n

    def openai_messages(messages, files: list) -> list[dict]:
        """OpenAI's message parts as edgert's: input_audio (base64 WAV) becomes an audio part,
        read from a temporary file (listed in `files`)."""
        if not isinstance(messages, list) or not messages:
            raise HTTPError(400, "messages must be a non-empty list")
        out = []
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise HTTPError(400, 'each message is an object with a "role"')
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for p in content:
                    if p.get("type") == "input_audio":
                        files.append(_wav_file(p.get("input_audio", {}).get("data")))
                        parts.append({"type": "audio", "audio": files[-1]})
                    else:
                        parts.append(p)
                m = {**m, "content": parts}
            out.append(m)
        return out

    def draft_of(data: dict) -> str:
        kind = data.get("draft", draft)
        if kind not in DRAFTS:
            raise HTTPError(400, f"draft must be one of {', '.join(DRAFTS)}, not {kind!r}")
        return kind

    def sampling(data: dict) -> dict:
        keys = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                "seed": "seed", "repeat_penalty": "repetition_penalty"}
        return {ours: data[theirs] for theirs, ours in keys.items() if data.get(theirs) is not None}

    async def run(job: Job, request: Request):
        try:
            return await engine.stream(job, request.is_disconnected)
        except Busy as e:
            raise HTTPError(429, str(e), "rate_limit_error") from None

    async def first(queue):
        """Wait for the first event, so that a request that fails does so with its status."""
        event = await queue.get()
        if event[0] == "error":
            raise event[1]
        return event

    async def collect(queue, event) -> tuple[str, object]:
        """The whole text and the finished Reply, from the first event on."""
        text = ""
        while event[0] == "piece":
            text += event[1]
            event = await queue.get()
        if event[0] == "error":
            raise event[1]
        return text, event[1]

    async def events(queue, head):
        yield head
        while True:
            event = await queue.get()
            yield event
            if event[0] in ("done", "error"):
                return

    def reply_message(reply) -> dict:
        msg = {"role": "assistant", "content": reply.text if not reply.tool_calls else (reply.text or None)}
        if reply.thought:
            msg["reasoning_content"] = reply.thought
        if reply.tool_calls:
            msg["tool_calls"] = [c.openai() for c in reply.tool_calls if c.error is None]
        return msg

    def usage(reply) -> dict:
        prompt = len(reply.state.tokens) - reply.token_count if reply.state is not None else 0
        return {"prompt_tokens": max(prompt, 0), "completion_tokens": reply.token_count,
                "total_tokens": max(prompt, 0) + reply.token_count}

    # --- OpenAI --------------------------------------------------------------------------------

    async def chat_completions(request: Request):
        data = await body(request)
        files: list = []
        job = Job(openai_messages(data.get("messages"), files), max_tokens(data.get("max_completion_tokens",
                                                                                     data.get("max_tokens"))),
                  think=bool((data.get("chat_template_kwargs") or {}).get("enable_thinking")
                             or data.get("reasoning_effort") not in (None, "none")),
                  tools=data.get("tools") or [], tool_choice=data.get("tool_choice"),
                  response_format=data.get("response_format"), sampling=sampling(data), files=files,
                  draft=draft_of(data))
        queue = await run(job, request)
        head = await first(queue)
        rid, now = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        if not data.get("stream"):
            _, reply = await collect(queue, head)
            return JSONResponse({"id": rid, "object": "chat.completion", "created": now, "model": name,
                                 "choices": [{"index": 0, "message": reply_message(reply),
                                              "finish_reason": reply.finish_reason}],
                                 "usage": usage(reply)})

        def chunk(delta: dict, finish=None) -> str:
            return "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

        async def sse():
            yield chunk({"role": "assistant", "content": ""})
            async for kind, value in events(queue, head):
                if kind == "piece":
                    yield chunk({"content": value})
                elif kind == "done":
                    if value.thought:
                        yield chunk({"reasoning_content": value.thought})
                    calls = [c.openai() for c in value.tool_calls if c.error is None]
                    if calls:
                        yield chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
                    yield chunk({}, value.finish_reason)
                else:
                    yield "data: " + json.dumps({"error": {"message": str(value)}}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def completions(request: Request):
        data = await body(request)
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise HTTPError(400, "prompt must be a string")
        job = Job([], max_tokens(data.get("max_tokens"), 16), raw_prompt=prompt, sampling=sampling(data),
                  draft=draft_of(data))
        queue = await run(job, request)
        text, reply = await collect(queue, await first(queue))
        return JSONResponse({"id": "cmpl-" + uuid.uuid4().hex[:24], "object": "text_completion",
                             "created": int(time.time()), "model": name,
                             "choices": [{"index": 0, "text": text, "finish_reason": reply.finish_reason}],
                             "usage": usage(reply)})

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                                          "owned_by": "edgert"}]})

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def transcriptions(request: Request):
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            raise HTTPError(401, "a valid API key is needed", "authentication_error")
        form = await request.form()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise HTTPError(400, "send the audio as a multipart 'file' field (a WAV file)")
        path = _wav_file(await upload.read(), encoded=False)
        messages = [{"role": "user", "content": [{"type": "audio", "audio": path},
                                                 {"type": "text", "text": "Transcribe this audio."}]}]
        queue = await run(Job(messages, max_tokens(None, 448), sampling={"temperature": 0.0}, files=[path]), request)
        text, _ = await collect(queue, await first(queue))
        return JSONResponse({"text": text.strip()})

    # --- Ollama --------------------------------------------------------------------------------

    def ollama_sampling(data: dict) -> dict:
        return sampling(data.get("options") or {})

    def ollama_messages(messages) -> list[dict]:
        out = []
        for m in messages or []:
            images = m.get("images")
            if images:
                raise HTTPError(400, "this model hears audio and reads text; it does not see images")
            calls = m.get("tool_calls")
            if calls:
                m = {**m, "tool_calls": [{"function": {"name": c["function"]["name"],
                                                       "arguments": c["function"].get("arguments", {})}}
                                         for c in calls]}
            out.append(m)
        if not out:
            raise HTTPError(400, "messages must be a non-empty list")
        return out

    async def ollama(request: Request, job: Job, data: dict, key: str):
        queue = await run(job, request)
        head = await first(queue)
        started = time.perf_counter_ns()

        def line(done: bool, text: str = "", reply=None) -> dict:
            out = {"model": name, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "done": done}
            if key == "message":
                out["message"] = {"role": "assistant", "content": text}
                if reply is not None and reply.tool_calls:
                    out["message"]["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}}
                                                    for c in reply.tool_calls if c.error is None]
                if reply is not None and reply.thought:
                    out["message"]["thinking"] = reply.thought
            else:
                out["response"] = text
            if done:
                out.update(done_reason=reply.finish_reason, total_duration=time.perf_counter_ns() - started,
                           eval_count=reply.token_count, prompt_eval_count=usage(reply)["prompt_tokens"])
            return out

        if data.get("stream", True) is False:
            return JSONResponse(line(True, *await collect(queue, head)))

        async def lines():
            async for kind, value in events(queue, head):
                if kind == "piece":
                    yield json.dumps(line(False, value)) + "\n"
                elif kind == "done":
                    yield json.dumps(line(True, "", value)) + "\n"
                else:
                    yield json.dumps({"error": str(value)}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def api_chat(request: Request):
        data = await body(request)
        fmt = data.get("format")
        job = Job(ollama_messages(data.get("messages")), max_tokens((data.get("options") or {}).get("num_predict")),
                  think=bool(data.get("think")), tools=data.get("tools") or [],
                  response_format=fmt if fmt else None, sampling=ollama_sampling(data), draft=draft_of(data))
        return await ollama(request, job, data, "message")

    async def api_generate(request: Request):
        data = await body(request)
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise HTTPError(400, "prompt must be a string")
        n = max_tokens((data.get("options") or {}).get("num_predict"))
        if data.get("raw"):
            job = Job([], n, raw_prompt=prompt, sampling=ollama_sampling(data))
        else:
            messages = ([{"role": "system", "content": data["system"]}] if data.get("system") else []) + \
                [{"role": "user", "content": prompt}]
            job = Job(messages, n, think=bool(data.get("think")), sampling=ollama_sampling(data),
                      response_format=data.get("format") or None)
        return await ollama(request, job, data, "response")

    async def api_tags(request: Request):
        size = os.path.getsize(model.file.path) if os.path.exists(model.file.path) else 0
        entry = {"name": name, "model": name, "size": size, "modified_at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)), "digest": "",
            "details": {"format": "gguf", "family": model.config.arch}}
        return JSONResponse({"models": [entry]})

    def guarded(handler):
        async def route(request: Request):
            try:
                return await handler(request)
            except HTTPError as e:
                return _error(e.status, e.message, e.kind)
            except ContextOverflowError as e:
                return _error(400, str(e), "context_length_exceeded")
            except (EdgeRTError, TypeError, ValueError) as e:  # the request's content, said by the library
                return _error(400, str(e))
        return route

    routes = [
        Route("/v1/chat/completions", guarded(chat_completions), methods=["POST"]),
        Route("/v1/completions", guarded(completions), methods=["POST"]),
        Route("/v1/models", guarded(models), methods=["GET"]),
        Route("/v1/audio/transcriptions", guarded(transcriptions), methods=["POST"]),
        Route("/health", guarded(health), methods=["GET"]),
        Route("/api/chat", guarded(api_chat), methods=["POST"]),
        Route("/api/generate", guarded(api_generate), methods=["POST"]),
        Route("/api/tags", guarded(api_tags), methods=["GET"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.engine = engine
    return app


def _wav_file(data, encoded: bool = True) -> str:
    """Audio bytes (base64 text when `encoded`) in a temporary WAV file, which audio.files reads."""
    if encoded:
        if not isinstance(data, str):
            raise HTTPError(400, "an input_audio part needs its base64 WAV bytes in input_audio.data")
        try:
            data = base64.b64decode(data, validate=True)
        except ValueError:
            raise HTTPError(400, "input_audio.data is not valid base64") from None
    if not data.startswith(b"RIFF"):
        raise HTTPError(400, "the audio is not a WAV file (it does not start with RIFF); send 16-bit PCM WAV")
    f = tempfile.NamedTemporaryFile(suffix=".wav", delete=False)
    with f:
        f.write(data)
    return f.name


def serve(model, host: str = "127.0.0.1", port: int = 8080, name: str = "edgert", api_key: str | None = None,
          limits: Limits | None = None, draft: str = "auto") -> None:
    """Serve `model` until interrupted."""
    import uvicorn

    uvicorn.run(create_app(model, name, api_key, limits, draft), host=host, port=port, log_level="info")
