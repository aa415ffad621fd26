"""The Tokens API through gradio_client and plain REST, on the launched app with the bundled SmolLM2."""

from __future__ import annotations

import json

import httpx
import pytest
from gradio_client.exceptions import AppError

from core.model.loading import LoadedModel
from demo.tokens_tab import SEED_SAMPLE

TEXT = "I love programming. 🎵 鸟\n\tend"


def test_tokenize_loaded_model(client, bundled: LoadedModel) -> None:
    result = client.predict(text=TEXT, api_name="/tokenize")
    assert result["tokenizer"] == bundled.name
    ids = bundled.tokenizer(TEXT)["input_ids"]
    assert [t["id"] for t in result["tokens"]] == ids
    assert result["count"] == len(ids) == len(result["tokens"])
    assert set(result["tokens"][0]) == {"id", "piece", "text", "start", "end", "special"}
    love = result["tokens"][1]
    assert (love["piece"], love["text"], TEXT[love["start"]:love["end"]]) == ("Ġlove", " love", " love")
    assert "".join(t["text"] for t in result["tokens"]) == TEXT
    starts = [t["start"] for t in result["tokens"]]
    assert starts == sorted(starts) and all(0 <= t["start"] <= t["end"] <= len(TEXT) for t in result["tokens"])


def test_tokenize_offline_bert(client) -> None:
    result = client.predict(text="Hello world", tokenizer="bert", api_name="/tokenize")
    assert [t["piece"] for t in result["tokens"]] == ["[CLS]", "hello", "world", "[SEP]"]
    assert [t["special"] for t in result["tokens"]] == [True, False, False, True]
    assert [(t["start"], t["end"]) for t in result["tokens"]] == [(0, 0), (0, 5), (6, 11), (11, 11)]


def test_detokenize_round_trip(client, bundled: LoadedModel) -> None:
    ids = bundled.tokenizer(TEXT)["input_ids"]
    result = client.predict(ids=", ".join(map(str, ids)), api_name="/detokenize")
    assert result["text"] == TEXT
    assert [t["id"] for t in result["tokens"]] == ids
    for t in result["tokens"]:
        assert result["text"][t["start"]:t["end"]].endswith(t["text"])


def test_detokenize_names_bad_ids(client) -> None:
    with pytest.raises(AppError) as info:
        client.predict(ids="57, banana, 49152, -3", api_name="/detokenize")
    message = str(info.value)
    assert "'banana'" in message and "49152" in message and "-3" in message and "0 to 49,151" in message


def test_tokenize_too_long(client) -> None:
    with pytest.raises(AppError, match="the limit is 50,000"):
        client.predict(text="x" * 50_001, api_name="/tokenize")


def test_unknown_tokenizer_offline(client) -> None:
    with pytest.raises(AppError, match="hub is not reachable"):
        client.predict(text="hi", tokenizer="openai-community/gpt2", api_name="/tokenize")
    with pytest.raises(AppError, match="not a tokenizer here"):
        client.predict(text="hi", tokenizer="../../etc", api_name="/tokenize")


def test_compare_tokenizers_seed_sample(client, bundled: LoadedModel) -> None:
    rows = client.predict(text=SEED_SAMPLE, tokenizers="model, smollm2, bert, gpt2", api_name="/compare_tokenizers")
    assert [r["tokenizer"].split(":")[0] for r in rows][:3] == ["Loaded model", "SmolLM2-135M (bundled)",
                                                              "BERT WordPiece (all-MiniLM-L6-v2)"]
    model, smol, bert, gpt2 = rows
    assert model["count"] == smol["count"] == len(bundled.tokenizer(SEED_SAMPLE)["input_ids"])
    assert model["chars_per_token"] == pytest.approx(len(SEED_SAMPLE) / model["count"], abs=1e-3)
    assert bert["count"] > 0 and bert["kind"].startswith("WordPiece") and not bert["error"]
    assert gpt2["count"] == 0 and "not reachable" in gpt2["error"]


def test_api_is_documented(client) -> None:
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in api["/tokenize"]["parameters"]] == ["text", "tokenizer"]
    assert [p["parameter_name"] for p in api["/detokenize"]["parameters"]] == ["ids", "tokenizer"]
    assert "/compare_tokenizers" in api


def _rest_call(app_url: str, endpoint: str, data: list) -> tuple[str, list | str]:
    with httpx.Client(timeout=60) as http:
        posted = http.post(f"{app_url}gradio_api/call/{endpoint}", json={"data": data})
        posted.raise_for_status()
        event_id = posted.json()["event_id"]
        stream = http.get(f"{app_url}gradio_api/call/{endpoint}/{event_id}")
    event, payload = "", None
    for line in stream.text.splitlines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:") and event in ("complete", "error"):
            payload = json.loads(line.removeprefix("data:").strip())
    return event, payload


def test_rest_tokenize(app_url: str, bundled: LoadedModel) -> None:
    event, payload = _rest_call(app_url, "tokenize", ["I love programming.", ""])
    assert event == "complete"
    result = payload[0]
    assert [t["id"] for t in result["tokens"]] == bundled.tokenizer("I love programming.")["input_ids"]
    assert [t["piece"] for t in result["tokens"]] == ["I", "Ġlove", "Ġprogramming", "."]
    assert [(t["start"], t["end"]) for t in result["tokens"]] == [(0, 1), (1, 6), (6, 18), (18, 19)]


def test_rest_tokenize_error(app_url: str) -> None:
    event, payload = _rest_call(app_url, "tokenize", ["x" * 50_001, ""])
    assert event == "error"
    assert "50,000" in json.dumps(payload)
