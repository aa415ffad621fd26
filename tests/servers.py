"""Start a real server process for a test, wait until it answers, and always stop it."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running(command: list[str], log: Path, ready: Callable[[], bool], what: str, timeout: float,
            **popen: object) -> Iterator[subprocess.Popen]:
    """Run `command` (output to `log`) until `ready()` is true; fail the test with the log's tail if it exits or
    is not ready within `timeout` seconds."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} was not ready in {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def launched(host) -> Iterator[str]:
    """The full app around `host`, launched as app.py launches it (same options and middleware) on a free loopback
    port; yields its URL and closes it afterwards."""
    import dataclasses

    from demo import build_demo, launch_options
    from tests.conftest import free_port

    config = dataclasses.replace(host.config, host="127.0.0.1", port=free_port(), share=False)
    demo = build_demo(host, config)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(config))
    try:
        yield f"http://127.0.0.1:{config.port}/"
    finally:
        demo.close()


@contextlib.contextmanager
def launched_client(host) -> Iterator[Any]:
    """A gradio_client Client on the full app around `host` (see `launched`)."""
    from gradio_client import Client

    with launched(host) as url:
        yield Client(url, verbose=False)


def client_of(host_fixture: str) -> Any:
    """A module-scoped fixture: a gradio_client Client on the full app around the fixture named `host_fixture`."""

    @pytest.fixture(scope="module")
    def client(request: pytest.FixtureRequest) -> Iterator[Any]:
        with launched_client(request.getfixturevalue(host_fixture)) as client:
            yield client

    return client


def stop_while_streaming(job: Any, updates: int = 3) -> None:
    """Read `updates` of a gradio_client job's streamed answers, then cancel it, as Stop does."""
    seen = 0
    for seen, _answer in enumerate(job, start=1):
        if seen == updates:
            break
    assert seen == updates, "the answer did not start streaming"
    job.cancel()


class ScriptedChatServer:
    """An OpenAI-compatible chat server on loopback that streams the same answer to every request, word by word:
    a way to put any text in a chat answer (the remote-engine path is the real one the app uses). `requests` holds
    the headers (lower-case names) and JSON body of every chat request it received. A request that asks for
    `logprobs` gets each word's (-0.25, with " maybe" as the runner-up) with `logprobs="send"`, none with "ignore"
    (as `transformers serve`), and HTTP 400 with "refuse"."""

    def __init__(self, answer: str, logprobs: str = "send") -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, json.dumps({"data": [{"id": "scripted"}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                asked = body.get("logprobs") is True
                if asked and logprobs == "refuse":
                    self._send(400, json.dumps({"error": {"message": "logprobs is not supported"}}).encode())
                    return
                words = server.answer.split(" ")
                words = words[:1] + [" " + word for word in words[1:]]

                def chunk(word: str) -> dict:
                    choice: dict = {"delta": {"content": word}, "finish_reason": None}
                    if asked and logprobs == "send":
                        top = [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                               for t, lp in ((word, -0.25), (" maybe", -2.0))][:body.get("top_logprobs", 0)]
                        choice["logprobs"] = {"content": [{"token": word, "logprob": -0.25,
                                                           "bytes": list(word.encode()), "top_logprobs": top}]}
                    return {"choices": [choice]}

                pieces = [chunk(word) for word in words] + [{"choices": [{"delta": {}, "finish_reason": "stop"}]}]
                body = "".join(f"data: {json.dumps(p)}\n\n" for p in pieces) + "data: [DONE]\n\n"
                self._send(200, body.encode(), "text/event-stream")

            def log_message(self, *args: object) -> None:
                pass

        self.answer = answer
        self.requests: list[tuple[dict[str, str], dict]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def close(self) -> None:
        self._httpd.shutdown()


class HitCounter:
    """A plain HTTP server that records every path requested from it: a "foreign host" for leak tests."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(404)
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.hits = hits
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
