"""Inspections share the model with running chats on the engine's worker, between decoding steps, without changing
any answer; a stepwise inspection lets the chats decode between its steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from core.engine.local import ChatEngine
from core.engine.settings import GenerationSettings
from core.errors import BusyError, InvalidInputError, ModelNotReadyError
from core.inside.contextual import contextual
from core.inside.logit_lens import logit_lens
from core.inside.next_tokens import next_tokens
from tests.streams import collect, finished

STORY = "Write a long story about a dragon who learns to read."
GREEDY = GenerationSettings(temperature=0, max_new_tokens=48)


@pytest.fixture(scope="module")
def engine(bundled) -> Iterator[ChatEngine]:
    engine = ChatEngine(bundled, max_batch=4)
    yield engine
    engine.close()


def worker_name(_loaded) -> str:
    return threading.current_thread().name


def test_an_idle_engine_runs_an_inspection_on_its_worker(engine):
    assert engine.inspect(worker_name) == "token-lab-generate"
    assert next_tokens(engine, "The capital of France is", k=1)["tokens"][0]["text"] == " Paris"


def test_inspections_during_a_chat_leave_its_answer_unchanged(engine, bundled_host):
    expected = collect(engine.chat(STORY, [], "", GREEDY))
    index = bundled_host.require().index
    stream = engine.chat(STORY, [], "", GREEDY)
    results = []
    for text in stream:
        if text and len(results) < 3:
            results.append(logit_lens(engine, "The capital of France is"))
            results.append(contextual(engine, index, "I sat on the river bank.", "bank", "I opened a bank account.",
                                      "bank"))
    assert stream.text == expected
    assert results and results[0]["rows"][-1][-1]["text"] == " Paris"


def test_a_stepwise_inspection_lets_the_chat_decode_between_its_steps(engine):
    text = "one two three four five six seven eight nine ten " * 15  # two forward chunks, four LM-head chunks
    direct = logit_lens(engine, text, max_tokens=32)
    stream = engine.chat(STORY, [], "", GenerationSettings(temperature=0, max_new_tokens=400))
    while len(stream.token_ids) < 2:
        finished(stream, 0.01)
    before = len(stream.token_ids)
    during_lens = logit_lens(engine, text, max_tokens=32)
    decoded = len(stream.token_ids) - before
    stream.cancel()
    finished(stream, 60)
    assert during_lens == direct
    assert decoded >= 6, "a decoding step runs between the lens's steps (2 forward chunks, 4 LM-head chunks)"


def test_an_inspection_error_reaches_the_caller_and_the_worker_goes_on(engine):
    def broken(_loaded):
        raise InvalidInputError("nothing to see")

    with pytest.raises(InvalidInputError, match="nothing to see"):
        engine.inspect(broken)
    assert collect(engine.chat("Hi", [], "", GenerationSettings(temperature=0, max_new_tokens=4)))


def test_too_many_waiting_inspections_are_told_the_server_is_busy(engine):
    release = threading.Event()

    def hold(_loaded):
        release.wait(30)

    errors: list[BaseException] = []

    def call() -> None:
        try:
            engine.inspect(hold)
        except BusyError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(9)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    release.set()
    for t in threads:
        t.join(60)
    assert len(errors) == 1 and "8 inspections are waiting" in str(errors[0])


def test_a_closed_engine_says_so(bundled):
    engine = ChatEngine(bundled, max_batch=1)
    engine.close()
    with pytest.raises(ModelNotReadyError, match="worker has stopped"):
        engine.inspect(worker_name)
