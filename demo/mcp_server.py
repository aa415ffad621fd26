"""The API's endpoints as MCP tools, served by the app itself under /gradio_api/mcp: streamable HTTP at
/gradio_api/mcp/, the older SSE transport at /gradio_api/mcp/sse, and the tools as JSON at /gradio_api/mcp/schema.

Not gradio's own MCP server, which names tools after Python functions, answers Python repr, checks arguments with
jsonschema before the app can word a refusal, and calls through a gradio_client loopback that never cancels the work.
Here a tool is a named, public API endpoint under its API name; its arguments reach the endpoint function as sent, so
a refusal is the API's own sentence; an answer is JSON (and structuredContent); and a call its client abandons
(notifications/cancelled, a dropped connection, the session's end) is cancelled, which stops the work
(demo/cancellation.py). The tools are demo/mcp_tools.py; what reaches the transports is checked by
demo/mcp_bodies.py.

    mcp = McpServer()
    demo.launch(app_kwargs={"middleware": [mcp.middleware], "lifespan": mcp.lifespan}, mcp_server=False)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import gradio as gr
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, Response

from core.checks import quote
from demo.asgi_body import Receive, Send
from demo.errors import message_for
from demo.mcp_bodies import POST, Post, checked
from demo.mcp_tools import Endpoint, answer, argument_problem, endpoints_of, refusal
from demo.security import ASGIApp, Scope

MOUNT = "/gradio_api/mcp"
INSTRUCTIONS = ("Token Lab: tokenize text and compare tokenizers, explore the model's embedding space, look inside "
                "the model (next-token probabilities, the logit lens, contextual embeddings) and chat with it. "
                "Every tool answers JSON.")


class McpServer:
    """The MCP server of one launch: the low-level mcp Server over the Blocks' endpoints, its two transports, and
    the lifespan that runs them. The tools are read from the Blocks on first use; the Blocks come from the app that
    the lifespan starts with (gradio's App), so launch_options needs no Blocks. Sessions are stateful: a client's
    notifications/cancelled then reaches the session that runs the call."""

    def __init__(self) -> None:
        self.blocks: gr.Blocks | None = None
        self._endpoints: dict[str, Endpoint] | None = None
        self.server: Server = Server("token-lab", instructions=INSTRUCTIONS)
        self.server.list_tools()(self.list_tools)
        self.server.call_tool(validate_input=False)(self.call_tool)
        self.sessions = StreamableHTTPSessionManager(self.server)
        self.sse = SseServerTransport("/messages/")
        self.streamable_http = checked(self.sessions.handle_request, answered_here=True)
        self.sse_messages = checked(self.sse.handle_post_message, answered_here=False)

    @property
    def middleware(self) -> Middleware:
        return Middleware(McpMount, server=self)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """gradio runs this with its own lifespan (app_kwargs["lifespan"]); `app` is gradio's App."""
        self.blocks = app.get_blocks()
        async with self.sessions.run():
            yield

    def endpoints(self) -> dict[str, Endpoint]:
        if self._endpoints is None:
            if self.blocks is None:
                raise RuntimeError("the MCP server's lifespan has not started")
            self._endpoints = endpoints_of(self.blocks)
        return self._endpoints

    async def list_tools(self) -> list[types.Tool]:
        return [endpoint.tool for endpoint in self.endpoints().values()]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """Run the endpoint with `arguments` as keyword arguments; a refusal is its own sentence (isError)."""
        endpoint = self.endpoints().get(name)
        if endpoint is None:
            return refusal(f"There is no tool {quote(name)}; the tools are: {', '.join(self.endpoints())}.")
        post = self.post()
        if post is not None and post.arguments is not None:
            arguments = post.arguments  # as sent: the session re-encoded them as JSON, NaN and Infinity as null
        problem = argument_problem(endpoint, arguments)
        if problem is not None:
            return refusal(problem)
        result = refusal("Cancelled: the client stopped waiting for the answer.")
        with anyio.CancelScope() as call:  # cancelled by JsonRpcBodies when the POST's exchange ends first
            if post is not None:
                post.call = call
            try:
                result = answer(await endpoint(arguments))
            except Exception as exc:  # cancellation is no Exception: it goes on up and ends the call
                result = refusal(message_for(exc))
            finally:
                if post is not None:
                    post.call = None
        return result

    def post(self) -> Post | None:
        """The POST that carries the current tool call, if it came through JsonRpcBodies."""
        try:
            context = self.server.request_context
        except LookupError:
            return None
        post = getattr(context.request, "scope", {}).get(POST)
        return post if isinstance(post, Post) and post.carries(context.request_id) else None

    def schema(self) -> list[dict[str, Any]]:
        """The tools as the README promises them at /gradio_api/mcp/schema."""
        return [{"name": tool.name, "description": tool.description, "inputSchema": tool.inputSchema}
                for tool in (endpoint.tool for endpoint in self.endpoints().values())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route a request under MOUNT (the app's root path already left out of `route`)."""
        root, route = route_of(scope)
        below = route[len(MOUNT):]
        if below in ("", "/"):
            await self.streamable_http(scope, receive, send)
        elif below in ("/messages", "/messages/"):
            await self.sse_messages(scope, receive, send)
        elif below == "/sse" and scope["method"] == "GET":
            # the endpoint the client is told to POST to is root_path + "/messages/"
            inner = {**scope, "root_path": root + MOUNT}
            async with self.sse.connect_sse(inner, receive, send) as (read, write):
                await self.server.run(read, write, self.server.create_initialization_options())
        elif below == "/schema" and scope["method"] in ("GET", "HEAD"):
            await JSONResponse(self.schema())(scope, receive, send)
        else:
            await Response(f"Not found. The MCP server is at {MOUNT}/ (streamable HTTP) and {MOUNT}/sse.",
                           status_code=404)(scope, receive, send)


def route_of(scope: Scope) -> tuple[str, str]:
    """(root path, the path below it), as Starlette routes."""
    root, path = scope.get("root_path", ""), scope["path"]
    if root and path.startswith(root):
        return root, path[len(root):]
    return root, path


class McpMount:
    """ASGI middleware: HTTP requests under /gradio_api/mcp go to the MCP server, everything else to the app."""

    def __init__(self, app: ASGIApp, server: McpServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = route_of(scope)[1]
            if route == MOUNT or route.startswith(MOUNT + "/"):
                await self.server(scope, receive, send)
                return
        await self.app(scope, receive, send)
