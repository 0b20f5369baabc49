"""Gemma's prompt formats, as the official chat templates render them, and the split of
a reply into thought and answer.

Gemma 4 (chat_template.jinja of google/gemma-4-*-it):

    <bos><|turn>system\\n{<|think|>\\n}{system}<turn|>\\n
    <|turn>user\\n{text}<turn|>\\n
    <|turn>model\\n{text}<turn|>\\n ... <|turn>model\\n

The system turn is native; it is written when there is a system message or when
thinking is on. A model turn may open with a thought channel,
`<|channel>thought\\n ... <channel|>`, that the template strips from history.

Gemma 3 (google/gemma-3-*-it) has no system turn and no thinking: the system text and
a blank line head the first turn.

    <bos><start_of_turn>user\\n{system\\n\\n}{text}<end_of_turn>\\n ... <start_of_turn>model\\n
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from edgert.errors import EdgeRTError

THINK = "<|think|>"
CHANNEL_OPEN, CHANNEL_CLOSE = "<|channel>", "<channel|>"
ROLES = ("system", "developer", "user", "assistant", "model")


@dataclass(frozen=True)
class ChatFormat:
    open: str  # opens a turn, before the role
    close: str  # ends a turn; the model's stop token
    native_system: bool  # a system turn of its own, else the system text heads the first turn
    thinking: bool  # has a thinking mode

    def system_turn(self, system: str | None, think: bool) -> str:
        """What follows <bos> before the first turn."""
        if think and not self.thinking:
            raise EdgeRTError("this model has no thinking mode (Gemma 3); chat without think=True")
        if not self.native_system or (not system and not think):
            return ""
        return f"{self.open}system\n" + (f"{THINK}\n" if think else "") + (system or "").strip() + f"{self.close}\n"

    def first_turn_prefix(self, system: str | None) -> str:
        """What heads the first turn's text: the system text where there is no system turn."""
        return "" if self.native_system or not system else system.strip() + "\n\n"

    def turn(self, role: str, content, prefix: str = "") -> str:
        role = "model" if role == "assistant" else role
        text = strip_thinking(render_content(content)) if role == "model" else render_content(content)
        return f"{self.open}{role}\n{prefix}{text}{self.close}\n"

    def generation_prompt(self) -> str:
        return f"{self.open}model\n"

    def render(self, messages: Iterable[dict], add_generation_prompt: bool = True, think: bool = False,
               bos: str = "<bos>") -> str:
        """The prompt text for `messages` ([{"role": "system"|"user"|"assistant", "content": ...}])."""
        messages = list(messages)
        for m in messages:
            if m.get("role") not in ROLES:
                raise EdgeRTError(f"unknown chat role {m.get('role')!r}; use system, user or assistant")
        system = None
        if messages and messages[0]["role"] in ("system", "developer"):
            system = render_content(messages[0]["content"])
            messages = messages[1:]
        prefix = self.first_turn_prefix(system)
        text = bos + self.system_turn(system, think) + "".join(
            self.turn(m["role"], m["content"], prefix if i == 0 else "") for i, m in enumerate(messages))
        return text + (self.generation_prompt() if add_generation_prompt else "")


GEMMA4 = ChatFormat(open="<|turn>", close="<turn|>", native_system=True, thinking=True)
GEMMA3 = ChatFormat(open="<start_of_turn>", close="<end_of_turn>", native_system=False, thinking=False)
FORMATS = {"gemma4": GEMMA4, "gemma3": GEMMA3}


def render_content(content) -> str:
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
