"""Which tokenizer a request names: "" or "model" for the loaded model's, any other key or hub id for the registry's.

Every door of the Tokens tab (tokenize, ids to text, the comparison, /tokenizers) reads names the same way, so one
object turns a name into a tokenizer and says where each comes from:

    lookup = TokenizerLookup(registry_for(cache_dir), model=lambda: host.require().loaded)
    lookup.resolve(" GPT4O ")   # ('GPT-4o (o200k_base)', the registry's tokenizer)
    lookup.resolve("MODEL")     # (the loaded model's name, its tokenizer)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from core import checks
from core.text.registry import MODEL_KEY, MODEL_SOURCE, TokenizerInfo, TokenizerRegistry, tokenizer_key
from core.text.tokens import vocab_size

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from core.model.loading import LoadedModel

MAX_NAME_CHARS = 200  # a tokenizer key or hub id


class TokenizerLookup:
    """The tokenizers a request may name; `model` gives the loaded model (or raises a TokenLabError saying why there
    is none yet), asked only when a request names it, so the offline tokenizers work while the model loads."""

    def __init__(self, registry: TokenizerRegistry, model: Callable[[], LoadedModel]) -> None:
        self.registry = registry
        self.model = model

    def resolve(self, name: str) -> tuple[str, PreTrainedTokenizerBase]:
        """The tokenizer `name` stands for, with the name people see; InvalidInputError when it cannot be had."""
        key = tokenizer_key(checks.text(name, "tokenizer", MAX_NAME_CHARS))
        if key in ("", MODEL_KEY):
            loaded = self.model()
            return loaded.name, loaded.tokenizer
        named = self.registry.load(key)
        return named.name, named.tokenizer

    def source(self, key: str) -> str:
        """Where the tokenizer under `key` comes from, as the comparison table says it."""
        return MODEL_SOURCE if key == MODEL_KEY else self.registry.source_label(key)

    def catalog(self, model: TokenizerInfo, available_only: bool = False) -> list[TokenizerInfo]:
        """/tokenizers: the loaded model's entry first, then the registry's; only those that work here without a
        network when `available_only`."""
        return [row for row in [model, *self.registry.catalog()] if row["offline"] or not available_only]


def model_info(loaded: LoadedModel | None, requested: str, status: str) -> TokenizerInfo:
    """The loaded model's entry in /tokenizers; before it is loaded (`loaded` None) it names the model `requested`
    and says it is still loading, so a caller learns why "model" fails for now."""
    return TokenizerInfo(key=MODEL_KEY, name=loaded.name if loaded else requested, source=MODEL_SOURCE, package="",
                         version="", hub_id="", vocab_size=vocab_size(loaded.tokenizer) if loaded else 0,
                         offline=loaded is not None, loaded=loaded is not None,
                         note="" if loaded else f"the model is loading ({status})")
