"""The comparison's facts, probed from each real tokenizer, say what the textbook's comparison shows for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.text import packaged
from core.text.facts import probe, tokenizer_facts
from core.text.registry import TokenizerRegistry

# What each tokenizer is known to do (the textbook's side-by-side comparison, and the tokenizers' own docs).
EXPECTED = {
    "bert": dict(keeps_case=False, keeps_newlines=False, one_token_per_space_run=False, emoji="lost", cjk="lost"),
    "smollm2": dict(keeps_case=True, keeps_newlines=True, splits_digits=True, digits_per_token=1, emoji="bytes",
                    cjk="bytes"),
    "gpt2": dict(keeps_case=True, keeps_newlines=True, one_token_per_space_run=False, splits_digits=False,
                 emoji="bytes", cjk="bytes"),
    "gpt4": dict(keeps_case=True, keeps_newlines=True, one_token_per_space_run=True, splits_digits=False,
                 digits_per_token=3, emoji="bytes", emoji_tokens=3, cjk="bytes"),
    "gpt4o": dict(keeps_case=True, keeps_newlines=True, one_token_per_space_run=True, splits_digits=False,
                  digits_per_token=3, emoji="bytes", cjk="whole", cjk_tokens=1),
    "phi3": dict(keeps_case=True, keeps_newlines=True, splits_digits=True, digits_per_token=1, emoji="bytes",
                 emoji_tokens=5, cjk="bytes"),
}


@pytest.fixture(scope="module")
def registry(cache_dir: Path) -> TokenizerRegistry:
    return TokenizerRegistry(cache_dir, env={}, hub_check=lambda: False)


@pytest.mark.parametrize("key", ["bert", "smollm2", *packaged.PACKAGED_KEYS])
def test_offline_tokenizers_facts(key: str, registry: TokenizerRegistry) -> None:
    if not registry.is_available(key):
        pytest.skip(f"{key} is not installed here")
    facts = tokenizer_facts(registry.load(key).tokenizer)
    assert {name: facts[name] for name in EXPECTED[key]} == EXPECTED[key]


def test_phi3_facts(phi3_tokenizer) -> None:
    facts = tokenizer_facts(phi3_tokenizer)
    assert {name: facts[name] for name in EXPECTED["phi3"]} == EXPECTED["phi3"]


def test_facts_are_probed_once_and_handed_out_as_copies(registry: TokenizerRegistry) -> None:
    tokenizer = registry.load("bert").tokenizer
    first = tokenizer_facts(tokenizer)
    first["keeps_case"] = True
    assert tokenizer_facts(tokenizer) == probe(tokenizer) != first
