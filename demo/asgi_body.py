"""Reading a request's whole body in ASGI middleware, then handing it on: the middleware that look at a POST's JSON
before the app does (REST defaults, the MCP transports' door) read it here and give the app a `receive` that replays
it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from demo.security import ASGIApp, Message, Scope

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyMiddleware:
    """ASGI middleware that reads the whole body of the requests it `wants` and gives it to `handle`, which passes
    it on (`replaying`) or answers; every other request reaches the app untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def wants(self, scope: Scope) -> bool:
        raise NotImplementedError

    async def handle(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.wants(scope):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is not None:  # None: the client went away
            await self.handle(scope, body, receive, send)


async def read_body(receive: Receive) -> bytes | None:
    """The request's body, all of it; None when the client went away before sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app `body` first, then whatever the real one says (a disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
