"""Turns for one kind of heavy request: at most `running` at once, the next ones served in arrival order, up to
`waiting` of them in line; more are told the server is busy.

This is the limit that protects the machine, so it lives here rather than in the web server's queue: the queue's
concurrency limits do not hold for gradio's /run/ door, for MCP calls or for a program calling core directly.

    >>> evaluations = Turns("evaluations", running=1, waiting=4)
    >>> with evaluations.turn(CancelToken()):
    ...     evaluations.stats()["running"]
    1
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from core.errors import BusyError
from core.work.cancel import Cancelled, CancelToken
from core.work.fair_share import POLL_S
from core.work.progress import Progress


class Turns:
    """See the module docstring; `turn` is called from any thread."""

    def __init__(self, what: str, running: int = 1, waiting: int = 4) -> None:
        self.what, self.running, self.waiting = what, running, waiting
        self._cond = threading.Condition()
        self._line: collections.deque[object] = collections.deque()
        self._now = 0  # running now
        self.peak = 0  # the most that ever ran at once
        self.waited = 0  # callers who found every turn taken and waited in line
        self.finished = 0
        self.cancelled = 0

    @contextlib.contextmanager
    def turn(self, token: CancelToken, progress: Progress | None = None) -> Iterator[None]:
        """Wait for this caller's turn (BusyError when the line is full, Cancelled when the caller cancels while
        waiting; `progress` hears how many are ahead), then hold it for the block."""
        ticket = object()
        with self._cond:
            if self._now + len(self._line) >= self.running + self.waiting:
                raise BusyError(f"{self._now + len(self._line)} {self.what} are running or waiting. Try again in a "
                                f"moment.")
            self._line.append(ticket)
            self.waited += self._now >= self.running or len(self._line) > 1
            try:
                told = None
                while self._line[0] is not ticket or self._now >= self.running:
                    token.check()
                    ahead = self._line.index(ticket) + self._now - self.running + 1
                    if progress is not None and ahead != told:
                        told = ahead
                        progress(0, 0, f"waiting for its turn: {ahead} of the {self.what} ahead")
                    self._cond.wait(POLL_S)
            except Cancelled:
                self._line.remove(ticket)
                self.cancelled += 1
                self._cond.notify_all()
                raise
            self._line.popleft()
            self._now += 1
            self.peak = max(self.peak, self._now)
        try:
            yield
        except Cancelled:
            with self._cond:
                self.cancelled += 1
            raise
        finally:
            with self._cond:
                self._now -= 1
                self.finished += 1
                self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"running": self._now, "waiting": len(self._line), "peak_running": self.peak,
                    "waited": self.waited, "finished": self.finished, "cancelled": self.cancelled}
