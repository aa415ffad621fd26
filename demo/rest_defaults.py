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
from typing import Any

from demo.asgi_body import BodyMiddleware, Receive, Send, replaying
from demo.security import Scope

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


class RestDefaults(BodyMiddleware):
    """ASGI middleware: completes the `data` of REST calls to gr.api endpoints (see the module docstring)."""

    def wants(self, scope: Scope) -> bool:
        return scope["type"] == "http" and scope["method"] == "POST" and _ROUTE.match(scope.get("path", "")) is not None

    async def handle(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        api_name = _ROUTE.match(scope["path"]).group(1)
        try:
            request = json.loads(body)
            data = request.get("data") if isinstance(request, dict) else None
            parameters = _parameters(scope.get("app"), api_name) if isinstance(data, list) else None
            if parameters is not None and len(data) < len(parameters):
                request["data"] = complete(data, parameters, api_name)
                body = json.dumps(request).encode()
        except ValueError as exc:  # not JSON (gradio answers that itself), or a required value is missing
            if isinstance(exc, json.JSONDecodeError):
                pass
            else:
                await _refuse(send, str(exc))
                return
        await self.app(scope, replaying(body, receive), send)


async def _refuse(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 422,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
