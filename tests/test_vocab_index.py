"""VocabIndex on real models: the bundled SmolLM2-135M and a Phi-3-faithful tiny model (32064 rows, 32011 tokens)."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from core.embeddings import search
from core.embeddings.index import MAX_K, VocabIndex
from core.embeddings.search import SMALL_BATCH, gpu_available
from core.embeddings.vocabulary import variant_key
from core.errors import InvalidInputError
from demo.embeddings_tab import describe_term, vector_note
from demo.token_view import piece_shown

WORDS = ["king", "Paris", "swim", "computer", "happy", "the", "apologizing"]


@pytest.fixture(scope="module")
def index(bundled) -> VocabIndex:
    return VocabIndex.from_model(bundled.model, bundled.tokenizer, use_gpu=False)


@pytest.fixture(scope="module")
def unit(bundled) -> np.ndarray:
    """Exact brute-force reference: the embedding rows, L2-normalised, in float64."""
    weight = bundled.model.get_input_embeddings().weight.detach().double().numpy()
    return weight / np.linalg.norm(weight, axis=1, keepdims=True)


def texts(result) -> list[str]:
    return [n.text for n in result.neighbors]


# -- the bundled model -------------------------------------------------------------------------------------------

def test_index_facts(index, bundled):
    assert index.size == len(bundled.tokenizer) == 49152
    assert index.dim == 576
    assert index.build_seconds > 0
    assert index.memory_bytes >= 49152 * 576 * 4
    assert index.device == "cpu"
    assert "49,152 tokens" in index.describe()


def test_queen_among_the_ten_nearest_of_king(index):
    result = index.neighbors("king", k=10)
    assert result.query_tokens == ["Ġking"]
    assert " queen" in texts(result)
    # the query's own token and its case, leading-space and plural variants are left out
    assert not {" king", " King", "King", "king", " kings", " Kings"} & set(texts(result))
    assert [n.rank for n in result.neighbors] == list(range(1, 11))
    scores = [n.score for n in result.neighbors]
    assert scores == sorted(scores, reverse=True)


def test_variants_come_back_when_not_excluded(index):
    result = index.neighbors("king", k=5, exclude_variants=False)
    assert {" King", "King", " kings"} <= set(texts(result))
    assert 4197 not in [n.id for n in result.neighbors]  # but never the query token itself


def test_group_variants_folds_case_space_and_plural(index):
    result = index.neighbors("king", k=10, group_variants=True)
    keys = [variant_key(n.text) for n in result.neighbors]
    assert len(keys) == len(set(keys)) == 10
    queen = next(n for n in result.neighbors if n.text == " queen")
    assert {" Queen", "Queen"} <= {v.text for v in queen.variants}


def test_king_minus_man_plus_woman_is_queen(index):
    for method in ("3cosadd", "3cosmul"):
        result = index.analogy("king, woman", "man", k=3, method=method)
        assert " queen" in texts(result), method
        assert result.query_tokens == ["Ġking", "Ġwoman", "Ġman"]
        assert not {" king", " woman", " man", " King", " Woman"} & set(texts(result))


def test_walked_minus_walk_plus_swim_is_swam(index):
    assert texts(index.analogy(["walked", "swim"], ["walk"], k=1)) == [" swam"]


def brute_force(index, bundled, metric: str) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Queries (a few words, a split word being the mean of its pieces; 60 random tokens, which a quantized scan
    alone misorders; special tokens, whose many near-identical neighbours widen the scan) and their exact float64
    scores against every token in the metric's space: (terms, queries, scores)."""
    raw = bundled.model.get_input_embeddings().weight.detach().double().numpy()
    shift = raw.mean(axis=0) if metric == "centered" else 0.0
    space = raw - shift
    terms = [index.resolve(w).ids for w in WORDS] + [[int(i)] for i in np.random.default_rng(0).choice(49152, 60)]
    terms += [[0], [2], [16]]
    queries = np.stack([raw[ids].mean(axis=0) for ids in terms]) - shift
    if metric != "inner_product":
        space = space / np.linalg.norm(space, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return terms, queries, queries @ space.T


def assert_exact_top10(scores: np.ndarray, got: np.ndarray, label: object) -> None:
    """Exact up to ties (untrained tokens share identical rows): the returned ids score the true top 10."""
    assert len(set(got.tolist())) == 10
    assert scores[got] == pytest.approx(-np.sort(-scores)[:10], abs=1e-6), label


@pytest.mark.parametrize("metric", ["cosine", "centered", "inner_product"])
def test_top10_equals_exact_brute_force(index, bundled, metric):
    """The 8-bit scan + float32 re-rank (single queries) and the flat index (batches) are both exact."""
    terms, queries, scores = brute_force(index, bundled, metric)
    for row, query in enumerate(queries):  # single queries: the sharded 8-bit scan + float32 re-rank
        assert_exact_top10(scores[row], index.search(query, 10, metric=metric)[1][0], terms[row])
    assert len(queries) >= SMALL_BATCH  # a batch big enough for the flat path
    for row, got in enumerate(index.search(queries, 10, metric=metric)[1]):
        assert_exact_top10(scores[row], got, terms[row])


def test_scan_widens_until_provably_exact(index, bundled, monkeypatch):
    """With no spare candidates, exactness rests on the error bound alone: the scan must widen where needed."""
    monkeypatch.setattr(search, "RERANK_MARGIN", 0)
    space = index._space("cosine")
    scans = []
    real_scan = space._scan
    monkeypatch.setattr(space, "_scan", lambda queries, fetch: scans.append(fetch) or real_scan(queries, fetch))
    terms, queries, scores = brute_force(index, bundled, "cosine")
    for row, query in enumerate(queries):
        assert_exact_top10(scores[row], index.search(query, 10)[1][0], terms[row])
    assert len(scans) > len(queries) and max(scans) > 10  # some queries needed a wider scan


def test_multi_token_word_is_the_mean_of_its_pieces(index, bundled):
    result = index.neighbors("apologizing", k=5)
    assert result.query_tokens == ["Ġapolog", "izing"]
    assert result.terms[0].is_split
    assert "mean of 2 tokens" in describe_term(result.terms[0])
    assert not {"Ġapolog", "izing"} & {n.piece for n in result.neighbors}
    pieces = result.terms[0].ids
    weight = bundled.model.get_input_embeddings().weight.detach().float().numpy()
    mean = weight[pieces].mean(axis=0)
    top = index.search(mean / np.linalg.norm(mean), 12)[1][0].tolist()
    assert [n.id for n in result.neighbors] == [i for i in top if i not in pieces][:5]


def test_query_forms(index):
    assert index.resolve("#4197").pieces == ["Ġking"]
    assert index.resolve(" king ").pieces == ["Ġking"]
    assert index.resolve("Ġking").pieces == ["Ġking"]
    assert index.resolve("king", exact=True).pieces == ["king"]  # the word-internal piece
    assert index.resolve(" king", exact=True).pieces == ["Ġking"]
    assert index.resolve("<|im_end|>").ids == [2]
    assert index.neighbors("#4197", k=3).neighbors == index.neighbors("king", k=3).neighbors


def test_special_and_byte_tokens_hidden(index):
    result = index.neighbors("<|im_end|>", k=50)
    assert not {n.id for n in result.neighbors} & (index.vocabulary.special_ids | index.vocabulary.byte_ids)
    shown = index.neighbors("<|im_end|>", k=50, hide_special=False)
    hidden = index.vocabulary.special_ids | index.vocabulary.byte_ids
    assert {n.id for n in shown.neighbors} & hidden  # the switch does something


def test_similarity_and_odd_one_out(index, unit):
    sim = index.similarity("king", "queen")
    assert sim.score == pytest.approx(float(unit[4197] @ unit[15731]), abs=1e-5)
    assert sim.to_dict() == {"a": "king", "b": "queen", "cosine": sim.score}
    assert index.similarity("king", "queen").score > index.similarity("king", "banana").score
    odd = index.doesnt_match("breakfast, cereal, dinner, lunch")
    assert odd.odd == "cereal"
    assert len(odd.similarity_to_mean) == 4


def test_vector_view_flags_outlier_norms(index, bundled):
    weight = bundled.model.get_input_embeddings().weight.detach().float().numpy()
    norms = np.linalg.norm(weight, axis=1)
    info = index.vector("king", dims=8)
    assert info.values == pytest.approx(weight[4197, :8].tolist(), abs=1e-5)
    assert info.norm == pytest.approx(float(norms[4197]), rel=1e-5)
    assert not info.outlier
    biggest = int(np.argmax(norms))
    z = (norms[biggest] - norms.mean()) / norms.std()
    assert z > 3
    flagged = index.vector(f"#{biggest}")
    assert flagged.outlier and flagged.pieces[0].z_score == pytest.approx(z, rel=1e-3)
    assert "unusually large norm" in vector_note(flagged)


def test_pca_map_keeps_distances_of_three_points(index, unit):
    """Three points span a plane, so a correct 2D PCA keeps their pairwise distances exactly."""
    pca = index.pca_map(["king", "queen", "#555"], kinds=["a", "b", "c"])
    assert [piece_shown(p.term.tokens[0].text, p.term.tokens[0].piece) for p in pca.points] == ["␣king", "␣queen",
                                                                                                 "␣man"]
    assert [p.kind for p in pca.points] == ["a", "b", "c"]
    xy = np.array([[p.x, p.y] for p in pca.points])
    full = unit[[4197, 15731, 555]]
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert np.linalg.norm(xy[i] - xy[j]) == pytest.approx(np.linalg.norm(full[i] - full[j]), rel=1e-4)
    assert sum(pca.explained_variance) == pytest.approx(1.0)
    assert len(index.pca_map(["king", "#4197", "queen"]).points) == 2  # duplicates dropped


@pytest.mark.parametrize(("call", "message"), [
    (lambda ix: ix.neighbors(""), "Type a word"),
    (lambda ix: ix.neighbors("   "), "Type a word"),
    (lambda ix: ix.neighbors("#49152"), "not in the vocabulary"),
    (lambda ix: ix.neighbors("king", k=0), "k must be a whole number from 1 to 200; got the number 0"),
    (lambda ix: ix.neighbors("king", k=201), "k must be a whole number from 1 to 200; got the number 201"),
    (lambda ix: ix.neighbors("king", k=True), "k must be a whole number from 1 to 200; got true"),
    (lambda ix: ix.neighbors("king", metric="euclid"), "metric must be one of cosine, centered, inner_product"),
    (lambda ix: ix.neighbors("x" * 500), "A query is 500 characters; the limit is 100"),
    (lambda ix: ix.neighbors("#-5"), "Token ids are written #1234, a whole number from 0 to 49,151; got '#-5'"),
    (lambda ix: ix.neighbors("#1e3"), "Token ids are written #1234"),
    (lambda ix: ix.neighbors("#\u0663"), "Token ids are written #1234"),
    (lambda ix: ix.neighbors("\ud800"), "unpaired surrogate"),
    (lambda ix: ix.analogy("", "man"), "at least one positive"),
    (lambda ix: ix.analogy("king", "man", method="vectors"), "method must be one of 3cosadd, 3cosmul"),
    (lambda ix: ix.analogy(["king", 5], "man"), "must hold words"),
    (lambda ix: ix.doesnt_match("king, queen"), "at least three"),
    (lambda ix: ix.pca_map(["king"]), "at least two"),
])
def test_bad_queries_raise_clear_errors(index, call, message):
    with pytest.raises(InvalidInputError, match=message):
        call(index)


def test_k_up_to_the_limit_is_served(index):
    assert len(index.neighbors("king", k=MAX_K).neighbors) == MAX_K


def test_concurrent_searches_agree(index):
    expected = {w: index.neighbors(w, k=10).neighbors for w in WORDS}
    errors: list[str] = []

    def worker() -> None:
        for _ in range(5):
            for w in WORDS:
                if index.neighbors(w, k=10).neighbors != expected[w]:
                    errors.append(w)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_helpers():
    assert piece_shown(" a\tb\n", "Ġa") == "␣a→b↵"
    assert piece_shown("\x00", "<0x00>") == "␀"
    assert piece_shown("\ufffd", "<0xF0>") == "<0xF0>"
    assert {variant_key(t) for t in [" King", "king", "kings", " KINGS"]} == {"king"}
    assert variant_key(" boxes") == "box"
    assert variant_key(" class") == "class"


# -- a Phi-3-faithful model ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phi3_index(phi3_tiny) -> VocabIndex:
    return VocabIndex.from_model(phi3_tiny.model, phi3_tiny.tokenizer, use_gpu=False)


@pytest.fixture(scope="module")
def phi3_trap(phi3_tiny):
    """The tiny Phi-3 with every special, byte and padding row set right next to ▁king: a search around ▁king
    finds them first unless padding rows are left out of the index and special/byte tokens are filtered."""
    model = copy.deepcopy(phi3_tiny.model)
    king = phi3_tiny.tokenizer.convert_tokens_to_ids("▁king")
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        trap = list(range(3, 259)) + list(range(32000, 32064))  # <0x00>..<0xFF>, specials 32000-32010, padding
        torch.manual_seed(1)
        emb[trap] = emb[king] + 1e-3 * torch.randn(len(trap), emb.shape[1])
    return VocabIndex.from_model(model, phi3_tiny.tokenizer, use_gpu=False), king


def test_phi3_indexes_real_tokens_only(phi3_index, phi3_tiny):
    assert phi3_tiny.model.get_input_embeddings().weight.shape[0] == 32064
    assert phi3_index.size == len(phi3_tiny.tokenizer) == 32011
    assert set(range(32000, 32011)) <= phi3_index.vocabulary.special_ids
    assert {3, 13, 258} <= phi3_index.vocabulary.byte_ids  # <0x00>, <0x0A>, <0xFF>


def test_phi3_padding_rows_and_special_tokens_never_returned(phi3_trap):
    index, king = phi3_trap
    result = index.neighbors("king", k=100, exclude_variants=False)
    ids = [n.id for n in result.neighbors]
    assert max(ids) < 32011
    assert not set(ids) & index.vocabulary.special_ids
    assert not {n.piece for n in result.neighbors if n.piece.startswith("<0x")}
    # the trap is real: without the filter, special and byte tokens fill the top; padding rows are not indexed at all
    unfiltered = {n.id for n in index.neighbors("king", k=100, hide_special=False).neighbors}
    assert unfiltered <= set(range(3, 259)) | set(range(32000, 32011))
    assert unfiltered & index.vocabulary.special_ids
    _, raw = index.search(index.unit_vectors[[king]], 400)
    assert raw.max() < 32011


def test_phi3_king_resolves_to_word_initial_piece(phi3_index):
    assert phi3_index.neighbors("king", k=3).query_tokens == ["▁king"]
    assert phi3_index.resolve("king", exact=True).pieces == ["king"]
    assert phi3_index.resolve("#32007").pieces == ["<|end|>"]
    with pytest.raises(InvalidInputError, match="not in the vocabulary"):
        phi3_index.resolve("#32011")  # a padding row, not a token


def test_phi3_multi_token_word_reports_its_split(phi3_index):
    result = phi3_index.neighbors("apologizing", k=3)
    assert result.query_tokens == ["▁apolog", "izing"]
    assert result.to_dict()["query_tokens"] == ["▁apolog", "izing"]
    assert phi3_index.resolve("🎵").pieces == ["▁", "<0xF0>", "<0x9F>", "<0x8E>", "<0xB5>"]


def test_phi3_token_texts_keep_leading_spaces(phi3_index):
    token = phi3_index.token(phi3_index.resolve("king").ids[0])
    assert (token.piece, token.text, piece_shown(token.text, token.piece)) == ("▁king", " king", "␣king")
    newline = phi3_index.token(13)  # <0x0A> is a whole character
    assert piece_shown(newline.text, newline.piece) == "↵"
    partial = phi3_index.token(3 + 0xF0)  # a partial character shows its piece
    assert piece_shown(partial.text, partial.piece) == "<0xF0>"


# -- GPU (the GPU index itself: tests/test_vocab_index_gpu.py) --------------------------------------------------------

@pytest.mark.skipif(gpu_available(), reason="checks the error raised when no GPU is available")
def test_use_gpu_without_a_gpu_is_an_error(bundled):
    with pytest.raises(RuntimeError, match="not available"):
        VocabIndex.from_model(bundled.model, bundled.tokenizer, use_gpu=True)



def test_vocabulary_tables_are_cached_and_keyed_by_tokenizer(bundled, phi3_tiny, tmp_path):
    from core.embeddings.index import VocabIndex

    fresh = VocabIndex.from_model(bundled.model, bundled.tokenizer, use_gpu=False, cache_dir=tmp_path)
    again = VocabIndex.from_model(bundled.model, bundled.tokenizer, use_gpu=False, cache_dir=tmp_path)
    assert not fresh.vocabulary.from_cache and again.vocabulary.from_cache
    for name in ("pieces", "texts", "keys", "special_ids", "byte_ids", "vocab", "anchor"):
        assert getattr(again.vocabulary, name) == getattr(fresh.vocabulary, name), name
    assert [n.text for n in again.neighbors("king").neighbors] == [n.text for n in fresh.neighbors("king").neighbors]
    other = VocabIndex.from_model(phi3_tiny.model, phi3_tiny.tokenizer, use_gpu=False, cache_dir=tmp_path)
    assert not other.vocabulary.from_cache and other.vocabulary.pieces[:3] != fresh.vocabulary.pieces[:3]
