"""GPT-2, GPT-4 and GPT-4o from the packages that ship their vocabularies: the ids are tiktoken's, the token views
work, the conversion is cached and checked, and nothing reaches the network.

The reference is tiktoken's own Encoding, built by tiktoken's own constructors (its regex, special tokens and SHA-256
check): its download cache is seeded with the files the packages ship, so it reads them instead of fetching. Every
test here runs with every socket connection refused (a guard, not a stand-in: the tokenizers are the real ones).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from core.errors import InvalidInputError
from core.text import packaged as pt
from core.text.registry import OFFLINE, TokenizerRegistry
from core.text.tokens import detokenize, group_tokens, tokenize, tokens_for_ids, vocab_size, vocab_upper
from demo.tokens_tab import SEED_SAMPLE
from tests.text_samples import MIXED, corpus

KEYS = [k for k in pt.PACKAGED_KEYS if pt.is_available(k)]
SPECIAL_TEXT = MIXED + "<|endoftext|>after the end"


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """No socket may connect while this module runs, and the hub is off."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args[1:] or kwargs}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def registry(cache_dir: Path) -> TokenizerRegistry:
    return TokenizerRegistry(cache_dir, env={}, hub_check=lambda: pytest.fail("asked whether the hub is reachable"))


@pytest.fixture(scope="module")
def loaded(registry: TokenizerRegistry) -> dict:
    return {key: registry.load(key).tokenizer for key in KEYS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (requirements-dev.txt) is the reference")
    seeded = tmp_path_factory.mktemp("tiktoken-cache")
    encodings = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(seeded))
        for key in KEYS:
            pt.seed_tiktoken_cache(pt.packaged(key), seeded)
            encodings[key] = tiktoken.get_encoding(pt.packaged(key).encoding)
    return encodings


def _needs(key: str) -> None:
    if key not in KEYS:
        pytest.skip(f"{pt.packaged(key).distribution} is not installed (requirements-models.txt)")


@pytest.mark.parametrize("key", pt.PACKAGED_KEYS)
@pytest.mark.parametrize("text", [SPECIAL_TEXT, SEED_SAMPLE], ids=["mixed", "seed"])
def test_ids_equal_tiktoken(key: str, text: str, loaded: dict, reference: dict) -> None:
    _needs(key)
    ids = loaded[key](text, add_special_tokens=False)["input_ids"]
    assert ids == reference[key].encode(text, allowed_special="all")
    assert loaded[key].decode(ids) == text


@pytest.mark.parametrize("key", pt.PACKAGED_KEYS)
def test_ids_equal_tiktoken_on_a_larger_sample(key: str, loaded: dict, reference: dict) -> None:
    _needs(key)
    texts = corpus()
    assert sum(len(t.encode()) for t in texts) > 300_000
    mismatched = [i for i, text in enumerate(texts)
                  if loaded[key](text, add_special_tokens=False)["input_ids"] != reference[key].encode_ordinary(text)]
    assert mismatched == []


@pytest.mark.parametrize("key", pt.PACKAGED_KEYS)
def test_token_views_cover_the_text(key: str, loaded: dict) -> None:
    _needs(key)
    result = tokenize(loaded[key], SPECIAL_TEXT, key)
    assert result.decoded == SPECIAL_TEXT
    end = SPECIAL_TEXT.index("<|endoftext|>")
    assert [(t.piece, t.start, t.end) for t in result.tokens if t.special] == [
        ("<|endoftext|>", end, end + len("<|endoftext|>"))]
    segments = group_tokens(result)
    assert "".join(SPECIAL_TEXT[s.start:s.end] for s in segments) == SPECIAL_TEXT
    bird = SPECIAL_TEXT.index("鸟")
    assert any(s.start <= bird < s.end and s.tokens for s in segments)


@pytest.mark.parametrize("key", ["gpt4", "gpt4o"])
def test_every_token_has_its_one_merge_and_specials_keep_their_ids(key: str, loaded: dict, cache_dir: Path) -> None:
    _needs(key)
    entry = pt.packaged(key)
    data = pt.read_verified(pt.source_files(entry)[0], entry.sha256[0])
    saved = json.loads(pt.cache_path(entry, data, cache_dir).read_text(encoding="utf-8"))
    assert len(saved["model"]["merges"]) == len(pt.parse_ranks(data)) - 256
    assert {t: loaded[key].convert_tokens_to_ids(t) for t in entry.special_tokens} == entry.special_tokens


def test_ids_past_the_vocabulary_length_are_tokens(loaded: dict) -> None:
    """OpenAI's special tokens sit past the regular ones, with gaps: len(tokenizer) is not the bound."""
    _needs("gpt4o")
    _needs("gpt4")
    gpt4o, gpt4 = loaded["gpt4o"], loaded["gpt4"]
    assert (len(gpt4o), vocab_upper(gpt4o), vocab_size(gpt4o)) == (200_000, 200_019, 200_000)
    assert (len(gpt4), vocab_upper(gpt4), vocab_size(gpt4)) == (100_261, 100_277, 100_261)
    assert tokens_for_ids(gpt4o, [200018]).text == "<|endofprompt|>"
    assert detokenize(gpt4, "9906, 100276").text == "Hello<|endofprompt|>"
    with pytest.raises(InvalidInputError, match="100256") as info:
        detokenize(gpt4, "9906, 100256, 100277")  # a gap between the regular and special ids, and one past the end
    assert "100277" in str(info.value) and "0 to 100,276" in str(info.value)


def test_a_fresh_conversion_equals_the_cache_and_a_broken_cache_is_replaced(
        loaded: dict, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs("gpt4")
    entry = pt.packaged("gpt4")
    data = pt.read_verified(pt.source_files(entry)[0], entry.sha256[0])
    cached = pt.cache_path(entry, data, cache_dir).read_text(encoding="utf-8")
    with monkeypatch.context() as mp:  # a cache hit converts nothing
        mp.setattr(pt, "tiktoken_to_tokenizers", lambda *a: pytest.fail("converted despite the cache"))
        assert pt.load_packaged("gpt4", cache_dir)("Hello world")["input_ids"] == [9906, 1917]
    broken = pt.cache_path(entry, data, tmp_path)
    broken.parent.mkdir(parents=True)
    broken.write_text('{"version": "1.0", "model": ', encoding="utf-8")
    assert pt.load_packaged("gpt4", tmp_path)("Hello world")["input_ids"] == [9906, 1917]
    assert broken.read_text(encoding="utf-8") == cached  # this converter's output: the cache is not stale
    assert not list(broken.parent.glob("*.tmp"))


def test_a_read_only_cache_still_loads(tmp_path: Path) -> None:
    _needs("gpt4")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be", encoding="utf-8")
    assert pt.load_packaged("gpt4", blocked)("Hello world")["input_ids"] == [9906, 1917]


def test_a_changed_vocabulary_file_is_refused(tmp_path: Path) -> None:
    changed = tmp_path / "cl100k_base.tiktoken.gz"
    changed.write_bytes(gzip.compress(b"IQ== 0\n"))
    with pytest.raises(InvalidInputError, match=r"SHA-256 differs from OpenAI.s published one\): reinstall"):
        pt.read_verified(changed, pt.packaged("gpt4").sha256[0])


def test_missing_packages_and_unknown_keys_are_explained(tmp_path: Path) -> None:
    assert pt.source_files(replace(pt.packaged("gpt4o"), package="no_such_package_here")) is None
    with pytest.raises(InvalidInputError, match="gpt2, gpt4, gpt4o"):
        pt.load_packaged("gpt5", tmp_path)


def test_possessive_counted_repeats_are_rewritten_for_oniguruma() -> None:
    assert pt.onig_pattern(r"\p{N}{1,3}+|\p{L}++|x{2}+|\s++$") == r"\p{N}{1,3}|\p{L}++|x{2}|\s++$"


def test_the_registry_serves_them_by_key(registry: TokenizerRegistry, loaded: dict) -> None:
    for key in KEYS:
        assert registry.is_available(key)
        assert registry.load(key.upper()).tokenizer is loaded[key]
        assert registry.load(key).family == "byte-level BPE (Ġ is a space)"


def test_the_catalog_says_where_each_comes_from(registry: TokenizerRegistry, loaded: dict) -> None:
    from importlib.metadata import version

    catalog = {row["key"]: row for row in registry.catalog()}
    assert list(catalog)[:len(OFFLINE)] == [t.key for t in OFFLINE]
    for key in KEYS:
        row = catalog[key]
        package = pt.packaged(key).distribution
        assert (row["source"], row["package"], row["version"]) == ("package", package, version(package))
        assert row["offline"] and row["loaded"] and not row["note"]
        assert row["vocab_size"] == vocab_size(loaded[key])
    for key in ("smollm2", "bert"):  # the published size is the loaded one
        assert catalog[key]["vocab_size"] == vocab_size(registry.load(key).tokenizer)
    assert catalog["smollm2"]["source"] == "bundled"
    for hub_id in ("google-bert/bert-base-cased", "bigcode/starcoder2-15b"):  # no package ships these
        assert (catalog[hub_id]["source"], catalog[hub_id]["offline"]) == ("hub", False)
        assert "no package ships it" in catalog[hub_id]["note"]


@pytest.mark.slow
def test_loads_in_a_process_without_a_network(cache_dir: Path, loaded: dict) -> None:
    """Beside the socket guard, a child process in its own network namespace, which has no route anywhere."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("cannot make a network namespace here (needs unshare and the right to use it)")
    code = ("from pathlib import Path; from core.text.registry import TokenizerRegistry; "
            f"r = TokenizerRegistry(Path({str(cache_dir)!r}), env={{}}, hub_check=lambda: False); "
            f"print([r.load(k).tokenizer('Hi 🎵 鸟')['input_ids'] for k in {KEYS!r}])")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TIKTOKEN_CACHE_DIR")}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str([loaded[k]("Hi 🎵 鸟")["input_ids"] for k in KEYS])
