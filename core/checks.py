"""Checking what a request sends before any work starts: types and ranges, in sentences that name the parameter.

API callers send JSON, so anything can arrive where text or a number belongs: `null`, `true`, a list, NaN, 1e30, a
lone surrogate. Each check returns the value in the type the code expects, or raises InvalidInputError with a message a
person can act on. A message quotes at most a short prefix of what was sent (`quote`), never the whole input:

    >>> integer(5, "k", 1, 200)
    5
    >>> integer(True, "k", 1, 200)
    Traceback (most recent call last):
    core.errors.InvalidInputError: k must be a whole number from 1 to 200; got true.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from core.errors import InvalidInputError

QUOTE_CHARS = 40  # the most characters of a user's input that a message repeats
SEED_MAX = 2**63 - 1


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """A short, printable rendering of what was sent, for messages: `'abc…'`, `a number (12)`, `true`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= limit else value[:limit] + "…"
        return repr(shown.encode("utf-8", "backslashreplace").decode("utf-8"))
    if isinstance(value, (int, float)):
        text = repr(value)
        return f"the number {text if len(text) <= limit else text[:limit] + '…'}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _ensure_unicode(value: str, name: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{name} contains unpaired surrogate characters (broken UTF-16), which no tokenizer "
                                "accepts. Remove them and try again.") from None
    return value


def text(value: Any, name: str, max_chars: int, *, required: bool = False, what: str = "") -> str:
    """A string of at most `max_chars` valid Unicode characters; `None` is "" unless `required`. With `required`, a
    blank string is refused too, with `what` (e.g. "Type a message first.") as the message."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be text (a string); got {quote(value)}.")
    if len(value) > max_chars:
        raise InvalidInputError(f"{name} is {len(value):,} characters; the limit is {max_chars:,}.")
    _ensure_unicode(value, name)
    if required and not value.strip():
        raise InvalidInputError(what or f"{name} is empty.")
    return value


def integer(value: Any, name: str, low: int, high: int) -> int:
    """A whole number in [low, high]. A float with no fraction (3.0) is accepted; booleans, strings, NaN are not."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value, ok = int(value), True
    if not ok or not low <= value <= high:
        raise InvalidInputError(f"{name} must be a whole number from {low:,} to {high:,}; got {quote(value)}.")
    return int(value)


def number(value: Any, name: str, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite number in [low, high] (or (low, high] with `low_open`)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise InvalidInputError(f"{name} must be a number in {bracket}{low:g}, {high:g}]; got {quote(value)}.")
    return float(value)


def seed(value: Any, name: str = "seed") -> int | None:
    """None (or -1, the UI's "random") for a random seed, else a whole number from 0 to 2^63 - 1."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == -1):
        return None
    try:
        return integer(value, name, 0, SEED_MAX)
    except InvalidInputError:
        raise InvalidInputError(f"{name} must be empty (random) or a whole number from 0 to 2^63 - 1; "
                                f"got {quote(value)}.") from None


def choice(value: Any, name: str, choices: Sequence[str], aliases: dict[str, str] | None = None) -> str:
    """One of `choices` (case-insensitive, with optional aliases), as its canonical spelling."""
    if isinstance(value, str):
        key = value.strip().lower()
        canonical = (aliases or {}).get(key, key)
        if canonical in choices:
            return canonical
    raise InvalidInputError(f"{name} must be one of {', '.join(choices)}; got {quote(value)}.")


def words(value: Any, name: str, max_items: int, max_chars: int = 100) -> list[str]:
    """A comma-separated string or a list of strings, as a list of non-empty, stripped words."""
    if value is None:
        return []
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise InvalidInputError(f"{name} must be comma-separated words (or a list of words); got {quote(value)}.")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidInputError(f"{name} must hold words (text); one item is {quote(item)}.")
        item = item.strip()
        if len(item) > max_chars:
            raise InvalidInputError(f"Each word in {name} has at most {max_chars:,} characters; one has "
                                    f"{len(item):,}.")
        if item:
            out.append(_ensure_unicode(item, name))
    if len(out) > max_items:
        raise InvalidInputError(f"{name} has {len(out)} words; the limit is {max_items}.")
    return out


def flag(value: Any, name: str) -> bool:
    """A true/false switch (JSON true/false; null counts as false)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be true or false; got {quote(value)}.")
    return value
