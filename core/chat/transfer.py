"""Conversations as files a person exports and imports: OpenAI's messages ([{"role", "content"}]) with the system
prompt, the settings and the title beside them; one conversation per file, or the whole list in one.

An imported file is untrusted: it is refused with a sentence naming what is wrong (too large, not text, a web page,
not JSON, the wrong shape, a value out of range) before anything is stored, and its text is only ever shown as text.
A plain OpenAI messages list imports too, a leading system message becoming the system prompt.

    name, text = export_one(conversation)
    read_import(text.encode(), now_ms())[0].messages == conversation.messages
    # True
"""

from __future__ import annotations

import json
import re
from typing import Any

from core import checks
from core.chat.conversation import (
    MAX_SYSTEM_PROMPT_CHARS,
    ChatSettings,
    Conversation,
    Message,
    check_title,
    checked_messages,
    default_title,
)
from core.chat.store import MAX_CONVERSATIONS, Store
from core.checks import quote
from core.errors import InvalidInputError

ONE = "token-lab/conversation"
ALL = "token-lab/conversations-export"
VERSION = 1
MAX_IMPORT_BYTES = 4_000_000
SHAPE = ('a conversation is an object with "messages" (a list like [{"role": "user", "content": "Hi"}]), an export '
         'of several has them in a list under "conversations", or the file is a plain list of messages')


def exported(conversation: Conversation) -> dict[str, Any]:
    """One conversation in the export shape: messages as OpenAI's, without stats or probabilities."""
    return {"format": ONE, "version": VERSION, "title": conversation.title,
            "system_prompt": conversation.system_prompt, "settings": conversation.settings.as_dict(),
            "messages": [{"role": m["role"], "content": m["content"]} for m in conversation.messages]}


def _file_name(stem: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", stem).strip("-").lower()[:40].strip("-")
    return f"token-lab-{slug or 'conversation'}.json"


def _text(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1)


def export_one(conversation: Conversation) -> tuple[str, str]:
    """A file name (ASCII, from the title) and the JSON text of one conversation."""
    return _file_name(conversation.title), _text(exported(conversation))


def export_all(store: Store) -> tuple[str, str]:
    """A file name and the JSON text of every kept conversation, newest first."""
    return "token-lab-conversations.json", _text({"format": ALL, "version": VERSION, "conversations": [
        exported(c) for c in store.newest_first()]})


def check_import_size(size: int) -> None:
    """Refuse a file too large to be conversations this browser could keep, before it is read."""
    if size > MAX_IMPORT_BYTES:
        raise InvalidInputError(f"The file is {size / 1e6:.1f} MB; a conversation file may be at most "
                                f"{MAX_IMPORT_BYTES / 1e6:.0f} MB. Nothing was imported.")


def _decoded(raw: bytes) -> Any:
    check_import_size(len(raw))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError("The file is not text (UTF-8); export a conversation from Token Lab to get a file "
                                "that imports. Nothing was imported.") from None
    if text.lstrip()[:1] == "<":
        raise InvalidInputError(f"The file is HTML or XML (it starts with {quote(text.lstrip(), 20)}), not a "
                                "conversation exported as JSON. Nothing was imported.")
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidInputError("The file's JSON is nested too deeply to be a conversation. Nothing was "
                                "imported.") from None
    except ValueError as exc:
        raise InvalidInputError(f"The file is not JSON ({exc}). Nothing was imported.") from None


def _check_version(data: dict[str, Any], where: str) -> None:
    version = data.get("version", VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise InvalidInputError(f"{where} has format version {quote(version)}; this Token Lab reads version "
                                f"{VERSION}. Nothing was imported.")


def _conversation(data: Any, where: str, now: int) -> Conversation:
    if isinstance(data, list):
        data = {"messages": data}
    if not isinstance(data, dict) or "messages" not in data:
        raise InvalidInputError(f"{where} is not a conversation: {SHAPE}; got {quote(data)}. Nothing was imported.")
    if data.get("format", ONE) != ONE:
        raise InvalidInputError(f"{where} has format {quote(data.get('format'))}; expected {ONE!r}. Nothing was "
                                "imported.")
    _check_version(data, where)
    items = data["messages"]
    system_prompt = checks.text(data.get("system_prompt"), f"{where}'s system_prompt", MAX_SYSTEM_PROMPT_CHARS)
    if isinstance(items, list) and items and isinstance(items[0], dict) and items[0].get("role") == "system" \
            and not system_prompt:
        system_prompt = checks.text(items[0].get("content"), f"{where}'s system message", MAX_SYSTEM_PROMPT_CHARS)
        items = items[1:]
    try:
        messages: list[Message] = checked_messages(items, where)
        settings = ChatSettings.checked(data.get("settings"), f"{where}'s settings")
        title = check_title(data["title"], f"{where}'s title") if data.get("title") else default_title(messages)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{exc} Nothing was imported.") from None
    if not messages:
        raise InvalidInputError(f"{where} has no messages. Nothing was imported.")
    return Conversation.new(messages, system_prompt, settings, now, title=title)


def read_import(raw: bytes, now: int) -> list[Conversation]:
    """The conversations in an imported file, every one checked; any fault refuses the whole file."""
    data = _decoded(raw)
    if isinstance(data, dict) and "conversations" in data:
        if data.get("format", ALL) != ALL:
            raise InvalidInputError(f"The file has format {quote(data.get('format'))}; expected {ALL!r}. Nothing "
                                    "was imported.")
        _check_version(data, "The file")
        items = data["conversations"]
        if not isinstance(items, list) or not items:
            raise InvalidInputError(f'The file\'s "conversations" must be a non-empty list; got {quote(items)}. '
                                    "Nothing was imported.")
        if len(items) > MAX_CONVERSATIONS:
            raise InvalidInputError(f"The file holds {len(items):,} conversations; this browser keeps at most "
                                    f"{MAX_CONVERSATIONS}. Nothing was imported.")
        return [_conversation(item, f"Conversation {i}", now) for i, item in enumerate(items, 1)]
    return [_conversation(data, "The file", now)]
