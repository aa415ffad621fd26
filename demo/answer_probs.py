"""An answer shown token by token, coloured by the probability the model gave each token, and each token's
alternatives: the values of a HighlightedText and two plain tables, never HTML (the tokens are the model's text).

    probs = probability_view("Answer tokens")                    # a HighlightedText with the buckets' colours
    probs.value = probability_highlights(entries)                # [("The", "≥ 90%"), ("␣capital", "50–90%"), ...]
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from core.engine.logprobs import TokenLogprob, TopLogprob
from demo.token_view import show_whitespace

# (lowest probability, label) from the top; the colours follow gradio's light/dark theme
BUCKETS = ((0.9, "≥ 90%"), (0.5, "50–90%"), (0.1, "10–50%"), (0.0, "< 10%"))
BUCKET_COLORS = {"≥ 90%": "green", "50–90%": "yellow", "10–50%": "orange", "< 10%": "red"}
TABLE_HEADERS = ["#", "token", "probability", "most likely tokens at this step"]
ALTERNATIVE_HEADERS = ["rank", "token", "probability"]


def bucket(prob: float) -> str:
    return next(label for low, label in BUCKETS if prob >= low)


def shown(token: str, raw: list[int]) -> str:
    """A token as the tables show it: whitespace made visible; a token that is only part of a character (its text
    is empty or `�`) as its bytes."""
    if (not token or "\ufffd" in token) and raw:
        return "<" + " ".join(f"0x{b:02X}" for b in raw) + ">"
    return show_whitespace(token, breaks=False)


def percent(logprob: float) -> str:
    return f"{math.exp(logprob):.1%}"


def visible(entries: list[TokenLogprob]) -> list[TokenLogprob]:
    """The entries that add text (a byte that only starts a character adds none; the one completing it shows it)."""
    return [e for e in entries if e["token"]]


def probability_highlights(entries: list[TokenLogprob]) -> list[tuple[str, str]]:
    return [(show_whitespace(e["token"]), bucket(math.exp(e["logprob"]))) for e in visible(entries)]


def _alternatives(tops: list[TopLogprob]) -> str:
    return " · ".join(f"{shown(t['token'], t['bytes'])} {percent(t['logprob'])}" for t in tops)


def probability_rows(entries: list[TokenLogprob]) -> list[list[Any]]:
    return [[i, shown(e["token"], e["bytes"]), percent(e["logprob"]), _alternatives(e["top_logprobs"])]
            for i, e in enumerate(visible(entries), 1)]


def probability_outputs(entries: list[TokenLogprob], note: str) -> tuple[Any, ...]:
    """The probability view's values for an answer: the coloured tokens, the table, no token picked yet, the entries
    a click reads, and a note (shown only when there is one) saying why there are none."""
    return (probability_highlights(entries), probability_rows(entries), [], entries,
            gr.Textbox(value=note, visible=bool(note)))


def alternative_rows(entry: TokenLogprob) -> list[list[Any]]:
    """One token's alternatives, the chosen one marked."""
    rows = [[rank, shown(t["token"], t["bytes"]) + ("  ← chosen" if t["token"] == entry["token"] else ""),
             percent(t["logprob"])] for rank, t in enumerate(entry["top_logprobs"], 1)]
    if not any(t["token"] == entry["token"] for t in entry["top_logprobs"]):
        rows.append(["—", shown(entry["token"], entry["bytes"]) + "  ← chosen", percent(entry["logprob"])])
    return rows


def probability_view(label: str, **kwargs: Any) -> gr.HighlightedText:
    settings: dict[str, Any] = {"color_map": BUCKET_COLORS, "show_legend": True, "show_inline_category": False,
                                "combine_adjacent": False, "show_whitespaces": True, "interactive": False}
    settings.update(kwargs)
    return gr.HighlightedText(label=label, **settings)
