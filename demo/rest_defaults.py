"""REST calls that leave out trailing values get the endpoint's defaults, as gradio_client's calls do.

gradio refuses a `POST /gradio_api/call/NAME` (or `/run/NAME`) whose `data` holds fewer values than the endpoint has
parameters, and its answer is an opaque `{"error": null}`. This middleware fills the missing trailing values from the
endpoint function's defaults; when a value without a default is missing, it answers HTTP 422 with a sentence that
names the parameters, in order.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from demo.asgi_body import read_body, replaying
from demo.security import ASGIApp, Message, Scope

_ROUTE = re.compile(r"^/gradio_api/(?:call|run)/([\w.-]+)/?$")


def _parameters(app: Any, api_name: str) -> list[inspect.Parameter] | None:
    """The parameters of the gr.api function behind `api_name`, or None for any other endpoint."""
    get_blocks = getattr(app, "get_blocks", None)
    blocks = get_blocks() if get_blocks else None
    for block_fn in getattr(blocks, "fns", {}).values():
        if block_fn.api_name == api_name and block_fn.fn is not None and not block_fn.preprocess:
            return list(inspect.signature(block_fn.fn).parameters.values())
    return None


def complete(data: list[Any], parameters: list[inspect.Parameter], api_name: str) -> list[Any]:
    """`data` with missing trailing values taken from the defaults; ValueError (a sentence) when one has none."""
    missing = parameters[len(data):]
    required = [p.name for p in missing if p.default is inspect.Parameter.empty]
    if required:
        order = ", ".join(p.name for p in parameters)
        raise ValueError(f"/{api_name} takes its values in this order: {order}. {len(data)} sent; "
                         f"{', '.join(required)} cannot be left out.")
    return data + [p.default for p in missing]


class RestDefaults:
    """ASGI middleware: completes the `data` of REST calls to gr.api endpoints (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        match = _ROUTE.match(scope.get("path", "")) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:  # the client went away
            return
        try:
            request = json.loads(body)
            data = request.get("data") if isinstance(request, dict) else None
            parameters = _parameters(scope.get("app"), match.group(1)) if isinstance(data, list) else None
            if parameters is not None and len(data) < len(parameters):
                request["data"] = complete(data, parameters, match.group(1))
                body = json.dumps(request).encode()
        except ValueError as exc:  # not JSON (gradio answers that itself), or a required value is missing
            if isinstance(exc, json.JSONDecodeError):
                pass
            else:
                await _refuse(send, str(exc))
                return
        await self.app(scope, replaying(body, receive), send)


async def _refuse(send: Callable[[Message], Awaitable[None]], detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 422,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
