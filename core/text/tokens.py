"""Text as a model sees it: token ids, vocabulary pieces, and the exact characters each token covers.

Works the same for every tokenizer family: SentencePiece BPE with `▁` and `<0x..>` byte fallback (Phi-3, Llama),
byte-level BPE with `Ġ` (SmolLM2, GPT-2) and WordPiece with `##` (BERT):

    t = tokenize(phi3_tokenizer, "I love programming.", "Phi-3")
    [(tok.id, tok.piece, tok.text, tok.start, tok.end) for tok in t.tokens]
    # [(306, '▁I', 'I', 0, 1), (5360, '▁love', ' love', 1, 6), (8720, '▁programming', ' programming', 6, 18),
    # (29889, '.', '.', 18, 19)]

A character that needs several byte tokens (an emoji, most CJK) keeps every byte token in `tokens`; `segments()`
groups tokens whose spans overlap, so a view shows each character whole. Decoding one id at a time, as notebooks do,
prints `�` for such bytes and loses leading spaces; here each token's `text` comes from a streaming decoder, so it
is empty for a byte token that only starts a character and holds the whole character on the byte that completes it.
Concatenating every token's `text` gives exactly what `tokenizer.decode(ids)` gives.

No gradio here: the UI and the API format these dataclasses.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypedDict, TypeVar

from transformers import PreTrainedTokenizerBase

from core import checks
from core.errors import InvalidInputError

log = logging.getLogger(__name__)

MAX_CHARS = 50_000  # longer text is refused: it would take the browser too long to draw
MAX_IDS = 50_000
_MAX_IDS_TEXT = 16 * MAX_IDS  # characters of pasted ids
_MAX_NAMED = 8  # bad ids named in an error message
_ID_SPLIT = re.compile(r"[\s,;]+")
_INT = re.compile(r"[+-]?[0-9]{1,12}")  # ASCII digits only: "٣" is not the id 3
T = TypeVar("T")


class TokenizeResult(TypedDict):
    """The API's answer for /tokenize."""

    tokenizer: str
    count: int
    tokens: list[dict[str, Any]]  # Token.to_dict() of each token


class DetokenizeResult(TypedDict):
    """The API's answer for /detokenize."""

    text: str
    tokens: list[dict[str, Any]]  # Token.to_dict() of each token


@dataclass(frozen=True)
class Token:
    """One token.

    `piece` is the vocabulary entry (`▁love`, `Ġlove`, `##ing`, `<0xF0>`); `text` is what it decodes to in context
    (empty for a byte that only starts a character); `start`/`end` are the character offsets it covers in
    `TokenizedText.text` (several byte tokens of one character share that character's span; a special token the
    tokenizer adds on its own, like BERT's [CLS], has an empty span where it sits).
    """

    index: int
    id: int
    piece: str
    text: str
    start: int
    end: int
    special: bool

    def to_dict(self) -> dict[str, Any]:
        """The API's shape: every field but `index`, which is the token's place in the list."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "index"}


@dataclass(frozen=True)
class Segment:
    """A run of text shown as one colored block: the tokens whose spans overlap (a character split into bytes),
    one token, one zero-width special token (`start == end`), or text no token covers (`tokens` empty: e.g. the
    whitespace BERT drops)."""

    start: int
    end: int
    tokens: tuple[int, ...]  # indexes into TokenizedText.tokens


@dataclass(frozen=True)
class TokenizedText:
    """A text and its tokens, in order."""

    tokenizer_name: str
    text: str
    tokens: tuple[Token, ...]

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    @property
    def count(self) -> int:
        return len(self.tokens)

    @property
    def char_count(self) -> int:
        return len(self.text)

    @property
    def chars_per_token(self) -> float:
        """Characters per token (0.0 when there are no tokens): higher means the tokenizer packs text tighter."""
        return self.char_count / self.count if self.tokens else 0.0

    @property
    def decoded(self) -> str:
        """What the tokenizer decodes the ids to (equals `text` for a lossless tokenizer)."""
        return "".join(t.text for t in self.tokens)

    def segments(self) -> list[Segment]:
        return group_tokens(self)

    def to_dict(self) -> TokenizeResult:
        return TokenizeResult(tokenizer=self.tokenizer_name, count=self.count,
                              tokens=[t.to_dict() for t in self.tokens])


def _backend(tokenizer: PreTrainedTokenizerBase):
    return getattr(tokenizer, "backend_tokenizer", None)


def special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of special tokens: the named ones (bos, eos, unk, pad...) and added tokens flagged special
    (chat markers such as `<|user|>`, `<|im_start|>`)."""
    ids = {int(i) for i in tokenizer.all_special_ids}
    ids.update(int(i) for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    return ids


def tokenizer_family(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short description of how the tokenizer splits text, for people."""
    backend = _backend(tokenizer)
    if backend is None:
        return type(tokenizer).__name__
    model = type(backend.model).__name__
    decoder = repr(backend.decoder)
    if model == "WordPiece":
        return "WordPiece (## continues a word)"
    if model == "BPE" and "ByteLevel" in decoder:
        return "byte-level BPE (Ġ is a space)"
    if model == "BPE" and getattr(backend.model, "byte_fallback", False):
        return "SentencePiece BPE with byte fallback (▁ is a space)"
    if model == "Unigram":
        return "Unigram (SentencePiece)"
    return model


def check_text(text: str, max_chars: int = MAX_CHARS) -> None:
    """Raise InvalidInputError when `text` is not a string, is longer than `max_chars`, or is not valid Unicode.

    A null is refused rather than read as "": the text is what is asked about, so a caller that sent none is told so
    instead of getting an empty answer (or a tokenizer's ValueError) back.
    """
    if text is None:
        raise InvalidInputError('The input must be text (a string); got null. Send "" for an empty text.')
    checks.text(text, "The input", max_chars)


def stream_texts(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[tuple[str, int]]:
    """For each id: (text it decodes to in context, index of the token whose chunk completes it).

    A streaming decoder emits nothing for a byte that only starts a character; the pending tokens are assigned to
    the chunk that completes them. Bytes still pending at the end get what a full decode adds (usually `�`).
    """
    out: list[tuple[str, int]] = [("", i) for i in range(len(ids))]
    backend = _backend(tokenizer)
    if backend is not None:
        try:
            from tokenizers.decoders import DecodeStream

            stream = DecodeStream(skip_special_tokens=False)
            pending: list[int] = []
            joined: list[str] = []
            for i, token_id in enumerate(ids):
                chunk = stream.step(backend, token_id)
                if chunk is None:
                    pending.append(i)
                    continue
                for j in pending:
                    out[j] = ("", i)
                out[i] = (chunk, i)
                joined.append(chunk)
                pending = []
            if pending:
                full = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                done = "".join(joined)
                tail = full[len(done):] if full.startswith(done) else "\ufffd"
                last = pending[-1]
                for j in pending:
                    out[j] = ("", last)
                out[last] = (tail, last)
            return out
        except Exception:  # a decoder the stream does not support: decode one token at a time instead
            log.debug("streaming decode failed; decoding tokens one by one", exc_info=True)
    return [(tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False), i)
            for i, token_id in enumerate(ids)]


def _offsets_by_search(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    """Best-effort spans for tokenizers without an offsets mapping: find each decoded piece after the last one."""
    spans, cursor = [], 0
    for piece in pieces:
        needle = piece.strip()
        found = text.find(needle, cursor, cursor + len(needle) + 64) if needle else -1
        if found < 0:
            spans.append((cursor, cursor))
            continue
        spans.append((found, found + len(needle)))
        cursor = found + len(needle)
    return spans


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str, name: str = "",
             max_chars: int = MAX_CHARS, add_special_tokens: bool = True) -> TokenizedText:
    """Tokenize `text` exactly as `tokenizer(text)` does, with each token's character span in `text`.

    Special tokens the tokenizer adds on its own (BERT's [CLS] ... [SEP]) are included, as the model sees them.
    Raises InvalidInputError for text longer than `max_chars`.
    """
    check_text(text, max_chars)
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True, verbose=False)
        ids = [int(i) for i in enc["input_ids"]]
        offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    except NotImplementedError:  # a Python tokenizer without offsets
        ids = [int(i) for i in tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]]
        offsets = _offsets_by_search(text, [tokenizer.decode([i]) for i in ids])
    texts = stream_texts(tokenizer, ids)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    specials = special_ids(tokenizer)
    tokens: list[Token] = []
    cursor = 0  # furthest character covered so far: where a zero-width token sits
    rows = zip(ids, pieces, offsets, texts, strict=True)
    for i, (token_id, piece, (start, end), (decoded, _owner)) in enumerate(rows):
        start, end = max(0, min(start, len(text))), max(0, min(end, len(text)))
        if end <= start:
            start = end = cursor
        cursor = max(cursor, end)
        tokens.append(Token(index=i, id=token_id, piece=str(piece), text=decoded, start=start, end=end,
                            special=token_id in specials))
    return TokenizedText(tokenizer_name=name, text=text, tokens=tuple(tokens))


def tokens_for_ids(tokenizer: PreTrainedTokenizerBase, ids: list[int], name: str = "") -> TokenizedText:
    """Decode `ids` and give each token its span in the decoded text (the chat tab's prompt inspector uses this
    on a prompt's ids: `<|user|>` and the other template markers come out as special tokens).

    A byte token that only starts a character shares the span of the chunk that completes it. Ids must be valid
    (`check_ids` says which are not).
    """
    ids = [int(i) for i in ids]
    check_ids(tokenizer, ids)
    texts = stream_texts(tokenizer, ids)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    specials = special_ids(tokenizer)
    # where each emitted chunk lies in the decoded text
    chunk_span: dict[int, tuple[int, int]] = {}
    pos = 0
    for i, (decoded, owner) in enumerate(texts):
        if owner == i:
            chunk_span[i] = (pos, pos + len(decoded))
            pos += len(decoded)
    tokens = []
    for i, (token_id, piece, (decoded, owner)) in enumerate(zip(ids, pieces, texts, strict=True)):
        start, end = chunk_span[owner]
        tokens.append(Token(index=i, id=token_id, piece=str(piece), text=decoded, start=start, end=end,
                            special=token_id in specials))
    return TokenizedText(tokenizer_name=name, text="".join(t.text for t in tokens), tokens=tuple(tokens))


def _shown(item: str) -> str:
    """A user's bad item, shortened for an error message."""
    return repr(item if len(item) <= 20 else item[:20] + "…")


def _named(items: list[str]) -> str:
    more = f" and {len(items) - _MAX_NAMED} more" if len(items) > _MAX_NAMED else ""
    return ", ".join(items[:_MAX_NAMED]) + more


def once_per_tokenizer(fn: Callable[[PreTrainedTokenizerBase], T]) -> Callable[[PreTrainedTokenizerBase], T]:
    """Compute `fn(tokenizer)` once per tokenizer object, kept as long as the tokenizer lives (a hub tokenizer the
    registry drops takes its entry with it)."""
    memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    lock = threading.Lock()

    @functools.wraps(fn)
    def cached(tokenizer: PreTrainedTokenizerBase) -> T:
        try:
            with lock:
                if tokenizer in memo:
                    return memo[tokenizer]
        except TypeError:  # a tokenizer class that cannot be a weak dictionary key: compute every time
            return fn(tokenizer)
        value = fn(tokenizer)
        with lock:
            memo[tokenizer] = value
        return value

    return cached


@once_per_tokenizer
def vocab_upper(tokenizer: PreTrainedTokenizerBase) -> int:
    """One past the largest valid token id (Phi-3: 32011, although its embedding matrix has 32064 rows).

    Not always len(tokenizer): ids may have gaps, as in OpenAI's vocabularies, whose special tokens sit past
    the regular ones (GPT-4o's <|endofprompt|> is 200018 in a vocabulary of 200,000 tokens).
    """
    return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)


@once_per_tokenizer
def vocab_size(tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens in the vocabulary, special ones included: neither the embedding matrix's rows nor `vocab_upper`."""
    return len(tokenizer.get_vocab())


def out_of_range(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    """The ids in `ids` that are not tokens of `tokenizer`, in order."""
    upper = vocab_upper(tokenizer)
    backend = _backend(tokenizer)
    return [i for i in ids if i < 0 or i >= upper or (backend is not None and backend.id_to_token(i) is None)]


def check_ids(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> None:
    """Raise InvalidInputError naming every id that is not a token of `tokenizer`."""
    bad = out_of_range(tokenizer, ids)
    if bad:
        raise InvalidInputError(f"Not token ids of this tokenizer: {_named([str(i) for i in bad])}. "
                                f"Valid ids are 0 to {vocab_upper(tokenizer) - 1:,}.")


def _id_items(ids_text: str) -> list[str]:
    if not isinstance(ids_text, str):
        raise InvalidInputError(f"The ids must be given as text, e.g. '306, 5360, 8720'; got {checks.quote(ids_text)}.")
    if len(ids_text) > _MAX_IDS_TEXT:
        raise InvalidInputError(f"That is {len(ids_text):,} characters of ids; the limit is {_MAX_IDS_TEXT:,}.")
    body = ids_text.strip().removeprefix("[").removesuffix("]")
    items = [item for item in _ID_SPLIT.split(body) if item]
    if len(items) > MAX_IDS:
        raise InvalidInputError(f"That is {len(items):,} ids; the limit is {MAX_IDS:,}.")
    return items


def detokenize(tokenizer: PreTrainedTokenizerBase, ids_text: str, name: str = "") -> TokenizedText:
    """Pasted ids (comma or space separated) → the decoded text and its tokens.

    Items that are not whole numbers, and ids outside the vocabulary, raise one InvalidInputError naming them all.
    """
    items = _id_items(ids_text)
    not_numbers = [_shown(item) for item in items if not _INT.fullmatch(item)]
    ids = [int(item) for item in items if _INT.fullmatch(item)]
    bad_ids = out_of_range(tokenizer, ids)
    problems = []
    if not_numbers:
        problems.append(f"not whole numbers: {_named(not_numbers)}")
    if bad_ids:
        problems.append(f"not in the vocabulary (ids 0 to {vocab_upper(tokenizer) - 1:,}): "
                        f"{_named([str(i) for i in bad_ids])}")
    if problems:
        raise InvalidInputError("Invalid token ids, " + "; ".join(problems) + ". Separate ids with commas or "
                                "spaces, e.g. 306, 5360, 8720.")
    return tokens_for_ids(tokenizer, ids, name)


def group_tokens(tokenized: TokenizedText) -> list[Segment]:
    """Split the text into display segments, in order, covering every character once.

    Tokens whose spans overlap form one segment (the byte tokens of one character, and the byte-level BPE token that
    carries a space plus a character's first byte); a zero-width token (an added special token) is a segment of its
    own; text no token covers is a segment with no tokens.
    """
    text = tokenized.text
    out: list[Segment] = []
    cursor = 0  # text before this is already in a segment
    group: list[int] = []
    g_start = g_end = 0

    def close() -> None:
        nonlocal group, cursor
        if group:
            out.append(Segment(g_start, g_end, tuple(group)))
            cursor = g_end
            group = []

    for tok in tokenized.tokens:
        if tok.end <= tok.start:
            close()
            if tok.start > cursor:
                out.append(Segment(cursor, tok.start, ()))
                cursor = tok.start
            out.append(Segment(cursor, cursor, (tok.index,)))
            continue
        if group and tok.start < g_end:
            group.append(tok.index)
            g_end = max(g_end, tok.end)
            continue
        close()
        start = max(tok.start, cursor)
        if start > cursor:
            out.append(Segment(cursor, start, ()))
        if tok.end <= start:  # a span entirely inside text already shown (out-of-order offsets)
            out.append(Segment(start, start, (tok.index,)))
            continue
        group, g_start, g_end = [tok.index], start, tok.end
    close()
    if cursor < len(text):
        out.append(Segment(cursor, len(text), ()))
    return out
