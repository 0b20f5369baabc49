"""Gemma's prompt formats, as the official chat templates render them, and the split of
a reply into thought and answer.

Gemma 4 (chat_template.jinja of google/gemma-4-*-it):

    <bos><|turn>system\\n{<|think|>\\n}{system}{<|tool>declaration:…<tool|>…}<turn|>\\n
    <|turn>user\\n{text}<turn|>\\n
    <|turn>model\\n{<|tool_call>call:…<tool_call|><|tool_response>response:…<tool_response|>}{text}<turn|>\\n
    ... <|turn>model\\n{<|channel>thought\\n<channel|>}

The system turn is native; it is written when there is a system message, tools, or when
thinking is on. A model turn may open with a thought channel,
`<|channel>thought\\n ... <channel|>`, that the template strips from history; with thinking
off, the generation prompt closes an empty one. A model turn that called tools holds the
calls and their results, and goes on with the answer (edgert.text.tools).

Gemma 3 (google/gemma-3-*-it) has no system turn, no thinking and no tools: the system text
and a blank line head the first turn.

    <bos><start_of_turn>user\\n{system\\n\\n}{text}<end_of_turn>\\n ... <start_of_turn>model\\n
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from edgert.errors import EdgeRTError
from edgert.text import tools as T

THINK = "<|think|>"
CHANNEL_OPEN, CHANNEL_CLOSE = "<|channel>", "<channel|>"
ROLES = ("system", "developer", "user", "assistant", "model", "tool")
EMPTY_THOUGHT = f"{CHANNEL_OPEN}thought\n{CHANNEL_CLOSE}"


@dataclass(frozen=True)
class ChatFormat:
    open: str  # opens a turn, before the role
    close: str  # ends a turn; the model's stop token
    native_system: bool  # a system turn of its own, else the system text heads the first turn
    thinking: bool  # has a thinking mode

    def system_turn(self, system: str | None, think: bool, tools: Sequence = ()) -> str:
        """What follows <bos> before the first turn: the system text and the tools' declarations."""
        if think and not self.thinking:
            raise EdgeRTError("this model has no thinking mode (Gemma 3); chat without think=True")
        if tools and not self.thinking:
            raise EdgeRTError("this model has no tool format (Gemma 3); chat without tools")
        if not self.native_system or (not system and not think and not tools):
            return ""
        return (f"{self.open}system\n" + (f"{THINK}\n" if think else "") + (system or "").strip()
                + "".join(T.declaration(t) for t in tools) + f"{self.close}\n")

    def first_turn_prefix(self, system: str | None) -> str:
        """What heads the first turn's text: the system text where there is no system turn."""
        return "" if self.native_system or not system else system.strip() + "\n\n"

    def turn(self, role: str, content, prefix: str = "", calls: Sequence[dict] = (),
             responses: Sequence[dict] = ()) -> str:
        """One turn; a model turn that called tools holds its calls and their results first,
        and stays open for the answer when it has none yet."""
        role = "model" if role == "assistant" else role
        text = strip_thinking(render_content(content)) if role == "model" else render_content(content)
        tools = "".join(T.render_call(c["function"]["name"], c["function"].get("arguments")) for c in calls) + \
            "".join(T.render_response(r.get("name"), r.get("response")) for r in responses)
        end = "" if responses and not text else f"{self.close}\n"
        return f"{self.open}{role}\n{prefix}{tools}{text}{end}"

    def generation_prompt(self, think: bool = False, after_results: bool = False) -> str:
        """What the model's answer follows: its turn's header (unless it goes on after tool
        results), then an empty thought channel when the model can think but should not."""
        return ("" if after_results else f"{self.open}model\n") + (EMPTY_THOUGHT if self.thinking and not think else "")

    def render(self, messages: Iterable[dict], add_generation_prompt: bool = True, think: bool = False,
               bos: str = "<bos>", tools: Sequence = ()) -> str:
        """The prompt text for `messages` ([{"role": "system"|"user"|"assistant"|"tool", "content": ...}],
        an assistant message may carry OpenAI's tool_calls, answered by "tool" messages) and `tools`."""
        messages = list(messages)
        for m in messages:
            if m.get("role") not in ROLES:
                raise EdgeRTError(f"unknown chat role {m.get('role')!r}; use system, user, assistant or tool")
        messages = T.fold_tool_messages(messages)
        system = None
        if messages and messages[0]["role"] in ("system", "developer"):
            system = render_content(messages[0]["content"])
            messages = messages[1:]
        prefix = self.first_turn_prefix(system)
        text = bos + self.system_turn(system, think, [T.tool_schema(t) for t in tools]) + "".join(
            self.turn(m["role"], m.get("content"), prefix if i == 0 else "", m.get("tool_calls") or (),
                      m.get("tool_responses") or ())
            for i, m in enumerate(messages))
        if not add_generation_prompt:
            return text
        last = messages[-1] if messages else {}
        return text + self.generation_prompt(think, bool(last.get("tool_responses")) and not last.get("content"))


GEMMA4 = ChatFormat(open="<|turn>", close="<turn|>", native_system=True, thinking=True)
GEMMA3 = ChatFormat(open="<start_of_turn>", close="<end_of_turn>", native_system=False, thinking=False)
FORMATS = {"gemma4": GEMMA4, "gemma3": GEMMA3}


def render_content(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content.strip()
    parts = []
    for item in content:
        if item.get("type") == "text":
            parts.append(item["text"].strip())
        else:
            raise EdgeRTError(f"message part of type {item.get('type')!r} is not supported in text chat")
    return "".join(parts)


def strip_thinking(text: str) -> str:
    """Drop a thought channel from a model message, as the template does for history."""
    while CHANNEL_OPEN in text and CHANNEL_CLOSE in text:
        a = text.index(CHANNEL_OPEN)
        b = text.index(CHANNEL_CLOSE, a) + len(CHANNEL_CLOSE)
        text = text[:a] + text[b:]
    return text.strip()
