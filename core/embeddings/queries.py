"""Reading what a person types as a query into the tokens whose vector is searched.

A word means its word-initial token (` king`: `Ġking` in byte-level BPE, `▁king` in SentencePiece); a word the
vocabulary splits becomes all its pieces (the views use the mean of their vectors); a piece typed with its marker
(`Ġking`), or any piece with `exact`, is taken as it is; `#1234` is token id 1234:

    resolve(vocabulary, "apologizing").pieces
    # ['Ġapolog', 'izing']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core import checks
from core.checks import quote
from core.embeddings.vocabulary import TokenInfo, Vocabulary
from core.errors import InvalidInputError

MAX_QUERY_CHARS = 100
MAX_QUERY_PIECES = 16
MAX_TERMS = 12  # words in an analogy, an odd-one-out list or a map request
_TOKEN_ID = re.compile(r"^#([0-9]{1,9})$")
_NUMBER_LIKE = re.compile(r"^#[-+]?[\d.,eE_]*\d[\d.,eE_]*$")  # "#-5", "#1e3", "#٣": meant as ids, not valid ones
_WORD_MARKERS = ("Ġ", "▁")


@dataclass(frozen=True)
class ResolvedQuery:
    """What a query became: the tokens whose (mean) vector is searched, and how they were found."""

    query: str
    tokens: tuple[TokenInfo, ...]
    how: str  # "word-initial token", "exact piece", "token id", "special token"

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    @property
    def pieces(self) -> list[str]:
        return [t.piece for t in self.tokens]

    @property
    def is_split(self) -> bool:
        return len(self.tokens) > 1


def resolve(vocabulary: Vocabulary, query: str | int, exact: bool = False) -> ResolvedQuery:
    """A word → its word-initial token(s); `exact` → the piece as typed; `#1234` or an int → that token id."""
    if isinstance(query, (int, np.integer)) and not isinstance(query, bool):
        return _by_id(vocabulary, int(query), f"#{int(query)}")
    text = checks.text(query, "A query", MAX_QUERY_CHARS, required=True,
                       what="Type a word, a token piece, or a token id like #1234.")
    stripped = text.strip()
    match = _TOKEN_ID.match(stripped)
    if match:
        return _by_id(vocabulary, int(match.group(1)), stripped)
    if _NUMBER_LIKE.match(stripped):
        raise InvalidInputError(f"Token ids are written #1234, a whole number from 0 to {vocabulary.size - 1:,}; "
                                f"got {quote(stripped)}.")
    if exact:
        if text in vocabulary.vocab:
            return ResolvedQuery(text, (vocabulary.token(vocabulary.vocab[text]),), "exact piece")
        return _checked(vocabulary, text, vocabulary.tokenizer.encode(text, add_special_tokens=False), "exact piece")
    tid = vocabulary.vocab.get(stripped)
    if tid is not None and (tid in vocabulary.special_ids or stripped.startswith(_WORD_MARKERS)):
        how = "special token" if tid in vocabulary.special_ids else "exact piece"
        return ResolvedQuery(stripped, (vocabulary.token(tid),), how)
    return _checked(vocabulary, stripped, _word_initial_ids(vocabulary, stripped), "word-initial token")


def resolve_terms(vocabulary: Vocabulary, terms: str | Sequence[str] | None, exact: bool,
                  name: str) -> list[ResolvedQuery]:
    """A comma-separated string (or a list) of words, each resolved; `name` is the parameter, for messages."""
    return [resolve(vocabulary, w, exact=exact) for w in checks.words(terms, name, MAX_TERMS, MAX_QUERY_CHARS)]


def _by_id(vocabulary: Vocabulary, token_id: int, label: str) -> ResolvedQuery:
    if not 0 <= token_id < vocabulary.size:
        raise InvalidInputError(f"Token id {token_id} is not in the vocabulary (ids 0 to {vocabulary.size - 1}).")
    return ResolvedQuery(label, (vocabulary.token(token_id),), "token id")


def _word_initial_ids(vocabulary: Vocabulary, word: str) -> list[int]:
    """Encode the word as it appears after a space: `a king` → [a, Ġking], and drop the leading `a`."""
    tokenizer = vocabulary.tokenizer
    if vocabulary.anchor is not None:
        ids = tokenizer.encode("a " + word, add_special_tokens=False)
        if ids[:1] == vocabulary.anchor and len(ids) > 1:
            return ids[1:]
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    if len(ids) > 1 and ids[0] < vocabulary.size and not vocabulary.texts[ids[0]].strip():
        ids = ids[1:]  # a lone space token in front of the word
    return ids


def _checked(vocabulary: Vocabulary, label: str, ids: Sequence[int], how: str) -> ResolvedQuery:
    ids = [int(i) for i in ids]
    if not ids:
        raise InvalidInputError(f"{quote(label)} gives no tokens.")
    tokenizer = vocabulary.tokenizer
    unk, unk_piece = getattr(tokenizer, "unk_token_id", None), getattr(tokenizer, "unk_token", None)
    if unk is not None and unk in ids and label.strip() != unk_piece:
        raise InvalidInputError(f"{quote(label)} is not in the vocabulary (the tokenizer maps it to {unk_piece}).")
    if any(i >= vocabulary.size or i < 0 for i in ids):
        raise InvalidInputError(f"{quote(label)} maps to a token id outside the indexed vocabulary.")
    if len(ids) > MAX_QUERY_PIECES:
        raise InvalidInputError(f"{quote(label)} splits into {len(ids)} tokens; a query may have at most "
                                f"{MAX_QUERY_PIECES}.")
    return ResolvedQuery(label, tuple(vocabulary.token(i) for i in ids), how)
