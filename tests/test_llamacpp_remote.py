"""llama.cpp as Token Lab's chat engine: llama-cpp-python's OpenAI-compatible server on loopback with the bundled
GGUF, and the app started in remote mode against it (`--engine-url`; docs/deploy.md, "llama.cpp as the chat
engine"). Its greedy answers must be llama.cpp's own greedy answers to the same prompt ids, from llama.cpp run
in-process (bench/llamacpp_worker.py); Stop must end the generation on the server, as the server's log says.

llama.cpp lives in its own environment (`make llamacpp`, or TOKEN_LAB_LLAMACPP_PYTHON=/path/to/python): without one
these tests skip and say how to get it. Server and worker run on one thread each: nothing here measures speed, and
the test process and the app need the other core.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from bench.llamacpp import LlamaCppWorker, find_llamacpp, server_command
from core.config import AppConfig
from core.engine.remote import RemoteChatEngine
from core.engine.settings import GenerationSettings
from core.host import ModelHost
from core.model.bundled import bundled_gguf_path
from tests.conftest import free_port
from tests.servers import client_of, http_ok, running, stop_while_streaming
from tests.streams import collect
from tests.test_remote import LONG_ANSWER, LONG_PROMPT, assert_token_views_work

pytestmark = pytest.mark.slow  # starts llama.cpp's server, llama.cpp in-process and the app

QUESTION = "What is the capital of France?"
TOKENS = 48
GREEDY = GenerationSettings(temperature=0.0, top_p=1.0, max_new_tokens=TOKENS)
DISCONNECTED = "Disconnected from client"  # what llama-cpp-python's server prints when it ends a stream early
START_TIMEOUT = 120


@pytest.fixture(scope="module")
def llamacpp_python() -> Path:
    python, reason = find_llamacpp()
    if python is None:
        pytest.skip(reason)
    return python


class Server:
    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log = url, log

    def disconnects(self) -> int:
        """How many streams the server has ended because its client went away (from its log)."""
        return self.log.read_text(errors="replace").count(DISCONNECTED)


@pytest.fixture(scope="module")
def server(llamacpp_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    command = server_command(llamacpp_python, bundled_gguf_path(), port, threads=1)
    ready = partial(http_ok, f"http://127.0.0.1:{port}/v1/models")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its log lines arrive as they are printed
    with running(command, log, ready, "llama.cpp's server", START_TIMEOUT, env=env):
        yield Server(f"http://127.0.0.1:{port}", log)


@pytest.fixture(scope="module")
def worker(llamacpp_python: Path) -> Iterator[LlamaCppWorker]:
    with LlamaCppWorker(llamacpp_python, bundled_gguf_path(), threads=1) as running_worker:
        yield running_worker


@pytest.fixture(scope="module")
def host(server: Server, cache_dir: Path) -> Iterator[ModelHost]:
    """The app as `python app.py --model bundled --engine-url URL` starts it; no --engine-model: the server's
    model list names it."""
    started = ModelHost(AppConfig(model="bundled", device="cpu", cache_dir=cache_dir, engine_url=server.url,
                                  max_queue=4)).start()
    assert started.wait(START_TIMEOUT) and started.error is None, started.status
    yield started
    started.close()


client = client_of("host")


def llamacpp_answer(worker: LlamaCppWorker, host: ModelHost, prompt_ids: list[int] | None = None
                    ) -> tuple[str, list[int]]:
    """llama.cpp's own greedy answer to these prompt ids (by default: QUESTION's, as the chat tab builds it with no
    history or system prompt), as text (decoded by the app's tokenizer) and ids."""
    engine = host.require().engine
    ids = worker.generate(prompt_ids or engine.prompt(QUESTION, [], "", TOKENS).ids, TOKENS)["ids"]
    return host.require().loaded.tokenizer.decode(ids), ids


def test_greedy_answer_is_llamacpps_own(host, worker):
    engine = host.require().engine
    assert isinstance(engine, RemoteChatEngine) and engine.model_name == str(bundled_gguf_path())
    stream = engine.chat(QUESTION, [], "", GREEDY)
    text = collect(stream)
    expected, ids = llamacpp_answer(worker, host, stream.prompt.ids)
    assert text == expected and text
    # llama-cpp-python's server sends no token counts while streaming: the stats count the answer locally
    assert stream.token_ids == ids and stream.stats.generated_tokens == len(ids)
    assert stream.stop_reason == ("length" if len(ids) == TOKENS else "end of turn")
    assert engine.extras_supported is True  # it takes top_k and repeat_penalty


def test_answer_streams_through_the_app(client, host, worker):
    job = client.submit(QUESTION, [], "", 0.0, 1.0, TOKENS, None, api_name="/chat")
    updates = [answer for answer in job if answer]
    expected, _ = llamacpp_answer(worker, host)
    assert job.outputs()[-1] == expected
    assert len(set(updates)) > 1 and all(expected.startswith(u) for u in updates), "the answer did not stream"


def test_stop_ends_the_generation_on_the_server(client, server, host, worker):
    before = server.disconnects()
    stop_while_streaming(client.submit(LONG_PROMPT, [], "", 0.0, 1.0, LONG_ANSWER, None, api_name="/chat"))
    # The server generates one answer at a time and lets a new request wait (--interrupt_requests False): this one
    # is answered once the stopped generation has ended.
    answer = client.predict(QUESTION, [], "", 0.0, 1.0, TOKENS, None, api_name="/chat")
    assert answer == llamacpp_answer(worker, host)[0]
    assert server.disconnects() == before + 1, "the server did not see the stopped answer's client go away"


def test_tokens_and_embeddings_come_from_the_local_model(client, host):
    assert_token_views_work(client, host)
    assert "tokenizer and embeddings loaded" in host.status
