"""The bounds every chat request is held to, whichever engine serves it: one place, filled from AppConfig."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for, and how many may be in progress at once."""

    max_queue: int = 16  # requests in progress (generating or waiting for a row) before new ones get "busy"
    max_new_tokens: int = 2048
    max_input_chars: int = 50_000  # the new message plus the system prompt
    max_history_messages: int = 10_000  # items in a conversation's history
    max_history_chars: int = 1_000_000  # characters in all of them together
