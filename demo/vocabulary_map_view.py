"""The Embeddings tab's map of the whole vocabulary: every token of the loaded model in a WebGL scatter plot (plotly's
`scattergl`, drawn by the plotly.js that gradio ships), coloured by category, with a search that lights up a word's
tokens and their nearest neighbours, an analogy's terms and answers, and a click on a point that searches it; plus
the /vocabulary_map endpoint. Positions and categories come from core.embeddings.vocabulary_map.

The figure is written as plotly JSON directly, so the plotly Python package is not needed. Its size is what a remote
visitor waits for (gradio's event stream is not compressed): numbers go as base64 typed arrays, text as UTF-8 rather
than `\\u` escapes, and a hover's id and category come from the numbers and trace names (HOVER_TEMPLATE).
Plotly reads hover and label text as a few HTML-like tags; every piece goes through `plotly_text`, which escapes `&`,
`<` and `>`, so a piece such as `<img src=x>` shows as those characters.
No `from __future__ import annotations` here: gr.api reads the return annotations as real types.
"""

import base64
import functools
import html
import json
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from gradio.components.plot import PlotData

from core.embeddings.results import NeighborResult, VocabularyMapDict
from core.embeddings.token_categories import (
    BYTE,
    CODE,
    CONTINUATION,
    NUMBER,
    PUNCTUATION,
    SPECIAL,
    WHITESPACE,
    WORD_INITIAL,
)
from core.embeddings.vocabulary import Vocabulary
from core.embeddings.vocabulary_map import MapLayout, VocabularyMap
from core.host import ModelHost
from demo.embeddings_tab import API_CONCURRENCY, NEIGHBOR_HEADERS, neighbors_frame, resolved_text
from demo.errors import api_errors, ui_errors
from demo.token_view import piece_shown

MAP_INTRO = ("Every token of the model at once, as the TensorFlow Embedding Projector draws word vectors: "
             "**PCA** (the two or three directions of most variance, instant) or **UMAP** (keeps each token's "
             "nearest neighbours together, computed once in the background and cached). Hover a point for its "
             "piece, id and category, drag to zoom, double-click to zoom out, click a legend entry to hide a "
             "category, click a point to list its neighbours. The search lights up a word's tokens and their "
             "nearest tokens from the exact index.")
CATEGORY_COLORS = {WORD_INITIAL: "#4c78a8", CONTINUATION: "#9ecae9", NUMBER: "#f58518", PUNCTUATION: "#e45756",
                   WHITESPACE: "#bab0ac", CODE: "#54a24b", SPECIAL: "#222222", BYTE: "#b279a2"}
SCRIPT_COLORS = ("#eeca3b", "#ff9da6", "#9d755d", "#72b7b2", "#d67195", "#ffbf79", "#88d27a", "#439894",
                 "#b6992d", "#f2cf5b", "#79706e", "#d6a5c9")
HIGHLIGHT_STYLES = {  # kind of highlighted point → marker
    "query": {"symbol": "star", "size": 18, "color": "#d62728"},
    "positive": {"symbol": "star", "size": 18, "color": "#2ca02c"},
    "negative": {"symbol": "x", "size": 14, "color": "#d62728"},
    "neighbour": {"symbol": "circle", "size": 11, "color": "#ff7f0e"},
    "answer": {"symbol": "diamond", "size": 13, "color": "#9467bd"},
}
MAP_HEIGHT = 640
POINT_SIZE = {2: 3, 3: 1.6}
# scatter3d draws each marker as a WebGL mesh of its symbol's outline: a square is a few triangles where a circle is
# many, which at this size looks the same and draws and turns faster where WebGL runs in software
POINT_SYMBOL = {2: "circle", 3: "square"}
POLL_S = 2.0  # how often the page asks whether a background projection is ready


def plotly_text(text: str) -> str:
    """Text for plotly's hover and labels, shown as typed: plotly reads `<b>`, `<br>`, `<a href>` and entities in
    them, so `&`, `<` and `>` become entities, which it shows as the characters."""
    return html.escape(text, quote=False)


def typed(values: np.ndarray, dtype: str) -> dict:
    """A plotly.js typed array: the values' little-endian bytes in base64 (a third of their JSON size)."""
    data = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "bdata": base64.b64encode(data.tobytes()).decode("ascii")}


# A point's hover: its piece (`hovertext`), its id (`customdata`) and its trace's name, the category. The figure
# carries only the pieces as text: the id and the name come from numbers and names it holds anyway.
HOVER_TEMPLATE = "%{hovertext} · #%{customdata}<extra>%{fullData.name}</extra>"


@functools.lru_cache(maxsize=4)
def _groups(vmap: VocabularyMap) -> list[tuple[str, np.ndarray, list[str]]]:
    """Per category in legend order: its token ids and their pieces as shown (`␣king`), built once per map."""
    vocabulary = vmap.index.vocabulary
    by_category: dict[str, list[int]] = {}
    for tid, cat in enumerate(vmap.categories):
        by_category.setdefault(cat, []).append(tid)
    return [(cat, np.asarray(by_category[cat], dtype=np.int32), [_label(vocabulary, i) for i in by_category[cat]])
            for cat in vmap.legend]


def _label(vocabulary: Vocabulary, tid: int) -> str:
    """Token `tid` as the map shows it, in hovers and labels: its piece with whitespace made visible, as text."""
    return plotly_text(piece_shown(vocabulary.texts[tid], vocabulary.pieces[tid]))


def _color(category: str, scripts: list[str]) -> str:
    if category in CATEGORY_COLORS:
        return CATEGORY_COLORS[category]
    return SCRIPT_COLORS[scripts.index(category) % len(SCRIPT_COLORS)]


def _axes(layout: MapLayout) -> dict:
    names = [f"PC{j + 1} ({share:.1%})" for j, share in enumerate(layout.explained)] or ["UMAP 1", "UMAP 2",
                                                                                         "UMAP 3"]
    return {f"{axis}axis": {"title": {"text": names[j]}, "zeroline": False}
            for j, axis in enumerate("xyz"[:layout.dims])}


def highlighted(result: NeighborResult | None) -> list[tuple[int, str]]:
    """(token id, kind) of the points a search or an analogy lights up: each term's tokens (a split word's pieces
    one by one), then the neighbours or answers; a token already lit keeps its first kind."""
    if result is None:
        return []
    points: dict[int, str] = {}
    for j, term in enumerate(result.terms):
        kind = ("positive" if j < result.positive_terms else "negative") if result.method else "query"
        for tid in term.ids:
            points.setdefault(tid, kind)
    for n in result.neighbors:
        points.setdefault(n.id, "answer" if result.method else "neighbour")
    return list(points.items())


def map_figure(vmap: VocabularyMap, layout: MapLayout, result: NeighborResult | None = None) -> PlotData:
    """The plotly figure: one WebGL trace per category (its legend entry hides it), and the lit points on top with
    their pieces as labels. Every point carries its token id (`customdata`), which a click sends to the search."""
    three = layout.dims == 3
    kind = "scatter3d" if three else "scattergl"
    coords = layout.coords
    scripts = [c for c in vmap.legend if c not in CATEGORY_COLORS]
    vocabulary = vmap.index.vocabulary
    lit = [(tid, k) for tid, k in highlighted(result) if tid < vmap.size]
    opacity = 0.25 if lit else 0.6  # the lit points stand out from a dimmed vocabulary
    traces = []
    for cat, ids, hover in _groups(vmap):
        trace = {"type": kind, "mode": "markers", "name": f"{cat} ({len(ids):,})", "hovertext": hover,
                 "hovertemplate": HOVER_TEMPLATE, "customdata": typed(ids, "i4"),
                 "marker": {"size": POINT_SIZE[layout.dims], "symbol": POINT_SYMBOL[layout.dims],
                            "color": _color(cat, scripts), "opacity": opacity}}
        for j, axis in enumerate("xyz"[:layout.dims]):
            trace[axis] = typed(coords[ids, j], "f4")
        traces.append(trace)
    for name, style in HIGHLIGHT_STYLES.items():
        ids = [tid for tid, k in lit if k == name]
        if not ids:
            continue
        labels = [_label(vocabulary, i) for i in ids]
        trace = {"type": "scatter3d" if three else "scatter", "mode": "markers+text", "name": name,
                 "text": labels, "hovertext": labels, "hovertemplate": HOVER_TEMPLATE,
                 "textposition": "top center", "customdata": ids,
                 "textfont": {"size": 13, "color": style["color"]},
                 "marker": {**style, "line": {"width": 1.5, "color": "#111111"}}}
        for j, axis in enumerate("xyz"[:layout.dims]):
            trace[axis] = [round(float(coords[i, j]), 4) for i in ids]
        traces.append(trace)
    figure_layout = {"height": MAP_HEIGHT, "margin": {"l": 40, "r": 10, "t": 30, "b": 40}, "hovermode": "closest",
                     "legend": {"itemsizing": "constant", "title": {"text": "category (tokens)"}},
                     "uirevision": f"{layout.method}-{layout.dims}", "dragmode": "orbit" if three else "zoom"}
    if three:
        figure_layout["scene"] = _axes(layout)
    else:
        figure_layout.update(_axes(layout))
    return PlotData(type="plotly", plot=json.dumps({"data": traces, "layout": figure_layout}, ensure_ascii=False))


# Binds a click on any point to the map's search (plotly's own event; gradio's Plot has none): the token id goes
# into the search box as `#id`, and the Search button runs. Run after every new figure, which replaces the listeners.
BIND_CLICKS_JS = """
() => {
  const bind = (left) => {
    const plot = document.querySelector('#vmap-plot .js-plotly-plot');
    if (!plot || typeof plot.on !== 'function' || !plot._fullData) {
      if (left > 0) setTimeout(() => bind(left - 1), 200);
      return;
    }
    plot.removeAllListeners('plotly_click');
    plot.on('plotly_click', (event) => {
      const point = event && event.points && event.points[0];
      const id = point ? Number(point.customdata) : NaN;
      const box = document.querySelector('#vmap-query textarea, #vmap-query input');
      if (!Number.isInteger(id) || !box) return;
      box.value = '#' + id;
      box.dispatchEvent(new Event('input', {bubbles: true}));
      setTimeout(() => document.querySelector('#vmap-find')?.click(), 100);
    });
  };
  setTimeout(() => bind(50), 100);
  return [];
}
"""


@functools.cache
def plotly_href() -> str | None:
    """Where the page finds the plotly.js module gradio's Plot loads on its first plotly figure: relative to the
    page, as gradio's page names its own main module (`./assets/index-….js`); None where this gradio ships none.
    The module's name is hashed and changes with each gradio release, so it is looked up in gradio's assets."""
    assets = Path(gr.__file__).parent / "templates" / "frontend" / "assets"
    found = sorted(assets.glob("PlotlyPlot-*.js"))
    return f"./assets/{found[0].name}" if len(found) == 1 else None


def prefetch_head() -> str:
    """The page head's hint to download plotly.js once the page has loaded, at the lowest priority, running
    nothing: when the Embeddings tab asks for it (`preload_js`), the network's share of the wait is behind it."""
    href = plotly_href()
    return "" if href is None else f'<link rel="prefetch" href="{html.escape(href)}" crossorigin="anonymous">'


def preload_js() -> str:
    """Runs plotly.js in the background as the tab opens, from the same address as the head's hint (so from the
    browser's cache): loading and running it is most of the time the first map takes to appear, and gradio only
    starts it once the figure has arrived. Nothing happens where gradio ships no such module."""
    return rf"""
() => {{
  const href = {json.dumps(plotly_href())};
  if (href && !window.__tokenLabPlotly) {{
    window.__tokenLabPlotly = import(new URL(href, document.baseURI).href)
      .catch(() => {{ window.__tokenLabPlotly = null; }});
  }}
  return [];
}}
"""


def build_vocabulary_map(host: ModelHost, tab: gr.Tab, k: gr.Slider, positive: gr.Textbox,
                         negative: gr.Textbox) -> None:
    """The map's accordion and the /vocabulary_map endpoint, inside the Embeddings tab (`tab`); `k` and the
    analogy's boxes are the tab's own."""

    def vmap() -> VocabularyMap:
        return host.vocabulary_map()

    def lookup(spec: list | None) -> NeighborResult | None:
        """The search or analogy a highlight state names, run again on the exact index (it is quick)."""
        if not spec:
            return None
        index = host.require().index
        if spec[0] == "analogy":
            return index.analogy(spec[1], spec[2], k=int(spec[3]))
        return index.neighbors(spec[1], k=int(spec[2]))

    def draw(projection: str, dims: int, result: NeighborResult | None) -> tuple[str, PlotData, gr.Timer]:
        m = vmap()
        layout = m.layout(projection, int(dims))
        waiting = not layout.ready and m.umap_state(int(dims), start=False) == "running"
        return layout.note, map_figure(m, layout, result), gr.Timer(active=waiting)

    @ui_errors
    def show(projection: str, dims: int, spec: list | None) -> tuple[str, PlotData, gr.Timer]:
        return draw(projection, dims, lookup(spec))

    @ui_errors
    def poll(projection: str, dims: int, spec: list | None):
        """While UMAP computes: the note's running time, and the map once it is ready (nothing heavier before)."""
        m = vmap()
        if m.umap_state(int(dims), start=False) == "running":
            return m.layout(projection, int(dims)).note, gr.skip(), gr.Timer(active=True)
        return draw(projection, dims, lookup(spec))

    def found(spec: list, projection: str, dims: int) -> tuple:
        result = lookup(spec)
        note, plot, timer = draw(projection, dims, result)
        return spec, resolved_text(result), neighbors_frame(result), note, plot, timer

    @ui_errors
    def search(query: str, k_value: float, projection: str, dims: int) -> tuple:
        return found(["query", query, int(k_value)], projection, dims)

    @ui_errors
    def analogy_on_map(pos: str, neg: str, k_value: float, projection: str, dims: int) -> tuple:
        return found(["analogy", pos, neg, int(k_value)], projection, dims)

    @ui_errors
    def clear(projection: str, dims: int) -> tuple:
        note, plot, timer = draw(projection, dims, None)
        return None, "", pd.DataFrame(columns=NEIGHBOR_HEADERS), note, plot, timer

    @api_errors
    def vocabulary_map(projection: str = "pca", limit: int = 1000, dims: int = 2) -> VocabularyMapDict:
        """Every token's position on a 2D or 3D map of the model's input embeddings, with its piece and category.

        Categories come from each token's text: word-initial, continuation, digits & numbers, punctuation &
        symbols, whitespace, code, special, byte, and one per non-Latin script (Cyrillic, CJK (Han), ...).
        UMAP is computed once in the background and cached; until it is ready the answer holds PCA, with
        "ready" false and a note saying so.

        Args:
            projection: "pca" (instant) or "umap" (keeps each token's nearest neighbours together).
            limit: how many tokens, the first ones by id (0 to limit - 1); at most the vocabulary's size.
            dims: 2 or 3 coordinates per token.
        """
        return vmap().answer(projection, limit, dims)

    gr.api(vocabulary_map, api_name="vocabulary_map", concurrency_limit=API_CONCURRENCY, concurrency_id="embeddings")
    with gr.Accordion("The whole vocabulary on one map", open=False, elem_id="vmap") as accordion:
        gr.Markdown(MAP_INTRO)
        with gr.Row():
            projection = gr.Radio([("UMAP", "umap"), ("PCA", "pca")], value=host.config.map_projection,
                                  label="Projection", scale=2)
            dims = gr.Radio([("2D", 2), ("3D", 3)], value=2, label="Dimensions", scale=1)
            query = gr.Textbox(label="Search: word, token piece or #id", max_lines=1, scale=3, elem_id="vmap-query")
            with gr.Column(scale=2, min_width=160):
                find = gr.Button("Search", variant="primary", elem_id="vmap-find")
                on_map = gr.Button("Show the analogy above on the map", size="sm", elem_id="vmap-analogy")
                reset = gr.Button("Clear", size="sm")
        note = gr.Textbox(label="Map", interactive=False, lines=2, elem_id="vmap-note")
        plot = gr.Plot(show_label=False, elem_id="vmap-plot")
        resolved = gr.Textbox(label="Lit up", lines=2, interactive=False, elem_id="vmap-resolved")
        table = gr.Dataframe(headers=NEIGHBOR_HEADERS, datatype=["number", "str", "number", "number", "str"],
                             interactive=False, label="Nearest tokens", elem_id="vmap-neighbors", max_height=320)
    spec = gr.State(None)
    timer = gr.Timer(POLL_S, active=False)
    common = {"api_visibility": "private", "concurrency_limit": API_CONCURRENCY, "concurrency_id": "embeddings",
              "trigger_mode": "always_last"}
    shown = [note, plot, timer]
    found_outputs = [spec, resolved, table, note, plot, timer]
    gr.on([accordion.expand, projection.change, dims.change], show, [projection, dims, spec], shown, **common)
    timer.tick(poll, [projection, dims, spec], shown, show_progress="hidden", **common)
    gr.on([find.click, query.submit], search, [query, k, projection, dims], found_outputs, **common)
    on_map.click(analogy_on_map, [positive, negative, k, projection, dims], found_outputs, **common)
    reset.click(clear, [projection, dims], found_outputs, **common)
    plot.change(None, None, None, js=BIND_CLICKS_JS)
    tab.select(None, None, None, js=preload_js())
