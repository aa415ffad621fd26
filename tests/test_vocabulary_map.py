"""The map of the whole vocabulary: categories on both tokenizers, the projections (deterministic for a seed, cached
across starts), what a search lights up, the plotly figure, and /vocabulary_map through gradio_client."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core.embeddings.projection import pca
from core.embeddings.token_categories import categories
from core.embeddings.vocabulary import Vocabulary
from core.embeddings.vocabulary_map import VocabularyMap

MAP_ROWS = 1500  # the neighbour-preserving projection in tests runs on this many tokens; the full one is bench/'s
HOSTILE = "<img src=x onerror=alert(1)>"

SMOLLM2_PIECES = {  # byte-level BPE: piece → category
    "Ġking": "word-initial", "ĠMoscow": "word-initial", "izing": "continuation", "2": "digits & numbers",
    ".": "punctuation & symbols", "Ġ(": "punctuation & symbols", "Ċ": "whitespace", "ĠĊ": "whitespace",
    "ĠĠĠ": "code", "ĉ": "code", "==": "code", "->": "code", "();": "code", "<|im_end|>": "special",
    "<|endoftext|>": "special", "Ã": "byte", "ĠÐ": "byte",
}
SMOLLM2_TEXTS = {" о": "Cyrillic", " ε": "Greek", "م": "Arabic", "法": "CJK (Han)", "の": "Japanese kana",
                 "र": "Devanagari", "מ": "Hebrew"}
PHI3_PIECES = {  # SentencePiece: the same rules on `▁` pieces and byte fallback
    "▁king": "word-initial", "▁self": "word-initial", "izing": "continuation", "1": "digits & numbers",
    ".": "punctuation & symbols", "▁(": "punctuation & symbols", "▁": "whitespace", "▁▁▁▁": "code",
    "▁==": "code", "():": "code", "_{": "code", "<|end|>": "special", "<s>": "special", "<unk>": "special",
    "<0x0A>": "byte", "<0xF0>": "byte", "▁в": "Cyrillic", "▁Москва": "Cyrillic", "▁α": "Greek", "ا": "Arabic",
    "中": "CJK (Han)", "の": "Japanese kana",
}


def categories_of(vocabulary: Vocabulary) -> list[str]:
    return categories(vocabulary.texts, vocabulary.special_ids, vocabulary.byte_ids)


def test_categories_on_byte_level_bpe(parts):
    vocabulary = parts.index.vocabulary
    found = categories_of(vocabulary)
    assert {piece: found[vocabulary.vocab[piece]] for piece in SMOLLM2_PIECES} == SMOLLM2_PIECES
    assert {text: found[vocabulary.texts.index(text)] for text in SMOLLM2_TEXTS} == SMOLLM2_TEXTS
    assert found.count("special") == len(vocabulary.special_ids)


def test_categories_on_sentencepiece(phi3_tokenizer):
    vocabulary = Vocabulary(phi3_tokenizer, len(phi3_tokenizer))
    found = categories_of(vocabulary)
    assert {piece: found[vocabulary.vocab[piece]] for piece in PHI3_PIECES} == PHI3_PIECES
    assert found[32000:32011] == ["special"] * 11


def test_pca_is_deterministic_and_ordered(parts):
    rows = parts.index.unit_vectors[:MAP_ROWS]
    coords, explained = pca(rows, 3)
    again, _ = pca(rows.copy(), 3)
    assert coords.shape == (MAP_ROWS, 3) and coords.dtype == np.float32
    np.testing.assert_array_equal(coords, again)
    assert explained[0] > explained[1] > explained[2] > 0
    # the axes are the directions of most variance: the first axis's spread beats any other unit direction's
    centred = rows - rows.mean(axis=0)
    random_axis = np.random.default_rng(0).normal(size=rows.shape[1])
    assert coords[:, 0].var() > (centred @ (random_axis / np.linalg.norm(random_axis))).var()


@pytest.fixture(scope="module")
def umap_maps(parts, tmp_path_factory):
    """The same UMAP projection computed by two maps on two cache folders at once (two background processes)."""
    if not __import__("importlib").util.find_spec("umap"):
        pytest.skip("umap-learn is not installed (requirements.txt)")
    folders = [tmp_path_factory.mktemp("map-a"), tmp_path_factory.mktemp("map-b")]
    maps = [VocabularyMap(parts.index, folder, rows=MAP_ROWS) for folder in folders]
    first = [m.layout("umap", 2) for m in maps]  # starts both
    with ThreadPoolExecutor(2) as pool:
        states = list(pool.map(lambda m: m.wait(2, timeout=600), maps))
    yield maps, folders, first, states
    for m in maps:
        m.close()


def test_umap_shows_pca_until_ready_then_is_deterministic(umap_maps):
    maps, _, first, states = umap_maps
    assert states == ["ready", "ready"]
    for layout in first:  # asked before it was ready: PCA, and a sentence saying so
        assert (layout.method, layout.requested, layout.ready) == ("pca", "umap", False)
        assert "UMAP is being computed in the background" in layout.note and "Showing PCA" in layout.note
    a, b = (m.layout("umap", 2) for m in maps)
    assert a.ready and a.method == "umap" and a.coords.shape == (MAP_ROWS, 2)
    np.testing.assert_array_equal(a.coords, b.coords)  # same seed, separate processes: the same map
    assert np.isfinite(a.coords).all() and a.coords.std(axis=0).min() > 0


def test_a_second_start_reuses_the_cached_projection(umap_maps, parts):
    maps, folders, _, _ = umap_maps
    again = VocabularyMap(parts.index, folders[0], rows=MAP_ROWS)
    layout = again.layout("umap", 2)
    assert layout.ready and again.jobs_started == 0  # read from disk, no background process
    np.testing.assert_array_equal(layout.coords, maps[0].layout("umap", 2).coords)
    # another matrix (here: fewer rows) has another key, so it never reads this file
    other = VocabularyMap(parts.index, folders[0], rows=MAP_ROWS - 1)
    assert other.umap_state(2, start=False) == "not started"
    assert len(list((folders[0] / "vocab-maps").glob("*.npy"))) == 1  # the rows file was removed


def test_search_lights_up_the_query_and_its_exact_neighbours(parts):
    from demo.vocabulary_map_view import highlighted

    index = parts.index
    result = index.neighbors("king", k=5)
    lit = highlighted(result)
    king = index.vocabulary.vocab["Ġking"]
    assert lit[0] == (king, "query")
    assert [tid for tid, kind in lit if kind == "neighbour"] == [n.id for n in result.neighbors]
    _, ids = index.search(index.unit_vectors[king], k=40)  # exact top-k straight from the index
    assert {n.id for n in result.neighbors} <= set(ids[0].tolist())
    exact = index.unit_vectors[[n.id for n in result.neighbors]] @ index.unit_vectors[king]
    np.testing.assert_allclose([n.score for n in result.neighbors], exact, atol=1e-5)
    split = highlighted(index.neighbors("apologizing", k=3))
    assert [index.vocabulary.pieces[t] for t, kind in split if kind == "query"] == ["Ġapolog", "izing"]
    analogy = highlighted(index.analogy("king, woman", "man", k=3))
    kinds = [kind for _, kind in analogy]
    assert kinds == ["positive", "positive", "negative", "answer", "answer", "answer"]
    assert index.vocabulary.vocab["Ġqueen"] in [t for t, kind in analogy if kind == "answer"]


def test_figure_is_webgl_by_category_and_escapes_pieces(bundled_host):
    from demo.vocabulary_map_view import HOVER_TEMPLATE, map_figure, plotly_text

    vmap = bundled_host.vocabulary_map()
    layout = vmap.layout("pca", 2)
    figure = json.loads(map_figure(vmap, layout, bundled_host.require().index.neighbors("king", k=5)).plot)
    base = [t for t in figure["data"] if t["type"] == "scattergl"]
    assert sum(len(t["hovertext"]) for t in base) == vmap.size == 49_152
    assert [t["name"].rsplit(" (", 1)[0] for t in base] == vmap.legend
    assert base[0]["x"]["dtype"] == "f4" and base[0]["customdata"]["dtype"] == "i4"
    lit = [t for t in figure["data"] if t["type"] == "scatter"]
    assert [t["name"] for t in lit] == ["query", "neighbour"] and lit[0]["text"] == ["␣king"]
    assert plotly_text(HOSTILE) == "&lt;img src=x onerror=alert(1)&gt;"
    hover = [h for t in base for h in t["hovertext"]]
    assert not any("<" in h or ">" in h for h in hover)  # every piece's markup characters are entities
    special = next(t for t in base if t["name"].startswith("special"))
    ids = np.frombuffer(base64.b64decode(special["customdata"]["bdata"]), "<i4").tolist()
    assert special["hovertext"][ids.index(2)] == "&lt;|im_end|&gt;"  # each piece beside its id
    assert {t["hovertemplate"] for t in figure["data"]} == {HOVER_TEMPLATE}  # piece · #id, the category beside
    three = json.loads(map_figure(vmap, vmap.layout("pca", 3)).plot)
    assert {t["type"] for t in three["data"]} == {"scatter3d"} and "z" in three["data"][0]


def test_vocabulary_map_endpoint(client):
    result = client.predict("pca", 50, 2, api_name="/vocabulary_map")
    assert set(result) == {"projection", "requested", "ready", "note", "tokens", "ids", "pieces", "categories",
                           "coordinates"}
    assert (result["projection"], result["ready"], result["tokens"]) == ("pca", True, 49_152)
    assert result["ids"] == list(range(50)) and len(result["coordinates"]) == 50
    assert result["pieces"][2] == "<|im_end|>" and result["categories"][2] == "special"
    assert all(len(xy) == 2 for xy in result["coordinates"])
    three = client.predict("pca", 3, 3, api_name="/vocabulary_map")
    assert all(len(xyz) == 3 for xyz in three["coordinates"])


def test_vocabulary_map_endpoint_errors_and_docs(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="projection must be one of pca, umap; got 'tsne'"):
        client.predict("tsne", 10, 2, api_name="/vocabulary_map")
    with pytest.raises(AppError, match="limit must be a whole number from 1 to 49,152; got the number 0"):
        client.predict("pca", 0, 2, api_name="/vocabulary_map")
    with pytest.raises(AppError, match="dims must be a whole number from 2 to 3"):
        client.predict("pca", 10, 4, api_name="/vocabulary_map")
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/vocabulary_map"]
    assert [p["parameter_name"] for p in api["parameters"]] == ["projection", "limit", "dims"]
    assert [p["parameter_default"] for p in api["parameters"]] == ["pca", 1000, 2]
    assert "categor" in api["description"]


def test_map_projection_flag_and_environment():
    from core.config import AppConfig

    assert AppConfig.from_args([], env={}).map_projection == "umap"
    assert AppConfig.from_args(["--map-projection", "pca"], env={}).map_projection == "pca"
    assert AppConfig.from_args([], env={"TOKEN_LAB_MAP_PROJECTION": "pca"}).map_projection == "pca"
    with pytest.raises(SystemExit):
        AppConfig.from_args([], env={"TOKEN_LAB_MAP_PROJECTION": "tsne"})
