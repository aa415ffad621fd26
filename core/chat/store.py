"""The list of conversations as one browser keeps it: one versioned JSON text under a storage key that never changes
between versions, bounded here before anything is written, and merged by conversation id so that two tabs never
silently undo each other.

Every change reads the text the browser holds at that moment (not a copy the tab loaded earlier), applies one edit
and returns the whole new text, or refuses with a sentence and returns nothing to write: a refused change leaves
storage as it was.

    store = read_store("")
    saved = save(store, messages, "", ChatSettings(), loaded=None, now=now_ms())
    saved.text
    # '{"format":"token-lab/conversations","version":1,...}'
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from core.chat.conversation import ChatSettings, Conversation, Message, Version, check_title, new_id
from core.checks import quote
from core.errors import InvalidInputError

STORAGE_KEY = "token-lab.conversations"  # the browser's localStorage key: the same in every version of the app
FORMAT = "token-lab/conversations"
VERSION = 1
MAX_CONVERSATIONS = 200
MAX_STORED_CHARS = 2_000_000  # well under the few megabytes a browser gives one site
MAX_TOMBSTONES = 1_000  # ids deleted in one tab, remembered so that another tab does not bring them back
# Migrations from an older format to the next one: {1: upgrade_from_1_to_2, ...}; none yet.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
UNREADABLE = ("The conversations kept in this browser could not be read ({why}); nothing was saved over them. "
              "Delete all conversations to start afresh.")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Store:
    """The conversations by id, the ids deleted (with when), and how many stored conversations could not be read
    and were left out."""

    conversations: dict[str, Conversation] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def newest_first(self) -> list[Conversation]:
        return sorted(self.conversations.values(), key=lambda c: (c.updated_at, c.id), reverse=True)

    def newest(self) -> Conversation | None:
        listed = self.newest_first()
        return listed[0] if listed else None


def read_store(text: Any) -> Store:
    """The stored text as a Store; empty or missing is an empty one. A text that is not this app's format, or a
    newer version of it, is refused (saving over it would lose it); one broken conversation is only left out."""
    if text is None or text == "":
        return Store()
    if not isinstance(text, str):
        raise InvalidInputError(UNREADABLE.format(why=f"expected text, got {quote(text)}"))
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(UNREADABLE.format(why=f"not JSON: {exc}")) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidInputError(UNREADABLE.format(why="not Token Lab's format"))
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInputError(UNREADABLE.format(why=f"format version {quote(version)}"))
    if version > VERSION:
        raise InvalidInputError(f"The conversations kept in this browser were saved by a newer Token Lab (format "
                                f"version {version}; this one reads up to {VERSION}); nothing was saved over them.")
    while version < VERSION:
        data, version = MIGRATIONS[version](data), version + 1
    store = Store()
    items = data.get("conversations")
    for i, item in enumerate(items if isinstance(items, list) else []):
        try:
            conversation = Conversation.from_stored(item, f"stored conversation {i + 1}")
        except InvalidInputError as exc:
            store.skipped.append(str(exc))
            continue
        if conversation.id not in store.conversations or \
                store.conversations[conversation.id].updated_at < conversation.updated_at:
            store.conversations[conversation.id] = conversation
    deleted = data.get("deleted")
    if isinstance(deleted, dict):
        store.deleted = {k: v for k, v in deleted.items()
                         if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}
    return store


def dump_store(store: Store, keep: str = "") -> str:
    """The text to write, within the bounds. Past MAX_STORED_CHARS the token probabilities of other conversations
    are dropped first, least recently changed first (their answers say so when shown); if it still does not fit,
    nothing is written and the person is told what to do."""
    if len(store.conversations) > MAX_CONVERSATIONS:
        raise InvalidInputError(f"This browser keeps at most {MAX_CONVERSATIONS} conversations. Delete some (export "
                                "them first to keep a copy); nothing was saved.")
    tombstones = dict(sorted(store.deleted.items(), key=lambda kv: kv[1])[-MAX_TOMBSTONES:])
    conversations = store.newest_first()

    def text() -> str:
        data = {"format": FORMAT, "version": VERSION, "conversations": [c.as_stored() for c in conversations],
                "deleted": tombstones}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    out = text()
    for i in reversed(range(len(conversations))):
        if len(out) <= MAX_STORED_CHARS:
            break
        if conversations[i].id != keep and conversations[i].answer_logprobs() is not None:
            conversations[i] = conversations[i].without_logprobs()
            out = text()
    if len(out) > MAX_STORED_CHARS:
        raise InvalidInputError(f"Saving would take {len(out):,} characters of this browser's storage; Token Lab keeps "
                                f"at most {MAX_STORED_CHARS:,}. Delete or export older conversations; nothing was "
                                "saved.")
    return out


@dataclass
class Saved:
    """What a change leaves: the text to write ("" when nothing changed), the conversation now shown (None for a
    new, empty one) and a sentence for the person ("" when there is nothing to say)."""

    store: Store
    text: str = ""
    current: Conversation | None = None
    note: str = ""


def save(store: Store, messages: list[Message], system_prompt: str, settings: ChatSettings,
         loaded: Version | None, now: int) -> Saved:
    """Keep the conversation a tab shows, which it loaded as `loaded` (None for a new one).

    Unchanged since loaded: nothing is written. Changed, and the stored version is still the one the tab loaded (or
    has its content, or is what this version continues, as when two saves of one tab cross): replaced. Changed here
    and also in another tab since: both are kept, this tab's as a new conversation, and the person is told.
    Deleted in another tab and changed here: kept again (the newest edit wins). An emptied chat is a new one."""
    if not messages:
        return Saved(store)  # an emptied chat (Clear, or Undo of its only turn) is a new one: nothing to keep
    draft = Conversation.new(messages, system_prompt, settings, now)
    if loaded is None:
        return _write(store, draft)
    stored = store.conversations.get(loaded.id)
    if draft.fingerprint() == loaded.fingerprint:
        return Saved(store, current=stored, note="" if stored else "This conversation was deleted in another tab.")
    if stored is None:
        return _write(store, replace(draft, id=loaded.id, title=loaded.title, created_at=loaded.created_at))
    if stored.updated_at == loaded.updated_at or stored.fingerprint() in (loaded.fingerprint, draft.fingerprint()) \
            or draft.continues(stored):
        return _write(store, replace(draft, id=stored.id, title=stored.title, created_at=stored.created_at,
                                     updated_at=max(now, stored.updated_at + 1)))
    copy = replace(draft, title=check_title(f"{stored.title} (this tab)"))
    return _write(store, copy, f"This conversation was also changed in another tab. Both are kept: this tab's "
                               f"version is saved as “{copy.title}”.")


def _write(store: Store, current: Conversation | None, note: str = "") -> Saved:
    changed = Store(dict(store.conversations), dict(store.deleted), list(store.skipped))
    if current is not None:
        changed.conversations[current.id] = current
        changed.deleted.pop(current.id, None)
    return Saved(changed, dump_store(changed, keep=current.id if current else ""), current, note)


def rename(store: Store, ident: str, title: Any, now: int) -> Saved:
    """Give a stored conversation a title of the person's choosing."""
    title = check_title(title)
    stored = store.conversations.get(ident)
    if stored is None:
        raise InvalidInputError("There is nothing to rename yet: a conversation is kept once it has a message.")
    return _write(store, replace(stored, title=title, updated_at=max(now, stored.updated_at + 1)))


def delete(store: Store, ident: str, now: int) -> Saved:
    """Drop one conversation, remembering its id so that a tab still showing it does not bring it back unchanged."""
    if ident not in store.conversations:
        raise InvalidInputError("There is no kept conversation to delete: this one has not been saved yet.")
    changed = Store({k: v for k, v in store.conversations.items() if k != ident}, {**store.deleted, ident: now})
    return Saved(changed, dump_store(changed))


def delete_all(text: Any, now: int) -> Saved:
    """Drop every conversation. Works on any stored text, even one that cannot be read: it is how a person starts
    afresh."""
    try:
        ids = list(read_store(text).conversations)
    except InvalidInputError:
        ids = []
    changed = Store(deleted={ident: now for ident in ids})
    return Saved(changed, dump_store(changed))


def add(store: Store, conversations: list[Conversation], now: int) -> Saved:
    """Add imported conversations, each under a new id and as just changed; all of them or none."""
    if len(store.conversations) + len(conversations) > MAX_CONVERSATIONS:
        raise InvalidInputError(f"Importing {len(conversations)} conversations would make "
                                f"{len(store.conversations) + len(conversations)}; this browser keeps at most "
                                f"{MAX_CONVERSATIONS}. Delete some first; nothing was imported.")
    changed = Store(dict(store.conversations), dict(store.deleted))
    added = [replace(c, id=new_id(), created_at=now, updated_at=now + i)
             for i, c in enumerate(conversations)]
    changed.conversations.update((c.id, c) for c in added)
    return Saved(changed, dump_store(changed, keep=added[-1].id if added else ""), added[-1] if added else None)
