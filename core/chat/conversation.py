"""One conversation as a person keeps it: its messages (each answer with its stats line, the last answer with its
tokens' probabilities), its system prompt and the sampling settings it was held with, so that choosing it again
restores all of it. Every value is checked when it comes back from the browser or from a file: both are untrusted.

    >>> c = Conversation.new([{"role": "user", "content": "Hi"}], "", ChatSettings(), now=1)
    >>> c.title
    'Hi'
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypedDict

from core import checks
from core.checks import quote
from core.errors import InvalidInputError
from core.text.messages import check_history, flatten_content, normalize_messages

if TYPE_CHECKING:  # the shape only: importing the engine's module would bring torch along
    from core.engine.logprobs import TokenLogprob

STATS_TITLE = "Stats"  # the title of the bubble the Chat tab shows an answer's stats line in
TITLE_CHARS = 60  # a default title: the first line of the first message, cut here
MAX_TITLE_CHARS = 200
MAX_MESSAGES = 10_000
MAX_CONTENT_CHARS = 1_000_000  # characters a conversation's messages may hold in all
MAX_SYSTEM_PROMPT_CHARS = 50_000
MAX_TIME_MS = 2**53  # JavaScript's largest exact integer
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The ranges of the Chat tab's controls: a stored or imported value outside them could not be shown there.
TEMPERATURE = (0.0, 2.0)
TOP_P = (0.05, 1.0)
TOP_K = (0, 200)
REPETITION_PENALTY = (0.5, 2.0)
MAX_NEW_TOKENS = (1, 100_000)  # the server's own limit applies when the conversation continues


class Message(TypedDict, total=False):
    """A message as kept: role and content, and for an answer its stats line and (the last answer only) the
    probabilities of its tokens."""

    role: str
    content: str
    stats: str
    logprobs: list[TokenLogprob]


@dataclass(frozen=True)
class ChatSettings:
    """The sampling controls a conversation is held with; seed None is random."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None

    @classmethod
    def checked(cls, data: Any, where: str = "settings") -> ChatSettings:
        """Settings from a stored or imported object; a missing one takes its default, a wrong one is refused."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidInputError(f"{where} must be an object like {{\"temperature\": 0.7}}; got {quote(data)}.")
        d = cls()
        return cls(
            temperature=checks.number(data.get("temperature", d.temperature), f"{where}.temperature", *TEMPERATURE),
            top_p=checks.number(data.get("top_p", d.top_p), f"{where}.top_p", *TOP_P),
            top_k=checks.integer(data.get("top_k", d.top_k), f"{where}.top_k", *TOP_K),
            repetition_penalty=checks.number(data.get("repetition_penalty", d.repetition_penalty),
                                             f"{where}.repetition_penalty", *REPETITION_PENALTY),
            max_new_tokens=checks.integer(data.get("max_new_tokens", d.max_new_tokens), f"{where}.max_new_tokens",
                                          *MAX_NEW_TOKENS),
            seed=checks.seed(data.get("seed"), f"{where}.seed"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_id() -> str:
    return uuid.uuid4().hex


def default_title(messages: list[Message]) -> str:
    """The first line of the first user message, shortened: what a person recognises a conversation by."""
    first = next((m["content"] for m in messages if m["role"] == "user" and m["content"].strip()), "")
    line = " ".join(first.strip().split("\n", 1)[0].split())
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1].rstrip() + "…"


def check_title(value: Any, where: str = "title") -> str:
    """A title: one line of text, not blank, at most MAX_TITLE_CHARS characters."""
    title = " ".join(checks.text(value, where, MAX_TITLE_CHARS * 4).split())
    if not title:
        raise InvalidInputError(f"Type a {where} first: it cannot be blank.")
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidInputError(f"The {where} is {len(title):,} characters; the limit is {MAX_TITLE_CHARS}.")
    return title


def _logprob(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value <= 0


def _token_entry(value: Any, nested: bool) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("token"), str) or not _logprob(value.get("logprob")):
        return False
    raw = value.get("bytes")
    if not isinstance(raw, list) or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256
                                            for b in raw):
        return False
    tops = value.get("top_logprobs", [])
    return nested or (isinstance(tops, list) and all(_token_entry(t, True) for t in tops))


def checked_logprobs(value: Any) -> list[TokenLogprob] | None:
    """Stored token probabilities in OpenAI's shape, or None where they are missing or malformed: an answer without
    them is still an answer, so they are left out rather than refused."""
    if not isinstance(value, list) or not all(_token_entry(e, False) for e in value):
        return None
    return [{"token": e["token"], "logprob": float(e["logprob"]), "bytes": list(e["bytes"]),
             "top_logprobs": [{"token": t["token"], "logprob": float(t["logprob"]), "bytes": list(t["bytes"])}
                              for t in e.get("top_logprobs", [])]} for e in value]


def checked_messages(value: Any, where: str) -> list[Message]:
    """Messages from a stored or imported list: user and assistant turns as text (normalize_messages and
    check_history, so the same sentences as the chat's own), an answer's stats line and probabilities kept."""
    if not isinstance(value, list):
        raise InvalidInputError(f'{where}\'s messages must be a list like [{{"role": "user", "content": "Hi"}}]; '
                                f"got {quote(value)}.")
    plain = [{"role": item.get("role"), "content": item.get("content")} if isinstance(item, dict) else item
             for item in value]
    try:
        normalized = normalize_messages(plain)
        check_history(normalized, MAX_MESSAGES, MAX_CONTENT_CHARS)
    except InvalidInputError as exc:
        raise InvalidInputError(f"In {where}: {exc}") from None
    out: list[Message] = []
    for i, (item, message) in enumerate(zip(value, normalized, strict=True)):
        if message["role"] == "system":
            raise InvalidInputError(f"In {where}: message {i} is a system message; only the first message may be "
                                    "the system prompt.")
        kept = Message(role=message["role"], content=message["content"])
        if message["role"] == "assistant":
            stats = item.get("stats")
            if isinstance(stats, str) and stats:
                kept["stats"] = checks.text(stats, f"{where}'s message {i} stats", MAX_TITLE_CHARS * 2)
            logprobs = checked_logprobs(item.get("logprobs"))
            if logprobs is not None and "".join(e["token"] for e in logprobs) == message["content"]:
                kept["logprobs"] = logprobs
        out.append(kept)
    return out


def messages_from_chat(history: Any, answer_logprobs: list[TokenLogprob] | None = None) -> list[Message]:
    """The Chat tab's messages as kept: an answer's stats bubble becomes that answer's `stats`, and the last answer
    keeps `answer_logprobs` when they are its tokens (they concatenate to its text)."""
    out: list[Message] = []
    for i, item in enumerate(history or []):
        if not isinstance(item, dict):
            raise InvalidInputError(f"history item {i} is not a message; got {quote(item)}.")
        role = item.get("role")
        content = flatten_content(item.get("content"), f"history item {i}'s content")
        title = (item.get("metadata") or {}).get("title")
        if role == "assistant" and title:
            if title == STATS_TITLE and out and out[-1]["role"] == "assistant":
                out[-1]["stats"] = content
            continue
        if role not in ("user", "assistant"):
            raise InvalidInputError(f"history item {i} has role {quote(role)}; expected user or assistant.")
        out.append(Message(role=role, content=content))
    if answer_logprobs and out and out[-1]["role"] == "assistant" \
            and "".join(e["token"] for e in answer_logprobs) == out[-1]["content"]:
        out[-1]["logprobs"] = list(answer_logprobs)
    return out


def chat_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Kept messages as the Chat tab shows them: each answer followed by its stats bubble."""
    out: list[dict[str, Any]] = []
    for m in messages:
        out.append({"role": m["role"], "content": m["content"]})
        if m.get("stats"):
            out.append({"role": "assistant", "content": m["stats"], "metadata": {"title": STATS_TITLE}})
    return out


@dataclass(frozen=True)
class Version:
    """Which version of a conversation a tab shows: enough to tell, when it saves, whether it changed the
    conversation and whether another tab did meanwhile."""

    id: str
    title: str
    created_at: int
    updated_at: int
    fingerprint: str


@dataclass(frozen=True)
class Conversation:
    """A conversation with an id (stable across tabs and saves) and the times it was started and last changed
    (milliseconds since 1970, the server's clock): saving merges by id, the newest version of each winning."""

    id: str
    title: str
    created_at: int
    updated_at: int
    system_prompt: str = ""
    settings: ChatSettings = field(default_factory=ChatSettings)
    messages: list[Message] = field(default_factory=list)

    @classmethod
    def new(cls, messages: list[Message], system_prompt: str, settings: ChatSettings, now: int,
            title: str = "") -> Conversation:
        return cls(id=new_id(), title=title or default_title(messages) or "New conversation", created_at=now,
                   updated_at=now, system_prompt=system_prompt, settings=settings, messages=messages)

    def fingerprint(self) -> str:
        """What a person changes (messages, stats, system prompt, settings; not the title, the times or the stored
        probabilities): two versions with the same fingerprint need no save."""
        content = [[m["role"], m["content"], m.get("stats", "")] for m in self.messages]
        blob = json.dumps([content, self.system_prompt, self.settings.as_dict()], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()

    def continues(self, earlier: Conversation) -> bool:
        """This conversation is `earlier` with more turns (same system prompt and settings): no one else's edit is
        lost by keeping it instead."""
        turns = [(m["role"], m["content"]) for m in earlier.messages]
        return (self.system_prompt, self.settings) == (earlier.system_prompt, earlier.settings) and \
            [(m["role"], m["content"]) for m in self.messages[:len(turns)]] == turns

    def version(self) -> Version:
        return Version(self.id, self.title, self.created_at, self.updated_at, self.fingerprint())

    def answer_logprobs(self) -> list[TokenLogprob] | None:
        """The last answer's token probabilities; None when there is no answer or they were not kept."""
        last = self.messages[-1] if self.messages else None
        return last.get("logprobs") if last and last["role"] == "assistant" else None

    def without_logprobs(self) -> Conversation:
        return replace(self, messages=[Message(**{k: v for k, v in m.items() if k != "logprobs"})  # type: ignore
                                       for m in self.messages])

    def as_stored(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "created_at": self.created_at, "updated_at": self.updated_at,
                "system_prompt": self.system_prompt, "settings": self.settings.as_dict(),
                "messages": [dict(m) for m in self.messages]}

    @classmethod
    def from_stored(cls, data: Any, where: str) -> Conversation:
        """A stored conversation, every field checked (the browser's storage can be edited by hand)."""
        if not isinstance(data, dict):
            raise InvalidInputError(f"{where} is not a conversation object; got {quote(data)}.")
        ident = data.get("id")
        if not isinstance(ident, str) or not ID_PATTERN.fullmatch(ident):
            raise InvalidInputError(f"{where} has no valid id; got {quote(ident)}.")
        return cls(id=ident, title=check_title(data.get("title"), f"{where}'s title"),
                   created_at=checks.integer(data.get("created_at"), f"{where}'s created_at", 0, MAX_TIME_MS),
                   updated_at=checks.integer(data.get("updated_at"), f"{where}'s updated_at", 0, MAX_TIME_MS),
                   system_prompt=checks.text(data.get("system_prompt"), f"{where}'s system prompt",
                                             MAX_SYSTEM_PROMPT_CHARS),
                   settings=ChatSettings.checked(data.get("settings"), f"{where}'s settings"),
                   messages=checked_messages(data.get("messages"), where))
