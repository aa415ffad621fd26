"""Any vocabulary entry shown on its own: its piece, the text it adds after another token, and its raw bytes.

The model's alternatives and predictions are tokens it did not write, so there is no surrounding text to decode them
in. A token's `text` here is what it adds after another token (SentencePiece's `▁Paris` keeps its space, as the
Embeddings tab shows it); its `bytes` are what it adds to the UTF-8 output, which for a byte token (`<0xF0>`, or a
byte-level BPE piece holding part of a character) is not a whole character and has no text of its own.

    strings = token_strings(tokenizer)
    strings.piece(5360), strings.text(5360), strings.bytes(5360)
    # ('▁love', ' love', b' love')
"""

from __future__ import annotations

import re
import threading
import weakref
from typing import Any

from transformers.convert_slow_tokenizer import bytes_to_unicode

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
DECODE = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
_BY_TOKENIZER: weakref.WeakKeyDictionary[Any, TokenStrings] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def decode_anchor(tokenizer: Any) -> tuple[int, str] | None:
    """A one-token text ("a") to decode tokens after, and what it decodes to alone; None where "a" is not one token.
    Decoded after another token, SentencePiece's `▁king` keeps the space that decoding it alone drops."""
    ids = tokenizer.encode("a", add_special_tokens=False)
    if len(ids) != 1:
        return None
    prefix = tokenizer.decode(ids, **DECODE)
    return (ids[0], prefix) if prefix else None


def decoded_after(tokenizer: Any, anchor: tuple[int, str], ids: list[int]) -> list[str] | None:
    """Each token's text as it reads after the anchor; None where one of them does not start with the anchor's."""
    token, prefix = anchor
    texts = tokenizer.batch_decode([[token, i] for i in ids], **DECODE)
    return [t[len(prefix):] for t in texts] if all(t.startswith(prefix) for t in texts) else None


class TokenStrings:
    """Piece, text and bytes of any id of one tokenizer, computed on demand and remembered."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.size = len(tokenizer)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._byte_chars = ({c: b for b, c in bytes_to_unicode().items()}
                            if backend is not None and "ByteLevel" in repr(backend.decoder) else None)
        self._added = {int(i): t.content for i, t in tokenizer.added_tokens_decoder.items()}
        self._anchor = decode_anchor(tokenizer)
        self._pieces: dict[int, str] = {}
        self._texts: dict[int, str] = {}

    def is_token(self, token_id: int) -> bool:
        """False for the rows some models add beyond the vocabulary (Phi-3: 32,011 tokens, 32,064 rows)."""
        return 0 <= token_id < self.size and self.tokenizer.convert_ids_to_tokens(token_id) is not None

    def piece(self, token_id: int) -> str:
        if token_id not in self._pieces:
            self._pieces[token_id] = (str(self.tokenizer.convert_ids_to_tokens(token_id)) if self.is_token(token_id)
                                      else f"[row {token_id}: not a token]")
        return self._pieces[token_id]

    def text(self, token_id: int) -> str:
        """What the token adds after another token (`�` for a byte that is only part of a character)."""
        if token_id not in self._texts:
            self._texts[token_id] = self._decode(token_id) if self.is_token(token_id) else ""
        return self._texts[token_id]

    def _decode(self, token_id: int) -> str:
        after = decoded_after(self.tokenizer, self._anchor, [token_id]) if self._anchor else None
        return after[0] if after else self.tokenizer.decode([token_id], **DECODE)

    def bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes the token adds to the output; exact for byte tokens, whose text alone is `�`."""
        if not self.is_token(token_id):
            return b""
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        piece = self.piece(token_id)
        match = _BYTE_PIECE.match(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        if self._byte_chars is not None and all(ch in self._byte_chars for ch in piece):
            return bytes(self._byte_chars[ch] for ch in piece)
        return self.text(token_id).encode("utf-8")

    def is_partial(self, token_id: int) -> bool:
        """Whether the token's bytes are not whole UTF-8 characters (it needs its neighbours to be read)."""
        try:
            self.bytes(token_id).decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False


def token_strings(tokenizer: Any) -> TokenStrings:
    """The one TokenStrings of `tokenizer` (its caches fill as tokens are shown)."""
    with _LOCK:
        strings = _BY_TOKENIZER.get(tokenizer)
        if strings is None:
            strings = _BY_TOKENIZER[tokenizer] = TokenStrings(tokenizer)
        return strings
