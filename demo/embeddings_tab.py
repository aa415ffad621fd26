"""Embeddings tab: nearest tokens, analogies, similarity, odd one out, a token's vector and a 2D map, the map of the
whole vocabulary (demo/vocabulary_map_view.py), plus the typed API endpoints /neighbors, /analogy, /similarity,
/doesnt_match and /vocabulary_map. All the maths lives in core.embeddings.index.

Vocabulary pieces only ever reach the page as data (table cells, text boxes, chart data), never as HTML.
No `from __future__ import annotations` here: gr.api reads the return annotations as real types.
"""

import json

import gradio as gr
import pandas as pd
from gradio.components.plot import AltairPlotData, PlotData

from core import checks
from core.embeddings.index import OUTLIER_Z, VocabIndex
from core.embeddings.queries import MAX_QUERY_CHARS, ResolvedQuery
from core.embeddings.results import (
    NeighborResult,
    NeighborsDict,
    OddOneOutDict,
    PcaMap,
    SimilarityDict,
    VectorInfo,
)
from core.embeddings.vocabulary import TokenInfo
from core.host import ModelHost
from demo.errors import api_errors, ui_errors
from demo.token_view import piece_shown

INTRO = ("Every token has a vector in the model's input embedding matrix, and tokens used alike sit close together: "
         "type a word to see its nearest tokens, or try an analogy such as king − man + woman. "
         "A word means its word-initial token (` king`, written ␣king), a word split into several tokens is the mean "
         "of its pieces, and `#1234` is token id 1234.")
NEIGHBOR_HEADERS = ["rank", "token", "id", "score", "folded variants"]
METRIC_LABELS = {"cosine": "cosine", "centered": "centred cosine (mean removed)", "inner_product": "inner product"}
METRIC_CHOICES = [(label, key) for key, label in METRIC_LABELS.items()]
PRESETS = [("king − man + woman", "king, woman", "man"), ("Paris − France + Italy", "Paris, Italy", "France"),
           ("walked − walk + swim", "walked, swim", "walk"), ("cats − cat + dog", "cats, dog", "cat")]
MAP_NEIGHBORS = 15  # neighbours drawn on a map (more is unreadable)
VECTOR_DIMS = 64
API_CONCURRENCY = 4  # index searches are thread-safe (the GPU index takes a lock)


# -- formatting (pure functions of core's dataclasses) -------------------------------------------------------------

def shown(token: TokenInfo) -> str:
    return piece_shown(token.text, token.piece)


def describe_term(term: ResolvedQuery) -> str:
    """One line, e.g. `"apologizing" → ␣apolog + izing (mean of 2 tokens)`."""
    tokens = " + ".join(shown(t) for t in term.tokens)
    if term.is_split:
        return f'"{term.query}" → {tokens} (mean of {len(term.tokens)} tokens)'
    return f'"{term.query}" → {tokens} (id {term.tokens[0].id}, {term.how})'


def neighbors_frame(result: NeighborResult) -> pd.DataFrame:
    rows = [[n.rank, piece_shown(n.text, n.piece), n.id, round(n.score, 4), "  ".join(shown(v) for v in n.variants)]
            for n in result.neighbors]
    return pd.DataFrame(rows, columns=NEIGHBOR_HEADERS)


def resolved_text(result: NeighborResult) -> str:
    lines = [describe_term(term) for term in result.terms]
    if result.method:
        lines.append(f"{result.method}: {result.query}")
    if result.excluded:
        skipped = ", ".join(shown(t) for t in result.excluded[:12])
        more = f" and {len(result.excluded) - 12} more" if len(result.excluded) > 12 else ""
        lines.append(f"Skipped (the query's own tokens and their variants): {skipped}{more}")
    return "\n".join(lines)


def vector_note(info: VectorInfo) -> str:
    """What the norms say: an outlier (under-trained "glitch" tokens tend to have unusually small norms), or not."""
    outliers = [p for p in info.pieces if abs(p.z_score) >= OUTLIER_Z]
    if outliers:
        note = "; ".join(f"{shown(p.token)} has an unusually {'small' if p.z_score < 0 else 'large'} norm "
                         f"({p.norm:.3f}, z = {p.z_score:+.1f})" for p in outliers)
    else:
        note = (f"norm within {OUTLIER_Z:g} standard deviations of the vocabulary's mean "
                f"({info.norm_mean:.3f} ± {info.norm_std:.3f})")
    if info.query.is_split:
        note += f"; the vector is the mean of {len(info.pieces)} tokens, so its norm is smaller than theirs"
    return note


def vector_text(info: VectorInfo) -> str:
    pieces = ", ".join(f"{shown(p.token)}: norm {p.norm:.3f} (z = {p.z_score:+.2f})" for p in info.pieces)
    flag = "⚠️ outlier norm" if info.outlier else "norm looks typical"
    return (f"{describe_term(info.query)}\nNorm {info.norm:.3f} in {info.dim} dimensions; {flag}.\n"
            f"Per token: {pieces}\n{vector_note(info)}.")


def vector_frame(info: VectorInfo) -> pd.DataFrame:
    return pd.DataFrame({"dimension": list(range(len(info.values))), "value": info.values})


def map_plot(pca: PcaMap, title: str) -> PlotData:
    """A Vega-Lite scatter plot with a text label beside each point; labels are chart data, not markup."""
    def label(term: ResolvedQuery) -> str:  # a split word by the word, a single token by its text
        return term.query if term.is_split else shown(term.tokens[0])

    frame = pd.DataFrame([{"label": label(p.term), "x": round(p.x, 4), "y": round(p.y, 4), "kind": p.kind}
                          for p in pca.points])
    ex = pca.explained_variance
    encoding = {
        "x": {"field": "x", "type": "quantitative", "title": f"PC1 ({ex[0]:.0%} of variance)",
              "scale": {"zero": False}},
        "y": {"field": "y", "type": "quantitative", "title": f"PC2 ({ex[1]:.0%} of variance)",
              "scale": {"zero": False}},
    }
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title, "height": 380,
        "data": {"values": frame.to_dict("records")},
        "encoding": encoding,
        "layer": [
            {"mark": {"type": "point", "filled": True, "size": 90, "tooltip": True},
             "encoding": {"color": {"field": "kind", "type": "nominal", "title": None},
                          "shape": {"field": "kind", "type": "nominal", "title": None},
                          "tooltip": [{"field": "label"}, {"field": "kind"}]}},
            {"mark": {"type": "text", "align": "left", "dx": 7, "dy": -6, "fontSize": 12, "color": "#888"},
             "encoding": {"text": {"field": "label", "type": "nominal"}}},
        ],
    }
    # chart="scatter" makes gradio size the chart to its container and apply the page's theme
    return AltairPlotData(chart="scatter", plot=json.dumps(spec))


def neighbors_map(index: VocabIndex, result: NeighborResult, title: str) -> PlotData | None:
    """The query (or the analogy's terms) and the first neighbours on a PCA map; None when fewer than 2 points."""
    items: list[ResolvedQuery | int] = []
    kinds: list[str] = []
    for i, term in enumerate(result.terms):
        items.append(term)
        if result.method:
            kinds.append("positive" if i < result.positive_terms else "negative")
        else:
            kinds.append("query")
    for n in result.neighbors[:MAP_NEIGHBORS]:
        items.append(n.id)
        kinds.append("answer" if result.method else "neighbour")
    if len({tuple(t.ids) for t in result.terms} | {(n.id,) for n in result.neighbors[:MAP_NEIGHBORS]}) < 2:
        return None
    return map_plot(index.pca_map(items, kinds), title)


# -- the tab ---------------------------------------------------------------------------------------------------------

def build_embeddings_tab(host: ModelHost) -> None:
    """The Embeddings tab and its API endpoints, inside the current gr.Blocks."""

    def index() -> VocabIndex:
        return host.require().index

    def word(value: object, name: str) -> str:
        """API callers must send a query as text: a number is not silently read as a token id."""
        return checks.text(value, name, MAX_QUERY_CHARS, required=True,
                           what=f"{name} is empty: type a word, a token piece, or a token id like #1234.")

    @ui_errors
    def show_neighbors(query: str, k: float, metric: str, exact: bool, group: bool,
                       hide: bool) -> tuple[str, pd.DataFrame, str, pd.DataFrame, PlotData | None]:
        ix = index()
        result = ix.neighbors(query, k=int(k), metric=metric, exact=exact, group_variants=group, hide_special=hide)
        info = ix.vector(query, dims=VECTOR_DIMS, exact=exact)
        title = f"{describe_term(result.terms[0])} and its nearest tokens ({METRIC_LABELS[result.metric]}), PCA"
        return (resolved_text(result), neighbors_frame(result), vector_text(info), vector_frame(info),
                neighbors_map(ix, result, title))

    @ui_errors
    def show_analogy(positive: str, negative: str, k: float, method: str, group: bool,
                     hide: bool) -> tuple[str, pd.DataFrame, PlotData | None]:
        ix = index()
        result = ix.analogy(positive, negative, k=int(k), method=method, group_variants=group, hide_special=hide)
        return resolved_text(result), neighbors_frame(result), neighbors_map(ix, result, f"{result.query}, PCA")

    @ui_errors
    def show_similarity(a: str, b: str, metric: str) -> str:
        sim = index().similarity(a, b, metric=metric)
        return f"{METRIC_LABELS[sim.metric]} = {sim.score:.4f}\n{describe_term(sim.a)}\n{describe_term(sim.b)}"

    @ui_errors
    def show_odd_one_out(words: str) -> tuple[str, pd.DataFrame]:
        odd = index().doesnt_match(words)
        frame = pd.DataFrame([[w.query, " + ".join(shown(t) for t in w.tokens), round(s, 4)]
                              for w, s in zip(odd.words, odd.similarity_to_mean, strict=True)],
                             columns=["word", "tokens", "cosine to the mean"])
        return f"Odd one out: {odd.odd}", frame

    # -- typed API -------------------------------------------------------------------------------------------------

    @api_errors
    def neighbors(query: str, k: int = 10, metric: str = "cosine") -> NeighborsDict:
        """The k tokens nearest to a word in the model's input embedding space.

        A word means its word-initial token (" king"); a word split into several tokens is the mean of its pieces
        (see query_tokens); "#1234" is token id 1234. The query's own tokens, their case, leading-space and plural
        variants, and special and byte tokens are left out.

        Args:
            query: a word, a vocabulary piece such as "Ġking" or "▁king", or a token id written "#1234".
            k: how many neighbours, 1 to 200.
            metric: "cosine", "centered" (cosine after subtracting the mean embedding) or "inner_product".
        """
        return index().neighbors(word(query, "query"), k=k, metric=metric).to_dict()

    @api_errors
    def analogy(positive: str, negative: str = "", k: int = 10) -> NeighborsDict:
        """Tokens nearest to the positive words minus the negative ones (3CosAdd, like gensim's most_similar).

        The input words and their case and leading-space variants are left out, as in gensim (plurals are not):
        positive "king, woman" with negative "man" gives queen; "cats, dog" minus "cat" gives dogs.

        Args:
            positive: comma-separated words to add, e.g. "king, woman".
            negative: comma-separated words to subtract, e.g. "man"; may be empty.
            k: how many answers, 1 to 200.
        """
        return index().analogy(positive, negative, k=k).to_dict()

    @api_errors
    def similarity(a: str, b: str) -> SimilarityDict:
        """Cosine similarity of two words' input embeddings (a multi-token word is the mean of its pieces).

        Args:
            a: the first word (or piece, or "#id").
            b: the second word (or piece, or "#id").
        """
        return index().similarity(word(a, "a"), word(b, "b")).to_dict()

    @api_errors
    def doesnt_match(words: str) -> OddOneOutDict:
        """The word least like the others: the lowest cosine to the mean of all the words (gensim's doesnt_match).

        Args:
            words: at least three comma-separated words, e.g. "breakfast, cereal, dinner, lunch".
        """
        return index().doesnt_match(words).to_dict()

    with gr.Tab("Embeddings", id="embeddings") as tab:
        for fn in (neighbors, analogy, similarity, doesnt_match):  # inside the Tab: gr.Tabs holds only tabs
            gr.api(fn, api_name=fn.__name__, concurrency_limit=API_CONCURRENCY, concurrency_id="embeddings")
        gr.Markdown(INTRO)
        with gr.Row():
            query = gr.Textbox(value="king", label="Word, token piece or #id", scale=3, max_lines=1,
                               elem_id="emb-query")
            k = gr.Slider(1, 50, value=10, step=1, label="Neighbours", scale=2)
            metric = gr.Radio(METRIC_CHOICES, value="cosine", label="Metric", scale=3)
        with gr.Row():
            exact = gr.Checkbox(False, label="Exact piece (no leading space added)")
            group = gr.Checkbox(False, label="Group variants (case, leading space, plural)")
            hide = gr.Checkbox(True, label="Hide special and byte tokens")
            find = gr.Button("Find neighbours", variant="primary", elem_id="emb-find")
        resolved = gr.Textbox(label="Query", lines=2, interactive=False, elem_id="emb-resolved")
        table = gr.Dataframe(headers=NEIGHBOR_HEADERS, datatype=["number", "str", "number", "number", "str"],
                             interactive=False, label="Nearest tokens", elem_id="emb-neighbors", max_height=420)
        with gr.Accordion("The query's vector", open=False):
            vec_info = gr.Textbox(label="Norm", lines=3, interactive=False, elem_id="emb-vector")
            vec_plot = gr.BarPlot(x="dimension", y="value", label=f"First {VECTOR_DIMS} dimensions", height=240)
        nmap = gr.Plot(label="2D map (PCA of the query and its neighbours)", elem_id="emb-map")

        gr.Markdown("### Analogies\nNearest tokens to the sum of the positive words minus the negative ones. The "
                    "input words and their case and leading-space variants (␣King, KING) are left out, as gensim "
                    "leaves them out; plurals are not, so cat : cats :: dog : ? can answer dogs.")
        with gr.Row():
            positive = gr.Textbox(value="king, woman", label="Positive (comma-separated)", scale=3)
            negative = gr.Textbox(value="man", label="Negative (comma-separated)", scale=3)
            method = gr.Radio([("3CosAdd (gensim most_similar)", "3cosadd"), ("3CosMul", "3cosmul")],
                              value="3cosadd", label="Method", scale=3)
        with gr.Row():
            preset_buttons = [gr.Button(label, size="sm") for label, _, _ in PRESETS]
            solve = gr.Button("Solve", variant="primary", elem_id="emb-solve")
        a_resolved = gr.Textbox(label="Terms", lines=2, interactive=False)
        a_table = gr.Dataframe(headers=NEIGHBOR_HEADERS, datatype=["number", "str", "number", "number", "str"],
                               interactive=False, label="Answers", elem_id="emb-analogy", max_height=420)
        a_map = gr.Plot(label="2D map (PCA of the terms and the answers)")

        gr.Markdown("### Similarity and odd one out")
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    sim_a = gr.Textbox(value="king", label="Word A", max_lines=1)
                    sim_b = gr.Textbox(value="queen", label="Word B", max_lines=1)
                compare = gr.Button("Compare")
                sim_out = gr.Textbox(label="Similarity", lines=3, interactive=False, elem_id="emb-similarity")
            with gr.Column():
                words = gr.Textbox(value="breakfast, cereal, dinner, lunch", label="Words (comma-separated)")
                odd_button = gr.Button("Find the odd one out")
                odd_out = gr.Textbox(label="Result", interactive=False, elem_id="emb-odd")
                odd_table = gr.Dataframe(headers=["word", "tokens", "cosine to the mean"], interactive=False)
        # imported here: the map's module uses this one's formatting helpers
        from demo.vocabulary_map_view import build_vocabulary_map

        build_vocabulary_map(host, tab, k, positive, negative)

    n_inputs = [query, k, metric, exact, group, hide]
    n_outputs = [resolved, table, vec_info, vec_plot, nmap]
    a_inputs = [positive, negative, k, method, group, hide]
    a_outputs = [a_resolved, a_table, a_map]
    # always_last: a click that lands while the same view is still finishing runs after it instead of being dropped
    common = {"api_visibility": "private", "concurrency_limit": API_CONCURRENCY, "concurrency_id": "embeddings",
              "trigger_mode": "always_last"}
    gr.on([find.click, query.submit, tab.select], show_neighbors, n_inputs, n_outputs, **common)
    gr.on([solve.click, positive.submit, negative.submit], show_analogy, a_inputs, a_outputs, **common)
    for button, (_, pos, neg) in zip(preset_buttons, PRESETS, strict=True):
        button.click(lambda p=pos, n=neg: (p, n), None, [positive, negative], api_visibility="private",
                     queue=False).then(show_analogy, a_inputs, a_outputs, **common)
    gr.on([compare.click, sim_a.submit, sim_b.submit], show_similarity, [sim_a, sim_b, metric], sim_out, **common)
    gr.on([odd_button.click, words.submit], show_odd_one_out, words, [odd_out, odd_table], **common)
