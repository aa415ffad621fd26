"""Showing a TokenizedText: the colored view (a gr.HighlightedText value), the token table and the counts line.

Everything shown is untrusted (the user's text and vocabulary pieces), so it only ever goes into components that
render plain text (HighlightedText, Dataframe with "str" cells, Textbox), never into HTML or Markdown. Invisible
characters are made visible, the same way in every tab: space `␣`, tab `→`, newline `↵` (then a real line break in
running text), control characters as their Unicode control pictures (`␀`), and format characters such as zero-width
joiners and bidi marks as `⟨ZWJ⟩`, `⟨RLO⟩`.

    view = token_view("Tokens")                                   # a HighlightedText with the token colors
    view.value = token_highlights(tokenize(tok, "I love it"))     # [("I", "t1"), ("␣love", "t2"), ("␣it", "t3")]
"""

from __future__ import annotations

import unicodedata
from typing import Any

import gradio as gr

from core.text.tokens import TokenizedText

SPECIAL = "special"
CYCLE = ("t1", "t2", "t3", "t4", "t5", "t6")
# gradio's named colors follow the light/dark theme; special tokens get the one color the cycle does not use
TOKEN_COLORS = {"t1": "blue", "t2": "green", "t3": "yellow", "t4": "pink", "t5": "cyan", "t6": "orange",
                SPECIAL: "purple"}
TABLE_HEADERS = ["#", "id", "piece", "text", "start–end", "special"]
TABLE_TYPES = ["number", "number", "str", "str", "str", "bool"]
TABLE_LIMIT = 2_000  # rows shown in the UI table; the API returns every token

_NAMED_FORMAT = {
    0x00AD: "SHY", 0x061C: "ALM", 0x180E: "MVS", 0x200B: "ZWSP", 0x200C: "ZWNJ", 0x200D: "ZWJ", 0x200E: "LRM",
    0x200F: "RLM", 0x2028: "LS", 0x2029: "PS", 0x202A: "LRE", 0x202B: "RLE", 0x202C: "PDF", 0x202D: "LRO",
    0x202E: "RLO", 0x2060: "WJ", 0x2066: "LRI", 0x2067: "RLI", 0x2068: "FSI", 0x2069: "PDI", 0xFEFF: "BOM",
}


def _visible_char(ch: str, breaks: bool = True) -> str:
    if ch == " ":
        return "␣"
    if ch == "\t":
        return "→"
    if ch == "\n":
        return "↵\n" if breaks else "↵"
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ ␁ ... ␍ ...
    if code == 0x7F:
        return "␡"
    if code == 0xA0:
        return "⍽"
    if code in _NAMED_FORMAT:
        return f"⟨{_NAMED_FORMAT[code]}⟩"
    category = unicodedata.category(ch)
    if category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or (category == "Zs" and ch != " "):
        return f"⟨U+{code:04X}⟩"
    return ch


def show_whitespace(text: str, breaks: bool = True) -> str:
    """`text` with spaces, tabs, newlines and invisible characters made visible; with `breaks` a newline
    still breaks the line after its `↵`."""
    if text.isprintable() and " " not in text:
        return text
    return "".join(_visible_char(ch, breaks) for ch in text)


def piece_shown(text: str, piece: str) -> str:
    """How one vocabulary token is shown: its text with whitespace made visible (`␣king`), or its piece when the
    token is only part of a character (its text alone is `�`, so `<0xF0>` says more)."""
    return piece if "\ufffd" in text or not text else show_whitespace(text, breaks=False)


def token_highlights(tokenized: TokenizedText) -> list[tuple[str, str | None]]:
    """The value for a gr.HighlightedText: one entry per segment, colored in turn (`t1`…`t6`), special tokens
    `special`, text no token covers unlabeled. The byte tokens of one character form one segment, so the
    character shows whole; a special token the tokenizer inserted without text (BERT's [CLS]) shows its piece."""
    out: list[tuple[str, str | None]] = []
    tokens, text = tokenized.tokens, tokenized.text
    n = 0
    for seg in tokenized.segments():
        if not seg.tokens:
            out.append((show_whitespace(text[seg.start:seg.end]), None))
            continue
        group = [tokens[i] for i in seg.tokens]
        shown = text[seg.start:seg.end] if seg.end > seg.start else "".join(t.piece for t in group)
        if all(t.special for t in group):
            out.append((show_whitespace(shown), SPECIAL))
            continue
        out.append((show_whitespace(shown), CYCLE[n % len(CYCLE)]))
        n += 1
    return out


def token_view(label: str, **kwargs: Any) -> gr.HighlightedText:
    """A HighlightedText set up for `token_highlights` values (colors, no legend, no inline labels)."""
    settings: dict[str, Any] = {"color_map": TOKEN_COLORS, "show_legend": False, "show_inline_category": False,
                                "combine_adjacent": False, "show_whitespaces": True}
    settings.update(kwargs)
    return gr.HighlightedText(label=label, **settings)


def token_rows(tokenized: TokenizedText, limit: int = TABLE_LIMIT) -> list[list[Any]]:
    """Rows for the token table: index, id, piece, decoded text, start–end, special (whitespace made visible)."""
    return [[t.index, t.id, show_whitespace(t.piece, breaks=False), show_whitespace(t.text, breaks=False),
             f"{t.start}–{t.end}", t.special] for t in tokenized.tokens[:limit]]


def counts_line(tokenized: TokenizedText, limit: int = TABLE_LIMIT) -> str:
    """'12 tokens · 57 characters · 4.75 characters per token' (plain text: no markup)."""
    line = (f"{tokenized.count:,} tokens · {tokenized.char_count:,} characters · "
            f"{tokenized.chars_per_token:.2f} characters per token")
    if tokenized.count > limit:
        line += f" · the table lists the first {limit:,} tokens"
    return line


def ids_line(tokenized: TokenizedText) -> str:
    """The ids, comma separated (paste them into "Ids → text")."""
    return ", ".join(str(i) for i in tokenized.ids)
