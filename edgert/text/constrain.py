"""Constrained decoding: the glue between a model's tokenizer and llguidance, which keeps
a grammar's state and says which token ids may come next.

Two constraints, both used as a wrapper around a sampler (mask the logits, sample, tell
the constraint what was sampled), so generation itself knows nothing of them:

- ToolCalls: a model turn that may call tools. Text is free until the model opens a call
  (<|tool_call>), or opens one at once when a call is required; the call is then held to
  Gemma's call syntax and to the JSON schema of the tool it names (a grammar written here
  from the schemas), and after <tool_call|> only another call or the end may follow.
- Structured: an answer that is one JSON value valid against a schema (OpenAI's
  response_format), with llguidance's own JSON-schema compiler.

With thinking on, either begins only when the thought channel closes."""

from __future__ import annotations

import json
from typing import Callable, Sequence

import llguidance
import numpy as np

from edgert.errors import EdgeRTError
from edgert.text import tools as T
from edgert.text.chat import CHANNEL_CLOSE
from edgert.text.tokenizer import CONTROL, Tokenizer

NEG_INF = np.float32(-np.inf)


class GrammarError(EdgeRTError):
    """A schema that cannot be used to constrain decoding."""


def lltokenizer(tokenizer: Tokenizer, stop_ids: Sequence[int]) -> llguidance.LLTokenizer:
    """llguidance's view of the vocabulary: each id's bytes, control tokens marked with a
    0xFF byte as llguidance expects; the stop ids are what ends a grammar. Built once per
    tokenizer and stop set (about a second for Gemma's 262144 ids)."""
    key = tuple(sorted(stop_ids))
    cache = tokenizer.__dict__.setdefault("_llguidance", {})
    if key not in cache:
        class Vocabulary:
            eos_token_id = key[0]
            bos_token_id = tokenizer.bos
            special_token_ids: list[int] = []
            tokens = [b"\xff" + tokenizer.tokens.raw(i) if tokenizer.types[i] == CONTROL else tokenizer.token_bytes(i)
                      for i in range(tokenizer.vocab_size)]

            def __call__(self, text: bytes) -> list[int]:
                return tokenizer.encode(text.decode("utf-8", errors="replace"), parse_special=False)

        cache[key] = llguidance.LLTokenizer(llguidance.TokenizerWrapper(Vocabulary()), eos_token=list(key))
    return cache[key]


# --- Gemma's call syntax as a grammar, from the tools' JSON schemas -----------------------------

_INTEGER = r"/-?(0|[1-9][0-9]{0,17})/"
_NUMBER = r"/-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,17})?([eE][+-]?[0-9]{1,3})?/"


class _CallGrammar:
    """A Lark grammar (llguidance's dialect) for `call:NAME{…}<tool_call|>`: keys in the
    order the template sorts them, required ones present, no others; values as the schema
    says (type, enum/const, properties, items, anyOf/oneOf, nullable, maxLength,
    minItems/maxItems). A schema keyword not listed is not enforced."""

    def __init__(self, quote_id: int):
        self.q = f"<[{quote_id}]>"
        self.rules: dict[str, str] = {}  # name -> body
        self.names: dict[str, str] = {}  # body -> name

    def rule(self, body: str, hint: str = "r") -> str:
        if body not in self.names:
            name = f"{hint}_{len(self.rules)}"
            self.rules[name], self.names[body] = body, name
        return self.names[body]

    def literal(self, value) -> str:
        if isinstance(value, str):
            return f"{self.q} {json.dumps(value, ensure_ascii=False)} {self.q}"
        return json.dumps(T.format_argument(value, escape_keys=False))

    def value(self, schema) -> str:
        if schema is True or schema == {} or schema is None:
            return self.any()
        if not isinstance(schema, dict):
            raise GrammarError(f"a schema is an object, got {schema!r}")
        if "$ref" in schema:
            raise GrammarError("tool schemas with $ref are not supported; write the referenced schema in place")
        if "const" in schema:
            return self.literal(schema["const"])
        if "enum" in schema:
            if not schema["enum"]:
                raise GrammarError("an enum needs at least one value")
            return "(" + " | ".join(self.literal(v) for v in schema["enum"]) + ")"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return "(" + " | ".join(self.value({**{k: v for k, v in schema.items() if k != key}, **s})
                                        for s in schema[key]) + ")"
        kinds = schema.get("type")
        if kinds is None:
            return self.any()
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        if schema.get("nullable") and "null" not in kinds:
            kinds.append("null")
        return "(" + " | ".join(self.typed(k, schema) for k in kinds) + ")"

    def typed(self, kind: str, schema: dict) -> str:
        if kind == "string":
            lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
            body = "." + ("{%d,%d}" % (lo, int(hi)) if hi is not None else "{%d,}" % lo)
            return f"{self.q} /(?s:{body})/ {self.q}"
        if kind == "integer":
            return _INTEGER
        if kind == "number":
            return _NUMBER
        if kind == "boolean":
            return '("true" | "false")'
        if kind == "null":
            return '"null"'
        if kind == "array":
            item = self.value(schema.get("items", {}))
            lo, hi = int(schema.get("minItems", 0)), schema.get("maxItems")
            return self.rule(self.sequence(item, lo, None if hi is None else int(hi)), "array")
        if kind == "object":
            return self.mapping(schema)
        raise GrammarError(f"unknown JSON schema type {kind!r}")

    def sequence(self, item: str, lo: int, hi: int | None) -> str:
        """'[' items ']' with lo..hi items."""
        if hi is not None and hi < lo:
            raise GrammarError(f"maxItems {hi} is below minItems {lo}")
        more = f'("," {item})'
        if lo == 0:
            inner = f"{item} {more}{'*' if hi is None else '{0,%d}' % (hi - 1)}" if hi != 0 else ""
            return f'"[" ({inner})? "]"' if inner else '"[" "]"'
        tail = "*" if hi is None else "{%d,%d}" % (lo - 1, hi - 1)
        return f'"[" {item} {more}{tail} "]"'

    def mapping(self, schema: dict) -> str:
        props = schema.get("properties")
        if not props:
            key = r"/[A-Za-z_][A-Za-z0-9_]*/"
            member = f'{key} ":" {self.any()}'
            return self.rule(f'"{{" ({member} ("," {member})*)? "}}"', "mapping")
        required = set(schema.get("required") or [])
        unknown = required - set(props)
        if unknown:
            raise GrammarError(f"required {sorted(unknown)} are not among the properties")
        keys = sorted(props, key=str.lower)
        # first[i]: members i.. with none written yet; rest[i]: with one written (a comma first)
        first, rest = ['""'] * (len(keys) + 1), ['""'] * (len(keys) + 1)
        for i in range(len(keys) - 1, -1, -1):
            k = keys[i]
            member = f"{json.dumps(k + ':')} {self.value(props[k])}"
            with_it = self.rule(f"{member} {rest[i + 1]}", "member")
            with_comma = self.rule(f'"," {member} {rest[i + 1]}', "member")
            if k in required:
                first[i], rest[i] = with_it, with_comma
            else:
                first[i] = self.rule(f"{with_it} | {first[i + 1]}", "member")
                rest[i] = self.rule(f"{with_comma} | {rest[i + 1]}", "member")
        return self.rule(f'"{{" {first[0]} "}}"', "object")

    def any(self) -> str:
        if "any" not in self.rules:  # a rule of its own: it refers to itself
            string, key = f"{self.q} /(?s:.*)/ {self.q}", r"/[A-Za-z_][A-Za-z0-9_]*/"
            member = f'{key} ":" any'
            self.rules["any"] = (f'{string} | {_NUMBER} | "true" | "false" | "null" | "[" (any ("," any)*)? "]" '
                                 f'| "{{" ({member} ("," {member})*)? "}}"')
        return "any"

    def text(self, start: str) -> str:
        return "\n".join([f"start: {start}"] + [f"{name}: {body}" for name, body in self.rules.items()])


def call_grammar(tools: Sequence[dict], quote_id: int, close_id: int, only: str | None = None) -> str:
    """The Lark grammar of one call to any of `tools` (or to the one named `only`)."""
    g = _CallGrammar(quote_id)
    alternatives = []
    for tool in tools:
        fn = tool["function"]
        if only is not None and fn["name"] != only:
            continue
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        alternatives.append(f"{json.dumps(fn['name'])} {g.mapping(params)}")
    return llguidance.LLMatcher.grammar_from_lark(g.text(f'"call:" ({" | ".join(alternatives)}) <[{close_id}]>'))


def json_grammar(schema: dict) -> str:
    """The grammar of one compact JSON value valid against `schema` (OpenAI's response_format)."""
    if not isinstance(schema, dict):
        raise GrammarError("response_format's schema must be a JSON object")
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides={"whitespace_flexible": False})
    except ValueError as e:
        raise GrammarError(f"response_format's schema is not valid JSON Schema: {e}") from None


def response_schema(response_format) -> dict | None:
    """The JSON schema of a response_format: OpenAI's {"type": "json_schema", "json_schema":
    {"schema": …}} or {"type": "json_object"}, Ollama's "json" or a schema, or a bare schema."""
    if response_format is None or response_format == {"type": "text"}:
        return None
    if response_format in ("json", {"type": "json_object"}):
        return {"type": "object"}
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise GrammarError('response_format {"type": "json_schema"} needs {"json_schema": {"schema": {...}}}')
        return schema
    if isinstance(response_format, dict):
        return response_format
    raise GrammarError(f"response_format is a JSON schema or OpenAI's response_format, not {response_format!r}")


def check(grammar: str, tok: llguidance.LLTokenizer, what: str) -> str:
    error = llguidance.LLMatcher.validate_grammar(grammar, tok)
    if error:
        raise GrammarError(f"{what} cannot be used to constrain decoding: {error}")
    return grammar


# --- the constraints ------------------------------------------------------------------------------

class Constraint:
    """Masks logits and follows what was sampled. While `thinking` (the thought channel is
    still open), nothing is masked."""

    def __init__(self, tokenizer: Tokenizer, stop_ids: Sequence[int], think: bool):
        self.tok = lltokenizer(tokenizer, stop_ids)
        self.n_vocab = tokenizer.vocab_size
        self.stop_ids = sorted(stop_ids)
        self.channel_close = tokenizer.token_id(CHANNEL_CLOSE)
        self.thinking = think
        self._bits = np.zeros((1, (self.tok.vocab_size + 31) // 32), dtype=np.int32)

    def _matcher(self, grammar: str) -> llguidance.LLMatcher:
        m = llguidance.LLMatcher(self.tok, grammar)
        if m.is_error():
            raise GrammarError(m.get_error())
        return m

    def _allowed(self, matcher: llguidance.LLMatcher) -> np.ndarray:
        matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little")[:self.n_vocab].astype(bool)

    def _only(self, ids) -> np.ndarray:
        """A mask allowing `ids` alone."""
        allowed = np.zeros(self.n_vocab, dtype=bool)
        allowed[list(ids)] = True
        return allowed

    def mask(self, logits: np.ndarray) -> np.ndarray:
        if self.thinking:
            return logits
        allowed = self.allowed()
        if allowed is None:
            return logits
        if len(allowed) < len(logits):  # ids past the tokenizer's (padding rows of the table)
            allowed = np.concatenate([allowed, np.zeros(len(logits) - len(allowed), dtype=bool)])
        out = np.where(allowed[:len(logits)], logits, NEG_INF)
        if not np.isfinite(out).any():  # nothing allowed (cannot happen with a valid grammar): end the turn
            out[self.stop_ids[0]] = 0.0
        return out

    def accept(self, token: int) -> None:
        if self.thinking:
            self.thinking = token != self.channel_close
            return
        self.advance(token)

    def allowed(self) -> np.ndarray | None:
        raise NotImplementedError

    def advance(self, token: int) -> None:
        raise NotImplementedError


class ToolCalls(Constraint):
    """A model turn that may call `tools`. choice: "auto" (the model decides), "required"
    (a call comes first), "none" (no call), or a tool's name (a call to that tool)."""

    def __init__(self, tokenizer: Tokenizer, stop_ids: Sequence[int], tools: Sequence[dict], choice: str,
                 think: bool = False):
        super().__init__(tokenizer, stop_ids, think)
        ids = {s: tokenizer.token_id(s) for s in (T.CALL_OPEN, T.CALL_CLOSE, T.QUOTE, T.RESPONSE_OPEN)}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise GrammarError(f"the model's vocabulary has no {', '.join(missing)}: it has no tool format")
        self.open, self.response = ids[T.CALL_OPEN], ids[T.RESPONSE_OPEN]
        only = None if choice in ("auto", "required", "none") else choice
        self.choice = choice
        self.grammar = check(call_grammar(tools, ids[T.QUOTE], ids[T.CALL_CLOSE], only), self.tok,
                             "the tools' parameter schemas")
        self.state = "free"
        self.matcher: llguidance.LLMatcher | None = None

    def allowed(self) -> np.ndarray | None:
        if self.state == "call":
            return self._allowed(self.matcher)
        if self.state == "after":  # another call, or the end of the turn
            return self._only([self.open, self.response, *self.stop_ids])
        if self.choice == "none":
            allowed = np.ones(self.n_vocab, dtype=bool)
            allowed[self.open] = False
            return allowed
        if self.choice != "auto":
            return self._only([self.open])
        return None

    def advance(self, token: int) -> None:
        if self.state == "call":
            if not self.matcher.consume_token(token):
                raise GrammarError(f"token {token} broke the call grammar: {self.matcher.get_error()}")
            if self.matcher.is_stopped():
                self.state = "after"
        elif token == self.open:
            self.state, self.matcher = "call", self._matcher(self.grammar)


class Structured(Constraint):
    """An answer that is one JSON value valid against `schema`."""

    def __init__(self, tokenizer: Tokenizer, stop_ids: Sequence[int], schema: dict, think: bool = False):
        super().__init__(tokenizer, stop_ids, think)
        self.matcher = self._matcher(check(json_grammar(schema), self.tok, "response_format's schema"))

    def allowed(self) -> np.ndarray:
        if self.matcher.is_stopped():
            return self._only(self.stop_ids)
        return self._allowed(self.matcher)

    def advance(self, token: int) -> None:
        if token in self.stop_ids or self.matcher.is_stopped():
            return
        if not self.matcher.consume_token(token):
            raise GrammarError(f"token {token} broke the JSON grammar: {self.matcher.get_error()}")


def constrained(sampler: Callable, constraint: Constraint | None) -> Callable:
    """`sampler` drawing only what `constraint` allows, and telling it what was drawn."""
    if constraint is None:
        return sampler

    def sample(logits: np.ndarray, history: Sequence[int]) -> int:
        token = sampler(constraint.mask(logits), history)
        constraint.accept(token)
        return token

    return sample
