"""The UI edge, in one place: core's exceptions become gr.Error messages; anything unexpected becomes a short, logged
message.

Two doors, two decorators. `api_errors` wraps the typed API endpoints: clients get the sentence as written.
`ui_errors` wraps the page's handlers: gradio shows an error toast as (sanitized) HTML, so the message is escaped
there, and a quoted input such as `'<img src=x>' is not a word` shows literally. Both keep the signature (gr.api reads
the type hints) and work on plain functions, generators, coroutines and async generators:

    @api_errors
    def tokenize(text: str) -> dict: ...
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from core.errors import TokenLabError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def message_for(exc: BaseException) -> str:
    """A sentence a person understands: core errors as they are, bugs as one line (the traceback goes to the log)."""
    if isinstance(exc, (TokenLabError, gr.Error)):
        return str(exc.message if isinstance(exc, gr.Error) else exc)
    log.exception("unexpected error in a handler", exc_info=exc)
    return f"Something went wrong on the server ({type(exc).__name__}). Please try again."


def to_gr_error(exc: BaseException, escape: bool) -> gr.Error:
    text = message_for(exc)
    return gr.Error(html.escape(text, quote=False) if escape else text, print_exception=False)


def _wrap(fn: F, escape: bool) -> F:
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen(*args, **kwargs):
            try:
                async for item in fn(*args, **kwargs):
                    yield item
            except Exception as exc:
                raise to_gr_error(exc, escape) from exc
        return agen  # type: ignore[return-value]
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise to_gr_error(exc, escape) from exc
        return gen  # type: ignore[return-value]
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coro(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                raise to_gr_error(exc, escape) from exc
        return coro  # type: ignore[return-value]

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise to_gr_error(exc, escape) from exc
    return plain  # type: ignore[return-value]


def api_errors(fn: F) -> F:
    """For API endpoints: errors reach clients as gr.Error with the plain sentence."""
    return _wrap(fn, escape=False)


def ui_errors(fn: F) -> F:
    """For the page's handlers: errors reach the toast as gr.Error with the sentence HTML-escaped."""
    return _wrap(fn, escape=True)
