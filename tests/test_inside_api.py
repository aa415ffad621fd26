"""The Inside endpoints and /chat_logprobs through gradio_client, on the launched app with the bundled model."""

from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError

from core.config import AppConfig
from core.host import ModelHost
from core.inside.logit_lens import CPU_POSITIONS
from core.model.embeddings_only import load_embeddings_only
from tests.conftest import free_port
from tests.servers import launched

CAPITAL = "The capital of France is"
RIVER, ACCOUNT = "I sat on the river bank.", "I opened a bank account."
QUESTIONS = ["What is the capital of Japan?", "Write a haiku about rain."]  # not near ties: see test_inside.py


@pytest.mark.parametrize("question", QUESTIONS)
def test_greedy_next_token_is_the_first_token_chat_writes(client, question):
    first = client.predict(question, [], "", 0.0, 1.0, 1, None, api_name="/chat")
    result = client.predict(question, 5, 0.0, 1.0, 0, True, api_name="/next_tokens")
    assert result["tokens"][0]["text"] == first
    assert result["tokens"][0]["kept"] and not any(t["kept"] for t in result["tokens"][1:])


@pytest.mark.parametrize("question", QUESTIONS)
def test_chat_logprobs_tokens_concatenate_to_the_chat_answer(client, question):
    answer = client.predict(question, [], "", 0.0, 1.0, 48, None, api_name="/chat")
    result = client.predict(question, [], "", 0.0, 1.0, 48, None, api_name="/chat_logprobs")
    assert result["answer"] == answer and result["note"] == ""
    assert "".join(entry["token"] for entry in result["logprobs"]) == answer
    for entry in result["logprobs"]:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 5
        assert entry["top_logprobs"][0]["logprob"] >= entry["logprob"] - 1e-4  # greedy: the most likely, or tied


def test_next_tokens_with_sampling_settings(client):
    result = client.predict(CAPITAL, 10, 0.7, 0.9, 3, False, api_name="/next_tokens")
    assert result["tokens"][0]["text"] == " Paris" and result["prompt_tokens"] == 5 and result["prompt"] == CAPITAL
    assert 1 <= result["kept_count"] <= 3
    kept = result["kept_count"]
    assert [t["kept"] for t in result["tokens"]] == [True] * kept + [False] * (10 - kept)
    assert sum(t["prob_after"] for t in result["tokens"]) == pytest.approx(1.0, abs=1e-4)


def test_contextual_bank_starts_identical_and_ends_apart(client):
    result = client.predict(RIVER, "bank", ACCOUNT, "bank", api_name="/contextual")
    layers = result["layers"]
    assert result["a"]["taken"]["text"] == " bank" and result["same_token"]
    assert layers[0]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert layers[-1]["cosine"] < 0.8 and len(layers) == 31
    assert layers[0]["nearest_a"][0]["text"] == " bank"


def test_logit_lens_shows_the_default_positions_and_ends_in_paris(client):
    grid = client.predict(CAPITAL, None, api_name="/logit_lens")
    assert [t["text"] for t in grid["tokens"]] == ["The", " capital", " of", " France", " is"]
    assert len(grid["rows"]) == grid["layers"] + 1 == 31 and grid["rows"][-1][-1]["text"] == " Paris"
    long = client.predict("one two three four five six seven eight nine ten", None, api_name="/logit_lens")
    assert len(long["tokens"]) == CPU_POSITIONS and long["note"].startswith(f"Showing the last {CPU_POSITIONS}")
    assert len(client.predict(CAPITAL, 2, api_name="/logit_lens")["tokens"]) == 2


@pytest.mark.parametrize(("args", "api_name", "expected"), [
    (["", 10, 1.0, 1.0, 0, False], "/next_tokens", "Type a text first"),
    (["Hi", 0, 1.0, 1.0, 0, False], "/next_tokens", "k must be a whole number from 1 to 100"),
    ([RIVER, "money", ACCOUNT, "bank"], "/contextual", "'money' does not occur in sentence A"),
    ([CAPITAL, 65], "/logit_lens", "max_tokens must be a whole number from 1 to 64"),
    ([CAPITAL, None, 30], "/attention", "layer must be a whole number from 0 to 29"),
    ([CAPITAL, 0], "/attention", "max_tokens must be a whole number from 1 to 256"),
    ([CAPITAL, " Paris is"], "/attribution", "is 2 tokens"),
    ([CAPITAL, None, "saliency"], "/attribution", "method"),
    ([CAPITAL, None, "both", 65], "/attribution", "steps must be a whole number from 1 to 64"),
])
def test_bad_input_gets_a_sentence(client, args, api_name, expected):
    with pytest.raises(AppError, match=expected):
        client.predict(*args, api_name=api_name)


def test_the_endpoints_are_documented(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/next_tokens", "/contextual", "/logit_lens", "/chat_logprobs", "/attention", "/attribution"):
        assert name in endpoints
    assert [p["parameter_name"] for p in endpoints["/attribution"]["parameters"]] == \
        ["text", "target", "method", "steps"]
    assert [p["parameter_name"] for p in endpoints["/next_tokens"]["parameters"]] == \
        ["text", "k", "temperature", "top_p", "top_k", "chat"]


def test_with_chat_on_a_remote_server_the_views_say_the_weights_are_not_here(cache_dir):
    """With --engine-url only the tokenizer and the embedding matrix are loaded: the views that need the weights say
    so (no server needs to listen: they never reach it)."""
    from gradio_client import Client

    embeddings = load_embeddings_only("bundled", device="cpu", dtype="auto", cache_dir=cache_dir)
    url = f"http://127.0.0.1:{free_port()}"
    host = ModelHost.from_loaded(embeddings, AppConfig(model="bundled", engine_url=url, engine_model="m"))
    try:
        with launched(host) as app:
            client = Client(app, verbose=False)
            for args, api_name in (([CAPITAL, 10, 1.0, 1.0, 0, False], "/next_tokens"),
                                   ([RIVER, "bank", ACCOUNT, "bank"], "/contextual"), ([CAPITAL, None], "/logit_lens"),
                                   ([CAPITAL], "/attention"), ([CAPITAL], "/attribution")):
                with pytest.raises(AppError, match=rf"This needs the model's weights, and chat runs on the inference "
                                                   rf"server at {url}/v1: only the tokenizer and the input embeddings"):
                    client.predict(*args, api_name=api_name)
    finally:
        host.close()


def test_attention_maps_are_causal_rows_that_sum_to_one(client):
    result = client.predict("The cat sat on the mat because the cat was tired.", api_name="/attention")
    count = len(result["tokens"])
    assert (result["layers"], result["heads"], result["kv_heads"]) == (30, 9, 3) and count == result["prompt_tokens"]
    assert len(result["maps"]) == 30 and all(len(layer) == 9 for layer in result["maps"])
    for layer in result["maps"]:
        for head in layer:
            assert [len(row) for row in head] == list(range(1, count + 1))
            assert all(abs(sum(row) - 1) < 1e-3 for row in head)  # each weight rounded to 4 decimals
    named = [s for layer in result["summary"] for s in layer if s["role"]]
    assert named and all(max(s["first"], s["previous"], s["same"]) >= 0.5 for s in named)
    one = client.predict("The cat sat on the mat.", None, 3, api_name="/attention")
    assert one["layer"] == 3 and one["maps"][3] is not None and one["maps"][2] is None


def test_attention_covers_the_first_tokens_and_says_so(client):
    result = client.predict("one two three four five six seven eight nine ten", 4, api_name="/attention")
    assert [t["text"] for t in result["tokens"]] == ["one", " two", " three", " four"]
    assert result["note"].startswith("Covering the first 4 of 10 tokens")


def test_attribution_of_the_next_token_adds_up(client):
    result = client.predict(CAPITAL, None, "both", 64, api_name="/attribution")
    assert result["target"]["text"] == " Paris" and result["target"]["rank"] == 1
    scores = result["integrated_gradients"]
    assert len(scores) == len(result["grad_x_input"]) == len(result["tokens"]) == 5
    change = result["logprob_input"] - result["logprob_baseline"]
    assert result["completeness_error"] == pytest.approx(abs(sum(scores) - change), abs=1e-6)
    assert result["completeness_error"] < 0.05 * abs(change)
    by_id = client.predict(CAPITAL, "#7042", "grad_x_input", api_name="/attribution")
    assert by_id["target"]["id"] == 7042 and by_id["integrated_gradients"] is None
    assert by_id["grad_x_input"] == pytest.approx(result["grad_x_input"], abs=1e-4)
