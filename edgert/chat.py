"""Gemma 4's prompt format, as its official chat template (chat_template.jinja of
google/gemma-4-*-it) renders it, and the split of a reply into thought and answer.

    <bos><|turn>system\n{<|think|>\n}{system}<turn|>\n
    <|turn>user\n{text}<turn|>\n
    <|turn>model\n{text}<turn|>\n ... <|turn>model\n

The system turn is native; it is written when there is a system message or when
thinking is on. A model turn may open with a thought channel,
`<|channel>thought\n ... <channel|>`, that the template strips from history."""

from __future__ import annotations

from typing import Iterable

from edgert.errors import EdgeRTError

TURN, END = "<|turn>", "<turn|>"
THINK = "<|think|>"
CHANNEL_OPEN, CHANNEL_CLOSE = "<|channel>", "<channel|>"


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


def system_turn(system: str | None, think: bool) -> str:
    if not system and not think:
        return ""
    return f"{TURN}system\n" + (f"{THINK}\n" if think else "") + (system or "").strip() + f"{END}\n"


def turn(role: str, content) -> str:
    role = "model" if role == "assistant" else role
    text = strip_thinking(render_content(content)) if role == "model" else render_content(content)
    return f"{TURN}{role}\n{text}{END}\n"


def render(messages: Iterable[dict], add_generation_prompt: bool = True, think: bool = False,
           bos: str = "<bos>") -> str:
    """The prompt text for `messages` ([{"role": "system"|"user"|"assistant", "content": ...}])."""
    messages = list(messages)
    for m in messages:
        if m.get("role") not in ("system", "developer", "user", "assistant", "model"):
            raise EdgeRTError(f"unknown chat role {m.get('role')!r}; use system, user or assistant")
    system = None
    if messages and messages[0]["role"] in ("system", "developer"):
        system = render_content(messages[0]["content"])
        messages = messages[1:]
    text = bos + system_turn(system, think) + "".join(turn(m["role"], m["content"]) for m in messages)
    return text + (f"{TURN}model\n" if add_generation_prompt else "")
