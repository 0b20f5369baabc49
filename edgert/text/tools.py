"""Gemma 4's tool format: declarations, calls and responses as the official chat template
writes them, and calls parsed back into Python values.

    system turn:  <|tool>declaration:NAME{description:<|"|>…<|"|>,parameters:{…}}<tool|>
    model turn:   <|tool_call>call:NAME{key:<|"|>value<|"|>,n:3}<tool_call|>
    then:         <|tool_response>response:NAME{key:value}<tool_response|>

Values are written in Gemma's own object syntax, not JSON: keys are bare inside a call
(quoted with <|"|> in a declaration's enums), strings are wrapped in the <|"|> token,
mappings are sorted by key as Jinja's dictsort sorts them (ignoring case), and anything
else is printed as Jinja prints it (3, 1.5, true, None).

Tools are given as OpenAI does ({"type": "function", "function": {"name", "description",
"parameters": JSON schema}}) or as plain Python functions with type hints and a docstring,
which `tool_schema` turns into that form."""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from edgert.errors import EdgeRTError

QUOTE = '<|"|>'
TOOL_OPEN, TOOL_CLOSE = "<|tool>", "<tool|>"
CALL_OPEN, CALL_CLOSE = "<|tool_call>", "<tool_call|>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<|tool_response>", "<tool_response|>"


class ToolError(EdgeRTError):
    """A tool that cannot be declared, or a call that cannot be read."""


@dataclass(frozen=True)
class ToolCall:
    """A call the model wrote: the tool's name and its arguments as Python values. `raw` is
    the text between <|tool_call> and <tool_call|>; `error` says why it could not be read
    (only possible when decoding was not constrained)."""

    name: str
    arguments: dict = field(default_factory=dict)
    id: str = ""
    raw: str = ""
    error: str | None = None

    def openai(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


# --- tools as schemas ---------------------------------------------------------------------------

def tool_schema(tool) -> dict:
    """A tool in OpenAI's form: a dict is checked and returned, a function is described."""
    if callable(tool) and not isinstance(tool, dict):
        return function_schema(tool)
    if not isinstance(tool, dict):
        raise ToolError(f"a tool is a dict in OpenAI's form or a Python function, not {type(tool).__name__}")
    fn = tool.get("function", tool if "name" in tool else None)
    if tool.get("type", "function") != "function" or not isinstance(fn, dict):
        raise ToolError('a tool is {"type": "function", "function": {"name": ..., "parameters": {...}}}')
    name = fn.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name):
        raise ToolError(f"a tool's name must be an identifier, got {name!r}")
    params = fn.get("parameters")
    if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
        raise ToolError(f"tool {name}: its parameters must be a JSON schema of type object")
    return {"type": "function", "function": fn}


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null",
               dict: "object", list: "array", tuple: "array"}


def _type_schema(hint) -> dict:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin is typing.Literal:
        return {"type": _JSON_TYPES.get(type(args[0]), "string"), "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) == 1:
            return {**_type_schema(kinds[0]), "nullable": True}
        return {"anyOf": [_type_schema(a) for a in args]}
    if origin in (list, tuple, Sequence) or origin is typing.Sequence:
        return {"type": "array", **({"items": _type_schema(args[0])} if args else {})}
    if origin is dict:
        return {"type": "object"}
    raise ToolError(f"cannot describe the type {hint!r} as JSON; use str, int, float, bool, list, dict "
                    "or Literal, or pass the tool as a JSON schema")


def _docstring(fn: Callable) -> tuple[str, dict[str, str]]:
    """The description (the text before an Args: section) and each argument's line."""
    doc = inspect.cleandoc(fn.__doc__ or "")
    head, _, rest = doc.partition("\nArgs:")
    args: dict[str, str] = {}
    current = None
    for line in rest.splitlines():
        if re.match(r"^\S", line):  # the next section (Returns:, Raises:)
            break
        m = re.match(r"^\s+(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
        if m:
            current = m.group(1)
            args[current] = m.group(2).strip()
        elif current and line.strip():
            args[current] += " " + line.strip()
    return " ".join(head.split()), args


def function_schema(fn: Callable) -> dict:
    """A Python function as an OpenAI tool: its name, its docstring's description and
    Args: lines, and a parameter schema from its type hints (a default makes one optional)."""
    description, arg_docs = _docstring(fn)
    hints = typing.get_type_hints(fn)
    properties, required = {}, []
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name not in hints:
            raise ToolError(f"tool {fn.__name__}: argument {name!r} needs a type hint")
        schema = _type_schema(hints[name])
        if name in arg_docs:
            schema = {"description": arg_docs[name], **schema}
        properties[name] = schema
        if p.default is p.empty:
            required.append(name)
    params = {"type": "object", "properties": properties, **({"required": required} if required else {})}
    return {"type": "function", "function": {"name": fn.__name__, "description": description, "parameters": params}}


# --- writing: the template's macros ---------------------------------------------------------------

def _dictsort(mapping: dict) -> list:
    return sorted(mapping.items(), key=lambda kv: str(kv[0]).lower())


def format_argument(value, escape_keys: bool = True) -> str:
    """A value in Gemma's object syntax (the template's format_argument)."""
    if isinstance(value, str):
        return QUOTE + value + QUOTE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ",".join((QUOTE + k + QUOTE if escape_keys else k) + ":" + format_argument(v, escape_keys)
                              for k, v in _dictsort(value)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_argument(v, escape_keys) for v in value) + "]"
    return str(value)


def _type_name(schema: dict) -> str:
    t = schema.get("type", "")
    return (t if isinstance(t, str) else (t[0] if t else "")).upper()


def _parameters(properties: dict, required) -> str:
    """The template's format_parameters: each property's description, nullability, enum,
    nested properties or items, then its type. (As there, a property named like one of the
    schema's own keywords is left out, and a nested object's list opens with a comma.)"""
    out = []
    for key, value in _dictsort(properties):
        if key in ("description", "type", "properties", "required", "nullable"):
            continue
        parts = []
        if value.get("description"):
            parts.append(f"description:{QUOTE}{value['description']}{QUOTE}")
        if value.get("nullable"):
            parts.append("nullable:true")
        kind = _type_name(value)
        text = ",".join(parts)
        if kind == "STRING" and value.get("enum"):
            text += ("," if parts else "") + "enum:" + format_argument(value["enum"])
            parts.append("enum")
        elif kind == "OBJECT":
            nested = value["properties"] if isinstance(value.get("properties"), dict) else value
            text += ",properties:{" + _parameters(nested, value.get("required") or []) + "}"
            if value.get("required"):
                text += ",required:[" + ",".join(QUOTE + r + QUOTE for r in value["required"]) + "]"
        elif kind == "ARRAY" and isinstance(value.get("items"), dict) and value["items"]:
            items = []
            for k, v in _dictsort(value["items"]):
                if v is None:
                    continue
                if k == "properties":
                    items.append("properties:{" + (_parameters(v, value["items"].get("required") or [])
                                                   if isinstance(v, dict) else "") + "}")
                elif k == "required":
                    items.append("required:[" + ",".join(QUOTE + r + QUOTE for r in v) + "]")
                elif k == "type":
                    items.append("type:" + format_argument(v.upper() if isinstance(v, str) else [t.upper() for t in v]))
                else:
                    items.append(f"{k}:" + format_argument(v))
            text += ",items:{" + ",".join(items) + "}"
        text += ("," if parts else "") + f"type:{QUOTE}{kind}{QUOTE}}}"
        out.append(f"{key}:{{" + text)
    return ",".join(out)


def declaration(tool) -> str:
    """<|tool>declaration:NAME{…}<tool|>, as the system turn holds it."""
    fn = tool_schema(tool)["function"]
    text = f"declaration:{fn['name']}{{description:{QUOTE}{fn.get('description', '')}{QUOTE}"
    params = fn.get("parameters")
    if params:
        text += ",parameters:{"
        if params.get("properties"):
            text += "properties:{" + _parameters(params["properties"], params.get("required")) + "},"
        if params.get("required"):
            text += "required:[" + ",".join(QUOTE + r + QUOTE for r in params["required"]) + "],"
        if params.get("type"):
            text += f"type:{QUOTE}{params['type'].upper()}{QUOTE}}}"
    if "response" in fn:
        response = fn["response"]
        text += ",response:{"
        if response.get("description"):
            text += f"description:{QUOTE}{response['description']}{QUOTE},"
        if _type_name(response) == "OBJECT":
            text += f"type:{QUOTE}OBJECT{QUOTE}}}"
    return TOOL_OPEN + (text + "}").strip() + TOOL_CLOSE


def render_call(name: str, arguments) -> str:
    """<|tool_call>call:NAME{key:value,…}<tool_call|> (keys bare and sorted)."""
    if isinstance(arguments, dict):
        body = ",".join(f"{k}:{format_argument(v, escape_keys=False)}" for k, v in _dictsort(arguments))
    else:
        body = str(arguments or "")
    return f"{CALL_OPEN}call:{name}{{{body}}}{CALL_CLOSE}"


def render_response(name: str, response) -> str:
    """<|tool_response>response:NAME{…}<tool_response|>: a mapping's keys, or {value:…}."""
    if isinstance(response, dict):
        body = ",".join(f"{k}:{format_argument(v, escape_keys=False)}" for k, v in _dictsort(response))
    else:
        body = "value:" + format_argument(response, escape_keys=False)
    return f"{RESPONSE_OPEN}response:{name or 'unknown'}{{{body}}}{RESPONSE_CLOSE}"


# --- reading a call back ------------------------------------------------------------------------

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_KEY = re.compile(r"[^:{}\[\],<]+")


class _Reader:
    """Gemma's object syntax -> Python values (a recursive descent over the text)."""

    def __init__(self, text: str):
        self.text, self.i = text, 0

    def fail(self, what: str):
        near = self.text[self.i:self.i + 20]
        raise ToolError(f"expected {what} at character {self.i} of the call, found {near!r}")

    def take(self, s: str) -> bool:
        if self.text.startswith(s, self.i):
            self.i += len(s)
            return True
        return False

    def quoted(self, what: str) -> str:
        """The text up to the closing <|"|> (the opening one was taken)."""
        end = self.text.find(QUOTE, self.i)
        if end < 0:
            self.fail(f"the end of {what}")
        s, self.i = self.text[self.i:end], end + len(QUOTE)
        return s

    def value(self):
        if self.take(QUOTE):
            return self.quoted("a string")
        if self.text.startswith("{", self.i):
            return self.mapping()
        if self.take("["):
            items = []
            if not self.take("]"):
                items.append(self.value())
                while self.take(","):
                    items.append(self.value())
                if not self.take("]"):
                    self.fail("',' or ']'")
            return items
        for word, v in (("true", True), ("false", False), ("null", None), ("None", None)):
            if self.take(word):
                return v
        m = _NUMBER.match(self.text, self.i)
        if not m:
            self.fail("a value")
        self.i = m.end()
        return float(m.group()) if m.group(1) or m.group(2) else int(m.group())

    def key(self) -> str:
        if self.take(QUOTE):
            return self.quoted("a key")
        m = _KEY.match(self.text, self.i)
        if not m:
            self.fail("a key")
        self.i = m.end()
        return m.group().strip()

    def mapping(self) -> dict:
        if not self.take("{"):
            self.fail("'{'")
        out = {}
        if self.take("}"):
            return out
        while True:
            k = self.key()
            if not self.take(":"):
                self.fail("':'")
            out[k] = self.value()
            if self.take("}"):
                return out
            if not self.take(","):
                self.fail("',' or '}'")


def parse_call(text: str) -> tuple[str, dict]:
    """`call:NAME{…}` (the text between <|tool_call> and <tool_call|>) -> (name, arguments)."""
    text = text.strip()
    if text.endswith(CALL_CLOSE):
        text = text[:-len(CALL_CLOSE)]
    m = re.match(r"call:([^{\s]+)", text)
    if not m:
        raise ToolError(f"a tool call starts with call:NAME{{, got {text[:30]!r}")
    reader = _Reader(text)
    reader.i = m.end()
    arguments = reader.mapping()
    if reader.text[reader.i:].strip():
        reader.fail("the end of the call")
    return m.group(1), arguments


# --- OpenAI's tool messages in the template's form ------------------------------------------------

def _arguments(call: dict):
    args = call.get("function", call).get("arguments", {})
    if isinstance(args, str):
        try:
            return json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return args  # written as it is, as the template does with a string
    return args


def response_value(content):
    """A tool message's content as the template writes it: parsed when it is JSON."""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if isinstance(content, str):
        try:
            return json.loads(content)
        except json.JSONDecodeError:
            return content
    return content


def fold_tool_messages(messages: Sequence[dict]) -> list[dict]:
    """OpenAI's sequence — an assistant message with tool_calls, one {"role": "tool"} message
    per result, then the assistant's answer — as the one model turn the Gemma 4 template
    writes: the assistant message with `tool_calls`, `tool_responses` and `content` (as
    llama.cpp does before applying the template). A result's name is its call's, by position
    (or by tool_call_id, then the message's own name)."""
    out: list[dict] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        if m.get("role") != "assistant" or not m.get("tool_calls"):
            if m.get("role") == "tool":
                raise ToolError("a tool message must follow the assistant message whose tool_calls it answers")
            out.append(m)
            i += 1
            continue
        calls = [{"function": {"name": c.get("function", c)["name"], "arguments": _arguments(c)}, "id": c.get("id")}
                 for c in m["tool_calls"]]
        responses = list(m.get("tool_responses") or [])
        i += 1
        while i < len(messages) and messages[i].get("role") == "tool":
            r = messages[i]
            by_id = {c["id"]: c["function"]["name"] for c in calls if c.get("id")}
            name = (by_id.get(r.get("tool_call_id")) or r.get("name")
                    or (calls[len(responses)]["function"]["name"] if len(responses) < len(calls) else "unknown"))
            responses.append({"name": name, "response": response_value(r.get("content"))})
            i += 1
        turn = {"role": "assistant", "tool_calls": calls}
        if responses:
            turn["tool_responses"] = responses
        content = m.get("content")
        if (responses and i < len(messages) and messages[i].get("role") == "assistant"
                and not messages[i].get("tool_calls") and messages[i].get("content")):
            content = messages[i]["content"]
            i += 1
        if content:
            turn["content"] = content
        out.append(turn)
    return out


def tool_choice_name(choice, tools: Sequence[dict]) -> str | None:
    """OpenAI's tool_choice as "auto", "none", "required" or a tool's name."""
    if choice is None:
        return "auto"
    if isinstance(choice, dict):
        name = choice.get("function", {}).get("name")
        if name not in {t["function"]["name"] for t in tools}:
            raise ToolError(f"tool_choice names {name!r}, which is not among the tools")
        return name
    if choice not in ("auto", "none", "required"):
        raise ToolError(f'tool_choice is "auto", "none", "required" or {{"type": "function", "function": '
                        f'{{"name": ...}}}}, not {choice!r}')
    return choice


def run_calls(calls: Sequence[ToolCall], functions: Sequence[Callable]) -> list[dict]:
    """Run each call with the Python function of its name; their results as OpenAI's tool
    messages (what ChatSession.stream_results and Model.chat take). A call that could not be
    read, names no function or raises gets an {"error": ...} result, which the model reads."""
    table = {f.__name__: f for f in functions if is_function(f)}
    out = []
    for call in calls:
        if call.error:
            result = {"error": call.error}
        elif call.name not in table:
            result = {"error": f"there is no tool named {call.name!r}"}
        else:
            try:
                result = table[call.name](**call.arguments)
            except Exception as e:  # the tool's own failure is the model's to read
                result = {"error": f"{type(e).__name__}: {e}"}
        content = result if isinstance(result, str) else json.dumps(result, default=str, ensure_ascii=False)
        out.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": content})
    return out


def tools_of(tools) -> list[dict]:
    return [tool_schema(t) for t in (tools or [])]


def is_function(tool: Any) -> bool:
    return callable(tool) and not isinstance(tool, dict)
