"""A fair share of the machine for the chats while heavy work runs.

Chat is interactive: a person reads the tokens as they come. An Inside view's forward pass over a long text, or an
evaluation's batches of questions, is not. So while any chat is being generated, heavy work runs one step at a time and
rests after each, long enough that its steps take at most `share` of the wall-clock time: the chats run alone during
the rests, and the heavy work still advances, in order, at a bounded pace. With no chat running it never rests.

One heavy step at a time, whoever runs it (the engine's worker runs the views' steps between two decoding steps, an
evaluation runs its batches on a request's thread), and the chats wait while a request thread's step runs
(`wait_for_step`): two things at once on a machine's few cores slow both by more than taking turns does.

    >>> share = FairShare(share=0.25)
    >>> with share.step(CancelToken()) as chats_running:  # a request's thread: waits its turn (rests while chats
    ...     chats_running                                 # run), then is timed
    False
    >>> share.try_begin()                  # the engine's worker, which must never block: a step now, or later
    True
    >>> share.end()
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.config import DEFAULTS
from core.work.cancel import CancelToken

POLL_S = 0.05  # how often a waiting step looks at its caller's cancel token


@dataclass(frozen=True)
class Stretch:
    """How a view's pass runs between two of its stops (core/inside/stepping.py): for how long, and on how many of
    torch's threads (None: torch's default)."""

    seconds: float
    threads: int | None = None


# While chats run: a small share of a decoding step, so that a decoding step plus one stretch stays within twice a
# decoding step, and on one thread: a second torch thread spins on after the stretch, on the core the next decoding
# step needs (a view computed while chats run may then differ in its last bits from the same view computed idle:
# another summation order). With none running: long enough that stopping costs little, short enough that a chat
# arriving meanwhile starts at once, on every thread.
CHAT_STRETCH, IDLE_STRETCH = Stretch(0.001, threads=1), Stretch(0.02)


class FairShare:
    """Heavy steps' turns: see the module docstring. `set_chatting` is told by the chat engine's worker."""

    def __init__(self, share: float = DEFAULTS.heavy_share) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"the heavy work's share must be in (0, 1], not {share}")
        self.share = share
        self._cond = threading.Condition()
        self._chatting = False
        self._stepping = False  # a heavy step is running
        self._chats_waiting = 0  # the worker waits for a request thread's step to end: it goes next
        self._started = 0.0
        self._next = 0.0  # while chats run, no heavy step starts before this time.monotonic()
        self.steps = 0
        self.step_seconds = 0.0
        self.rests = 0  # steps of request threads that waited for the chats
        self.deferred = 0  # times the worker put off a step for the chats

    def stretch(self) -> Stretch:
        """How the next stretch of a view's pass runs (see CHAT_STRETCH)."""
        return CHAT_STRETCH if self._chatting else IDLE_STRETCH

    def set_chatting(self, chatting: bool) -> None:
        """Whether chats are being generated now (their prompts read or their tokens decoded)."""
        with self._cond:
            if chatting != self._chatting:
                self._chatting = chatting
                self._cond.notify_all()

    def _due(self, now: float) -> bool:
        return not self._stepping and not self._chats_waiting and (not self._chatting or now >= self._next)

    def _begin(self, now: float) -> None:
        self._stepping, self._started = True, now

    def try_begin(self) -> bool:
        """Begin a heavy step if it is due now; False when it must wait (the caller goes on and asks again)."""
        with self._cond:
            now = time.monotonic()
            if not self._due(now):
                self.deferred += self._chatting and not self._stepping
                return False
            self._begin(now)
            return True

    def begin(self, token: CancelToken) -> None:
        """Wait until a heavy step is due, then begin it; Cancelled when the caller cancels meanwhile."""
        with self._cond:
            rested = False
            while True:
                token.check()
                now = time.monotonic()
                if self._due(now):
                    break
                rested = True
                wait = POLL_S if self._stepping else self._next - now
                self._cond.wait(min(max(wait, 0.001), POLL_S))
            self.rests += rested
            self._begin(now)

    def end(self) -> None:
        """The heavy step that began has ended: the next one rests in proportion to it (if chats run by then)."""
        with self._cond:
            now = time.monotonic()
            spent = now - self._started
            self._next = now + spent * (1 - self.share) / self.share
            self._stepping = False
            self.steps += 1
            self.step_seconds += spent
            self._cond.notify_all()

    @contextlib.contextmanager
    def step(self, token: CancelToken) -> Iterator[bool]:
        """One heavy step of a request's thread: its turn, then its timing. It yields whether chats are running, so
        that the step can be made shorter while they wait for it."""
        self.begin(token)
        try:
            yield self._chatting
        finally:
            self.end()

    def wait_for_step(self) -> None:
        """The chat engine's worker, before it reads a prompt or decodes: chats are running from now on (the next
        heavy step rests first), and a heavy step running on another thread ends before the worker goes on, the
        worker going next even where no rest is due (the worker's own steps are over by the time it asks)."""
        with self._cond:
            if not self._chatting:
                self._chatting = True
                self._cond.notify_all()
            self._chats_waiting += 1
            try:
                while self._stepping:
                    self._cond.wait(POLL_S)
            finally:
                self._chats_waiting -= 1
                self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"share": self.share, "chatting": self._chatting, "heavy_steps": self.steps,
                    "heavy_step_seconds": round(self.step_seconds, 3), "rested_steps": self.rests,
                    "deferred_steps": self.deferred}
