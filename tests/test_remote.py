"""Chat through a real OpenAI-compatible server: `transformers serve` on loopback with the bundled model.

The app runs in remote mode (chat on the server; tokenizer and embedding matrix loaded locally) and is driven through
gradio_client. Stop is checked on the server's side, from its log: the stopped generation was aborted. Failures
(nothing listening, each HTTP error status, an error event mid-answer, a cut connection, a silent server) must read
as the same clear sentences, from canned servers on loopback.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.config import AppConfig
from core.engine.remote import RemoteChatEngine, api_base
from core.engine.settings import GenerationSettings
from core.errors import BusyError, GenerationError, ModelNotReadyError
from core.host import ModelHost
from core.model.bundled import bundled_checkpoint
from core.model.embeddings_only import load_embeddings_only
from core.model.loading import LoadedModel
from tests.conftest import free_port
from tests.servers import ScriptedChatServer, client_of, http_ok, launched, running, stop_while_streaming
from tests.streams import collect
from tests.transformers_serve import aborted_generations

pytestmark = pytest.mark.slow  # most tests here start `transformers serve`

GREEDY = GenerationSettings(temperature=0.0, top_p=1.0, max_new_tokens=48)
LONG_PROMPT = "Write a very long essay about the history of Europe, with many details."  # runs to the token limit
LONG_ANSWER = 2000  # max_new_tokens of the answers the tests stop
SERVE_START_TIMEOUT = 180


def serving_available() -> bool:
    from transformers.utils.import_utils import is_serve_available

    return is_serve_available()


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, model: str, log: Path) -> None:
        self.proc, self.url, self.model, self.log = proc, url, model, log

    def aborted(self) -> list[int]:
        """How many tokens each generation the server aborted had made, oldest first (from its log)."""
        return aborted_generations(self.log.read_text(errors="replace"))


@pytest.fixture(scope="module")
def server(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`transformers serve` pinned to the bundled model's local folder (the dequantized checkpoint), logging the
    generations it aborts."""
    if not serving_available():
        pytest.skip("transformers[serving] is not installed (pip install -r requirements-dev.txt)")
    folder, _ = bundled_checkpoint(cache_dir)
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, str(Path(__file__).with_name("transformers_serve.py")), "serve", str(folder),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "info"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "info"}
    ready = partial(http_ok, f"http://127.0.0.1:{port}/health")
    with running(command, log, ready, "transformers serve", SERVE_START_TIMEOUT, env=env) as proc:
        yield Server(proc, f"http://127.0.0.1:{port}/v1", str(folder), log)


@pytest.fixture(scope="module")
def embeddings(cache_dir: Path) -> LoadedModel:
    return load_embeddings_only("bundled", device="cpu", dtype="auto", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def remote_host(server: Server, embeddings: LoadedModel) -> Iterator[ModelHost]:
    config = AppConfig(model="bundled", engine_url=server.url, engine_model=server.model, max_queue=4)
    host = ModelHost.from_loaded(embeddings, config)
    yield host
    host.close()


remote_client = client_of("remote_host")


def test_api_base_accepts_the_usual_spellings():
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/chat/completions"):
        assert api_base(url) == "http://h:8000/v1"


def test_greedy_answer_through_the_app(remote_client, remote_host):
    answer = remote_client.predict("What is the capital of France?", [], "", 0.0, 1.0, 48, None,
                                   api_name="/chat")
    assert "Paris" in answer
    # the chat tab's default top-k (50) is outside the OpenAI schema: transformers serve refuses it, the engine
    # then leaves it out and the answer still comes
    assert remote_host.require().engine.extras_supported is False


def test_server_receives_the_prompt_the_inspector_shows(remote_host):
    engine = remote_host.require().engine
    stream = engine.chat("What is the capital of France?", [{"role": "user", "content": "Hi"},
                                                             {"role": "assistant", "content": "Hello!"}],
                         "Be brief.", GREEDY)
    text = collect(stream)
    assert "Paris" in text and stream.stop_reason == "end of turn"
    assert stream.usage["prompt_tokens"] == len(stream.prompt.ids)  # the server's count of the same prompt
    stats = stream.stats
    assert stats.generated_tokens == stream.usage["completion_tokens"] and stats.ttft_s is not None
    assert stream.token_ids and "Paris" in remote_host.require().loaded.tokenizer.decode(stream.token_ids)


def test_tokens_and_embeddings_tabs_work_from_the_embedding_matrix(remote_client, remote_host, embeddings):
    assert_token_views_work(remote_client, remote_host)


def assert_token_views_work(remote_client, remote_host: ModelHost) -> None:
    """In remote mode the Tokens and Embeddings tabs still answer, from the bundled model's tokenizer and embedding
    matrix loaded locally, and the header says where chat runs (any server: tests/test_llamacpp_remote.py too)."""
    loaded = remote_host.require().loaded
    assert (loaded.name, loaded.vocab_size, loaded.context_length, loaded.device) == \
        ("SmolLM2-135M-Instruct (bundled GGUF)", 49152, 8192, "cpu")
    assert "chat runs on" in remote_host.status and "reachable" in remote_host.status
    assert "index: 49,152 tokens" in remote_host.status
    tokens = remote_client.predict("Hello world", "", api_name="/tokenize")
    assert [t["text"] for t in tokens["tokens"]] == ["Hello", " world"]
    neighbors = remote_client.predict("king", 10, "cosine", api_name="/neighbors")
    assert " queen" in [n["text"] for n in neighbors["neighbors"]]


def test_lab_started_in_remote_mode_loads_only_the_embeddings(server: Server, cache_dir: Path):
    from core.engine.remote import RemoteChatEngine as Remote
    from core.model.embeddings_only import EmbeddingsOnly

    host = ModelHost(AppConfig(model="bundled", device="cpu", cache_dir=cache_dir, engine_url=server.url,
                        engine_model=server.model)).start()
    assert host.wait(120) and host.error is None, host.status
    parts = host.require()
    try:
        assert isinstance(parts.loaded.model, EmbeddingsOnly) and isinstance(parts.engine, Remote)
        assert "tokenizer and embeddings loaded" in host.status and server.url in host.status
    finally:
        parts.engine.close()


def test_stop_aborts_the_server_side_generation(remote_client, server):
    before = len(server.aborted())
    stop_while_streaming(remote_client.submit(LONG_PROMPT, [], "", 0.0, 1.0, LONG_ANSWER, None, api_name="/chat"))
    # The server generates one answer at a time: this one starts once the stopped one's generation has ended.
    answer = remote_client.predict("What is the capital of France?", [], "", 0.0, 1.0, 48, None, api_name="/chat")
    assert "Paris" in answer
    aborted = server.aborted()[before:]
    assert len(aborted) == 1 and aborted[0] < LONG_ANSWER, f"the server kept generating after Stop: {aborted}"


def test_engine_cancel_closes_the_stream_at_once(remote_host, server):
    engine = remote_host.require().engine
    before = len(server.aborted())
    stream = engine.chat(LONG_PROMPT, [], "", GenerationSettings(temperature=0.0, top_p=1.0,
                                                                 max_new_tokens=LONG_ANSWER))
    for i, _text in enumerate(stream):
        if i == 3:
            break  # a consumer that goes away cancels, as Stop does
    # As above, the next answer comes after the server has ended the abandoned one.
    assert "Paris" in collect(engine.chat("What is the capital of France?", [], "", GREEDY))
    assert stream.done and stream.stop_reason == "stopped" and engine.stats()["requests_in_progress"] == 0
    aborted = server.aborted()[before:]
    assert len(aborted) == 1 and aborted[0] < LONG_ANSWER, f"the server kept generating: {aborted}"


def test_server_down_gives_a_clear_message(embeddings):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    port = free_port()  # nothing listens here
    engine = RemoteChatEngine(embeddings, f"http://127.0.0.1:{port}/v1", model="m")
    try:
        with pytest.raises(ModelNotReadyError, match=r"Cannot reach the inference server at http://127\.0\.0\.1"):
            list(engine.chat("Hi", [], "", GREEDY))
        assert engine.stats()["requests_in_progress"] == 0
    finally:
        engine.close()

    host = ModelHost.from_loaded(embeddings, AppConfig(model="bundled", engine_url=f"http://127.0.0.1:{port}",
                                                engine_model="m"))
    assert "chat runs on" in host.status and "Cannot reach" in host.status
    try:
        with launched(host) as url:
            client = Client(url, verbose=False)
            with pytest.raises(AppError, match="Cannot reach the inference server") as info:
                client.predict("Hi", [], "", 0.0, 1.0, 16, None, api_name="/chat")
            assert "Traceback" not in str(info.value)
    finally:
        host.close()


def test_http_error_status_is_explained(server, embeddings):
    engine = RemoteChatEngine(embeddings, server.url, model="not-the-served-model")  # the server is pinned
    try:
        with pytest.raises(GenerationError, match=r"answered HTTP 400.*pinned"):
            list(engine.chat("Hi", [], "", GREEDY))
    finally:
        engine.close()
    engine = RemoteChatEngine(embeddings, f"{server.url.removesuffix('/v1')}/elsewhere", model=server.model)
    try:
        with pytest.raises(GenerationError, match=r"answered HTTP 404 \(not found\): Not Found\. Check --engine-model"):
            list(engine.chat("Hi", [], "", GREEDY))
    finally:
        engine.close()


def test_request_carries_the_settings_and_only_the_given_key(embeddings, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")  # never to be sent to another server
    scripted = ScriptedChatServer("Paris.")
    settings = GenerationSettings(temperature=0.5, top_p=0.9, top_k=40, repetition_penalty=1.3, max_new_tokens=32,
                                  seed=7)
    try:
        for api_key, model in (("secret", "scripted"), (None, None)):  # no model: the server's list names it
            engine = RemoteChatEngine(embeddings, scripted.url, model=model, api_key=api_key)
            try:
                assert collect(engine.chat("Hi", [], "", settings)) == "Paris."
                assert engine.extras_supported is True and engine.model_name == "scripted"
            finally:
                engine.close()
    finally:
        scripted.close()
    (keyed, body), (unkeyed, unkeyed_body) = scripted.requests
    assert keyed["authorization"] == "Bearer secret"
    assert "sk-from-the-environment" not in unkeyed.get("authorization", "")
    assert unkeyed_body["model"] == "scripted"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][-1] == {"role": "user", "content": "Hi"}
    sent = {k: body[k] for k in ("model", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
                                 "repeat_penalty", "seed")}
    assert sent == {"model": "scripted", "max_tokens": 32, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
                    "repetition_penalty": 1.3, "repeat_penalty": 1.3, "seed": 7}


ERROR_BODIES = {  # as servers send them: OpenAI's `error.message`, FastAPI's `detail`, TGI's `error`
    401: {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
    403: {"detail": "Not authenticated"},
    404: {"error": {"message": "The model `m` does not exist", "code": 404}},
    429: {"error": {"message": "Rate limit reached for requests"}},
    503: {"error": "model is loading"},
}
WORD = {"choices": [{"delta": {"content": "Hello"}, "finish_reason": None}]}
PATIENCE = 30  # seconds the canned server waits, on a request it leaves silent, for the client to go away


class CannedServer:
    """A stand-in for a failing server; the URL's first segment picks the failure. `status<N>` answers HTTP N with an
    error body; `error-event` streams a word, then an error event (as `transformers serve` reports a failed
    generation); `cut-off` streams a word and closes the connection before the body it announced is complete;
    `silent-after-a-word` streams a word, then nothing; anything else accepts the request and sends nothing.
    `holding` is set while it keeps a request silent; `ended` then gets who ended the wait: "client closed" or
    "server gave up"."""

    def __init__(self) -> None:
        holding, ended = threading.Event(), queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                kind = self.path.split("/")[1]
                if kind.startswith("status"):
                    status = int(kind.removeprefix("status"))
                    body = json.dumps(ERROR_BODIES[status]).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if kind in ("error-event", "cut-off", "silent-after-a-word"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    if kind == "cut-off":
                        self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(f"data: {json.dumps(WORD)}\n\n".encode())
                    if kind == "error-event":
                        self.wfile.write(b'data: {"error": "CUDA out of memory"}\n\n')
                    self.wfile.flush()
                    if kind != "silent-after-a-word":
                        return
                ended.put(self.wait_for_the_client())

            def wait_for_the_client(self) -> str:
                self.connection.settimeout(PATIENCE)
                holding.set()
                try:
                    self.connection.recv(1)  # b"" once the client has closed the connection
                except TimeoutError:
                    return "server gave up"
                except OSError:
                    pass
                return "client closed"

            def log_message(self, *args: object) -> None:
                pass

        self.holding, self.ended = holding, ended
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def canned() -> Iterator[CannedServer]:
    server = CannedServer()
    yield server
    server.close()


@pytest.mark.parametrize(("failure", "error", "sentence", "partial"), [
    ("status401", GenerationError,
     r"answered HTTP 401 \(not allowed\): Incorrect API key provided\. Set ENGINE_API_KEY if it needs a key\.$", ""),
    ("status403", GenerationError,
     r"answered HTTP 403 \(not allowed\): Not authenticated\. Set ENGINE_API_KEY if it needs a key\.$", ""),
    ("status404", GenerationError,
     r"answered HTTP 404 \(not found\): The model `m` does not exist\. "
     r"Check --engine-model \('m'\) and --engine-url\.$", ""),
    ("status429", BusyError,
     r"answered HTTP 429 \(too many requests\): Rate limit reached for requests\. Try again in a moment\.$", ""),
    ("status503", ModelNotReadyError, r"answered HTTP 503 \(not ready\): model is loading\. Try again in a moment\.$",
     ""),
    ("error-event", GenerationError, r"failed while answering: CUDA out of memory$", "Hello"),
    ("cut-off", GenerationError, r"closed the connection mid-answer", "Hello"),
    ("silent-after-a-word", GenerationError, r"sent nothing for 1 s, so the request was given up", "Hello"),
    ("silent", GenerationError, r"sent nothing for 1 s, so the request was given up", ""),
])
def test_failures_are_explained(canned, embeddings, failure, error, sentence, partial):
    engine = RemoteChatEngine(embeddings, f"{canned.url}/{failure}/v1", model="m", timeout=1.0)
    try:
        stream = engine.chat("Hi", [], "", GREEDY)
        with pytest.raises(error, match=rf"^The inference server at {canned.url}/{failure}/v1 .*{sentence}") as info:
            collect(stream)
        assert type(info.value) is error
        assert stream.stop_reason == "error" and stream.text == partial and engine.stats()["requests_in_progress"] == 0
    finally:
        engine.close()


def test_stop_closes_the_connection_while_the_server_is_silent(canned, embeddings):
    engine = RemoteChatEngine(embeddings, f"{canned.url}/silent/v1", model="m", timeout=2 * PATIENCE)
    try:
        stream = engine.chat("Hi", [], "", GREEDY)
        assert canned.holding.wait(PATIENCE), "the request did not arrive"
        stream.cancel()
        assert canned.ended.get(timeout=2 * PATIENCE) == "client closed"
        assert collect(stream) == "" and stream.stop_reason == "stopped" and engine.stats()["requests_in_progress"] == 0
    finally:
        engine.close()


def test_the_servers_key_comes_from_the_environment_into_the_config_and_never_into_its_repr():
    config = AppConfig.from_args(["--engine-url", "http://127.0.0.1:9/v1"], env={"ENGINE_API_KEY": "sk-secret"})
    assert config.engine_api_key == "sk-secret" and "sk-secret" not in repr(config)
    assert AppConfig.from_args([], env={}).engine_api_key is None
