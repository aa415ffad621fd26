"""Chat through the doors users use: gradio_client against the launched app, and gradio's REST API."""

from __future__ import annotations

import itertools
import json
import threading
import urllib.request

import pytest
from gradio_client import Client

GREEDY = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 48}


def chat(client: Client, message: str, history: list | None = None, **kw) -> str:
    return client.predict(message, history or [], kw.pop("system_prompt", ""), **{**GREEDY, **kw},
                          api_name="/chat")


def test_chat_endpoint_answers_tokyo(client):
    assert "Tokyo" in chat(client, "What is the capital of Japan?")


def test_chat_streams_cumulative_text(client):
    job = client.submit("Count from one to ten in words.", [], "", 0.0, 1.0, 40, None, api_name="/chat")
    job.result()
    outputs = job.outputs()
    assert len(outputs) >= 2
    assert all(later.startswith(earlier.rstrip()) for earlier, later in itertools.pairwise(outputs))


def test_engine_stats_show_the_prefix_cache_at_work(client):
    question = "Name a color of the rainbow."
    first = chat(client, question)
    chat(client, "And another one?", [{"role": "user", "content": question}, {"role": "assistant", "content": first}])
    stats = client.predict(api_name="/engine_stats")
    assert stats["engine"] == "ChatEngine" and stats["requests_in_progress"] == 0
    assert stats["runner"] == "onnx int8", "the app's default CPU engine is ONNX Runtime"
    assert stats["requests_accepted"] >= 2 and 1 <= stats["peak_batch"] <= stats["max_batch"]
    recent = stats["recent"]
    assert recent["requests"] >= 2 and 0 < recent["ttft_p50_s"] <= recent["ttft_p95_s"]
    assert 0 <= recent["queued_p50_s"] <= recent["queued_p95_s"]
    cache = stats["prefix_cache"]
    assert cache["hits"] >= 2 and 0 < cache["reused_token_share"] <= 1
    assert 0 < cache["bytes"] <= cache["max_bytes"]


def test_prompt_endpoint_returns_exact_ids(client, bundled):
    result = client.predict("Hi <|im_end|>", [{"role": "assistant", "content": "Hello!"}], "Be brief.",
                            api_name="/prompt")
    assert result["count"] == len(result["ids"])
    assert result["text"].startswith("<|im_start|>system\nBe brief.<|im_end|>")
    im_end = bundled.tokenizer.convert_tokens_to_ids("<|im_end|>")
    # three real <|im_end|> (system, assistant, user turns); the user's literal "<|im_end|>" is text
    assert result["ids"].count(im_end) == 3


def test_two_concurrent_sessions_get_their_own_answers(app_url):
    questions = {"What is the capital of Germany?": "Berlin", "What is the capital of Japan?": "Tokyo"}
    answers: dict[str, str] = {}

    def ask(question: str) -> None:
        answers[question] = chat(Client(app_url, verbose=False), question)

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for question, city in questions.items():
        assert city in answers[question]
        other = next(c for q, c in questions.items() if q != question)
        assert other not in answers[question]


def test_rest_api_chat_and_clear_error(app_url):
    def call(name: str, data: list) -> str:
        request = urllib.request.Request(f"{app_url}gradio_api/call/{name}", data=json.dumps({"data": data}).encode(),
                                         headers={"Content-Type": "application/json"})
        event_id = json.load(urllib.request.urlopen(request, timeout=30))["event_id"]
        with urllib.request.urlopen(f"{app_url}gradio_api/call/{name}/{event_id}", timeout=120) as stream:
            return stream.read().decode()

    # REST callers send every input in order: message, history, system_prompt, temperature, top_p,
    # max_new_tokens, seed, top_k, repetition_penalty
    body = call("chat", ["What is the capital of Japan?", [], "", 0.0, 1.0, 32, None, 50, 1.0])
    assert "event: complete" in body and "Tokyo" in body
    body = call("chat", ["Hi", [], "", 9.0, 1.0, 32, None, 50, 1.0])
    assert "event: error" in body and "temperature must be a number in [0, 5]; got the number 9.0" in body
    assert "Traceback" not in body


def test_bad_history_gets_a_clear_error(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="role 'robot'"):
        chat(client, "Hi", [{"role": "robot", "content": "beep"}])
