"""Holding the engine's worker at a chosen token, so that a test about what happens *while* a chat is generating
(Stop, a full queue) does not depend on how fast the machine decodes.

    >>> hold_pushes(monkeypatch, lambda s: "dragon" in s.prompt.text, after=3, until=cancelled)   # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from core.engine.stream import ChatStream

HOLD_S = 60.0  # a liveness bound: a hold that is never released ends, and the test then fails on its own terms


def cancelled(stream: ChatStream) -> threading.Event:
    return stream._cancel


def hold_pushes(monkeypatch: pytest.MonkeyPatch, which: Callable[[ChatStream], bool], after: int,
                until: Callable[[ChatStream], threading.Event]) -> None:
    """From the `after`-th token on, for each stream that `which` picks, the worker pushes the token (its consumer
    sees it) and then waits until `until(stream)` is set: nothing more is generated meanwhile."""
    push = ChatStream.push

    def held(self: ChatStream, token_ids: list[int]) -> None:
        push(self, token_ids)
        if which(self) and len(self.token_ids) >= after:
            until(self).wait(HOLD_S)

    monkeypatch.setattr(ChatStream, "push", held)
