"""A Content-Security-Policy on every response: the page may load images, media, frames and plugins from its own
origin only (and inline `data:`/`blob:` images), so no text shown in it (a chat answer, a vocabulary piece, a quoted
error) can make a reader's browser fetch another host. Scripts, styles and fonts are left to gradio's defaults."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

POLICY = ("img-src 'self' data: blob:; media-src 'self' data: blob:; frame-src 'self'; object-src 'none'; "
          "base-uri 'self'")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class ContentSecurityPolicy:
    """ASGI middleware adding POLICY to every HTTP response that does not set one itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"content-security-policy" for name, _ in headers):
                    headers.append((b"content-security-policy", POLICY.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_policy)
