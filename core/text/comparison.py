"""The same text through several tokenizers at once: each one's count, characters per token, vocabulary, where it
comes from and what it keeps (core/text/facts.py), for /compare_tokenizers and the Tokens tab's comparison.

A tokenizer that cannot be had (a hub id with no hub, a package not installed, the model still loading) gets a row
of its own with the reason, and the others are compared all the same:

    comparison = TokenizerComparison(TokenizerLookup(registry, model=lambda: host.require().loaded))
    [c.row["count"] for c in comparison.compare("Hello 🎵", comparison.keys_from_list("model, gpt4o, no/such"))]
    # [4, 3, 0] with the bundled SmolLM2 loaded, no hub: the last row's "error" says the hub is not reachable
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from core import checks
from core.errors import InvalidInputError, TokenLabError
from core.text.facts import TokenizerFacts, tokenizer_facts
from core.text.lookup import MAX_NAME_CHARS, TokenizerLookup
from core.text.registry import MAX_HUB_TOKENIZERS, MODEL_KEY, tokenizer_key
from core.text.tokens import MAX_CHARS, TokenizedText, check_text, tokenize, tokenizer_family, vocab_size

log = logging.getLogger(__name__)

MAX_HUB_IDS = MAX_HUB_TOKENIZERS - 1  # hub tokenizers in one comparison: the registry keeps them all loaded


class CompareRow(TypedDict):
    """One tokenizer's result in /compare_tokenizers."""

    tokenizer: str
    kind: str
    count: int
    chars_per_token: float
    error: str
    key: str
    vocab_size: int
    source: str
    facts: TokenizerFacts | None


@dataclass(frozen=True)
class Compared:
    """One tokenizer's row, and its tokens for the colored view (None when it failed)."""

    row: CompareRow
    tokens: TokenizedText | None


class TokenizerComparison:
    """Compares tokenizers by key; the offline ones present when it is made fix how many one request may name."""

    def __init__(self, lookup: TokenizerLookup, max_chars: int = MAX_CHARS) -> None:
        self.lookup = lookup
        self.max_chars = max_chars
        self.offline = lookup.registry.available()
        self.max_tokenizers = 1 + len(self.offline) + MAX_HUB_IDS  # the model, every offline one, the hub's

    def keys_from_list(self, tokenizers: str) -> list[str]:
        """The API's comma-separated keys, normalised; none means the loaded model's and every offline one present."""
        keys = [tokenizer_key(k) for k in checks.text(tokenizers, "tokenizers", MAX_NAME_CHARS * 8).split(",")
                if k.strip()]
        keys = keys or [MODEL_KEY] + [t.key for t in self.lookup.registry.available()]
        if len(keys) > self.max_tokenizers:
            raise InvalidInputError(f"Compare at most {self.max_tokenizers} tokenizers at a time.")
        return keys

    def keys_from_choices(self, chosen: Sequence[str] | None, hub: str) -> list[str]:
        """The tab's ticked keys, then the hub ids typed beside them (comma or line separated), normalised."""
        keys = [checks.text(k, "tokenizer", MAX_NAME_CHARS) for k in chosen or []] + _hub_ids(hub)
        keys = [tokenizer_key(k) for k in keys]
        if not keys:
            raise InvalidInputError("Pick at least one tokenizer to compare.")
        return keys

    def compare(self, text: str, keys: Sequence[str]) -> list[Compared]:
        """`text` under each tokenizer in `keys`, in that order; a text the tokenizers may not take is refused
        first, while a tokenizer that fails only fails its own row."""
        check_text(text, self.max_chars)
        return [self._one(text, key) for key in keys]

    def _one(self, text: str, key: str) -> Compared:
        label = "Loaded model" if key == MODEL_KEY else key
        try:
            name, tok = self.lookup.resolve(key)
            label = f"Loaded model: {name}" if key == MODEL_KEY else name
            tokenized = tokenize(tok, text, label, self.max_chars)
            row = CompareRow(tokenizer=label, kind=tokenizer_family(tok), count=tokenized.count,
                             chars_per_token=round(tokenized.chars_per_token, 3), error="", key=key,
                             vocab_size=vocab_size(tok), source=self.lookup.source(key), facts=tokenizer_facts(tok))
            return Compared(row, tokenized)
        except TokenLabError as exc:
            return Compared(self._failed(key, label, str(exc)), None)
        except Exception as exc:  # one broken hub tokenizer must not sink the whole comparison
            log.exception("tokenizer %r failed", key)
            return Compared(self._failed(key, label, f"failed ({type(exc).__name__})"), None)

    def _failed(self, key: str, label: str, error: str) -> CompareRow:
        return CompareRow(tokenizer=label, kind="", count=0, chars_per_token=0.0, error=error, key=key, vocab_size=0,
                          source=self.lookup.source(key), facts=None)


def _hub_ids(text: str) -> list[str]:
    ids = [part.strip() for part in checks.text(text, "hub ids", MAX_NAME_CHARS * 8).replace("\n", ",").split(",")
           if part.strip()]
    if len(ids) > MAX_HUB_IDS:
        raise InvalidInputError(f"Compare at most {MAX_HUB_IDS} hub tokenizers at a time.")
    return ids
