"""The MCP transports' door: a POST whose body is not one JSON-RPC message is answered with the JSON-RPC error and
HTTP 400 before the mcp transport sees it (it catches only JSONDecodeError, and Python's json raises more: a number of
thousands of digits, bytes that are not UTF-8, deep nesting), and a call's arguments are kept as sent (the mcp session
re-encodes each request as JSON, which turns NaN and Infinity into null before the endpoint could refuse them).

    >>> json_rpc_message(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}')["method"]
    'ping'
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import anyio
from mcp import types
from mcp.server.streamable_http_manager import DEFAULT_MAX_REQUEST_BODY_SIZE
from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.responses import JSONResponse

from demo.asgi_body import BodyMiddleware, Receive, Send, replaying
from demo.security import ASGIApp, Scope

POST = "token_lab.mcp.post"  # the scope key under which a POST's message meets the tool call it carries

class NotJsonRpc(ValueError):
    """A body that is not one JSON-RPC message, with the JSON-RPC error that answers it."""

    def __init__(self, code: int, message: str, ident: str | int | None = None) -> None:
        super().__init__(message)
        self.error = {"jsonrpc": "2.0", "id": ident, "error": {"code": code, "message": message}}


def json_rpc_message(body: bytes) -> Any:
    """The JSON-RPC message in `body`, as Python's json reads it (NaN, Infinity and 1e309 kept); NotJsonRpc if it
    is none. Python's json raises more than JSONDecodeError (a number of thousands of digits, bytes that are not
    UTF-8, deep nesting), and the mcp transport catches only JSONDecodeError."""
    try:
        message = json.loads(body)
    except json.JSONDecodeError as exc:
        raise NotJsonRpc(types.PARSE_ERROR, f"Parse error: {exc.msg} (line {exc.lineno}, column {exc.colno}).") \
            from None
    except UnicodeDecodeError:
        raise NotJsonRpc(types.PARSE_ERROR, "Parse error: the body is not UTF-8 text.") from None
    except RecursionError:
        raise NotJsonRpc(types.PARSE_ERROR, "Parse error: the JSON is nested too deeply.") from None
    except ValueError:
        raise NotJsonRpc(types.PARSE_ERROR, "Parse error: a number in the body has too many digits.") from None
    try:
        types.JSONRPCMessage.model_validate(message)
    except (ValueError, RecursionError):
        ident = message.get("id") if isinstance(message, dict) else None
        ident = ident if isinstance(ident, (str, int)) and not isinstance(ident, bool) else None
        raise NotJsonRpc(types.INVALID_REQUEST, "Invalid request: the body is not a JSON-RPC 2.0 message.",
                         ident) from None
    return message


@dataclass
class Post:
    """A POST's JSON-RPC message, shared through the request's scope with the tool call it carries: the transport
    hands the handler a Request on that same scope."""

    message: Any  # as Python's json read it
    answered_here: bool  # streamable HTTP: the answer goes back on this POST's response (SSE: on the GET stream)
    call: anyio.CancelScope | None = None  # the tool call in progress

    def carries(self, request_id: Any) -> bool:
        return (isinstance(self.message, dict) and self.message.get("method") == "tools/call"
                and self.message.get("id") == request_id)

    @property
    def arguments(self) -> dict[str, Any] | None:
        params = self.message.get("params") if isinstance(self.message, dict) else None
        arguments = params.get("arguments") if isinstance(params, dict) else None
        return arguments if isinstance(arguments, dict) else None


class JsonRpcBodies(BodyMiddleware):
    """ASGI wrapper: a POST whose body is not a JSON-RPC message gets the JSON-RPC error with HTTP 400; any other
    request reaches `app` with its body replayed, and its message in the scope (Post). When the answer goes back on
    the POST's response and that exchange ends first, the client has stopped listening: the call is cancelled.
    Bodies arrive bounded (RequestBodyLimitMiddleware)."""

    def __init__(self, app: ASGIApp, answered_here: bool) -> None:
        super().__init__(app)
        self.answered_here = answered_here

    def wants(self, scope: Scope) -> bool:
        return scope.get("method") == "POST"

    async def handle(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        try:
            post = scope[POST] = Post(json_rpc_message(body), self.answered_here)
        except NotJsonRpc as exc:
            await JSONResponse(exc.error, status_code=400)(scope, receive, send)
            return
        try:
            await self.app(scope, replaying(body, receive), send)
        finally:
            if post.answered_here and post.call is not None:
                post.call.cancel()


def checked(app: ASGIApp, answered_here: bool) -> ASGIApp:
    return RequestBodyLimitMiddleware(JsonRpcBodies(app, answered_here), DEFAULT_MAX_REQUEST_BODY_SIZE)


class SessionEndNoise(logging.Filter):
    """Drops the traceback the mcp transport logs whenever a session ends with its GET stream open (a client closing
    its session normally): the transport closes that stream's reader under its writer."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.msg == "Error in standalone SSE writer" and isinstance(error, anyio.ClosedResourceError))


logging.getLogger("mcp.server.streamable_http").addFilter(SessionEndNoise())


