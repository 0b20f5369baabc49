"""Tools: declarations, calls and results rendered as the official Gemma 4 chat template
renders them (applied by transformers, token for token), calls parsed back, Python functions
described, and decoding constrained so that every call parses and validates against its
tool's schema (hypothesis over schemas) where an unconstrained one does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgert.errors import ContextOverflowError
from edgert.text import tools as T
from edgert.text.chat import GEMMA4

jsonschema = pytest.importorskip("jsonschema")  # a test dependency (edgert[test]), not the Pi job's

TEMPLATE = (Path(__file__).parent / "data" / "gemma4_chat_template.jinja").read_text()

LIGHT = {"type": "function", "function": {
    "name": "set_light", "description": "Turn a light on or off.",
    "parameters": {"type": "object", "properties": {
        "room": {"type": "string", "description": "the room", "enum": ["kitchen", "hall"]},
        "on": {"type": "boolean"},
        "level": {"type": "integer", "description": "brightness", "nullable": True},
        "Colour": {"type": "object", "description": "an RGB colour",
                   "properties": {"r": {"type": "number"}, "g": {"type": "number"}}, "required": ["r"]},
        "tags": {"type": "array", "items": {"type": "string", "description": "a tag"}},
        "shape": {"type": "object"}},
        "required": ["room", "on"]}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "response": {"type": "object", "description": "the forecast"}}}
NOW = {"type": "function", "function": {"name": "now", "description": "The time."}}

CALL = {"function": {"name": "set_light", "arguments": {
    "room": "kitchen", "on": True, "level": 75, "Colour": {"r": 0.5, "g": 1}, "tags": ["a", "b c"], "x": None}}}

CONVERSATIONS = {
    "declarations": ([{"role": "user", "content": "Hi"}], [LIGHT, WEATHER, NOW]),
    "system and tools": ([{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Lights!"}],
                         [LIGHT]),
    "a call and its results": ([
        {"role": "user", "content": "Kitchen light on, and the weather?"},
        {"role": "assistant", "tool_calls": [CALL, {"function": {"name": "get_weather",
                                                                 "arguments": {"city": "Zürich"}}}],
         "tool_responses": [{"name": "set_light", "response": {"ok": True, "level": 75}},
                            {"name": "get_weather", "response": "sunny, 21 °C"}]}], [LIGHT, WEATHER]),
    "the answer after results": ([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
         "tool_responses": [{"name": "get_weather", "response": {"sky": "grey", "temp": -3.5}}],
         "content": "Grey and cold."},
        {"role": "user", "content": "Thanks"}], [WEATHER]),
}


def _official(messages, tools, add_generation_prompt=True):
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils.chat_template_utils import _compile_jinja_template

    template = _compile_jinja_template(TEMPLATE)
    assert isinstance(template.environment, ImmutableSandboxedEnvironment)
    return template.render(messages=messages, tools=tools, bos_token="<bos>",
                           add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_tool_prompts_match_the_official_template_token_for_token(name, checkpoints, tool_model):
    from transformers import AutoTokenizer

    messages, tools = CONVERSATIONS[name]
    hf = AutoTokenizer.from_pretrained(checkpoints.hf("e2b")[1])
    hf.chat_template = TEMPLATE
    official = hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert official == _official(messages, tools)
    ours = GEMMA4.render(messages, tools=tools)
    assert ours == official
    assert tool_model.tokenizer.encode(ours) == hf.encode(official, add_special_tokens=False)


def test_openai_tool_messages_render_as_the_template_s_model_turn():
    """OpenAI's assistant tool_calls (arguments a JSON string) + "tool" messages + the answer
    are the one model turn the template writes from tool_calls/tool_responses/content."""
    openai = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"sky": "grey", "temp": -3.5})},
        {"role": "assistant", "content": "Grey and cold."},
        {"role": "user", "content": "Thanks"}]
    native = CONVERSATIONS["the answer after results"][0]
    assert GEMMA4.render(openai, tools=[WEATHER]) == _official(native, [WEATHER])
    pending = openai[:3]  # the results are in, the model goes on with its turn
    assert GEMMA4.render(pending, tools=[WEATHER]) == _official(
        [native[0], {k: v for k, v in native[1].items() if k != "content"}], [WEATHER])


_keys = st.text("abcxyzABC_", min_size=1, max_size=3)
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(lambda s: T.QUOTE not in s)
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | _text
    | st.floats(allow_nan=False, allow_infinity=False, width=64),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3), max_leaves=8)


@given(st.dictionaries(_keys, _values, max_size=4))
def test_calls_parse_back_to_their_arguments(arguments):
    text = T.render_call("set_light", arguments)
    assert text == _official([{"role": "assistant", "tool_calls": [
        {"function": {"name": "set_light", "arguments": arguments}}]}], None,
        add_generation_prompt=False)[len("<bos><|turn>model\n"):-len("<turn|>\n")]
    name, parsed = T.parse_call(text[len(T.CALL_OPEN):])
    assert name == "set_light" and parsed == arguments


def test_a_malformed_call_says_where():
    with pytest.raises(T.ToolError, match="expected ':'"):
        T.parse_call("call:f{a<|\"|>x<|\"|>}")
    with pytest.raises(T.ToolError, match="call:NAME"):
        T.parse_call("set_light{}")


def test_a_python_function_becomes_a_tool():
    def set_light(room: Literal["kitchen", "hall"], on: bool, level: Optional[int] = None,
                  tags: list[str] = ()) -> str:
        """Turn a light on or off.

        Args:
            room: which room's light
            on (bool): True to turn it on,
                False to turn it off
            level: brightness in percent

        Returns:
            what happened
        """

    assert T.tool_schema(set_light) == {"type": "function", "function": {
        "name": "set_light", "description": "Turn a light on or off.",
        "parameters": {"type": "object", "required": ["room", "on"], "properties": {
            "room": {"description": "which room's light", "type": "string", "enum": ["kitchen", "hall"]},
            "on": {"description": "True to turn it on, False to turn it off", "type": "boolean"},
            "level": {"description": "brightness in percent", "type": "integer", "nullable": True},
            "tags": {"type": "array", "items": {"type": "string"}}}}}}

    def untyped(x):
        """No hints."""

    with pytest.raises(T.ToolError, match="needs a type hint"):
        T.tool_schema(untyped)


# --- constrained decoding on a random model -------------------------------------------------------

def _schemas():
    """Schemas whose every value is short, so that a call fits the token budget: the random
    model writes numbers and strings of any length, which a schema without bounds allows."""
    scalar = st.one_of(
        st.just({"type": "boolean"}),
        st.lists(st.integers(-99, 999), min_size=1, max_size=3, unique=True).map(
            lambda e: {"type": "integer", "enum": e}),
        st.just({"type": "number", "enum": [0.5, -2, 1e-3]}),
        st.just({"type": ["boolean", "null"]}),
        st.integers(0, 6).map(lambda n: {"type": "string", "maxLength": n}),
        st.lists(st.sampled_from(["a", "on", "b c", "é"]), min_size=1, max_size=3, unique=True)
        .map(lambda e: {"type": "string", "enum": e}))
    value = st.recursive(scalar, lambda inner: st.one_of(
        inner.map(lambda s: {"type": "array", "items": s, "maxItems": 2}),
        st.dictionaries(_keys, inner, min_size=1, max_size=2).map(
            lambda p: {"type": "object", "properties": p, "required": sorted(p)[:1], "additionalProperties": False})),
        max_leaves=3)
    return st.dictionaries(_keys, value, min_size=1, max_size=2).flatmap(
        lambda p: st.lists(st.sampled_from(sorted(p)), unique=True).map(
            lambda req: {"type": "object", "properties": p, "required": req, "additionalProperties": False}))


@pytest.fixture(scope="module")
def tool_model(checkpoints):
    import edgert

    return edgert.load(checkpoints.gguf("e2b", "q8_0"))


def _call(model, schema, seed, constrain=True):
    tool = {"type": "function", "function": {"name": "act", "description": "Act.", "parameters": schema}}
    reply = model.chat([{"role": "user", "content": "Do it."}], tools=[tool], tool_choice="required",
                       constrain=constrain, max_new_tokens=100, seed=seed, temperature=1.0)
    reply.result()
    return reply.tool_calls


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=_schemas(), seed=st.integers(0, 2**16))
def test_a_constrained_call_always_parses_and_validates(tool_model, schema, seed):
    try:
        calls = _call(tool_model, schema, seed)
    except ContextOverflowError:  # the test model's 512 tokens hold the declaration of most schemas
        assume(False)
    assert len(calls) >= 1
    for i, call in enumerate(calls):
        if i and call.error and "cut off" in call.error:
            continue  # a further call the model began, which the token budget ended
        assert call.error is None, call.raw
        assert call.name == "act"
        jsonschema.validate(call.arguments, schema)


def test_an_unconstrained_call_often_does_not(tool_model):
    schema = {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}
    constrained = [_call(tool_model, schema, seed) for seed in range(8)]
    free = [_call(tool_model, schema, seed, constrain=False) for seed in range(8)]
    assert all(c and c[0].error is None and c[0].arguments in ({"on": True}, {"on": False}) for c in constrained)
    assert sum(bool(c) and c[0].error is None and c[0].name == "act" for c in free) < 8


def test_response_format_gives_json_that_validates(tool_model):
    schema = {"type": "object", "properties": {"room": {"enum": ["kitchen", "hall"]}, "level": {"type": "integer"},
                                               "note": {"type": "string", "maxLength": 5}},
              "required": ["room", "level", "note"], "additionalProperties": False}
    for seed in range(3):
        reply = tool_model.chat([{"role": "user", "content": "JSON"}], seed=seed, max_new_tokens=120,
                                response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        jsonschema.validate(json.loads(reply.result()), schema)
        assert reply.finish_reason == "stop"


def test_a_session_keeps_its_cache_across_a_call_and_its_result(tool_model):
    """The session's cache holds exactly the template's rendering of the same conversation:
    the call, then its result, were only appended."""
    tool = {"type": "function", "function": {"name": "set_light", "description": "Lights.", "parameters": {
        "type": "object", "properties": {"room": {"enum": ["kitchen", "hall"]}}, "required": ["room"]}}}
    session = tool_model.chat_session(tools=[tool], seed=5)
    reply = session.stream("Kitchen light on", tool_choice="required", max_new_tokens=40)
    assert reply.result() == "" and reply.finish_reason == "tool_calls"
    [call] = reply.tool_calls
    assert call.name == "set_light" and call.arguments["room"] in ("kitchen", "hall")
    before = list(session.state.tokens)
    after = session.stream_results([{"role": "tool", "tool_call_id": call.id, "content": '{"ok": true}'}],
                                   max_new_tokens=8)
    after.result()
    assert session.state.tokens[:len(before)] == before
    prompt = GEMMA4.render([{"role": "user", "content": "Kitchen light on"}, {
        "role": "assistant", "tool_calls": [{"function": {"name": "set_light", "arguments": call.arguments}}],
        "tool_responses": [{"name": "set_light", "response": {"ok": True}}]}], tools=[tool])
    # the template drops the turn's empty thought channel from history; all else is the same
    # text (the call's ids are the model's own, not always the tokenizer's spelling of it)
    head = prompt.index(T.CALL_OPEN)
    expected = prompt[:head] + "<|channel>thought\n<channel|>" + prompt[head:]
    assert tool_model.tokenizer.decode(session.state.tokens).startswith(expected)


def test_bad_tools_are_refused_with_a_reason(tool_model):
    from edgert.text.constrain import GrammarError

    with pytest.raises(T.ToolError, match="name"):
        tool_model.chat([{"role": "user", "content": "x"}], tools=[{"type": "function", "function": {"name": "a b"}}])
    with pytest.raises(GrammarError, match="unknown JSON schema type"):
        tool_model.chat([{"role": "user", "content": "x"}], tools=[{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "strin"}}}}}])
    with pytest.raises(GrammarError, match="not valid|cannot be used"):
        tool_model.chat([{"role": "user", "content": "x"}], response_format={"type": "strin"})
    with pytest.raises(T.ToolError, match="tool_choice"):
        tool_model.chat([{"role": "user", "content": "x"}], tools=[LIGHT], tool_choice="always")
