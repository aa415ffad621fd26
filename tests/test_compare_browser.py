"""The tokenizer comparison in a real browser, with every offline tokenizer: one click on the example fills the text,
and the table and the colored views show each tokenizer's count, facts and tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.text.facts import tokenizer_facts
from core.text.registry import PHI3_ENV, registry_for
from core.text.tokens import tokenize
from demo.token_view import show_whitespace
from demo.tokens_tab import COMPARE_HEADERS, HUB_ONLY_NOTE, SEED_SAMPLE
from tests import phi3
from tests.servers import launched

pytestmark = pytest.mark.browser

ROWS = "#compare-summary [role=row]:not([aria-rowindex='1'])"  # the table's body rows (gradio draws them as divs)
TABLE = (f"() => [...document.querySelectorAll(\"{ROWS}\")]"
         ".map(row => [...row.querySelectorAll('[role=gridcell]')].map(cell => cell.innerText.trim()))")
VIEWS = ("() => [...document.querySelectorAll('[id^=compare-view-]')].filter(v => v.offsetParent !== null)"
         ".map(v => ({label: v.querySelector('[data-testid=block-label]')?.innerText.trim() || '',"
         " texts: [...v.querySelectorAll('.token .text')].map(e => e.textContent)}))")


@pytest.fixture(scope="module")
def app_url(bundled_host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app with every offline tokenizer there is here: Phi-3's files come from the fixture where present."""
    with pytest.MonkeyPatch.context() as mp:
        if phi3.fixture_available():
            mp.setenv(PHI3_ENV, str(phi3.build_phi3_tokenizer(tmp_path_factory.mktemp("phi3-compare"))))
        with launched(bundled_host) as url:
            yield url


def test_the_example_compares_every_offline_tokenizer(browser_page, cache_dir: Path) -> None:
    registry = registry_for(cache_dir)
    offline = registry.available()
    assert [t.key for t in offline][:5] == ["smollm2", "bert", "gpt2", "gpt4", "gpt4o"]
    assert ("phi3" in [t.key for t in offline]) == phi3.fixture_available()
    page = browser_page.page
    browser_page.open_tab("Tokens")
    browser_page.open_accordion("Compare tokenizers")
    assert HUB_ONLY_NOTE in page.locator("body").inner_text()
    page.locator("#compare-seed").click()
    page.wait_for_function(
        "([rows, n]) => document.querySelectorAll(rows).length === n && "
        "/GPT-4o/.test(document.querySelector('#compare-summary').innerText)", arg=[ROWS, 1 + len(offline)],
        timeout=180_000)
    assert page.locator("#tokens-text textarea").input_value() == SEED_SAMPLE

    rows = {row[0]: dict(zip(COMPARE_HEADERS, row, strict=True)) for row in page.evaluate(TABLE)}
    assert list(rows)[1:] == [t.name for t in offline]
    for entry in offline:
        tokenizer = registry.load(entry.key).tokenizer
        facts, row = tokenizer_facts(tokenizer), rows[entry.name]
        assert row["tokens"] == f"{tokenize(tokenizer, SEED_SAMPLE).count:,}"
        assert (row["keeps case"], row["keeps newlines"]) == (
            "yes" if facts["keeps_case"] else "no", "yes" if facts["keeps_newlines"] else "no")
        assert row["emoji 🎵"].startswith(facts["emoji"]) and row["CJK 鸟"].startswith(facts["cjk"])
        assert row["source"].startswith(("bundled", "package", "fixture", "hub")) and not row["note"]
    assert rows["GPT-4o (o200k_base)"]["CJK 鸟"] == "whole"
    assert rows["GPT-4 / GPT-3.5 (cl100k_base)"]["one token per space run"] == "yes"
    assert rows["GPT-2 (byte-level BPE)"]["one token per space run"] == "no"
    assert rows["BERT WordPiece (all-MiniLM-L6-v2)"]["emoji 🎵"] == "lost"

    views = {view["label"].split(" · ")[0]: view for view in page.evaluate(VIEWS)}
    assert len(views) == 1 + len(offline)
    for entry in offline:
        view = views[entry.name]
        assert view["label"] == f"{entry.name} · {rows[entry.name]['tokens']} tokens"
        if entry.key != "bert":  # every character shown once, whole, in order; BERT adds [CLS] and [SEP]
            assert "".join(view["texts"]) == show_whitespace(SEED_SAMPLE, breaks=False)
    assert views["BERT WordPiece (all-MiniLM-L6-v2)"]["texts"][0] == "[CLS]"
    assert not browser_page.page_errors and not browser_page.dialogs
