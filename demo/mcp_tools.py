"""The app's named API endpoints as MCP tools: what agents are shown (the API name, the docstring, a JSON schema
from the types gr.api reads), how a call runs one (its arguments as sent, so the app's own checks word a refusal;
the work in a thread that is cancelled with the call), and how an answer is sent (JSON, and structuredContent).

    >>> answer({"count": 2, "entropy": float("nan")}).content[0].text
    '{"count": 2, "entropy": null}'
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import gradio as gr
from gradio.utils import get_function_description
from mcp import types

from core.checks import quote
from demo.cancellation import cancellable

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Endpoint:
    """One named API endpoint as a tool: what agents are shown, and how a call runs it."""

    tool: types.Tool
    run: Callable[..., Awaitable[Any]]  # the endpoint function as a coroutine function, to its last value
    parameters: tuple[str, ...]
    required: tuple[str, ...]
    limiter: anyio.CapacityLimiter | None  # the endpoint's concurrency limit in gradio's queue, kept here too
    max_waiting: int | None  # calls allowed to wait for the limiter, as the queue's max_size

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        if self.limiter is None:
            return await self.run(**arguments)
        if self.max_waiting is not None and self.limiter.statistics().tasks_waiting >= self.max_waiting:
            raise gr.Error(f"The server is busy: too many {self.tool.name} calls are waiting. Try again shortly.",
                           print_exception=False)
        async with self.limiter:
            return await self.run(**arguments)


def as_coroutine(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """`fn` as a coroutine function that returns its (last) value without blocking the event loop: coroutines are
    awaited, async generators run to their last value, and plain functions and generators run in a thread whose work
    is cancelled with the call."""
    if inspect.isasyncgenfunction(fn):
        async def last_of_stream(**kwargs: Any) -> Any:
            last = None
            async for item in fn(**kwargs):
                last = item
            return last
        return last_of_stream
    if inspect.iscoroutinefunction(fn):
        return fn
    if inspect.isgeneratorfunction(fn):
        def last_of_generator(**kwargs: Any) -> Any:
            last = None
            for item in fn(**kwargs):
                last = item
            return last
        return cancellable(last_of_generator)
    return cancellable(fn)


def describe(block_fn: Any) -> tuple[str, dict[str, str]]:
    """The tool's description (the docstring's summary, then its Returns:) and each parameter's, from Args:."""
    summary, parameters, returns = get_function_description(block_fn.fn)
    if isinstance(block_fn.api_description, str):
        summary = block_fn.api_description
    elif returns:
        summary += ("" if summary.endswith(".") else ".") + " Returns: " + " ".join(returns)
    return summary, parameters


def input_schema(api_parameters: list[dict[str, Any]], descriptions: dict[str, str]) -> dict[str, Any]:
    """JSON schema of the arguments, from gradio's API info (the types gr.api reads from the signature)."""
    properties = {}
    for p in api_parameters:
        spec = dict(p["type"])
        if descriptions.get(p["parameter_name"]):
            spec["description"] = descriptions[p["parameter_name"]]
        if p.get("parameter_has_default"):
            spec["default"] = p.get("parameter_default")
        properties[p["parameter_name"]] = spec
    required = [p["parameter_name"] for p in api_parameters if not p.get("parameter_has_default")]
    return {"type": "object", "properties": properties, **({"required": required} if required else {})}


def endpoints_of(blocks: gr.Blocks) -> dict[str, Endpoint]:
    """The Blocks' named, public API endpoints (those gradio documents and its clients call), by API name."""
    named = blocks.get_api_info()["named_endpoints"]
    by_name = {block_fn.api_name: block_fn for block_fn in blocks.fns.values() if block_fn.fn is not None}
    queue = getattr(blocks, "_queue", None)
    limiters: dict[Any, anyio.CapacityLimiter] = {}
    endpoints = {}
    for route, info in named.items():
        name = route.lstrip("/")
        block_fn = by_name.get(name)
        if block_fn is None:
            continue
        names = tuple(p["parameter_name"] for p in info["parameters"])
        hidden = [p.name for p in inspect.signature(block_fn.fn).parameters.values()
                  if p.name not in names and p.default is inspect.Parameter.empty]
        if hidden:  # a value gradio injects (gr.Request, ...) that a tool call cannot supply
            log.warning("/%s is not an MCP tool: it needs %s", name, ", ".join(hidden))
            continue
        description, descriptions = describe(block_fn)
        limit = block_fn.concurrency_limit
        if limit == "default":
            limit = getattr(queue, "default_concurrency_limit", 1)
        limiter = None
        if isinstance(limit, int):
            limiter = limiters.setdefault(block_fn.concurrency_id, anyio.CapacityLimiter(limit))
        endpoints[name] = Endpoint(
            tool=types.Tool(name=name, description=description,
                            inputSchema=input_schema(info["parameters"], descriptions)),
            run=as_coroutine(block_fn.fn), parameters=names,
            required=tuple(p["parameter_name"] for p in info["parameters"] if not p.get("parameter_has_default")),
            limiter=limiter, max_waiting=getattr(queue, "max_size", None))
    return endpoints


# -- answers ---------------------------------------------------------------------------------------------------------

def jsonable(value: Any) -> Any:
    """`value` as plain JSON data; a non-finite float becomes null (JSON has no NaN or Infinity)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    raise TypeError(f"a {type(value).__name__} in an endpoint's result is not JSON")


def answer(value: Any) -> types.CallToolResult:
    """A tool's result: structuredContent (a dict as it is, anything else as {"result": value}) and the same as JSON
    text for clients that read only the text."""
    data = jsonable(value)
    structured = data if isinstance(data, dict) else {"result": data}
    text = json.dumps(structured, ensure_ascii=False, allow_nan=False)
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structuredContent=structured)


def refusal(sentence: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=sentence)], isError=True)


def argument_problem(endpoint: Endpoint, arguments: dict[str, Any]) -> str | None:
    """A sentence when the arguments do not fit the endpoint's parameters by name; the values are the endpoint's to
    check."""
    order = ", ".join(endpoint.parameters) or "none"
    unknown = [key for key in arguments if key not in endpoint.parameters]
    if unknown:
        return f"{endpoint.tool.name} has no parameter {quote(unknown[0])}; its parameters are: {order}."
    missing = [key for key in endpoint.required if key not in arguments]
    if missing:
        return f"{endpoint.tool.name} needs {', '.join(missing)}; its parameters are: {order}."
    return None


