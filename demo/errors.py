"""The UI edge: core's exceptions become gr.Error messages; anything unexpected becomes a short, logged message.

Wrap every handler and API function with `user_errors`; it keeps the signature (gr.api reads the type hints):

    @user_errors
    def tokenize(text: str) -> dict: ...
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from core.errors import TokenLabError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def to_gr_error(exc: BaseException) -> gr.Error:
    """A message a person understands: core errors as they are, bugs as one line (the traceback goes to the log)."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, TokenLabError):
        return gr.Error(str(exc), print_exception=False)
    log.exception("unexpected error in a handler")
    return gr.Error(f"Something went wrong on the server ({type(exc).__name__}). Please try again.",
                    print_exception=False)


def user_errors(fn: F) -> F:
    """Decorate a handler (plain, generator, async or async generator) so errors reach users as gr.Error."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen(*args, **kwargs):
            try:
                async for item in fn(*args, **kwargs):
                    yield item
            except Exception as exc:
                raise to_gr_error(exc) from exc
        return agen  # type: ignore[return-value]
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise to_gr_error(exc) from exc
        return gen  # type: ignore[return-value]
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coro(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                raise to_gr_error(exc) from exc
        return coro  # type: ignore[return-value]

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise to_gr_error(exc) from exc
    return plain  # type: ignore[return-value]
