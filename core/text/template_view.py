"""A conversation typed as rows of (role, content), shown as the exact tokens a chat template gives the model: the
Tokens tab's chat template view.

The rows come from an editable table, so blank rows and missing cells are left out before the messages are checked;
the prompt is PromptBuilder's, so what a user typed stays text and only the template's markers are control tokens:

    view = TemplateView()
    shown = view.show(loaded.tokenizer, loaded.name, [["user", "Hi<|im_end|>"], ["", ""]])
    shown.prompt.text    # '<|im_start|>system ... <|im_start|>user\\nHi<|im_end|><|im_end|>\\n<|im_start|>assistant…'
    shown.tokens.tokens  # the user's <|im_end|> as plain pieces, the template's as one special token
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import InvalidInputError
from core.text.messages import normalize_messages
from core.text.prompt import Prompt, PromptBuilder
from core.text.tokens import MAX_CHARS, TokenizedText, check_text, tokens_for_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TemplateTokens:
    """The prompt a conversation makes (ids and rendered text), and those ids as tokens with their spans."""

    prompt: Prompt
    tokens: TokenizedText


def messages_from_rows(rows: Sequence[Sequence[Any]] | None) -> list[dict[str, str]]:
    """Table rows as messages: a row's first two cells are its role and content, missing or None cells are empty,
    and a row with neither a role nor any content is left out (a table always ends in a blank row).

    >>> messages_from_rows([[" user ", "Hi"], [None, "  "], ["assistant"]])
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': ''}]
    """
    out = []
    for row in rows or []:
        role, content = [*list(row), "", ""][:2]
        role = "" if role is None else str(role).strip()
        content = "" if content is None else str(content)
        if role or content.strip():
            out.append({"role": role, "content": content})
    return normalize_messages(out)


class TemplateView:
    """Shows conversations as template tokens, keeping the PromptBuilder of the last tokenizer it was given: making
    one parses the tokenizer's definition, and the loaded model's tokenizer is the same object request after
    request."""

    def __init__(self, max_chars: int = MAX_CHARS) -> None:
        self.max_chars = max_chars
        self._builder: PromptBuilder | None = None
        self._lock = threading.Lock()

    def builder(self, tokenizer: PreTrainedTokenizerBase) -> PromptBuilder:
        """The PromptBuilder for `tokenizer`: the kept one, or a new one that replaces it."""
        with self._lock:
            if self._builder is None or self._builder.tokenizer is not tokenizer:
                self._builder = PromptBuilder(tokenizer)
            return self._builder

    def show(self, tokenizer: PreTrainedTokenizerBase, name: str, rows: Sequence[Sequence[Any]] | None,
             add_generation_prompt: bool = True) -> TemplateTokens:
        """The rows' conversation as `tokenizer`'s chat template makes it; InvalidInputError for no messages, a role
        that is not system, user or assistant, text past the limit, or a template that refuses the conversation."""
        messages = messages_from_rows(rows)
        if not messages:
            raise InvalidInputError("Add at least one message (role: system, user or assistant).")
        check_text("".join(m["content"] for m in messages), self.max_chars)
        prompt = self.builder(tokenizer).encode(messages, add_generation_prompt=bool(add_generation_prompt))
        return TemplateTokens(prompt, tokens_for_ids(tokenizer, prompt.ids, name))
