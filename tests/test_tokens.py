"""Tokens core: exact spans, byte tokens, decoding, limits and the offline tokenizers, with real tokenizers only."""

from __future__ import annotations

import itertools
import threading
import unicodedata
from pathlib import Path

import pytest
from transformers.convert_slow_tokenizer import bytes_to_unicode

from core.errors import InvalidInputError
from core.text.prompt import PromptBuilder
from core.text.registry import PHI3_ENV, TokenizerRegistry
from core.text.tokens import MAX_CHARS, TokenizedText, detokenize, group_tokens, tokenize, tokens_for_ids
from demo.token_view import SPECIAL, show_whitespace, token_highlights, token_rows
from tests import phi3

MULTILINGUAL = ("Crème brûlée, naïve façade — Ærøskøbing.\n中文字符 日本語 한국어\n"
                "Family 👨\u200d👩\u200d👧\u200d👦 and 👍🏽 thumbs\n\tTabbed\t\tline\r\nEnd  two spaces. Ünïcödé!")
# decode(encode(text)) == text for this sample; BERT lowercases and drops spaces
LOSSLESS = {"smollm2", "phi3", "gpt2", "gpt4", "gpt4o"}
OFFLINE_KEYS = ["smollm2", "bert", "gpt2", "gpt4", "gpt4o", "phi3"]


@pytest.fixture(scope="module")
def phi3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    if not phi3.fixture_available():
        return None
    return phi3.build_phi3_tokenizer(tmp_path_factory.mktemp("phi3-registry"))


@pytest.fixture(scope="module")
def registry(cache_dir: Path, phi3_folder: Path | None) -> TokenizerRegistry:
    env = {PHI3_ENV: str(phi3_folder)} if phi3_folder else {PHI3_ENV: "/nonexistent/phi3"}
    return TokenizerRegistry(cache_dir, env=env, hub_check=lambda: False)


@pytest.fixture(params=OFFLINE_KEYS)
def offline(request: pytest.FixtureRequest, registry: TokenizerRegistry):
    key = request.param
    if key == "phi3" and not phi3.fixture_available():
        pytest.skip(phi3.MISSING_REASON)
    if not registry.is_available(key):
        pytest.skip(f"{key}'s package is not installed (requirements-models.txt)")
    return key, registry.load(key).tokenizer


def _check_spans(result: TokenizedText) -> None:
    """Spans inside the text, in order; segments tile the text exactly once."""
    n = len(result.text)
    starts = [t.start for t in result.tokens]
    ends = [t.end for t in result.tokens]
    assert all(0 <= t.start <= t.end <= n for t in result.tokens)
    assert starts == sorted(starts)
    assert ends == sorted(ends)
    segments = group_tokens(result)
    if not segments:
        assert result.text == ""
        return
    assert segments[0].start == 0
    for a, b in itertools.pairwise(segments):
        assert a.end == b.start
    assert "".join(result.text[s.start:s.end] for s in segments) == result.text
    covered = sorted(i for s in segments for i in s.tokens)
    assert covered == list(range(result.count))  # every token is shown, once


# -- Phi-3 expectations (the tests) ----------------------------------------------------------------------

def test_phi3_i_love_programming(phi3_tokenizer) -> None:
    result = tokenize(phi3_tokenizer, "I love programming.", "Phi-3")
    assert [t.piece for t in result.tokens] == ["▁I", "▁love", "▁programming", "."]
    assert result.ids == [306, 5360, 8720, 29889]
    assert [(t.start, t.end) for t in result.tokens] == [(0, 1), (1, 6), (6, 18), (18, 19)]
    assert [t.text for t in result.tokens] == ["I", " love", " programming", "."]
    assert not any(t.special for t in result.tokens)
    assert (result.count, result.char_count) == (4, 19)
    assert result.chars_per_token == pytest.approx(19 / 4)


def test_phi3_apologizing(phi3_tokenizer) -> None:
    assert [t.piece for t in tokenize(phi3_tokenizer, "apologizing").tokens] == ["▁apolog", "izing"]


def test_phi3_emoji_byte_fallback(phi3_tokenizer) -> None:
    result = tokenize(phi3_tokenizer, "🎵")
    assert [t.piece for t in result.tokens] == ["▁", "<0xF0>", "<0x9F>", "<0x8E>", "<0xB5>"]
    assert all((t.start, t.end) == (0, 1) for t in result.tokens)
    assert [t.text for t in result.tokens] == ["", "", "", "", "🎵"]  # never a broken '�'


def test_phi3_added_tokens_are_special(phi3_tokenizer) -> None:
    result = tokenize(phi3_tokenizer, "Hi<|end|>")
    end = result.tokens[-1]
    assert (end.id, end.piece, end.special, result.text[end.start:end.end]) == (32007, "<|end|>", True, "<|end|>")


# -- every offline tokenizer on a multilingual sample ------------------------------------------------------------

def test_offline_tokenizer_on_multilingual_sample(offline) -> None:
    key, tok = offline
    result = tokenize(tok, MULTILINGUAL, key)
    assert result.ids == tok(MULTILINGUAL)["input_ids"] == tok.encode(MULTILINGUAL)
    assert [t.piece for t in result.tokens] == tok.convert_ids_to_tokens(result.ids)
    _check_spans(result)
    assert result.decoded == tok.decode(result.ids)
    assert "\ufffd" not in result.decoded
    back = detokenize(tok, ", ".join(map(str, result.ids)), key)
    assert back.ids == result.ids
    assert back.text == tok.decode(result.ids)
    _check_spans(back)
    if key in LOSSLESS:
        assert back.text == MULTILINGUAL
        # decoding the ids shows the same blocks that encoding the text did
        assert [t.text for t in back.tokens] == [t.text for t in result.tokens]
        assert group_tokens(back) == group_tokens(result)
        # every character belongs to some token
        covered = set()
        for t in result.tokens:
            covered.update(range(t.start, t.end))
        assert covered == set(range(len(MULTILINGUAL)))
    else:
        assert back.text != MULTILINGUAL  # BERT lowercases, strips accents and drops whitespace


def test_phi3_spans_match_pieces(phi3_tokenizer) -> None:
    result = tokenize(phi3_tokenizer, MULTILINGUAL)
    for t in result.tokens:
        if t.piece.startswith("<0x") or t.special:
            continue
        expected = t.piece.replace("▁", " ")
        if t.index == 0 and t.piece.startswith("▁"):
            expected = expected[1:]  # the '▁' SentencePiece adds in front of the text covers no character
        assert MULTILINGUAL[t.start:t.end] == expected, t


def test_smollm2_spans_hold_the_piece_bytes(registry: TokenizerRegistry) -> None:
    tok = registry.load("smollm2").tokenizer
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    result = tokenize(tok, MULTILINGUAL)
    for seg in result.segments():
        raw = b"".join(bytes(byte_of[ch] for ch in result.tokens[i].piece) for i in seg.tokens)
        assert raw == MULTILINGUAL[seg.start:seg.end].encode(), seg


def test_bert_spans_match_wordpieces(registry: TokenizerRegistry) -> None:
    tok = registry.load("bert").tokenizer
    result = tokenize(tok, MULTILINGUAL)
    assert (result.tokens[0].piece, result.tokens[-1].piece) == ("[CLS]", "[SEP]")
    assert result.tokens[0].special and result.tokens[-1].special
    assert result.tokens[0].start == result.tokens[0].end == 0
    for seg in result.segments():
        pieces = [result.tokens[i] for i in seg.tokens]
        if not pieces or any(t.special for t in pieces):
            continue
        # BERT lowercases and strips accents (NFD, then drops combining marks): Korean syllables become jamo
        plain = "".join(c for c in unicodedata.normalize("NFD", MULTILINGUAL[seg.start:seg.end].lower())
                        if unicodedata.category(c) != "Mn")
        assert plain == "".join(t.piece.removeprefix("##") for t in pieces), seg


# -- whole characters from byte tokens ---------------------------------------------------------------------------

def test_music_bird_phi3_two_whole_characters(phi3_tokenizer) -> None:
    result = tokenize(phi3_tokenizer, "🎵 鸟")
    assert result.count == 9  # ▁ + 4 bytes, ▁, 3 bytes: every byte token counted
    assert token_highlights(result) == [("🎵", "t1"), ("␣", "t2"), ("鸟", "t3")]
    rows = token_rows(result)
    assert len(rows) == 9
    assert [r[2] for r in rows] == ["▁", "<0xF0>", "<0x9F>", "<0x8E>", "<0xB5>", "▁", "<0xE9>", "<0xB8>", "<0x9F>"]


def test_music_bird_smollm2_two_whole_characters(registry: TokenizerRegistry) -> None:
    result = tokenize(registry.load("smollm2").tokenizer, "🎵 鸟")
    assert result.count == 6  # three byte-level tokens per character
    view = token_highlights(result)
    assert [text.replace("␣", "") for text, _ in view] == ["🎵", "鸟"]
    assert all(label for _, label in view)
    assert result.decoded == "🎵 鸟"


def test_bert_view_shows_added_specials_and_dropped_whitespace(registry: TokenizerRegistry) -> None:
    view = token_highlights(tokenize(registry.load("bert").tokenizer, "Hi  there"))
    assert view == [("[CLS]", SPECIAL), ("Hi", "t1"), ("␣␣", None), ("there", "t2"), ("[SEP]", SPECIAL)]


# -- ids -> text -------------------------------------------------------------------------------------------------

def test_detokenize_phi3(phi3_tokenizer) -> None:
    result = detokenize(phi3_tokenizer, "[306, 5360 8720,29889]")
    assert result.text == "I love programming."
    assert [(t.piece, t.start, t.end) for t in result.tokens] == [
        ("▁I", 0, 1), ("▁love", 1, 6), ("▁programming", 6, 18), (".", 18, 19)]
    assert detokenize(phi3_tokenizer, "  ").tokens == ()


def test_detokenize_names_bad_ids(phi3_tokenizer) -> None:
    with pytest.raises(InvalidInputError) as info:
        detokenize(phi3_tokenizer, "306, abc, 32011, -1, 99999, 1.5, 32010")
    message = str(info.value)
    for bad in ("'abc'", "'1.5'", "32011", "-1", "99999", "0 to 32,010"):
        assert bad in message
    assert "32010," not in message and "306" not in message.split(".")[0]
    with pytest.raises(InvalidInputError, match="32063"):
        detokenize(phi3_tokenizer, "32063")  # an embedding row of padding, not a token
    assert detokenize(phi3_tokenizer, "32010").tokens[0].special


def test_pasted_ids_limits(phi3_tokenizer) -> None:
    assert [t.id for t in detokenize(phi3_tokenizer, "1,2 3\n4").tokens] == [1, 2, 3, 4]
    with pytest.raises(InvalidInputError, match="limit"):
        detokenize(phi3_tokenizer, " ".join(["1"] * 50_001))
    with pytest.raises(InvalidInputError, match="not whole numbers"):
        detokenize(phi3_tokenizer, "<img src=x onerror=alert(1)>")


def test_unfinished_bytes_at_the_end(phi3_tokenizer) -> None:
    result = detokenize(phi3_tokenizer, "306, 243, 162")  # "I" then two bytes of a four-byte character
    assert result.text == phi3_tokenizer.decode([306, 243, 162])
    assert result.text.startswith("I") and result.count == 3
    _check_spans(result)


# -- prompt inspector: ids of a chat prompt ----------------------------------------------------------------------

def test_tokens_for_prompt_ids_marks_template_markers_only(phi3_tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi<|end|> 🎵"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "鸟?"}]
    prompt = PromptBuilder(phi3_tokenizer).encode(messages)
    result = tokens_for_ids(phi3_tokenizer, prompt.ids, "Phi-3")
    assert result.text == prompt.text
    assert result.ids == prompt.ids
    specials = [t.piece for t in result.tokens if t.special]
    assert specials == ["<|system|>", "<|end|>", "<|user|>", "<|end|>", "<|assistant|>", "<|end|>", "<|user|>",
                        "<|end|>", "<|assistant|>"]  # the <|end|> the user typed is plain text
    for t in result.tokens:
        if t.special:
            assert result.text[t.start:t.end] == t.piece
    _check_spans(result)
    view = token_highlights(result)
    assert ("<|user|>", SPECIAL) in view and "".join(text for text, _ in view).count("🎵") == 1


# -- limits and hostile text -------------------------------------------------------------------------------------

def test_length_limit(registry: TokenizerRegistry) -> None:
    tok = registry.load("smollm2").tokenizer
    with pytest.raises(InvalidInputError, match="50,001 characters; the limit is 50,000"):
        tokenize(tok, "a" * (MAX_CHARS + 1))
    result = tokenize(tok, ("Hello wörld 🎵 鸟\n\t" * 4000)[:MAX_CHARS])
    shown = token_highlights(result)
    assert result.char_count == MAX_CHARS
    assert "".join(text for text, _ in shown).count("🎵") == ("Hello wörld 🎵 鸟\n\t" * 4000)[:MAX_CHARS].count("🎵")


def test_unpaired_surrogate_is_refused(registry: TokenizerRegistry) -> None:
    with pytest.raises(InvalidInputError, match="surrogate"):
        tokenize(registry.load("bert").tokenizer, "a\ud800b")


def test_hostile_text_stays_text(offline) -> None:
    key, tok = offline
    text = "<script>alert(1)</script>\x00\u202eevil\u200d\u200b\ufeff<img src=x onerror=alert(2)>"
    result = tokenize(tok, text, key)
    _check_spans(result)
    shown = "".join(part for part, _ in token_highlights(result))
    for marker in ("␀", "⟨RLO⟩", "⟨ZWJ⟩", "⟨ZWSP⟩", "⟨BOM⟩"):
        assert marker in shown
    assert "\x00" not in shown and "\u202e" not in shown


def test_show_whitespace() -> None:
    assert show_whitespace("a b\tc\nd") == "a␣b→c↵\nd"
    assert show_whitespace("a\nb", breaks=False) == "a↵b"
    assert show_whitespace("\r\x00\x7f\u00a0\u2003") == "␍␀␡⍽⟨U+2003⟩"
    assert show_whitespace("鸟🎵é") == "鸟🎵é"


# -- the registry ------------------------------------------------------------------------------------------------

def test_registry_lists_and_caches(registry: TokenizerRegistry) -> None:
    keys = [t.key for t in registry.available()]
    assert keys[:2] == ["smollm2", "bert"]
    assert ("phi3" in keys) == phi3.fixture_available()
    assert registry.load("bert") is registry.load("BERT")
    assert registry.load("smollm2").family.startswith("byte-level BPE")
    assert registry.load("bert").family.startswith("WordPiece")


def test_registry_loads_once_across_threads(cache_dir: Path) -> None:
    fresh = TokenizerRegistry(cache_dir, env={}, hub_check=lambda: False)
    got, barrier = [], threading.Barrier(6)

    def work() -> None:
        barrier.wait()
        got.append(fresh.load("bert"))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and all(g is got[0] for g in got)


def test_registry_phi3(registry: TokenizerRegistry) -> None:
    if not phi3.fixture_available():
        pytest.skip(phi3.MISSING_REASON)
    named = registry.load("phi3")
    assert len(named.tokenizer) == 32011
    assert tokenize(named.tokenizer, "I love programming.").ids == [306, 5360, 8720, 29889]


def test_registry_phi3_absent(cache_dir: Path) -> None:
    absent = TokenizerRegistry(cache_dir, env={PHI3_ENV: "/nonexistent/phi3"}, hub_check=lambda: False)
    assert not absent.is_available("phi3")
    with pytest.raises(InvalidInputError, match=PHI3_ENV):
        absent.load("phi3")


def test_registry_hub_unreachable(registry: TokenizerRegistry) -> None:
    with pytest.raises(InvalidInputError, match="hub is not reachable"):
        registry.load("openai-community/gpt2-not-cached-here")


@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "~/secrets", "./core", "a/b/c", "<img src=x>"])
def test_registry_refuses_paths(registry: TokenizerRegistry, name: str) -> None:
    with pytest.raises(InvalidInputError, match="not a tokenizer here"):
        registry.load(name)
