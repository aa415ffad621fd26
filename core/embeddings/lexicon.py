"""A subword vocabulary seen as a word list, for benchmarks written in words.

What "in the vocabulary" means here (the `rule`):

- `single` (rule A, gensim's view): a word is in the vocabulary when it is one word-initial token (` king`). Its
  vector is that token's row. Matching is case-insensitive and among a word's case variants the lowest token id
  wins, as in a gensim KeyedVectors, where the first key in vocabulary order wins (BPE ids follow merge order, which
  follows frequency). A KeyedVectors over these tokens (`keyed_vectors`) is what gensim itself would score.
- `mean` (rule B): a word the vocabulary splits into several tokens is in it too, as the mean of its pieces' raw
  rows (what the Embeddings tab does with a split word).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InvalidInputError

if TYPE_CHECKING:
    from core.embeddings.index import VocabIndex

RULES = ("single", "mean")


class Lexicon:
    """The words of a VocabIndex: its word-initial tokens, keyed by the upper-cased word after the leading space."""

    def __init__(self, index: VocabIndex) -> None:
        self.index = index
        vocabulary = index.vocabulary
        ids: list[int] = []
        self.by_key: dict[str, int] = {}
        for tid, text in enumerate(vocabulary.texts):
            if len(text) < 2 or text[0] != " " or vocabulary.is_hidden(tid) or any(c.isspace() for c in text[1:]):
                continue
            ids.append(tid)
            self.by_key.setdefault(text[1:].upper(), tid)
        self.word_ids = np.asarray(ids, dtype=np.int64)
        self.is_word = np.zeros(index.size, dtype=bool)
        self.is_word[self.word_ids] = True

    def pieces(self, word: str, rule: str) -> tuple[int, ...] | None:
        """The token ids whose mean is the word's vector, or None when the rule leaves the word out."""
        tid = self.by_key.get(word.upper())
        if tid is not None:
            return (tid,)
        if rule == "single":
            return None
        try:
            return tuple(self.index.resolve(word).ids)
        except InvalidInputError:
            return None

    def unit(self, ids: Sequence[int]) -> np.ndarray:
        """The L2-normalised mean of the tokens' raw rows (for one token: its unit row), float32."""
        if len(ids) == 1:
            return self.index.unit_vectors[ids[0]]
        vec = self.index.raw_vectors(list(ids)).mean(axis=0)
        return (vec / (np.linalg.norm(vec) or 1.0)).astype(np.float32)

    def keyed_vectors(self, words: Iterable[str] | None = None) -> Any:
        """A gensim KeyedVectors over the word-initial tokens in id order, keyed by the word without its space, with
        the raw embedding rows: what gensim's evaluate_* functions score as rule A. With `words`, only the tokens
        that spell one of them (in any case): the same answers for those words, built in a moment."""
        from gensim.models import KeyedVectors

        ids = self.word_ids
        if words is not None:
            wanted = {w.upper() for w in words}
            ids = np.asarray([t for t in ids.tolist() if self.word(t).upper() in wanted], dtype=np.int64)
        vectors = KeyedVectors(self.index.dim, dtype=np.float32)
        vectors.add_vectors([self.word(int(t)) for t in ids], self.index.raw_vectors(ids))
        return vectors

    def word(self, token_id: int) -> str:
        return self.index.vocabulary.texts[token_id][1:]
