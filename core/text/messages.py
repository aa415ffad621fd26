"""Conversations as they arrive (openai-style dicts, gradio ChatMessages, gradio content blocks) made into plain
{"role", "content"} messages, and the bounds a conversation is held to before any of it is tokenized.

    >>> normalize_messages([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    [{'role': 'user', 'content': 'Hi'}]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core import checks
from core.checks import quote
from core.errors import InvalidInputError

ROLES = ("system", "user", "assistant")


def flatten_content(content: Any, where: str = "content") -> str:
    """gradio 6 message content (a string, or a list of blocks) as plain text for a string chat template."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        if content.get("type") == "text" or "text" in content:
            return flatten_content(content.get("text"), where)
        name = content.get("path") or content.get("url") or (content.get("file") or {}).get("path") or "file"
        return f"[attachment: {str(name).rsplit('/', 1)[-1]}]"
    if isinstance(content, (list, tuple)):
        return "".join(flatten_content(part, where) for part in content)
    raise InvalidInputError(f"{where} must be text; got {quote(content)}.")


def normalize_messages(history: Any) -> list[dict[str, str]]:
    """Accept openai-style dicts (or gradio ChatMessage objects) and return plain {"role", "content"} dicts; anything
    else is an InvalidInputError naming the item."""
    if history is None:
        return []
    if not isinstance(history, (list, tuple)):
        raise InvalidInputError(f'history must be a list of messages like {{"role": "user", "content": "Hi"}}; '
                                f"got {quote(history)}.")
    out: list[dict[str, str]] = []
    for i, item in enumerate(history):
        if not isinstance(item, dict):
            if not hasattr(item, "role"):
                raise InvalidInputError(f'history item {i} is not a message like {{"role": "user", "content": '
                                        f'"Hi"}}; got {quote(item)}.')
            item = {"role": item.role, "content": getattr(item, "content", None),
                    "metadata": getattr(item, "metadata", None)}
        role = item.get("role")
        if role not in ROLES:
            shown = "no role" if role is None else f"role {quote(role)}"
            raise InvalidInputError(f"history item {i} has {shown}; expected one of {', '.join(ROLES)}.")
        meta = item.get("metadata") or {}
        if role == "assistant" and isinstance(meta, dict) and meta.get("title"):
            continue  # a stats/thought bubble the UI added, not part of the conversation
        out.append({"role": role, "content": flatten_content(item.get("content"), f"history item {i}'s content")})
    return out


def check_history(messages: list[dict[str, str]], max_messages: int, max_chars: int) -> None:
    """Refuse a conversation beyond the server's bounds before any of it is tokenized."""
    if len(messages) > max_messages:
        raise InvalidInputError(f"The history has {len(messages):,} messages; the limit is {max_messages:,}. Send "
                                "only the newest ones: the model's context cannot hold more than a few thousand.")
    total = 0
    for i, message in enumerate(messages):
        total += len(message["content"])
        if total > max_chars:
            raise InvalidInputError(f"The history holds more than {max_chars:,} characters; that is the limit. "
                                    "Send only the newest messages.")
        checks.text(message["content"], f"history item {i}", max_chars)


def newest_within(history: Sequence[Any], max_messages: int, max_chars: int) -> list[Any]:
    """The newest messages of `history` within the bounds of `check_history`: a long conversation in the UI keeps
    working, its oldest messages left out (they would not fit the context anyway)."""
    kept: list[Any] = []
    total = 0
    for item in reversed(history):
        content = item.get("content") if isinstance(item, dict) else getattr(item, "content", None)
        total += len(content) if isinstance(content, str) else 0
        if len(kept) >= max_messages or total > max_chars:
            break
        kept.append(item)
    kept.reverse()
    return kept
