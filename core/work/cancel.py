"""Cancellation that reaches the work: a request's token, set when its caller gives up, and checked by the work between
two of its steps.

The web edge (demo/cancellation.py) makes a token for each request it runs in a thread and sets it when the request's
task is cancelled (the page's Cancel, gradio_client's `job.cancel()`, a closed MCP call); the work finds it through a
context variable, so a core function called by a test or another app runs uncancelled unless it is given one:

    >>> token = CancelToken()
    >>> with current_token(token):
    ...     current().cancel()
    >>> token.cancelled
    True
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

from core.errors import TokenLabError


class Cancelled(TokenLabError):
    """The caller cancelled the request; the work stopped between two of its steps."""

    def __init__(self, message: str = "Cancelled: the work stopped before it finished.") -> None:
        super().__init__(message)


class CancelToken:
    """Set once, by whoever speaks for the caller; read by the work, from any thread."""

    def __init__(self) -> None:
        self._set = threading.Event()

    def cancel(self) -> None:
        self._set.set()

    @property
    def cancelled(self) -> bool:
        return self._set.is_set()

    def check(self) -> None:
        """Raise Cancelled once the caller has cancelled."""
        if self._set.is_set():
            raise Cancelled()


_CURRENT: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("token_lab_cancel", default=None)


def current() -> CancelToken:
    """The running request's token; a fresh one nobody sets where no request made one."""
    token = _CURRENT.get()
    return token if token is not None else CancelToken()


@contextlib.contextmanager
def current_token(token: CancelToken) -> Iterator[CancelToken]:
    """Make `token` the current request's token inside the block (and in threads started with its context)."""
    reset = _CURRENT.set(token)
    try:
        yield token
    finally:
        _CURRENT.reset(reset)
