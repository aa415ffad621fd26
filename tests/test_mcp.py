"""`python app.py --mcp` serves the API as MCP tools: the schema lists them with their docstrings, and an MCP client
can call one over streamable HTTP."""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.config import AppConfig
from tests.conftest import free_port
from tests.servers import http_ok, running

pytestmark = pytest.mark.slow  # starts `python app.py --mcp`

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("tokenize_text", "detokenize_ids", "compare_tokenizers", "list_tokenizers", "neighbors", "analogy",
         "similarity")  # what agents are promised
START_TIMEOUT = 120


def test_flag_and_environment():
    assert AppConfig.from_args(["--mcp"], env={}).mcp
    assert AppConfig.from_args([], env={"TOKEN_LAB_MCP": "1"}).mcp
    assert not AppConfig.from_args([], env={}).mcp


@pytest.fixture(scope="module")
def mcp_app(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real entry point, as a user starts it: `python app.py --model bundled --mcp`."""
    pytest.importorskip("mcp", reason="gradio's MCP server needs the mcp package: pip install -r requirements.txt")
    port = free_port()
    log = tmp_path_factory.mktemp("mcp") / "app.log"
    env = {**os.environ, "TOKEN_LAB_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:  # the model has loaded (tools can answer) and the MCP schema is served
        return "[token-lab] ready:" in log.read_text(errors="replace") and http_ok(f"{url}/gradio_api/mcp/schema")

    command = [sys.executable, "app.py", "--model", "bundled", "--device", "cpu", "--port", str(port), "--mcp"]
    with running(command, log, ready, "app.py --mcp", START_TIMEOUT, cwd=ROOT, env=env):
        yield url


def _docstrings(bundled_host) -> dict[str, str]:
    """The API functions' own docstrings, by function name, from the app's Blocks (not launched)."""
    from demo import build_demo

    demo = build_demo(bundled_host)
    return {fn.fn.__name__: inspect.getdoc(fn.fn) or "" for fn in demo.fns.values()
            if fn.fn is not None and fn.api_name}


def test_schema_lists_the_tools_with_their_docstrings(mcp_app: str, bundled_host):
    schema = {tool["name"]: tool for tool in httpx.get(f"{mcp_app}/gradio_api/mcp/schema", timeout=30).json()}
    docs = _docstrings(bundled_host)
    for name in TOOLS:
        assert name in schema, f"{name} is not an MCP tool: {sorted(schema)}"
        summary = docs[name].split("\n\n")[0].replace("\n", " ")
        assert summary in schema[name]["description"]
        properties = schema[name]["inputSchema"]["properties"]
        args = docs[name].split("Args:")[1].split("Returns:")[0]
        for param, spec in properties.items():
            assert param in args, f"{name}({param}) is not documented under Args:"
            assert spec.get("description"), f"{name}({param}) has no description in the MCP schema"
            assert spec["description"].split()[0] in args
    assert "chat" in schema  # chat is a tool too: an agent can ask the model and then inspect its tokens


def test_an_mcp_client_can_call_a_tool(mcp_app: str):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def call() -> tuple[list[str], dict]:
        async with streamablehttp_client(f"{mcp_app}/gradio_api/mcp/") as (read, write, _), \
                ClientSession(read, write) as session:
            await session.initialize()
            tools = [t.name for t in (await session.list_tools()).tools]
            result = await session.call_tool("tokenize_text", {"text": "Hello world", "tokenizer": ""})
            return tools, ast.literal_eval(result.content[0].text)  # gradio sends the result as str(dict)

    # its own thread: browser tests leave Playwright's event loop running in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        tools, tokens = pool.submit(lambda: asyncio.run(asyncio.wait_for(call(), 60))).result()
    assert set(TOOLS) <= set(tools)
    assert [t["text"] for t in tokens["tokens"]] == ["Hello", " world"]
