"""What a tokenizer does with capitals, newlines, runs of spaces, digits, emoji and CJK, found by asking it.

The comparison table shows these as yes/no facts. Each one comes from encoding a small probe text and decoding it
back, never from a list kept by hand, so a tokenizer added later (or one from the hub) gets its row right too:

    tokenizer_facts(gpt4_tokenizer)
    # {'keeps_case': True, 'keeps_newlines': True, 'one_token_per_space_run': True, 'digits_per_token': 3,
    # 'splits_digits': False, 'emoji': 'bytes', 'emoji_tokens': 3, 'cjk': 'whole', 'cjk_tokens': 1}
"""

from __future__ import annotations

from typing import TypedDict

from transformers import PreTrainedTokenizerBase

from core.text.tokens import once_per_tokenizer

SPACE_RUN = 8
LONG_NUMBER = "12345678901234567890"
EMOJI = "🎵"
CJK = "鸟"
WHOLE, BYTES, LOST = "whole", "bytes", "lost"


class TokenizerFacts(TypedDict):
    """The comparison table's facts, and the counts behind the ones that are not plain yes/no.

    `emoji` (🎵) and `cjk` (鸟) are "whole" (one token), "bytes" (several tokens that together spell the character)
    or "lost" (the character does not survive encoding and decoding, e.g. BERT's [UNK]).
    """

    keeps_case: bool
    keeps_newlines: bool
    one_token_per_space_run: bool
    digits_per_token: int
    splits_digits: bool
    emoji: str
    emoji_tokens: int
    cjk: str
    cjk_tokens: int


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]]


def _roundtrip(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    return tokenizer.decode(_ids(tokenizer, text), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _character(tokenizer: PreTrainedTokenizerBase, char: str) -> tuple[str, int]:
    count = len(_ids(tokenizer, char))
    if char not in _roundtrip(tokenizer, char):
        return LOST, count
    return (WHOLE if count == 1 else BYTES), count


def _digits_per_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most digits any one token of a long number decodes to (a leading `▁`, space or `##` aside)."""
    pieces = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in _ids(tokenizer, LONG_NUMBER)]
    return max((sum(ch.isdigit() for ch in piece) for piece in pieces), default=0)


def probe(tokenizer: PreTrainedTokenizerBase) -> TokenizerFacts:
    """Encode a few probe texts with `tokenizer` and say what it kept, merged and split."""
    keeps_case = _roundtrip(tokenizer, "Hello WORLD").strip() == "Hello WORLD"
    keeps_newlines = "\n" in _roundtrip(tokenizer, "a\nb")
    spaced = "a" + " " * SPACE_RUN + "b"
    # one token for the run: it costs one token more than a single space does, and survives decoding
    extra = len(_ids(tokenizer, spaced)) - len(_ids(tokenizer, "a b"))
    one_per_run = extra == 1 and _roundtrip(tokenizer, spaced).strip() == spaced
    digits = _digits_per_token(tokenizer)
    emoji, emoji_tokens = _character(tokenizer, EMOJI)
    cjk, cjk_tokens = _character(tokenizer, CJK)
    return TokenizerFacts(keeps_case=keeps_case, keeps_newlines=keeps_newlines, one_token_per_space_run=one_per_run,
                          digits_per_token=digits, splits_digits=digits == 1, emoji=emoji, emoji_tokens=emoji_tokens,
                          cjk=cjk, cjk_tokens=cjk_tokens)


_probed = once_per_tokenizer(probe)


def tokenizer_facts(tokenizer: PreTrainedTokenizerBase) -> TokenizerFacts:
    """`probe(tokenizer)`, computed once per tokenizer; each caller gets its own copy."""
    return TokenizerFacts(**_probed(tokenizer))
