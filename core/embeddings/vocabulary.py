"""A tokenizer's vocabulary as the tables the embedding views read: every token's piece and text, the key its case,
leading-space and plural variants share (the neighbour views fold those), and which tokens are special or bytes.

Building the tables decodes every token (tens of thousands of them) in Python, so they are cached on disk, keyed by
the tokenizer's full definition (core/embeddings/table_cache.py):

    vocabulary = Vocabulary(tokenizer, size=49_152)
    vocabulary.token(vocabulary.vocab["Ġking"])
    # TokenInfo(id=4640, piece='Ġking', text=' king')
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.embeddings.table_cache import cached_json
from core.text.token_strings import DECODE, decode_anchor, decoded_after

VOCAB_TABLES_FORMAT = "vocab-tables-v1"  # change it when the tables' contents or meaning change
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass(frozen=True)
class TokenInfo:
    """One vocabulary entry: its id, its piece as stored in the vocabulary (`Ġking`), and its text (` king`)."""

    id: int
    piece: str
    text: str

    @property
    def is_partial(self) -> bool:
        """A byte token that is only part of a character: its text alone is `�` (or empty), so show its piece."""
        return "\ufffd" in self.text or not self.text


def variant_key(text: str) -> str:
    """What case, leading-space and simple plural variants share: ` Kings`, `king` and `Ġking` all give `king`."""
    word = text.strip().lower()
    if not word:
        return text
    if len(word) > 3 and word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def case_key(text: str) -> str:
    """What case and leading-space variants share, and nothing more: ` King`, `king` and `KING` all give `KING`
    (gensim compares words upper-cased), while ` kings` stays apart, so an analogy can answer a plural."""
    return text.strip().upper()


def is_byte_token(piece: str, text: str) -> bool:
    """A byte-fallback piece (`<0x0A>`), part of a multi-byte character (text `�`), or a lone control byte."""
    if _BYTE_PIECE.match(piece) or "\ufffd" in text:
        return True
    return bool(text) and all(unicodedata.category(c) == "Cc" and c not in " \n\t\r" for c in text)


class Vocabulary:
    """The first `size` tokens of `tokenizer` as tables (see the module docstring); read-only once built."""

    def __init__(self, tokenizer: Any, size: int, cache_dir: Path | None = None) -> None:
        self.tokenizer = tokenizer
        self.size = size
        backend = getattr(tokenizer, "backend_tokenizer", None)
        key = [VOCAB_TABLES_FORMAT, type(tokenizer).__name__, str(size),
               backend.to_str() if backend is not None else ""]
        tables, self.from_cache = cached_json("vocab-tables", key, lambda: self._tables(tokenizer, size),
                                              cache_dir if backend is not None else None)
        self.pieces: list[str] = tables["pieces"]
        self.texts: list[str] = tables["texts"]
        self.keys: list[str] = tables["keys"]
        self.special_ids = frozenset(tables["special_ids"])
        self.byte_ids = frozenset(tables["byte_ids"])
        self.vocab: dict[str, int] = tables["vocab"]
        self.anchor: list[int] | None = tables["anchor"]  # the id of "a", to encode a word as it reads after one

    def token(self, token_id: int) -> TokenInfo:
        return TokenInfo(int(token_id), self.pieces[token_id], self.texts[token_id])

    def is_hidden(self, token_id: int) -> bool:
        """Special tokens and byte tokens (byte-fallback `<0xNN>` pieces, partial UTF-8 pieces, control bytes)."""
        return token_id in self.special_ids or token_id in self.byte_ids

    @classmethod
    def _tables(cls, tokenizer: Any, n: int) -> dict[str, Any]:
        pieces = [str(p) for p in tokenizer.convert_ids_to_tokens(list(range(n)))]
        texts = cls._token_texts(tokenizer, n)
        special = {int(i) for i in tokenizer.all_special_ids}
        for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
            if getattr(tok, "special", False):
                special.add(int(i))
        anchor = tokenizer.encode("a", add_special_tokens=False)
        return {
            "pieces": pieces,
            "texts": texts,
            "keys": [variant_key(t) for t in texts],
            "special_ids": sorted(i for i in special if 0 <= i < n),
            "byte_ids": [i for i in range(n) if is_byte_token(pieces[i], texts[i])],
            "vocab": {piece: i for piece, i in tokenizer.get_vocab().items() if 0 <= i < n},
            "anchor": anchor if len(anchor) == 1 else None,
        }

    @staticmethod
    def _token_texts(tokenizer: Any, n: int) -> list[str]:
        """Each token's text as it reads after another token (so SentencePiece's `▁king` keeps its space)."""
        anchor = decode_anchor(tokenizer)
        texts = decoded_after(tokenizer, anchor, list(range(n))) if anchor else None
        return texts if texts is not None else [tokenizer.decode([i], **DECODE) for i in range(n)]
