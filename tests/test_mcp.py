"""`python app.py --mcp` serves the API as MCP tools (demo/mcp_server.py): under the API's names, with the
docstrings, answering JSON, refusing in the API's own sentences, answering a body that is not JSON-RPC with a parse
error, and stopping the work of a call its client abandons."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import AppConfig
from tests.conftest import free_port
from tests.servers import http_ok, running

slow = pytest.mark.slow  # starts `python app.py --mcp`

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("tokenize", "detokenize", "compare_tokenizers", "tokenizers", "neighbors", "analogy", "similarity",
         "next_tokens", "logit_lens", "contextual", "attention", "attribution", "chat", "evaluate",
         "engine_stats", "vocabulary_map")  # what agents are promised
START_TIMEOUT = 120
LIVENESS = 120  # seconds a cancelled evaluation may take to be seen stopped before the test gives up
LONG_EVALUATION = {"benchmark": "google_analogy", "method": "3cosmul", "limit": 5000}
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def test_flag_and_environment():
    assert AppConfig.from_args(["--mcp"], env={}).mcp
    assert AppConfig.from_args([], env={"TOKEN_LAB_MCP": "1"}).mcp
    assert AppConfig.from_args([], env={"GRADIO_MCP_SERVER": "True"}).mcp  # gradio's variable turns ours on
    assert not AppConfig.from_args([], env={"GRADIO_MCP_SERVER": "false"}).mcp
    assert not AppConfig.from_args([], env={}).mcp


def test_launch_options_keep_gradios_mcp_server_off():
    from demo import launch_options

    options = launch_options(AppConfig(mcp=True))
    assert options["mcp_server"] is False and "lifespan" in options["app_kwargs"]
    assert launch_options(AppConfig(mcp=False))["mcp_server"] is False


# -- the door: bodies and answers, without a server --------------------------------------------------------------

@pytest.mark.parametrize("body", [b'{"jsonrpc": "2.0", "id": ' + b"1" * 5000 + b', "method": "ping"}',
                                  b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": NaN,}}',
                                  b"{not json", b"\xff\xfe\x00", b"[" * 100_000],
                         ids=["5000-digit id", "broken JSON with NaN", "not JSON", "not UTF-8", "nested too deeply"])
def test_a_body_that_is_not_json_is_a_parse_error(body: bytes):
    from demo.mcp_bodies import NotJsonRpc, json_rpc_message

    with pytest.raises(NotJsonRpc) as refused:
        json_rpc_message(body)
    assert refused.value.error["id"] is None and refused.value.error["error"]["code"] == -32700


def test_a_json_body_that_is_not_json_rpc_is_an_invalid_request():
    from demo.mcp_bodies import NotJsonRpc, json_rpc_message

    with pytest.raises(NotJsonRpc) as refused:
        json_rpc_message(b'{"jsonrpc": "2.0", "id": 7, "method": 5}')
    assert refused.value.error == {"jsonrpc": "2.0", "id": 7,
                                   "error": {"code": -32600, "message": refused.value.error["error"]["message"]}}


def test_non_finite_arguments_reach_the_endpoint_as_sent():
    from demo.mcp_bodies import json_rpc_message

    message = json_rpc_message(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x", '
                               b'"arguments": {"a": NaN, "b": 1e309, "c": -Infinity}}}')
    arguments = message["params"]["arguments"]
    assert math.isnan(arguments["a"]) and arguments["b"] == math.inf and arguments["c"] == -math.inf


def test_an_answer_is_json_with_the_same_structured_content():
    import numpy as np

    from demo.mcp_tools import answer

    result = answer({"p": float("nan"), "q": [1.5, float("inf"), np.float32(0.5)], "r": np.arange(2), "s": "ü"})
    assert json.loads(result.content[0].text) == result.structuredContent
    assert result.structuredContent == {"p": None, "q": [1.5, None, 0.5], "r": [0, 1], "s": "ü"}
    assert "ü" in result.content[0].text  # not escaped
    listed = answer(["a", "b"])
    assert listed.structuredContent == {"result": ["a", "b"]} == json.loads(listed.content[0].text)


# -- the app ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class App:
    url: str
    log: Path


@pytest.fixture(scope="module")
def mcp_app(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The real entry point, as a user starts it: `python app.py --model bundled --mcp`."""
    port = free_port()
    log = tmp_path_factory.mktemp("mcp") / "app.log"
    env = {**os.environ, "TOKEN_LAB_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:  # the model has loaded (tools can answer) and the MCP schema is served
        return "[token-lab] ready:" in log.read_text(errors="replace") and http_ok(f"{url}/gradio_api/mcp/schema")

    command = [sys.executable, "app.py", "--model", "bundled", "--device", "cpu", "--port", str(port), "--mcp"]
    with running(command, log, ready, "app.py --mcp", START_TIMEOUT, cwd=ROOT, env=env):
        yield App(url, log)


@pytest.fixture(scope="module")
def api(mcp_app: App):
    from gradio_client import Client

    return Client(mcp_app.url, verbose=False)


def in_own_loop(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine in an event loop of its own thread: browser tests leave Playwright's loop running in this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


async def with_session(url: str, use: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """`use(session)` on an initialized MCP client session over streamable HTTP."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(f"{url}/gradio_api/mcp/") as (read, write, _), \
            ClientSession(read, write) as session:
        await session.initialize()
        return await use(session)


def call_tools(url: str, *calls: tuple[str, dict[str, Any]]) -> list[Any]:
    """The CallToolResults of `calls`, made in order in one MCP session."""

    async def use(session: Any) -> list[Any]:
        return [await session.call_tool(name, arguments) for name, arguments in calls]

    return in_own_loop(lambda: with_session(url, use))


class RawSession:
    """An MCP session spoken in plain HTTP, for bodies an MCP client library would not send (NaN, 1e309)."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/gradio_api/mcp/"
        self.http = httpx.Client(timeout=60)
        hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}
        opened = self.http.post(self.url, headers=ACCEPT,
                                json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
        self.headers = {**ACCEPT, "mcp-session-id": opened.headers["mcp-session-id"],
                        "mcp-protocol-version": "2025-06-18"}
        self.http.post(self.url, headers=self.headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

    def post(self, body: str) -> httpx.Response:
        return self.http.post(self.url, headers=self.headers, content=body.encode())

    def call(self, name: str, arguments_json: str) -> dict[str, Any]:
        """The JSON-RPC answer to a tools/call whose arguments are written as JSON text."""
        response = self.post(f'{{"jsonrpc": "2.0", "id": 1, "method": "tools/call", '
                             f'"params": {{"name": "{name}", "arguments": {arguments_json}}}}}')
        assert response.status_code == 200, response.text
        data = [line[len("data:"):] for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])

    def close(self) -> None:
        self.http.delete(self.url, headers=self.headers)
        self.http.close()


def rest_error(url: str, api_name: str, data_json: str) -> str:
    """The sentence gradio's REST API answers `data` (written as JSON text) with."""
    started = httpx.post(f"{url}/gradio_api/call/{api_name}", content=f'{{"data": {data_json}}}',
                         headers={"content-type": "application/json"}, timeout=30)
    events = httpx.get(f"{url}/gradio_api/call/{api_name}/{started.json()['event_id']}", timeout=60).text
    assert "event: error" in events, events
    data = [line[len("data:"):] for line in events.splitlines() if line.startswith("data:")]
    return json.loads(data[-1])["error"]


def _docstrings(bundled_host) -> dict[str, str]:
    """The API functions' own docstrings, by API name, from the app's Blocks (not launched)."""
    from demo import build_demo

    demo = build_demo(bundled_host)
    return {fn.api_name: inspect.getdoc(fn.fn) or "" for fn in demo.fns.values()
            if fn.fn is not None and fn.api_name and fn.api_visibility == "public"}


@slow
def test_tools_are_the_api_endpoints_under_their_names(mcp_app: App, api):
    async def names(session: Any) -> list[str]:
        return [tool.name for tool in (await session.list_tools()).tools]

    tools = in_own_loop(lambda: with_session(mcp_app.url, names))
    endpoints = [name.lstrip("/") for name in api.view_api(print_info=False, return_format="dict")["named_endpoints"]]
    assert sorted(tools) == sorted(endpoints)
    assert set(TOOLS) <= set(tools)


@slow
def test_schema_lists_the_tools_with_their_docstrings(mcp_app: App, bundled_host):
    schema = {tool["name"]: tool for tool in httpx.get(f"{mcp_app.url}/gradio_api/mcp/schema", timeout=30).json()}
    docs = _docstrings(bundled_host)
    assert sorted(schema) == sorted(docs)
    for name in TOOLS:
        summary = docs[name].split("\n\n")[0].replace("\n", " ")
        assert summary in schema[name]["description"]
        properties = schema[name]["inputSchema"]["properties"]
        args = docs[name].split("Args:")[1].split("Returns:")[0] if properties else ""
        for param, spec in properties.items():
            assert param in args, f"{name}({param}) is not documented under Args:"
            assert spec.get("description"), f"{name}({param}) has no description in the MCP schema"
            assert spec["description"].split()[0] in args
    assert "Returns:" in schema["tokenize"]["description"]
    assert schema["next_tokens"]["inputSchema"]["required"] == ["text"]
    assert schema["next_tokens"]["inputSchema"]["properties"]["k"]["default"] == 10


@slow
def test_answers_are_json_and_the_apis_values(mcp_app: App, api):
    calls = [("tokenize", {"text": "Hello world"}), ("tokenizers", {}),
             ("chat", {"message": "Say hi", "history": [], "max_new_tokens": 8, "seed": 3, "temperature": 0}),
             ("next_tokens", {"text": "The capital of France is", "k": 3})]
    results = call_tools(mcp_app.url, *calls)
    for (name, _), result in zip(calls, results, strict=True):
        assert not result.isError, (name, result.content[0].text)
        assert json.loads(result.content[0].text) == result.structuredContent, name
    tokenized, tokenizers, chat, nxt = (r.structuredContent for r in results)
    assert tokenized == api.predict("Hello world", "", api_name="/tokenize")
    assert [t["text"] for t in tokenized["tokens"]] == ["Hello", " world"]
    assert isinstance(tokenizers["result"], list) and tokenizers["result"][0]["key"]
    assert chat["result"] == api.predict("Say hi", [], "", 0, 0.95, 8, 3, api_name="/chat")  # run to its end
    assert len(nxt["tokens"]) == 3


@slow
@pytest.mark.parametrize(("name", "arguments", "api_args"), [
    ("next_tokens", {"text": "The cat", "k": 0}, ("The cat", 0)),
    ("next_tokens", {"text": ""}, ("",)),
    ("tokenize", {"text": ["not", "text"]}, (["not", "text"],)),
    ("detokenize", {"ids": "1, x"}, ("1, x",)),
])
def test_a_refusal_is_the_apis_sentence(mcp_app: App, api, name: str, arguments: dict, api_args: tuple):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as refused:
        api.predict(*api_args, api_name=f"/{name}")
    [result] = call_tools(mcp_app.url, (name, arguments))
    assert result.isError
    assert result.content[0].text == str(refused.value) != ""


@slow
@pytest.mark.parametrize("value", ["NaN", "1e309", "-Infinity"])
def test_a_non_finite_number_is_refused_in_the_apis_sentence(mcp_app: App, value: str):
    session = RawSession(mcp_app.url)
    try:
        answer = session.call("next_tokens", f'{{"text": "The cat", "temperature": {value}}}')["result"]
    finally:
        session.close()
    assert answer["isError"]
    sentence = rest_error(mcp_app.url, "next_tokens", f'["The cat", 10, {value}]')
    assert answer["content"][0]["text"] == sentence
    assert "temperature" in sentence


@slow
def test_unknown_and_missing_arguments_are_named(mcp_app: App):
    unknown, missing = call_tools(mcp_app.url, ("tokenize", {"text": "x", "txt": "y"}), ("tokenize", {}))
    assert unknown.isError and "'txt'" in unknown.content[0].text and "text, tokenizer" in unknown.content[0].text
    assert missing.isError and "needs text" in missing.content[0].text


@slow
@pytest.mark.parametrize("body", ['{"jsonrpc": "2.0", "id": ' + "1" * 5000 + ', "method": "ping"}',
                                  '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": NaN',
                                  '{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "tokenize", '
                                  '"arguments": {"text": "x", "k": ' + "9" * 5000 + '}}}'],
                         ids=["5000-digit id", "broken JSON with NaN", "5000-digit argument"])
def test_a_body_that_is_not_json_gets_a_parse_error_not_a_500(mcp_app: App, body: str):
    session = RawSession(mcp_app.url)
    try:
        for response in (session.post(body),  # in a session, and opening none
                         httpx.post(f"{mcp_app.url}/gradio_api/mcp", headers=ACCEPT, content=body, timeout=30),
                         httpx.post(f"{mcp_app.url}/gradio_api/mcp/messages/?session_id=0", content=body, timeout=30)):
            assert response.status_code == 400, response.text
            assert response.json()["id"] is None and response.json()["error"]["code"] == -32700
        assert session.call("tokenize", '{"text": "still here"}')["result"]["isError"] is False
    finally:
        session.close()
    assert "Traceback" not in mcp_app.log.read_text(errors="replace")


def _evaluations(api) -> dict[str, int]:
    return api.predict(api_name="/engine_stats")["evaluations"]


def _wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + LIVENESS
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not seen in {LIVENESS} s"
        time.sleep(0.2)


class RecordingWriter:
    """An MCP client's write stream that keeps the ids of the requests it sends (the client chooses them)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.calls: list[Any] = []

    async def send(self, message: Any) -> None:
        if getattr(message.message.root, "method", None) == "tools/call":
            self.calls.append(message.message.root.id)
        await self.stream.send(message)

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> RecordingWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _abandon_evaluation(url: str, how: str, started: Callable[[], bool]) -> RawSession | None:
    """Start a long /evaluate over MCP and, once the server runs it, abandon it the way `how` says; a session that
    is still open comes back, for the caller to close once the work is seen stopped."""
    import anyio
    from mcp import ClientSession, types
    from mcp.client.streamable_http import streamablehttp_client
    from mcp.shared.exceptions import McpError

    async def until_started() -> None:
        while not await anyio.to_thread.run_sync(started):
            await anyio.sleep(0.2)

    if how == "connection dropped":  # the POST that waits for the answer is closed, without a word
        session = await anyio.to_thread.run_sync(RawSession, url)
        body = json.dumps({"jsonrpc": "2.0", "id": "long", "method": "tools/call",
                           "params": {"name": "evaluate", "arguments": LONG_EVALUATION}})
        async with httpx.AsyncClient(timeout=60) as http, \
                http.stream("POST", session.url, headers=session.headers, content=body):
            await until_started()
        return session  # still open: only the connection went away
    async with streamablehttp_client(f"{url}/gradio_api/mcp/") as (read, write, _):
        writer = RecordingWriter(write)
        async with ClientSession(read, writer) as session:  # type: ignore[arg-type]
            await session.initialize()
            async with anyio.create_task_group() as tasks:
                async def call() -> None:
                    with pytest.raises(McpError, match="cancelled"):
                        await session.call_tool("evaluate", LONG_EVALUATION)

                tasks.start_soon(call)
                await until_started()
                if how == "notifications/cancelled":
                    await session.send_notification(types.ClientNotification(types.CancelledNotification(
                        params=types.CancelledNotificationParams(requestId=writer.calls[-1], reason="test"))))
                else:  # "session closed": the client stops waiting and ends its session on the way out
                    tasks.cancel_scope.cancel()
    return None


@slow
@pytest.mark.parametrize("how", ["notifications/cancelled", "session closed", "connection dropped"])
def test_an_abandoned_call_stops_its_work(mcp_app: App, api, how: str):
    _wait_for("no evaluation running", lambda: _evaluations(api)["running"] == 0)
    before = _evaluations(api)["cancelled"]
    open_session = in_own_loop(lambda: _abandon_evaluation(mcp_app.url, how,
                                                           lambda: _evaluations(api)["running"] >= 1))
    try:
        _wait_for("the evaluation stopped", lambda: _evaluations(api)["running"] == 0)
        assert _evaluations(api)["cancelled"] > before
    finally:
        if open_session is not None:
            open_session.close()
