"""Which kind of token each vocabulary entry is, for colouring the vocabulary map: one rule set over the text a token
adds after another token (core/text/token_strings.py), so SentencePiece (`▁king` reads ` king`) and byte-level BPE
(`Ġking` reads ` king`) fall into the same categories without guessing the tokenizer's family.

The rules, first match wins (`content` is the text without its leading and trailing whitespace):

1. special: the tokenizer's special and added special tokens (`<|im_end|>`, `<|end|>`, `<s>`).
2. byte: byte-fallback pieces (`<0x0A>`), pieces holding part of a UTF-8 character (their text is `�`), control bytes.
3. whitespace only: `code` when it holds indentation (a run of two or more spaces, or a tab: `␣␣␣␣`, `\\n␣␣`),
   else `whitespace` (`\\n`, `␣`).
4. digits and numbers: content made of digits (any script's), with `.`/`,` between them (` 2024`, `1.5`).
5. code: content mixing letters or digits with a code symbol (`_ { } [ ] ( ) < > = ; \\ | & ^ ~ $ @ # \\``:
   `__init__`, `get(`, `);`), or two or more punctuation/symbol characters of which one is a code symbol or an
   operator character (`+ - * / %`: `==`, `->`, `();`, `{}`, `//`).
6. punctuation and symbols: content with no letters or digits (`.`, `,`, `?!`, `...`, `€`, emoji).
7. a non-Latin script: the script (by `unicodedata.name`) that most of the content's letters and marks belong to,
   when it is not Latin: Cyrillic, Greek, Arabic, Hebrew, Devanagari, CJK (Han), Japanese kana, Hangul, Thai, ...
8. word-initial (the text starts with whitespace: ` king`) or continuation (`izing`) for Latin letters.

    >>> category(" king", is_special=False, is_byte=False)
    'word-initial'
    >>> [category(t, False, False) for t in ("izing", " 2024", "==", " Москва", "    ")]
    ['continuation', 'digits & numbers', 'code', 'Cyrillic', 'code']
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence

SPECIAL = "special"
BYTE = "byte"
WHITESPACE = "whitespace"
NUMBER = "digits & numbers"
CODE = "code"
PUNCTUATION = "punctuation & symbols"
WORD_INITIAL = "word-initial"
CONTINUATION = "continuation"
OTHER_SCRIPT = "other scripts"
# legend order: the Latin word classes first, then the rest; scripts follow in order of size
FIXED_ORDER = (WORD_INITIAL, CONTINUATION, NUMBER, PUNCTUATION, WHITESPACE, CODE, SPECIAL, BYTE)

CODE_SYMBOLS = frozenset("_{}[]()<>=;\\|&^~$@#`")
OPERATORS = frozenset("+-*/%")
# unicodedata names that start with a script's name; CJK and kana are named below
SCRIPTS = ("CYRILLIC", "GREEK", "ARABIC", "HEBREW", "DEVANAGARI", "BENGALI", "GURMUKHI", "GUJARATI", "TAMIL",
           "TELUGU", "KANNADA", "MALAYALAM", "SINHALA", "THAI", "LAO", "TIBETAN", "MYANMAR", "GEORGIAN", "ARMENIAN",
           "ETHIOPIC", "KHMER", "MONGOLIAN", "SYRIAC", "THAANA", "CHEROKEE", "HANGUL", "ORIYA")
SCRIPT_LABELS = {"CJK": "CJK (Han)", "HIRAGANA": "Japanese kana", "KATAKANA": "Japanese kana",
                 "HANGUL": "Hangul (Korean)"}


def script_of(ch: str) -> str:
    """The script of one letter or mark as a label ("Latin", "Cyrillic", "CJK (Han)"), from its Unicode name."""
    name = unicodedata.name(ch, "")
    if "LATIN" in name:
        return "Latin"
    first = name.split(" ", 1)[0] if name else ""
    if "KATAKANA" in name or "HIRAGANA" in name:
        return SCRIPT_LABELS["HIRAGANA"]
    if first in SCRIPT_LABELS or name.startswith("CJK"):
        return SCRIPT_LABELS.get(first, SCRIPT_LABELS["CJK"])
    if first in SCRIPTS:
        return first.title()
    # letters named without a script (MODIFIER LETTER APOSTROPHE, FEMININE ORDINAL INDICATOR) read with Latin text
    return "Latin" if ch.isascii() or first in ("MODIFIER", "FEMININE", "MASCULINE") else OTHER_SCRIPT


def _is_number(content: str) -> bool:
    if not content[0].isdigit() or not content[-1].isdigit():
        return False
    return all(c.isdigit() or c in ".," for c in content)


def category(text: str, is_special: bool, is_byte: bool) -> str:
    """The category of one token from its text (what it adds after another token); see the module docstring."""
    if is_special:
        return SPECIAL
    if is_byte or not text:
        return BYTE
    content = text.strip()
    if not content:
        return CODE if "  " in text or "\t" in text else WHITESPACE
    if _is_number(content):
        return NUMBER
    alnum = [c for c in content if c.isalnum() or unicodedata.category(c)[0] == "M"]  # marks belong to letters
    symbols = set(content) & CODE_SYMBOLS
    if alnum and symbols:
        return CODE
    if not alnum:
        code_like = symbols or set(content) & OPERATORS
        return CODE if len(content) >= 2 and code_like else PUNCTUATION
    letters = [c for c in content if unicodedata.category(c)[0] in "LM"]
    if letters:
        script, _ = Counter(script_of(c) for c in letters).most_common(1)[0]
        if script != "Latin":
            return script
    return WORD_INITIAL if text[0].isspace() else CONTINUATION


def categories(texts: Sequence[str], special_ids: frozenset[int], byte_ids: frozenset[int]) -> list[str]:
    """The category of every token, in id order (a Vocabulary's `texts`, `special_ids` and `byte_ids`)."""
    return [category(t, i in special_ids, i in byte_ids) for i, t in enumerate(texts)]


def legend_order(names: Sequence[str]) -> list[str]:
    """The categories present, the fixed ones first and then the scripts from the most tokens to the fewest."""
    counts = Counter(names)
    fixed = [c for c in FIXED_ORDER if c in counts]
    scripts = sorted((c for c in counts if c not in FIXED_ORDER), key=lambda c: (-counts[c], c))
    return fixed + scripts
