"""Cancellation at the web edge: a handler's work stops when its caller gives up, whichever door it came in by.

gradio cancels a request by cancelling its asyncio task: the page's Cancel button (`cancels=`), gradio_client's
`job.cancel()` and REST's /cancel all end there, and so does an MCP call its client abandons. A plain function runs in
a thread that a cancelled task cannot stop, so `cancellable` runs it in a thread of its own with a fresh cancel token
as the current one (core/work/cancel.py) and sets the token when the task is cancelled: the work stops at its next
step, and its turn and its share of the machine are free for the next request.

    @cancellable
    @api_errors
    def evaluate(benchmark: str) -> dict: ...      # gradio sees the same signature, now a coroutine function
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from core.work.cancel import CancelToken, current_token

P = ParamSpec("P")
T = TypeVar("T")


def cancellable(fn: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """`fn` as a coroutine function that runs it in a worker thread and cancels its work with the request."""

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> T:
        token = CancelToken()

        def call() -> T:
            with current_token(token):
                return fn(*args, **kwargs)

        try:
            # abandon_on_cancel: the request ends at once, the thread at the work's next step; the thread runs in a
            # copy of this context (anyio's), so `current_token` is the request's own
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            token.cancel()
            raise

    return run  # type: ignore[return-value]
