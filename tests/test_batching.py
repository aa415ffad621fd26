"""Concurrent chats share the model through batched decoding, and stay independent."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from core.config import RequestLimits
from core.engine.capacity import MAX_ROWS, kv_bytes_per_token, rows_that_fit
from core.engine.local import ChatEngine
from core.engine.settings import GenerationSettings
from core.engine.stream import END_OF_TURN, LENGTH, STOPPED, ChatStream
from core.errors import GenerationError
from core.text.prompt import Prompt
from tests.engines import chat_engine, run_together
from tests.holds import cancelled, hold_pushes
from tests.streams import collect, finished

QUESTIONS = ["What is the capital of Japan?", "Name three primary colors.", "What is 2 + 2?"]
RUNNERS = ["torch", "onnx"]  # every test here holds for both of the in-process engine's runners


@pytest.fixture(scope="module", params=RUNNERS)
def engine(request, bundled) -> Iterator[ChatEngine]:
    engine = chat_engine(request, request.param, bundled, RequestLimits(max_queue=8), max_batch=8)
    yield engine
    engine.close()



def test_concurrent_greedy_answers_equal_answers_alone(engine):
    settings = GenerationSettings(temperature=0, max_new_tokens=40)
    alone = [collect(engine.chat(q, [], "", settings)) for q in QUESTIONS]
    engine.peak_batch = 0
    together = run_together(engine, QUESTIONS, settings)
    assert together == alone
    assert "Tokyo" in together[0]
    assert engine.peak_batch >= 2, "the requests were not decoded together"


def test_seeded_sampling_is_independent_of_batch_company(engine):
    settings = GenerationSettings(temperature=0.9, top_p=0.95, top_k=40, max_new_tokens=24, seed=7)
    alone = collect(engine.chat("Invent a name for a dragon.", [], "", settings))
    together = run_together(engine, ["Invent a name for a dragon.", "Tell me a joke.", "Describe the sea."],
                            settings)
    assert together[0] == alone


def test_stopping_one_stream_leaves_the_other_running(engine, monkeypatch):
    """Stop one of two chats (the worker held at its second token until then): it ends, the other runs on."""
    hold_pushes(monkeypatch, lambda s: "dragon" in s.prompt.text, after=2, until=cancelled)
    long = GenerationSettings(temperature=0, max_new_tokens=60)
    first = engine.chat("Write a long story about a dragon who learns to read.", [], "", long)
    second = engine.chat("Write a long story about a cat who learns to fly.", [], "", long)
    for _ in first:
        if len(first.token_ids) >= 2:
            first.cancel()
    text = collect(second)
    assert finished(first, 10) and first.stop_reason == STOPPED and 2 <= len(first.token_ids) <= 3
    assert second.stop_reason in (LENGTH, END_OF_TURN) and len(second.token_ids) >= 40 and text


def test_three_sessions_do_not_see_each_other(engine):
    histories = [
        [{"role": "user", "content": "My name is Alice."}, {"role": "assistant", "content": "Hello Alice!"}],
        [{"role": "user", "content": "My name is Bob."}, {"role": "assistant", "content": "Hello Bob!"}],
        [{"role": "user", "content": "My name is Carol."}, {"role": "assistant", "content": "Hello Carol!"}],
    ]
    settings = GenerationSettings(temperature=0, max_new_tokens=24)
    streams = [engine.chat("What is my name?", h, "", settings) for h in histories]
    answers = [collect(s) for s in streams]
    for stream, name in zip(streams, ["Alice", "Bob", "Carol"], strict=True):
        prompt_text = stream.prompt.text
        assert name in prompt_text and all(o not in prompt_text for o in {"Alice", "Bob", "Carol"} - {name})
    for answer, name in zip(answers, ["Alice", "Bob", "Carol"], strict=True):
        assert all(o not in answer for o in {"Alice", "Bob", "Carol"} - {name})


def test_batch_rows_are_bounded_by_memory_at_full_context(bundled, phi3_tiny):
    per_token = kv_bytes_per_token(bundled.model)
    assert per_token == 2 * 30 * 3 * 64 * 4  # SmolLM2-135M: 30 layers, 3 KV heads of 64 dims, float32
    full_row = per_token * bundled.context_length
    assert rows_that_fit(bundled.model, bundled.context_length, free_bytes=100 * full_row) == MAX_ROWS  # capped
    assert rows_that_fit(bundled.model, bundled.context_length, free_bytes=10 * full_row) == 6  # 60% of it
    assert rows_that_fit(bundled.model, bundled.context_length, free_bytes=full_row // 2) == 1  # always one
    phi3 = phi3_tiny.model.config
    assert kv_bytes_per_token(phi3_tiny.model) == (2 * phi3.num_hidden_layers * phi3.num_key_value_heads
                                                   * (phi3.hidden_size // phi3.num_attention_heads) * 4)
    engine = ChatEngine(bundled, RequestLimits(max_queue=2))
    try:
        assert 1 <= engine.max_batch <= MAX_ROWS and engine.stats()["max_batch"] == engine.max_batch
    finally:
        engine.close()


LONG_TEXT = 20 * ("The river bank was quiet in the early morning. "
                  "A heron stood in the shallow water, watching for fish. ")
STORY = "Write a long story about a dragon who learns to read."


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_long_prompt_is_read_in_chunks_while_another_chat_streams(request, runner, bundled, monkeypatch):
    """A long prompt that arrives while a chat is streaming is read a chunk per decoding step: the streaming chat gets
    a token after every chunk instead of waiting for the whole prompt (the worker's own order of pushes is the
    evidence), and both answers equal their answers alone."""
    pushes: list[int] = []  # stream ids, in the order the worker pushed their tokens
    push = ChatStream.push

    def logged_push(self: ChatStream, token_ids: list[int]) -> None:
        pushes.append(self.id)
        push(self, token_ids)

    monkeypatch.setattr(ChatStream, "push", logged_push)
    engine = chat_engine(request, runner, bundled, RequestLimits(max_queue=4), max_batch=4, prefix_cache_mb=0,
                         prefill_chunk=64)
    try:
        story_settings = GenerationSettings(temperature=0, max_new_tokens=80)
        summary_settings = GenerationSettings(temperature=0, max_new_tokens=12)
        story = engine.chat(STORY, [], "", story_settings)
        for _ in range(12_000):  # a liveness bound: wait until the story is streaming
            if story.token_ids:
                break
            time.sleep(0.01)
        mark = len(pushes)
        summary = engine.chat(LONG_TEXT + "Summarise this in one sentence.", [], "", summary_settings)
        summary_text, story_text = collect(summary), collect(story)
        chunks = math.ceil(len(summary.prompt.ids) / 64)
        first = pushes.index(summary.id, mark)
        streamed_meanwhile = pushes[mark:first].count(story.id)
        assert len(story.token_ids) > chunks + 2, "the story ended before the long prompt was read: nothing to see"
        assert streamed_meanwhile >= chunks - 1, (streamed_meanwhile, chunks)
        assert summary_text == collect(engine.chat(LONG_TEXT + "Summarise this in one sentence.", [], "",
                                           summary_settings))
        assert story_text == collect(engine.chat(STORY, [], "", story_settings))
    finally:
        engine.close()


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_prompt_read_in_chunks_gets_the_answer_of_one_pass(request, runner, bundled):
    settings = GenerationSettings(temperature=0, max_new_tokens=16)
    answers = []
    for chunk in (0, 64):
        engine = chat_engine(request, runner, bundled, RequestLimits(max_queue=2), max_batch=2, prefix_cache_mb=0,
                             prefill_chunk=chunk)
        try:
            answers.append(collect(engine.chat(LONG_TEXT + "What stood in the water?", [], "", settings)))
        finally:
            engine.close()
    assert answers[0] == answers[1] and answers[0]


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_prompt_that_fails_midway_through_its_chunks_fails_alone(request, runner, bundled):
    """A prompt whose last chunk breaks (a token id outside the vocabulary) gets the error; a request prefilled in
    the same group still gets its answer, the same as alone."""
    engine = chat_engine(request, runner, bundled, RequestLimits(max_queue=4), max_batch=4, prefix_cache_mb=0,
                         prefill_chunk=64)
    try:
        settings = GenerationSettings(temperature=0, max_new_tokens=12)
        alone = collect(engine.chat("What is the capital of France?", [], "", settings))
        out_of_vocabulary = bundled.model.get_input_embeddings().weight.shape[0]
        ids = [*bundled.tokenizer(LONG_TEXT)["input_ids"][:300], out_of_vocabulary]
        broken = engine.submit(Prompt(ids=ids, text="broken"), settings)
        good = engine.chat("What is the capital of France?", [], "", settings)
        with pytest.raises(GenerationError, match="Generation failed"):
            collect(broken)
        assert collect(good) == alone
    finally:
        engine.close()
