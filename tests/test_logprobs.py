"""Every answer token's log-probability and alternatives: answers do not change, the numbers are the model's own, the
tokens concatenate to the answer, and a remote server's are passed on (or their absence said)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch

from core.config import RequestLimits
from core.engine.local import ChatEngine
from core.engine.logprobs import openai_logprobs
from core.engine.remote import RemoteChatEngine
from core.engine.sampling import StepLogprobs, sample, sampling_scores
from core.engine.settings import GenerationSettings
from core.engine.zerogpu_engine import ZeroGPUChatEngine
from core.errors import InvalidInputError
from tests import phi3
from tests.engines import chat_engine, run_together
from tests.servers import ScriptedChatServer
from tests.streams import collect

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "Describe the sea in one sentence."]
GREEDY = GenerationSettings(temperature=0, max_new_tokens=32)
SEEDED = GenerationSettings(temperature=0.9, top_p=0.95, top_k=40, max_new_tokens=24, seed=7)


def asking(settings: GenerationSettings, n: int | None = 5) -> GenerationSettings:
    return GenerationSettings(**{**settings.__dict__, "top_logprobs": n})


@pytest.fixture(scope="module", params=["torch", "onnx"])
def engine(request, bundled) -> Iterator[ChatEngine]:
    engine = chat_engine(request, request.param, bundled, RequestLimits(max_queue=8), max_batch=4)
    yield engine
    engine.close()


@pytest.mark.parametrize("settings", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_answers_are_unchanged_alone_and_batched(engine, settings):
    plain = [collect(engine.chat(q, [], "", settings)) for q in QUESTIONS]
    assert [collect(engine.chat(q, [], "", asking(settings))) for q in QUESTIONS] == plain
    assert run_together(engine, QUESTIONS, asking(settings)) == plain


def test_tokens_concatenate_to_the_answer_and_match_a_teacher_forced_pass(bundled, engine):
    """On torch, the recorded numbers are the float32 model's own; on ONNX Runtime (int8) they are within its
    rounding of them (tests/test_onnx_engine.py measures how close)."""
    stream = engine.chat(QUESTIONS[0], [], "", asking(GREEDY))
    answer = collect(stream)
    content = stream.answer_logprobs()
    assert "".join(entry["token"] for entry in content) == answer
    assert bytes(b for entry in content for b in entry["bytes"]) == answer.encode("utf-8")
    ids = stream.prompt.ids + stream.token_ids
    with torch.inference_mode():
        logits = bundled.model(torch.tensor([ids])).logits[0].float()
    expected = torch.log_softmax(logits[len(stream.prompt.ids) - 1:-1], dim=-1)
    assert len(stream.logprobs) == len(stream.token_ids)
    for step, (record, token) in enumerate(zip(stream.logprobs, stream.token_ids, strict=True)):
        assert record.token == token
        tolerance = 1e-3 if engine.onnx is None else 0.5
        assert record.logprob == pytest.approx(float(expected[step, token]), abs=tolerance)
        assert record.top_ids[0] == token  # greedy: the chosen token is the most likely one
        assert list(record.top_logprobs) == sorted(record.top_logprobs, reverse=True) and len(record.top_ids) == 5


def test_a_sampled_token_carries_its_own_logprob_even_outside_the_top(engine):
    hot = GenerationSettings(temperature=3.0, top_p=1.0, top_k=0, max_new_tokens=24, seed=3, top_logprobs=2)
    stream = engine.chat("Say anything.", [], "", hot)
    collect(stream)
    outside = [r for r in stream.logprobs if r.token not in r.top_ids]
    assert outside, "at temperature 3 some sampled tokens fall outside the top 2"
    assert all(r.logprob <= r.top_logprobs[-1] for r in outside)


def test_nothing_is_recorded_unless_asked_and_zero_records_the_chosen_token_only(engine):
    off = engine.chat(QUESTIONS[2], [], "", GREEDY)
    collect(off)
    assert off.logprobs == [] and off.answer_logprobs() is None
    zero = engine.chat(QUESTIONS[2], [], "", asking(GREEDY, 0))
    collect(zero)
    assert len(zero.logprobs) == len(zero.token_ids) and all(r.top_ids == () for r in zero.logprobs)
    with pytest.raises(InvalidInputError, match="top_logprobs must be a whole number from 0 to 20"):
        engine.chat("Hi", [], "", asking(GREEDY, 21))


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), [(1.0, 1.0, 0), (0.7, 0.95, 50), (0.5, 1.0, 3)])
def test_sampling_scores_are_the_distribution_sample_draws_from(bundled, temperature, top_p, top_k):
    ids = bundled.tokenizer("Once upon a time, in a small village,")["input_ids"]
    with torch.inference_mode():
        logits = bundled.model(torch.tensor([ids])).logits[0, -1]
    settings = GenerationSettings(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=1).validated(1)
    probs = torch.softmax(sampling_scores(logits, settings, ids), dim=-1)
    for seed in range(40):
        drawn = sample(logits, settings, ids, torch.Generator().manual_seed(seed))
        assert drawn == int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)))


def test_phi3_answer_leaves_the_end_token_out(phi3_scripted):
    engine = ChatEngine(phi3_scripted, max_batch=2)
    try:
        stream = engine.chat("Hi", [], "", asking(GREEDY, 3))
        answer = collect(stream)
    finally:
        engine.close()
    content = stream.answer_logprobs()
    assert answer == "Hello world"
    assert [entry["token"] for entry in content] == ["Hello", " world"]  # <|end|> left out, as in the text
    assert len(stream.logprobs) == 3 and stream.logprobs[-1].token == phi3.END_ID
    assert content[1]["top_logprobs"][0]["token"] == " world"


def test_byte_tokens_keep_their_raw_bytes(phi3_tokenizer):
    ids = phi3_tokenizer.encode("🎵 ok", add_special_tokens=False)  # ▁ <0xF0> <0x9F> <0x8E> <0xB5> ▁ok
    records = [StepLogprobs(token=i, logprob=-0.1, top_ids=(i,), top_logprobs=(-0.1,)) for i in ids]
    content = openai_logprobs(records, phi3_tokenizer)
    text = phi3_tokenizer.decode(ids)
    assert bytes(b for entry in content for b in entry["bytes"]) == text.encode("utf-8")
    assert content[1]["bytes"] == [0xF0] and content[1]["token"] == ""
    assert "".join(entry["token"] for entry in content) == text


def test_zerogpu_engine_records_the_same_logprobs(bundled, engine):
    if engine.onnx is not None:
        pytest.skip("ZeroGPU decodes with torch: it is compared with the torch runner")
    zerogpu = ZeroGPUChatEngine(bundled)
    try:
        there = zerogpu.chat(QUESTIONS[0], [], "", asking(GREEDY))
        collect(there)
    finally:
        zerogpu.close()
    here = engine.chat(QUESTIONS[0], [], "", asking(GREEDY))
    collect(here)
    assert [e["token"] for e in there.answer_logprobs()] == [e["token"] for e in here.answer_logprobs()]
    assert [r.logprob for r in there.logprobs] == pytest.approx([r.logprob for r in here.logprobs], abs=1e-3)


# -- through a remote server ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "received", "note"), [
    ("send", True, ""),
    ("ignore", False, r"^The inference server at .* sent none: this answer has no per-token probabilities\."),
    ("refuse", False, r"^The inference server at .* refused them: this answer has no per-token probabilities\."),
])
def test_a_remote_server_is_asked_for_logprobs(bundled, mode, received, note):
    server = ScriptedChatServer("Paris is nice.", logprobs=mode)
    engine = RemoteChatEngine(bundled, server.url, model="scripted")
    try:
        stream = engine.chat("Hi", [], "", asking(GREEDY, 2))
        assert collect(stream) == "Paris is nice."
        plain = engine.chat("Hi", [], "", GREEDY)
        collect(plain)
    finally:
        engine.close()
        server.close()
    first = server.requests[0][1]
    assert first["logprobs"] is True and first["top_logprobs"] == 2
    content = stream.answer_logprobs()
    if received:
        assert [e["token"] for e in content] == ["Paris", " is", " nice."]
        assert content[0]["top_logprobs"][1] == {"token": " maybe", "logprob": -2.0, "bytes": list(b" maybe")}
    else:
        assert content == []
    assert re.match(note, stream.logprobs_note) if note else stream.logprobs_note == ""
    assert "logprobs" not in server.requests[-1][1] and plain.answer_logprobs() is None  # only when asked
