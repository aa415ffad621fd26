"""Reading a request's whole body in ASGI middleware, then handing it on: the middleware that look at a POST's JSON
before the app does (REST defaults, the MCP transports' door) read it here and give the app a `receive` that replays
it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from demo.security import Message

Receive = Callable[[], Awaitable[Message]]


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
