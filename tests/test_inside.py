"""The Inside views through core, on the bundled model and the Phi-3-shaped fixture: next-token probabilities (greedy
top-1 is what chat writes; `kept`/`prob_after` are the sampler's), contextual embeddings and the logit lens."""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Iterator

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from core.embeddings.index import VocabIndex
from core.engine.local import ChatEngine
from core.engine.remote import RemoteChatEngine
from core.engine.settings import GenerationSettings
from core.engine.zerogpu_engine import ZeroGPUChatEngine
from core.errors import InvalidInputError, UnavailableError
from core.inside.anatomy import anatomy
from core.inside.contextual import contextual
from core.inside.forward import last_logits, residual_stream
from core.inside.logit_lens import CPU_POSITIONS, MAX_BLOCK, MAX_LENS_TOKENS, logit_lens, row_max
from core.inside.next_tokens import MAX_K, next_tokens
from core.model.embeddings_only import EmbeddingsOnly
from tests.inside_cases import run
from tests.streams import collect

# The views read the float32 weights and the app's chat runs int8 on ONNX Runtime: their first tokens agree where
# float32's choice is not a near tie (on "the capital of France" float32's top two are 0.08 apart, and int8 flips it,
# as llama.cpp's Q4_1 does).
QUESTIONS = ["What is the capital of Japan?", "Name three primary colors.", "Write a haiku about rain."]
SETTINGS = [(1.0, 1.0, 0), (0.7, 0.95, 50), (1.3, 0.8, 0), (0.5, 1.0, 3), (2.0, 0.5, 10)]
RIVER, ACCOUNT, MONEY = "I sat on the river bank.", "I opened a bank account.", "I took my money to the bank."
CAPITAL = "The capital of France is"


@pytest.fixture(scope="module")
def phi3(phi3_tiny) -> Iterator[tuple[ChatEngine, VocabIndex]]:
    engine = ChatEngine(phi3_tiny, max_batch=2)
    yield engine, VocabIndex.from_model(phi3_tiny.model, phi3_tiny.tokenizer, use_gpu=False)
    engine.close()


# -- next tokens ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("question", QUESTIONS)
def test_greedy_top1_is_the_first_token_chat_writes(parts, question):
    stream = parts.engine.chat(question, [], "", GenerationSettings(temperature=0, max_new_tokens=1))
    collect(stream)
    result = next_tokens(parts.engine, question, k=3, temperature=0, chat=True)
    assert result["prompt_tokens"] == len(stream.prompt.ids) and result["prompt"] == stream.prompt.text
    assert result["tokens"][0]["id"] == stream.token_ids[0]
    assert result["tokens"][0]["kept"] and result["tokens"][0]["prob_after"] == 1.0
    assert [t["kept"] for t in result["tokens"][1:]] == [False, False]


def test_greedy_top1_on_phi3_is_the_first_token_chat_writes(phi3):
    engine, _ = phi3
    stream = engine.chat("Hi there", [], "", GenerationSettings(temperature=0, max_new_tokens=1))
    collect(stream)
    result = next_tokens(engine, "Hi there", k=5, temperature=0, chat=True)
    assert stream.prompt.text.endswith("<|user|>\nHi there<|end|>\n<|assistant|>\n")
    assert result["tokens"][0]["id"] == stream.token_ids[0]
    assert all(isinstance(t["piece"], str) and t["piece"] for t in result["tokens"])  # padding rows are named too


def _warped(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    scores = TemperatureLogitsWarper(temperature)(None, logits.float().unsqueeze(0))
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, dim=-1)[0]


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), SETTINGS)
def test_kept_and_prob_after_are_what_the_warpers_leave(bundled, parts, temperature, top_p, top_k):
    text = "The best thing about living by the sea is"
    result = next_tokens(parts.engine, text, k=40, temperature=temperature, top_p=top_p, top_k=top_k)
    with torch.inference_mode():
        logits = bundled.model(torch.tensor([bundled.tokenizer(text)["input_ids"]])).logits[0, -1]
    expected = _warped(logits, temperature, top_p, top_k)
    for token in result["tokens"]:
        assert token["kept"] == bool(expected[token["id"]] > 0)
        assert token["prob_after"] == pytest.approx(float(expected[token["id"]]), abs=1e-5)
    assert result["kept_count"] == int((expected > 0).sum())
    kept = [t for t in result["tokens"] if t["kept"]]
    assert kept == result["tokens"][:len(kept)], "the sampler keeps a prefix of the ranking"
    if result["kept_count"] <= 40:
        assert sum(t["prob_after"] for t in kept) == pytest.approx(1.0, abs=1e-5)


def test_probabilities_and_entropy_are_consistent(bundled, parts):
    result = next_tokens(parts.engine, CAPITAL, k=10)
    tokens = result["tokens"]
    assert tokens[0]["text"] == " Paris" and tokens[0]["piece"] == "ĠParis"
    assert [t["prob"] for t in tokens] == sorted((t["prob"] for t in tokens), reverse=True)
    assert all(t["prob"] == pytest.approx(math.exp(t["logprob"])) for t in tokens)
    assert 0 < result["entropy"] < math.log2(len(bundled.tokenizer))
    assert result["entropy_after"] == pytest.approx(result["entropy"], abs=1e-3)  # temperature 1, no filter
    assert result["kept_count"] == bundled.model.config.vocab_size
    greedy = next_tokens(parts.engine, CAPITAL, k=2, temperature=0)
    assert greedy["entropy_after"] == 0 and greedy["kept_count"] == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"text": ""}, "Type a text first"),
    ({"text": "   "}, "Type a text first"),
    ({"text": None}, "Type a text first"),
    ({"text": 42}, "The text must be text"),
    ({"text": "", "chat": True}, "Type a message first"),
    ({"text": "Hi", "k": 0}, "k must be a whole number from 1 to 100"),
    ({"text": "Hi", "k": MAX_K + 1}, "k must be a whole number"),
    ({"text": "Hi", "k": True}, "k must be a whole number"),
    ({"text": "Hi", "temperature": -1}, "temperature"),
    ({"text": "Hi", "top_p": 0}, "top_p"),
    ({"text": "Hi", "top_k": -1}, "top_k"),
    ({"text": "Hi", "chat": "yes"}, "chat must be true or false"),
])
def test_bad_input_gets_a_sentence(parts, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        next_tokens(parts.engine, **kwargs)


def test_text_beyond_the_context_is_refused(phi3):
    engine, _ = phi3
    with pytest.raises(InvalidInputError, match="reads at most 4,096"):
        next_tokens(engine, "a b " * 2100)
    with pytest.raises(InvalidInputError, match="context"):
        next_tokens(engine, "a b " * 2100, chat=True)
    with pytest.raises(InvalidInputError, match="reads at most 4,096"):
        logit_lens(engine, "a b " * 2100)


# -- contextual embeddings -----------------------------------------------------------------------------------------
def test_bank_starts_identical_and_ends_apart(bundled, parts):
    result = contextual(parts.engine, parts.index, RIVER, "bank", ACCOUNT, "bank")
    layers = result["layers"]
    assert len(layers) == bundled.model.config.num_hidden_layers + 1
    assert result["same_token"] and result["a"]["taken"]["piece"] == "Ġbank" and not result["note"]
    assert layers[0]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert layers[-1]["cosine"] < 0.8
    assert layers[0]["nearest_a"][0]["text"] == " bank" and layers[0]["nearest_b"][0]["text"] == " bank"


def test_the_same_sense_stays_closer_than_a_different_sense(parts):
    senses = contextual(parts.engine, parts.index, RIVER, "bank", ACCOUNT, "bank")
    same = contextual(parts.engine, parts.index, MONEY, "bank", ACCOUNT, "bank")
    assert same["layers"][-1]["cosine"] > senses["layers"][-1]["cosine"]


def test_a_word_of_several_tokens_follows_its_last_token(phi3, phi3_tiny):
    engine, index = phi3
    result = contextual(engine, index, "She kept apologizing all day.", "apologizing", "Stop apologizing now.",
                        "apologizing")
    assert [t["piece"] for t in result["a"]["word_tokens"]] == ["▁apolog", "izing"]
    assert result["a"]["taken"]["piece"] == "izing" and result["b"]["taken"]["piece"] == "izing"
    assert len(result["layers"]) == phi3_tiny.model.config.num_hidden_layers + 1
    assert result["layers"][0]["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_different_tokens_are_said_so(parts):
    result = contextual(parts.engine, parts.index, "Bank holidays are nice.", "bank", ACCOUNT, "bank")
    assert result["a"]["word"] == "Bank"  # found case-insensitively
    assert not result["same_token"] and "different tokens" in result["note"]
    assert result["layers"][0]["cosine"] < 0.99


@pytest.mark.parametrize(("a", "word_a", "b", "word_b", "message"), [
    (RIVER, "money", ACCOUNT, "bank", "'money' does not occur in sentence A"),
    (RIVER, "bank", ACCOUNT, "river", "'river' does not occur in sentence B"),
    ("", "bank", ACCOUNT, "bank", "Sentence A is empty"),
    (RIVER, " ", ACCOUNT, "bank", "Type the word to follow in sentence A"),
    (RIVER, "bank", ACCOUNT, None, "Type the word to follow in sentence B"),
    (RIVER, "bank", 42, "bank", "Sentence B must be text"),
    ("x" * 2001, "x", ACCOUNT, "bank", "Sentence A is 2,001 characters; the limit is 2,000"),
])
def test_contextual_bad_input_gets_a_sentence(parts, a, word_a, b, word_b, message):
    with pytest.raises(InvalidInputError, match=message):
        contextual(parts.engine, parts.index, a, word_a, b, word_b)


# -- the logit lens and the parts it needs ------------------------------------------------------------------------
@pytest.fixture(params=["bundled", "phi3_tiny"])
def loaded(request):
    return request.getfixturevalue(request.param)


def test_parts_are_found_through_the_models_accessors(loaded):
    parts = anatomy(loaded.model)
    assert parts.lm_head is loaded.model.get_output_embeddings()
    assert parts.embed is loaded.model.get_input_embeddings()
    assert parts.final_norm is loaded.model.model.norm  # found without its name: checked here by it
    assert parts.num_layers == loaded.model.config.num_hidden_layers


def hidden_states_of(model, ids: list[int]):
    """transformers' own hidden states, from a copy of the model: asked once for them, transformers installs its
    capturing hooks on a model for good, and they cannot be pickled (test_packed_linear pickles the shared model)."""
    with torch.inference_mode():
        return copy.deepcopy(model)(torch.tensor([ids]), output_hidden_states=True)


def test_the_stream_is_transformers_hidden_states_with_the_last_one_before_the_norm(loaded):
    parts = anatomy(loaded.model)
    ids = loaded.tokenizer(CAPITAL)["input_ids"]
    [stream] = run(residual_stream, loaded.model, parts, [ids], [range(len(ids))])
    out = hidden_states_of(loaded.model, ids)
    assert stream.shape == (parts.num_layers + 1, len(ids), loaded.model.config.hidden_size)
    assert torch.equal(stream[:-1], torch.stack(out.hidden_states[:-1])[:, 0])
    assert torch.equal(parts.final_norm(stream[-1]), out.hidden_states[-1][0])
    assert torch.allclose(parts.logits(stream[-1]), out.logits[0].float(), atol=1e-4)


def test_norming_the_last_hidden_state_again_would_change_the_prediction(bundled):
    """Why the last layer is taken before the final norm: a trained norm's gain is not idempotent."""
    parts = anatomy(bundled.model)
    out = hidden_states_of(bundled.model, bundled.tokenizer(CAPITAL)["input_ids"])
    with torch.inference_mode():
        twice = parts.logits(out.hidden_states[-1][0])
    assert not torch.allclose(twice, out.logits[0].float(), atol=1e-2)


def test_chunks_compute_what_one_pass_computes(loaded):
    parts = anatomy(loaded.model)
    ids = loaded.tokenizer("one two three four five six seven eight nine ten eleven twelve")["input_ids"]
    keep = [range(len(ids) - 5, len(ids))]
    [whole] = run(residual_stream, loaded.model, parts, [ids], keep)
    [chunked] = run(residual_stream, loaded.model, parts, [ids], keep, 4)
    assert torch.allclose(whole, chunked, rtol=1e-4, atol=1e-3)  # float32 rounding of a different order
    assert torch.allclose(run(last_logits, loaded.model, ids), run(last_logits, loaded.model, ids, 4), atol=1e-3)


@pytest.mark.parametrize("vocab", [49_152, 32_064, MAX_BLOCK * 3 + 1, MAX_BLOCK - 1])
def test_row_max_is_torch_max_with_its_first_index(vocab):
    """The lens's blocked maximum must name the same token as torch.max (and so as greedy decoding), ties
    included: the first index holding the maximum wins, within a block, across blocks and against the tail."""
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(9, vocab, generator=generator)
    logits[1, [3, vocab - 1]] = 50.0  # a tie between the first block and the last entry
    if vocab > 3 * MAX_BLOCK:
        logits[2, [MAX_BLOCK + 5, 2 * MAX_BLOCK + 7]] = 50.0  # a tie across blocks
    logits[3, [10, 11]] = 50.0  # a tie inside a block
    logits[4, vocab - 1] = 50.0  # the maximum in the tail alone
    logits[5, vocab - 2:] = 50.0  # a tie inside the tail
    logits[6] = 0.0  # every entry tied
    best, index = row_max(logits)
    expected = logits.max(-1)
    assert torch.equal(best, expected.values) and torch.equal(index, expected.indices)


def test_lens_last_row_is_the_models_own_prediction(loaded, phi3, parts):
    engine = parts.engine if loaded.tokenizer is parts.loaded.tokenizer else phi3[0]
    grid = logit_lens(engine, CAPITAL, max_tokens=MAX_LENS_TOKENS)
    ids = loaded.tokenizer(CAPITAL)["input_ids"]
    with torch.inference_mode():
        probs = torch.softmax(loaded.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    assert len(grid["rows"]) == grid["layers"] + 1 == loaded.model.config.num_hidden_layers + 1
    assert all(len(row) == len(ids) for row in grid["rows"])
    assert [cell["id"] for cell in grid["rows"][-1]] == probs.argmax(-1).tolist()
    assert [cell["prob"] for cell in grid["rows"][-1]] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-4)
    for column, following in enumerate(grid["next_tokens"][:-1]):
        assert grid["rows"][-1][column]["actual_prob"] == pytest.approx(float(probs[column, following["id"]]),
                                                                         abs=1e-4)
    assert grid["next_tokens"][-1] is None and grid["rows"][-1][-1]["actual_prob"] is None


def test_bundled_lens_ends_in_paris(parts):
    grid = logit_lens(parts.engine, CAPITAL)
    assert [t["text"] for t in grid["tokens"]] == ["The", " capital", " of", " France", " is"]
    assert grid["rows"][-1][-1]["text"] == " Paris"
    assert grid["rows"][0][1]["text"] != " Paris"  # the embedding layer does not know it yet


def test_a_long_text_shows_its_last_positions_by_default(parts, bundled):
    text = "one two three four five six seven eight nine ten " * 3
    grid = logit_lens(parts.engine, text)
    ids = bundled.tokenizer(text)["input_ids"]
    assert [t["id"] for t in grid["tokens"]] == ids[-CPU_POSITIONS:]
    assert [t["index"] for t in grid["tokens"]] == list(range(len(ids) - CPU_POSITIONS, len(ids)))
    assert all(len(row) == CPU_POSITIONS for row in grid["rows"])
    assert grid["note"] == f"Showing the last {CPU_POSITIONS} of {len(ids)} tokens."


@pytest.mark.parametrize(("text", "max_tokens", "message"), [
    ("", 8, "Type a text first"),
    (CAPITAL, 0, "max_tokens must be a whole number from 1 to 64"),
    (CAPITAL, MAX_LENS_TOKENS + 1, "max_tokens must be a whole number"),
    (CAPITAL, "8", "max_tokens must be a whole number"),
])
def test_lens_bad_input_gets_a_sentence(parts, text, max_tokens, message):
    with pytest.raises(InvalidInputError, match=message):
        logit_lens(parts.engine, text, max_tokens=max_tokens)


def test_a_forward_pass_in_another_thread_does_not_reach_the_capture(bundled):
    """Hooks belong to the module: a chat decoding in another thread must not reach this pass's capture."""
    parts = anatomy(bundled.model)
    ids = bundled.tokenizer(CAPITAL)["input_ids"]
    [alone] = run(residual_stream, bundled.model, parts, [ids], [range(len(ids))])
    stop = threading.Event()

    def other() -> None:
        with torch.inference_mode():
            while not stop.is_set():
                bundled.model(torch.tensor([[1, 2, 3]]))

    thread = threading.Thread(target=other)
    thread.start()
    try:
        for _ in range(3):
            [stream] = run(residual_stream, bundled.model, parts, [ids], [range(len(ids))])
            assert torch.allclose(stream, alone, atol=1e-4)
    finally:
        stop.set()
        thread.join()


# -- where the model runs -------------------------------------------------------------------------------------------
def test_a_remote_engine_says_the_weights_are_elsewhere(bundled, parts):
    engine = RemoteChatEngine(bundled, "http://127.0.0.1:9/v1", model="m")
    try:
        for view in (lambda: next_tokens(engine, CAPITAL), lambda: logit_lens(engine, CAPITAL),
                     lambda: contextual(engine, parts.index, RIVER, "bank", ACCOUNT, "bank")):
            with pytest.raises(UnavailableError, match=r"chat runs on the inference server at http://127\.0\.0\.1:9/v1"
                                                       r": only the tokenizer and the input embeddings are loaded"):
                view()
    finally:
        engine.close()


def test_the_embeddings_only_model_has_no_parts(bundled):
    stand_in = EmbeddingsOnly(bundled.model.get_input_embeddings().weight, bundled.model.config, "x", "y")
    with pytest.raises(UnavailableError, match="needs the model's weights"):
        anatomy(stand_in)


def test_zerogpu_engine_runs_the_views_in_its_gpu_call(bundled, parts):
    """Off ZeroGPU the GPU call is a plain call: the views give the local engine's results."""
    engine = ZeroGPUChatEngine(bundled)
    try:
        assert next_tokens(engine, CAPITAL, k=5) == next_tokens(parts.engine, CAPITAL, k=5)
        assert logit_lens(engine, CAPITAL) == logit_lens(parts.engine, CAPITAL)
    finally:
        engine.close()


def test_the_views_leave_the_shared_model_picklable(phi3_tiny, phi3, tmp_path):
    """No transformers capturing hooks (closures) stay behind on the model the chats share."""
    engine, index = phi3
    logit_lens(engine, "one two three")
    contextual(engine, index, "a b c", "b", "b c d", "b")
    torch.save(phi3_tiny.model, tmp_path / "model.pt")
