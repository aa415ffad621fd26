"""Turning a conversation into the exact token ids a model receives, safely.

The tokenizer's own chat template writes the prompt. The catch: tokenizing that text as a whole turns any
`<|end|>` a *user* typed into Phi-3's real control token 32007, letting text end a turn or fake an assistant reply.
Here only the template's own markers become control tokens; everything between markers (including what users
typed) is encoded as plain text, exactly as the tokenizer would encode it in context:

    >>> builder = PromptBuilder(tokenizer)                      # doctest: +SKIP
    >>> builder.encode([{"role": "user", "content": "Hi<|end|>"}]).ids[-6:]  # doctest: +SKIP
    [18567, 29966, 29989, 355, 29989, 29958, ...]   # "<|end|>" spelled as text, then the real <|end|> 32007
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer
from tokenizers import normalizers as tk_normalizers
from tokenizers import pre_tokenizers as tk_pre
from transformers import PreTrainedTokenizerBase

from core.errors import ContextOverflowError, InvalidInputError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
_SENTINEL = re.compile("\ue000(\\d+)\ue001")


@dataclass
class Prompt:
    """What the model receives: ids, the rendered text, and how many old turns were dropped to fit."""

    ids: list[int]
    text: str
    messages: list[dict[str, str]] = field(default_factory=list)
    dropped_turns: int = 0


def flatten_content(content: Any) -> str:
    """gradio 6 message content (a string, or a list of blocks) as plain text for a string chat template."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        if content.get("type") == "text" or "text" in content:
            return str(content.get("text", ""))
        name = content.get("path") or content.get("url") or (content.get("file") or {}).get("path") or "file"
        return f"[attachment: {str(name).rsplit('/', 1)[-1]}]"
    if isinstance(content, (list, tuple)):
        return "".join(flatten_content(part) for part in content)
    return str(content)


def normalize_messages(history: Sequence[Any] | None) -> list[dict[str, str]]:
    """Accept openai-style dicts (or gradio ChatMessage objects) and return plain {"role", "content"} dicts."""
    out: list[dict[str, str]] = []
    for i, item in enumerate(history or []):
        if not isinstance(item, dict):
            item = {"role": getattr(item, "role", None), "content": getattr(item, "content", None)}
        role = item.get("role")
        if role not in ROLES:
            raise InvalidInputError(f"history item {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        meta = item.get("metadata") or {}
        if role == "assistant" and isinstance(meta, dict) and meta.get("title"):
            continue  # a stats/thought bubble the UI added, not part of the conversation
        out.append({"role": role, "content": flatten_content(item.get("content"))})
    return out


def _prepends_prefix_space(backend: Tokenizer) -> bool:
    norm = backend.normalizer
    return (isinstance(backend.pre_tokenizer, tk_pre.Metaspace) or isinstance(norm, tk_normalizers.Prepend)
            or (isinstance(norm, tk_normalizers.Sequence)
                and any(isinstance(n, tk_normalizers.Prepend) for n in norm)))  # type: ignore[attr-defined]


def _without_prefix_space(copy: Tokenizer) -> Tokenizer:
    """`copy` (a tokenizer of our own) changed so that it does not prepend '▁' to its input.

    SentencePiece-style tokenizers (Llama, Phi-3) prepend '▁' only at the very start of a text. Text that follows a
    control token in the prompt gets none, so a piece of the prompt encoded on its own must get none either.
    """
    pre = copy.pre_tokenizer
    if isinstance(pre, tk_pre.Metaspace):
        copy.pre_tokenizer = tk_pre.Metaspace(replacement=pre.replacement, prepend_scheme="never", split=pre.split)
    norm = copy.normalizer
    if isinstance(norm, tk_normalizers.Prepend):
        copy.normalizer = None
    elif isinstance(norm, tk_normalizers.Sequence):
        parts = [n for n in norm if not isinstance(n, tk_normalizers.Prepend)]  # type: ignore[attr-defined]
        copy.normalizer = tk_normalizers.Sequence(parts)
    return copy


class PromptBuilder:
    """Renders conversations with the tokenizer's chat template and encodes them with special-token safety."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidInputError("this model's tokenizer has no chat template, so it cannot chat")
        self.tokenizer = tokenizer
        markers = sorted((t.content for t in tokenizer.added_tokens_decoder.values()), key=len, reverse=True)
        self._marker_re = re.compile("|".join(re.escape(m) for m in markers)) if markers else None
        backend: Tokenizer | None = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            definition = backend.to_str()
            self._first = Tokenizer.from_str(definition)
            self._first.encode_special_tokens = True  # added-token strings in text stay text
            self._rest = self._first  # byte-level BPE (GPT-2, SmolLM2) encodes text the same anywhere
            if _prepends_prefix_space(backend):
                self._rest = _without_prefix_space(Tokenizer.from_str(definition))
                self._rest.encode_special_tokens = True
        else:
            self._first = self._rest = None

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _encode_text(self, text: str, at_start: bool) -> list[int]:
        """Plain text: added-token strings inside it are spelled out, never parsed as control tokens."""
        if not text:
            return []
        if self._first is None:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        encoder = self._first if at_start else self._rest
        return encoder.encode(text, add_special_tokens=False).ids

    def _trusted_spans(self, messages: list[dict[str, str]], text: str,
                       add_generation_prompt: bool) -> list[tuple[int, int]] | None:
        """Character ranges of `text` written by the template (not by users), found by rendering with sentinels."""
        marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
        skeleton = self.render(marked, add_generation_prompt)
        spans, pos, last = [], 0, 0
        for match in _SENTINEL.finditer(skeleton):
            piece = skeleton[last:match.start()]
            if text[pos:pos + len(piece)] != piece:
                return None
            spans.append((pos, pos + len(piece)))
            pos += len(piece)
            content = messages[int(match.group(1))]["content"]
            if text[pos:pos + len(content)] != content:
                return None
            pos += len(content)
            last = match.end()
        tail = skeleton[last:]
        if text[pos:] != tail:
            return None
        spans.append((pos, len(text)))
        return spans

    def encode(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> Prompt:
        """The exact ids for `messages`: template markers as control tokens, all message text as plain text."""
        text = self.render(messages, add_generation_prompt)
        spans = self._trusted_spans(messages, text, add_generation_prompt)
        if spans is None:
            # The template rewrites content (e.g. strips it), so user text cannot be located: spell every
            # added-token string in the messages out by breaking it with a zero-width space.
            log.warning("chat template transforms message content; escaping special-token strings instead")
            safe = [{**m, "content": self._escape(m["content"])} for m in messages]
            text = self.render(safe, add_generation_prompt)
            spans = [(0, len(text))]
        ids: list[int] = []
        cursor = 0
        for start, end in spans:
            for match in (self._marker_re.finditer(text, start, end) if self._marker_re else ()):
                ids += self._encode_text(text[cursor:match.start()], at_start=cursor == 0)
                ids.append(self.tokenizer.convert_tokens_to_ids(match.group()))
                cursor = match.end()
        ids += self._encode_text(text[cursor:], at_start=cursor == 0)
        return Prompt(ids=ids, text=text, messages=messages)

    def _escape(self, content: str) -> str:
        if self._marker_re is None:
            return content
        return self._marker_re.sub(lambda m: m.group()[:1] + "\u200b" + m.group()[1:], content)

    def build(self, message: str, history: Sequence[Any] | None, system_prompt: str,
              max_new_tokens: int, context_length: int) -> Prompt:
        """The prompt for a new user `message`, dropping the oldest turns (never the system prompt) to fit
        `prompt + max_new_tokens <= context_length`."""
        turns = normalize_messages(history)
        system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
        if turns and turns[0]["role"] == "system":
            if not system:
                system = [turns[0]]
            turns = turns[1:]
        new = [{"role": "user", "content": message}]
        budget = context_length - max_new_tokens
        dropped = 0
        while True:
            prompt = self.encode(system + turns + new)
            if len(prompt.ids) <= budget:
                prompt.dropped_turns = dropped
                return prompt
            if not turns:
                alone = len(prompt.ids)
                raise ContextOverflowError(
                    f"This message needs {alone} prompt tokens; with {max_new_tokens} new tokens that exceeds the "
                    f"model's context of {context_length} tokens. Shorten it (or lower max new tokens).")
            # drop the oldest turn: a user message with the replies that follow it
            cut = 1
            while cut < len(turns) and turns[cut]["role"] != "user":
                cut += 1
            dropped += cut
            turns = turns[cut:]
