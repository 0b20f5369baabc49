"""edgert serve, spoken to by the real `openai` and `ollama` clients on 127.0.0.1: chat plain
and streamed, a tool-call round trip, a JSON-schema answer, an audio message, Ollama's
/api/chat; 8 clients at once; a cancelled stream; bad requests answered with a 4xx while
the server keeps serving. A small random Gemma 4 and the default model (Gemma 3 270M)."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import edgert
from edgert.serve import create_app
from edgert.serve.engine import Limits

httpx = pytest.importorskip("httpx")  # the clients are test dependencies (edgert[test]), not the Pi job's
jsonschema = pytest.importorskip("jsonschema")


class Server:
    def __init__(self, model, name: str, limits: Limits | None = None):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.name = name
        self.app = create_app(model, name, limits=limits or Limits(max_tokens=256, max_queue=16))
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def openai(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def gemma4(checkpoints):
    server = Server(edgert.load(checkpoints.gguf("e2b", "q8_0")), "tiny-gemma4")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gemma3():
    from edgert.demo import demo_model

    server = Server(edgert.load(demo_model(), n_ctx=1024), "gemma3-270m")
    yield server
    server.stop()


LIGHT = {"type": "function", "function": {"name": "set_light", "description": "Switch a light.", "parameters": {
    "type": "object", "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
    "required": ["room", "on"]}}}


@pytest.mark.parametrize("which", ["gemma4", "gemma3"])
def test_openai_client_chats_plain_and_streamed(which, request):
    server = request.getfixturevalue(which)
    client = server.openai()
    assert [m.id for m in client.models.list().data] == [server.name]
    messages = [{"role": "user", "content": "Say hello."}]
    plain = client.chat.completions.create(model=server.name, messages=messages, max_tokens=12, temperature=0)
    assert plain.choices[0].message.role == "assistant" and plain.choices[0].message.content
    assert plain.usage.completion_tokens <= 12 and plain.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model=server.name, messages=messages, max_tokens=12, temperature=0,
                                            stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == plain.choices[0].message.content  # greedy: the same answer, streamed
    drafted = client.chat.completions.create(model=server.name, messages=messages, max_tokens=12, temperature=0,
                                             extra_body={"draft": "lookup"})
    assert drafted.choices[0].message.content == text  # prompt lookup: the same tokens
    # a conversation that resends its history goes on from the cache of its common prefix
    before = server.app.state.engine.cache.reused
    client.chat.completions.create(model=server.name, max_tokens=4, temperature=0, messages=messages + [
        {"role": "assistant", "content": text}, {"role": "user", "content": "Again."}])
    assert server.app.state.engine.cache.reused > before


def test_a_tool_call_round_trip(gemma4):
    client = gemma4.openai()
    messages = [{"role": "user", "content": "Turn on the kitchen light."}]
    first = client.chat.completions.create(model=gemma4.name, messages=messages, tools=[LIGHT],
                                           tool_choice="required", max_tokens=60, seed=1)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls[:1]
    args = json.loads(call.function.arguments)
    assert call.function.name == "set_light"
    jsonschema.validate(args, LIGHT["function"]["parameters"])
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"ok": True})}]
    second = client.chat.completions.create(model=gemma4.name, messages=messages, tools=[LIGHT],
                                            tool_choice="none", max_tokens=8, seed=1)
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("which", ["gemma4", "gemma3"])
def test_a_json_schema_answer_validates(which, request):
    server = request.getfixturevalue(which)
    schema = {"type": "object", "properties": {"room": {"enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
              "required": ["room", "on"], "additionalProperties": False}
    out = server.openai().chat.completions.create(
        model=server.name, messages=[{"role": "user", "content": "JSON please"}], max_tokens=60, seed=2,
        response_format={"type": "json_schema", "json_schema": {"name": "light", "schema": schema}})
    jsonschema.validate(json.loads(out.choices[0].message.content), schema)


@pytest.fixture(scope="module")
def audio_server(checkpoints, tmp_path_factory):
    """A random Gemma 4 with an audio tower, built by transformers and converted."""
    from edgert.files.convert import convert
    from tests.reference import build_audio_checkpoint

    directory = tmp_path_factory.mktemp("serve-speech") / "hf"
    build_audio_checkpoint(directory)
    path = convert(directory, directory.parent / "m.gguf", "q8_0")
    server = Server(edgert.load(path), "tiny-gemma4-audio")
    yield server
    server.stop()


def _speech_wav(tmp_path) -> bytes:
    wav = tmp_path / "say.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "turn on the kitchen light"], check=True, capture_output=True)
    return wav.read_bytes()


def test_an_audio_message_and_a_transcription(audio_server, tmp_path):
    data = _speech_wav(tmp_path)
    client = audio_server.openai()
    out = client.chat.completions.create(model=audio_server.name, max_tokens=6, temperature=0, messages=[
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": base64.b64encode(data).decode(), "format": "wav"}}, {"type": "text", "text": "What was said?"}]}])
    assert out.choices[0].message.content is not None and out.usage.prompt_tokens > 20
    text = client.audio.transcriptions.create(model=audio_server.name, file=("say.wav", data, "audio/wav"))
    assert isinstance(text.text, str)


def test_ollama_client_chats_plain_and_streamed(gemma4):
    import ollama

    client = ollama.Client(host=gemma4.url)
    assert [m.model for m in client.list().models] == [gemma4.name]
    messages = [{"role": "user", "content": "Say hello."}]
    options = {"temperature": 0, "num_predict": 10}
    plain = client.chat(model=gemma4.name, messages=messages, options=options, stream=False)
    streamed = list(client.chat(model=gemma4.name, messages=messages, options=options, stream=True))
    assert plain.done and plain.message.content
    assert "".join(p.message.content for p in streamed) == plain.message.content and streamed[-1].done
    gen = client.generate(model=gemma4.name, prompt="Say hello.", options=options, stream=False)
    assert gen.response == plain.message.content


def test_eight_clients_at_once_are_all_answered(gemma4):
    client = gemma4.openai()

    def ask(i):
        return [client.chat.completions.create(model=gemma4.name, max_tokens=6, seed=i * 10 + j,
                                               messages=[{"role": "user", "content": f"Count to {i + j}."}])
                .choices[0].finish_reason for j in range(3)]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert all(r in ("stop", "length") for a in answers for r in a) and sum(map(len, answers)) == 24


def test_a_cancelled_stream_frees_the_model(gemma4):
    engine = gemma4.app.state.engine
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", gemma4.url + "/v1/chat/completions", json={
                "model": gemma4.name, "stream": True, "max_tokens": 250, "temperature": 1.0,
                "messages": [{"role": "user", "content": "Write a long story."}]}) as r:
            for _ in zip(range(3), r.iter_lines()):
                pass
        t0 = time.time()
        out = http.post(gemma4.url + "/v1/chat/completions", json={
            "model": gemma4.name, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
    assert out.status_code == 200
    assert time.time() - t0 < 10  # not after the 250 tokens the first asked for
    deadline = time.time() + 5
    while engine._waiting and time.time() < deadline:
        time.sleep(0.05)
    assert engine._waiting == 0


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}), 404, "not served here"),
    (json.dumps({"messages": [{"role": "user", "content": "x " * 3000}]}), 400, "context"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "strin"}}}}}]}), 400, "strin"),
    (json.dumps({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": "%%%not base64", "format": "wav"}}]}]}), 400, "base64"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}), 400, "max_tokens"),
])
def test_bad_requests_get_a_4xx_that_says_why_and_the_server_goes_on(gemma4, body, status, words):
    with httpx.Client(timeout=60) as http:
        r = http.post(gemma4.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        assert words in r.json()["error"]["message"]
        assert http.get(gemma4.url + "/health").json() == {"status": "ok"}


def test_limits_answer_with_their_status(checkpoints):
    """An API key, the request size and the queue's length: 401, 413, 429, each saying why."""
    import asyncio

    model = edgert.load(checkpoints.gguf("e2b", "q8_0"))
    app = create_app(model, "m", api_key="sesame", limits=Limits(max_body_bytes=2000, max_queue=0))
    transport = httpx.ASGITransport(app=app)

    async def go():
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
            body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 40}
            r = await http.post("/v1/chat/completions", json=body)
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
            key = {"authorization": "Bearer sesame"}
            r = await http.post("/v1/chat/completions", json={**body, "messages": [
                {"role": "user", "content": "x" * 3000}]}, headers=key)
            assert r.status_code == 413 and "limit is 2000" in r.json()["error"]["message"]
            answers = await asyncio.gather(*[http.post("/v1/chat/completions", json=body, headers=key)
                                             for _ in range(4)])
            codes = sorted(a.status_code for a in answers)
            assert codes[0] == 200 and codes[-1] == 429, codes
            assert "busy" in next(a for a in answers if a.status_code == 429).json()["error"]["message"]

    asyncio.run(go())
    app.state.engine.close()
