"""The map of the whole vocabulary in a real browser (Debian's Chromium through Playwright), on the bundled model:
drawn with WebGL, searched, clicked, and given a hostile query that must stay text. The session's app opens it on
PCA; one test starts the whole vocabulary's UMAP on an app of its own (about a minute), to see the map show PCA
until it is ready and then switch (bench/bench_vocab_map.py times it)."""

from __future__ import annotations

import importlib.util

import pytest

from core.config import AppConfig
from core.host import ModelHost
from tests.browser import page_at
from tests.servers import launched
from tests.test_embeddings_browser import wait_for_text

pytestmark = pytest.mark.browser
HOSTILE = "<img src=x onerror=alert(1)>"
UMAP_WAIT_MS = 600_000  # the whole vocabulary's UMAP: about a minute on two cores, in a process at lower priority
POINT_XY = """([name, label, field = 'text']) => {
  const gd = document.querySelector('#vmap-plot .js-plotly-plot');
  const trace = gd._fullData.findIndex(t => t.name === name || t.name.startsWith(name + ' ('));
  const data = gd._fullData[trace], box = gd.querySelector('.nsewdrag').getBoundingClientRect();
  const j = data[field].indexOf(label), L = gd._fullLayout;
  return [box.left + L.xaxis.l2p(data.x[j]), box.top + L.yaxis.l2p(data.y[j]), data.customdata[j]];
}"""


def open_map(browser_page) -> None:
    page = browser_page.page
    browser_page.open_tab("Embeddings")
    page.locator("#vmap").get_by_text("The whole vocabulary on one map").click()
    assert page.locator("#vmap").get_by_label("PCA").is_checked()  # the session's app: --map-projection pca
    wait_for_text(page, "#vmap-note", "PCA of 49,152 unit embedding rows")
    page.wait_for_function("() => (document.querySelector('#vmap-plot canvas')?.width || 0) > 300")
    page.wait_for_function("() => /word-initial \\(/.test(document.querySelector('#vmap-plot .legend')"
                           "?.textContent || '')")


def lit_labels(page) -> list[str]:
    """The labels of the lit points (SVG text, which has no innerText)."""
    return page.evaluate("() => [...document.querySelectorAll('#vmap-plot .textpoint text')].map(t => t.textContent)")


def test_the_page_fetches_plotly_and_the_tab_runs_it_before_the_map_is_opened(browser_page):
    """Once the page has loaded, its head's prefetch hint downloads gradio's plotly.js module without running it;
    opening the Embeddings tab runs it from the browser's cache (no second download), and the map, opened later,
    draws with it."""
    page = browser_page.page
    fetched = ("() => performance.getEntriesByType('resource').filter(e => /PlotlyPlot-[^/]*\\.js$/.test(e.name))"
               ".map(e => [e.initiatorType, e.transferSize])")
    page.wait_for_function(f"() => ({fetched})().length > 0")
    [(initiator, size)] = page.evaluate(fetched)
    assert initiator == "link" and size > 500_000  # the module itself, compressed, by the head's hint
    assert page.evaluate("() => typeof window.Plotly") == "undefined"  # fetched, not run
    browser_page.open_tab("Embeddings")
    page.wait_for_function("() => window.__tokenLabPlotly")
    assert page.evaluate("() => window.__tokenLabPlotly.then(m => typeof m.default)") == "function"
    assert page.evaluate("() => typeof window.Plotly") == "object"
    assert [size for initiator, size in page.evaluate(fetched) if initiator != "link"] == [0]  # from the cache
    assert not page.locator("#vmap-plot canvas").count()  # the map itself is not drawn until it is opened
    open_map(browser_page)
    assert not browser_page.page_errors


def test_map_draws_searches_and_clicks(browser_page):
    page = browser_page.page
    open_map(browser_page)
    page.locator("#vmap-query textarea, #vmap-query input").first.fill("king")
    page.locator("#vmap-find").click()
    wait_for_text(page, "#vmap-neighbors", "␣queen")
    page.wait_for_function("() => [...document.querySelectorAll('#vmap-plot .textpoint text')]"
                           ".some(t => t.textContent === '␣queen')")
    assert "␣king" in lit_labels(page)

    # a click on the ␣queen point searches it: its id in the box, its own neighbours in the table
    page.evaluate("() => document.querySelector('#vmap-plot').scrollIntoView({block: 'center'})")
    x, y, queen = page.evaluate(POINT_XY, ["neighbour", "␣queen"])
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    page.wait_for_function("id => (document.querySelector('#vmap-query textarea, #vmap-query input')?.value) === "
                           "'#' + id", arg=queen)
    wait_for_text(page, "#vmap-resolved", f"(id {queen}, token id)")
    page.wait_for_function("() => [...document.querySelectorAll('#vmap-plot .textpoint text')]"
                           ".some(t => t.textContent === '␣king')")  # the query ␣queen's neighbour now
    assert not browser_page.dialogs and not browser_page.page_errors


def test_hovering_a_point_shows_its_piece_id_and_category(browser_page):
    """A point's hover reads `piece · #id` beside its category: the id and the category come from the figure's
    numbers and trace names, the piece from its text."""
    page = browser_page.page
    open_map(browser_page)
    page.evaluate("() => document.querySelector('#vmap-plot').scrollIntoView({block: 'center'})")
    x, y, king = page.evaluate(POINT_XY, ["word-initial", "␣king", "hovertext"])
    page.mouse.move(x, y)
    page.wait_for_function("() => document.querySelector('#vmap-plot .hoverlayer .hovertext')")
    hover = page.evaluate("() => document.querySelector('#vmap-plot .hoverlayer .hovertext').textContent")
    assert f"␣king · #{king}" in hover and "word-initial (" in hover
    assert not browser_page.page_errors


def test_hostile_query_stays_text(browser_page):
    page = browser_page.page
    open_map(browser_page)
    page.locator("#vmap-query textarea, #vmap-query input").first.fill(HOSTILE)
    page.locator("#vmap-find").click()
    wait_for_text(page, "#vmap-resolved", HOSTILE)
    page.wait_for_function("() => [...document.querySelectorAll('#vmap-plot .textpoint text')]"
                           ".some(t => t.textContent.includes('<'))")  # the `<` piece's label, as a character
    labels = "".join(lit_labels(page))
    assert "img" in labels and "<" in labels
    assert page.locator("img[src='x']").count() == 0
    page.wait_for_timeout(300)  # an onerror handler would have run by now
    assert not browser_page.dialogs and not browser_page.page_errors


@pytest.fixture(scope="module")
def umap_app(bundled, tmp_path_factory):
    """The app on the bundled model over an empty cache folder, its map on UMAP (the app's default): opening the
    map starts the whole vocabulary's projection in the background. Chats run on torch (no conversion to make)."""
    if importlib.util.find_spec("umap") is None:
        pytest.skip("umap-learn is not installed (requirements.txt)")
    config = AppConfig(model="bundled", cache_dir=tmp_path_factory.mktemp("umap-app"), engine="torch",
                       map_projection="umap")
    host = ModelHost.from_loaded(bundled, config)
    try:
        with launched(host) as url:
            yield url
    finally:
        host.close()


def test_the_map_shows_pca_while_umap_computes_then_switches_to_it(browser, umap_app):
    """Until the projection is ready the map says so and shows PCA, the page asking again every few seconds; then
    it shows UMAP without a click."""
    with page_at(browser, umap_app) as session:
        page = session.page
        session.open_tab("Embeddings")
        page.locator("#vmap").get_by_text("The whole vocabulary on one map").click()
        wait_for_text(page, "#vmap-note", "UMAP is being computed in the background")
        wait_for_text(page, "#vmap-note", "Showing PCA")
        page.wait_for_function("() => /PC1/.test(document.querySelector('#vmap-plot .xtitle')?.textContent || '')")
        page.wait_for_function("() => /UMAP of/.test(document.querySelector('#vmap-note textarea')?.value || '')",
                               timeout=UMAP_WAIT_MS)
        page.wait_for_function("() => /UMAP 1/.test(document.querySelector('#vmap-plot .xtitle')?.textContent "
                               "|| '')")
        page.wait_for_function("() => (document.querySelector('#vmap-plot canvas')?.width || 0) > 300")
        assert not session.dialogs and not session.page_errors
