"""The model's vocabulary in its own input embedding space: nearest tokens, analogies, similarity, odd one out,
vector facts and 2D maps.

Only the real tokens of the input embedding matrix are indexed (Phi-3 pads 32,011 tokens to 32,064 rows). Cosine
similarity is an inner product on L2-normalised float32 vectors; the centred space subtracts the mean embedding first.
Each space is searched exactly (core/embeddings/search.py); words become tokens as core/embeddings/queries.py reads
them, and a word split into several tokens is the mean of its pieces:

    index = VocabIndex.from_model(loaded.model, loaded.tokenizer)
    [n.text for n in index.neighbors("king", k=4).neighbors]
    # [' queen', ' Queen', ' emperor', ' prince']
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from core import checks
from core.embeddings.queries import MAX_TERMS, ResolvedQuery, resolve, resolve_terms
from core.embeddings.results import (
    MapPoint,
    Neighbor,
    NeighborResult,
    OddOneOut,
    PcaMap,
    PieceNorm,
    Similarity,
    VectorInfo,
)
from core.embeddings.search import MAX_SHARDS, ExactSearch, GpuContext, gpu_available
from core.embeddings.vocabulary import TokenInfo, Vocabulary, case_key, variant_key
from core.errors import InvalidInputError

METRICS = ("cosine", "centered", "inner_product")
_METRIC_ALIASES = {"cos": "cosine", "centred": "centered", "centered_cosine": "centered", "centred_cosine": "centered",
                   "centered cosine": "centered", "centred cosine": "centered", "inner product": "inner_product",
                   "ip": "inner_product", "dot": "inner_product"}
ANALOGY_METHODS = ("3cosadd", "3cosmul")
MAX_K = 200  # the most neighbours one request may ask for
OUTLIER_Z = 3.0  # a norm this many standard deviations from the mean is an outlier
COSMUL_EPS = 1e-6  # as gensim's most_similar_cosmul (Levy & Goldberg 2014 used 1e-3)


def normalize_metric(metric: str | None) -> str:
    """`cosine` (also for None), `centered` (alias `centred`) or `inner_product` (alias `ip`); anything else is an
    InvalidInputError."""
    return checks.choice("cosine" if metric is None else metric, "metric", METRICS, _METRIC_ALIASES)


class VocabIndex:
    """Nearest-neighbour search over a model's token embeddings. Build it with `VocabIndex.from_model`."""

    def __init__(self, embeddings: np.ndarray, tokenizer: Any, use_gpu: bool | None = None, gpu_device: int = 0,
                 cache_dir: Path | None = None) -> None:
        start = time.perf_counter()
        raw = np.asarray(embeddings, dtype=np.float32)
        self.size, self.dim = raw.shape
        if self.size == 0:
            raise ValueError("the embedding matrix has no rows")
        if use_gpu is None:
            use_gpu = gpu_available()
        if use_gpu and not gpu_available():
            raise RuntimeError("use_gpu=True, but CUDA or FAISS GPU support is not available")
        self._gpu = GpuContext(gpu_device) if use_gpu else None
        self.shards = 1 if use_gpu else max(1, min(faiss.omp_get_max_threads(), MAX_SHARDS))
        # one thread per shard, each running FAISS with a single OpenMP thread: no nested thread teams
        self._pool = None
        if self.shards > 1:
            self._pool = ThreadPoolExecutor(self.shards, thread_name_prefix="vocab-index",
                                            initializer=faiss.omp_set_num_threads, initargs=(1,))
        norms = np.linalg.norm(raw, axis=1).astype(np.float32)
        self.norms = norms
        self.norm_mean, self.norm_std = float(norms.mean()), float(norms.std()) or 1.0
        self.mean = raw.mean(axis=0).astype(np.float32)
        safe = np.where(norms > 0, norms, 1.0)[:, None]
        self._spaces: dict[str, ExactSearch] = {"cosine": self._searcher(raw / safe)}
        self._space_lock = threading.Lock()
        self.vocabulary = Vocabulary(tokenizer, self.size, cache_dir)
        self.build_seconds = time.perf_counter() - start

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, use_gpu: bool | None = None,
                   cache_dir: Path | None = None) -> VocabIndex:
        """Index the real-token rows (ids < len(tokenizer)) of `model.get_input_embeddings().weight`.

        `use_gpu`: None = a GPU index when CUDA and FAISS GPU support exist; True requires it; False = CPU.
        """
        weight = model.get_input_embeddings().weight.detach()
        rows = min(len(tokenizer), weight.shape[0])
        device = weight.device.index if weight.device.type == "cuda" and weight.device.index is not None else 0
        matrix = weight[:rows].to(device="cpu", dtype=torch.float32).numpy()
        return cls(matrix, tokenizer, use_gpu=use_gpu, gpu_device=device, cache_dir=cache_dir)

    def _searcher(self, matrix: np.ndarray) -> ExactSearch:
        return ExactSearch(matrix, self._gpu, self._pool, self.shards)

    # -- facts -----------------------------------------------------------------------------------------------------

    def token(self, token_id: int) -> TokenInfo:
        return self.vocabulary.token(token_id)

    @property
    def device(self) -> str:
        return f"cuda:{self._gpu.device}" if self._gpu is not None else "cpu"

    @property
    def memory_bytes(self) -> int:
        """Host memory of the indexes and their float32 vectors (all spaces built so far)."""
        return sum(s.cpu_bytes for s in self._spaces.values()) + self.size * 4

    @property
    def gpu_memory_bytes(self) -> int:
        return sum(s.gpu_bytes for s in self._spaces.values())

    def describe(self) -> str:
        """One line for the status: size, design, memory and build time."""
        if self._gpu is not None:
            design = f"FAISS GPU flat index on {self.device}"
            memory = f"{self.memory_bytes / 2**20:.0f} MiB host + {self.gpu_memory_bytes / 2**20:.0f} MiB GPU"
        else:
            design = f"FAISS CPU: 8-bit scan in {self.shards} shard(s) + exact float32 re-rank"
            memory = f"{self.memory_bytes / 2**20:.0f} MiB"
        return (f"{self.size:,} tokens × {self.dim} dims, {design}, {memory}, "
                f"spaces built: {', '.join(self._spaces)}; built in {self.build_seconds:.2f} s")

    # -- spaces ------------------------------------------------------------------------------------------------------

    def _space(self, metric: str) -> ExactSearch:
        metric = normalize_metric(metric)
        space = self._spaces.get(metric)
        if space is not None:
            return space
        with self._space_lock:
            if metric not in self._spaces:
                raw = self._spaces["cosine"].matrix * self.norms[:, None]
                if metric == "centered":
                    raw -= self.mean
                    norms = np.linalg.norm(raw, axis=1)
                    raw /= np.where(norms > 0, norms, 1.0)[:, None]
                self._spaces[metric] = self._searcher(raw)
            return self._spaces[metric]

    @property
    def unit_vectors(self) -> np.ndarray:
        """The L2-normalised float32 embedding rows (a read-only view of the cosine space's matrix)."""
        view = self._spaces["cosine"].matrix.view()
        view.flags.writeable = False
        return view

    @property
    def unit_tensor(self) -> torch.Tensor:
        """The same rows as a CPU torch tensor sharing their memory, for scores over every token at once (3CosMul)."""
        return torch.from_numpy(self._spaces["cosine"].matrix)

    def raw_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The original embedding rows (float32) of `ids`."""
        idx = np.asarray(ids, dtype=np.int64)
        return self._spaces["cosine"].matrix[idx] * self.norms[idx, None]

    def _query_vector(self, ids: Sequence[int], metric: str) -> np.ndarray:
        """The query's vector in a metric's space: the mean of its raw rows, then centred and/or normalised."""
        vec = self.raw_vectors(ids).mean(axis=0)
        if metric == "centered":
            vec = vec - self.mean
        if metric != "inner_product":
            norm = float(np.linalg.norm(vec))
            vec = vec / norm if norm > 0 else vec
        return vec.astype(np.float32)

    def search(self, queries: np.ndarray, k: int = 10, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
        """Raw exact search: top-k (scores, ids) for each row of `queries` (already in the metric's space:
        L2-normalised for cosine). No exclusions or filters; `k` is capped to what the index supports."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise InvalidInputError(f"queries have {queries.shape[1]} dimensions; the index has {self.dim}")
        return self._space(metric).search(queries, k)

    # -- queries ---------------------------------------------------------------------------------------------------

    def resolve(self, query: str | int, exact: bool = False) -> ResolvedQuery:
        """A word → its word-initial token(s); `exact` → the piece as typed; `#1234` or an int → that token id."""
        return resolve(self.vocabulary, query, exact)

    def _check_k(self, k: int) -> int:
        return min(checks.integer(k, "k", 1, MAX_K), self.size)

    def _excluded_keys(self, terms: Iterable[ResolvedQuery]) -> set[str]:
        """The variant keys (case, leading space, plural) of the terms: what a neighbour list leaves out."""
        keys: set[str] = set()
        for term in terms:
            keys.add(variant_key("".join(t.text for t in term.tokens)))
            keys.add(variant_key(term.query))
            keys.update(self.vocabulary.keys[i] for i in term.ids)
        return keys

    def _case_keys(self, terms: Iterable[ResolvedQuery]) -> set[str]:
        """The case keys of the terms: the spellings gensim keeps out of an analogy's answers (not plurals)."""
        keys: set[str] = set()
        for term in terms:
            keys.add(case_key("".join(t.text for t in term.tokens)))
            keys.add(case_key(term.query))
            keys.update(case_key(self.vocabulary.texts[i]) for i in term.ids)
        return keys

    # -- neighbours ----------------------------------------------------------------------------------------------

    def _collect(self, ranked: Callable[[int], tuple[np.ndarray, np.ndarray]], k: int, skip: Callable[[int], bool],
                 group_variants: bool, cap: int) -> tuple[list[Neighbor], list[TokenInfo]]:
        """Walk ranked candidates, skipping and folding, fetching more until k rows are found or none are left."""
        fetch = min(cap, 2 * k + 64)
        while True:
            scores, ids = ranked(fetch)
            rows: list[Neighbor] = []
            by_key: dict[str, Neighbor] = {}
            excluded: list[TokenInfo] = []
            for score, tid in zip(scores.tolist(), ids.tolist(), strict=True):
                if tid < 0:
                    continue
                if skip(tid):
                    if len(excluded) < 50 and not self.vocabulary.is_hidden(tid):
                        excluded.append(self.vocabulary.token(tid))
                    continue
                if group_variants and self.vocabulary.keys[tid] in by_key:
                    by_key[self.vocabulary.keys[tid]].variants.append(self.vocabulary.token(tid))
                    continue
                if len(rows) == k:
                    continue
                info = self.vocabulary.token(tid)
                row = Neighbor(len(rows) + 1, tid, info.piece, info.text, float(score))
                rows.append(row)
                by_key[self.vocabulary.keys[tid]] = row
            if len(rows) >= k or fetch >= cap:
                return rows, excluded
            fetch = min(cap, fetch * 4)

    def neighbors(self, query: str | int, k: int = 10, metric: str = "cosine", exclude_variants: bool = True,
                  group_variants: bool = False, hide_special: bool = True, exact: bool = False) -> NeighborResult:
        """The k tokens nearest to `query`, without the query's own tokens (and, by default, their case,
        leading-space and plural variants). `group_variants` folds variants of each neighbour into one row;
        `hide_special` skips special and byte tokens."""
        metric = normalize_metric(metric)
        k = self._check_k(k)
        term = self.resolve(query, exact=exact)
        own = set(term.ids)
        keys = self._excluded_keys([term]) if exclude_variants else set()
        space = self._space(metric)
        vec = self._query_vector(term.ids, metric)[None]

        def skip(tid: int) -> bool:
            return tid in own or (hide_special and self.vocabulary.is_hidden(tid)) or self.vocabulary.keys[tid] in keys

        def ranked(fetch: int) -> tuple[np.ndarray, np.ndarray]:
            scores, ids = space.search(vec, fetch)
            return scores[0], ids[0]

        rows, excluded = self._collect(ranked, k, skip, group_variants, space.max_k)
        return NeighborResult(term.query, [term], metric, rows, excluded)

    def analogy(self, positive: str | Sequence[str], negative: str | Sequence[str] | None = None, k: int = 10,
                method: str = "3cosadd", group_variants: bool = False, hide_special: bool = True,
                exact: bool = False) -> NeighborResult:
        """Tokens nearest to sum(positive) − sum(negative), as gensim's most_similar (3CosAdd: the mean of unit
        vectors with weights +1/−1) or most_similar_cosmul (3CosMul, Levy & Goldberg 2014). The input words and
        their case and leading-space variants are excluded, as gensim's evaluate_word_analogies excludes them; their
        plurals are not, so cat : cats :: dog : ? can answer dogs. Lists may be comma-separated strings."""
        method = checks.choice("3cosadd" if method is None else method, "method", ANALOGY_METHODS)
        k = self._check_k(k)
        pos = resolve_terms(self.vocabulary, positive, exact, "positive")
        neg = resolve_terms(self.vocabulary, negative, exact, "negative")
        if not pos:
            raise InvalidInputError("Give at least one positive word, e.g. king, woman (and man as negative).")
        terms = pos + neg
        if len(terms) > MAX_TERMS:
            raise InvalidInputError(f"At most {MAX_TERMS} words in an analogy ({len(terms)} given).")
        own = {i for t in terms for i in t.ids}
        keys = self._case_keys(terms)
        space = self._spaces["cosine"]
        pos_vecs = np.stack([self._query_vector(t.ids, "cosine") for t in pos])
        neg_vecs = np.stack([self._query_vector(t.ids, "cosine") for t in neg]) if neg else np.zeros((0, self.dim))

        def skip(tid: int) -> bool:
            return (tid in own or case_key(self.vocabulary.texts[tid]) in keys
                    or (hide_special and self.vocabulary.is_hidden(tid)))

        if method == "3cosadd":
            vec = (pos_vecs.sum(axis=0) - neg_vecs.sum(axis=0)) / len(terms)
            norm = float(np.linalg.norm(vec))
            if norm == 0:
                raise InvalidInputError("The positive and negative words cancel out; change one of them.")
            vec = (vec / norm).astype(np.float32)[None]

            def ranked(fetch: int) -> tuple[np.ndarray, np.ndarray]:
                scores, ids = space.search(vec, fetch)
                return scores[0], ids[0]
            cap = space.max_k
        else:
            # 3CosMul scores every token (a few matrix-vector products), like gensim's most_similar_cosmul
            sims = (space.matrix @ np.concatenate([pos_vecs, neg_vecs]).astype(np.float32).T + 1.0) / 2.0
            score = sims[:, :len(pos)].prod(axis=1) / (sims[:, len(pos):].prod(axis=1) + COSMUL_EPS)
            order = np.argsort(-score, kind="stable")

            def ranked(fetch: int) -> tuple[np.ndarray, np.ndarray]:
                return score[order[:fetch]], order[:fetch]
            cap = self.size
        rows, excluded = self._collect(ranked, k, skip, group_variants, cap)
        label = " + ".join(t.query for t in pos) + "".join(f" − {t.query}" for t in neg)
        return NeighborResult(label, terms, "cosine", rows, excluded, method=method, positive_terms=len(pos))

    # -- similarity, odd one out, vectors, maps ----------------------------------------------------------------

    def similarity(self, a: str | int, b: str | int, metric: str = "cosine", exact: bool = False) -> Similarity:
        """Cosine (or centred cosine, or inner product) of two queries' vectors."""
        metric = normalize_metric(metric)
        ra, rb = self.resolve(a, exact=exact), self.resolve(b, exact=exact)
        score = float(self._query_vector(ra.ids, metric) @ self._query_vector(rb.ids, metric))
        return Similarity(ra, rb, score, metric)

    def doesnt_match(self, words: str | Sequence[str], metric: str = "cosine", exact: bool = False) -> OddOneOut:
        """The word least similar to the mean of all of them (gensim's doesnt_match), e.g. breakfast cereal dinner
        lunch → cereal. `words` may be a comma-separated string."""
        metric = normalize_metric(metric)
        if metric == "inner_product":
            metric = "cosine"
        terms = resolve_terms(self.vocabulary, words, exact, "words")
        if len({tuple(t.ids) for t in terms}) < 3:
            raise InvalidInputError("Give at least three different words, separated by commas.")
        vecs = np.stack([self._query_vector(t.ids, metric) for t in terms])
        mean = vecs.mean(axis=0)
        mean /= np.linalg.norm(mean) or 1.0
        sims = vecs @ mean
        return OddOneOut(terms, terms[int(np.argmin(sims))].query, [float(s) for s in sims])

    def vector(self, query: str | int, dims: int = 32, exact: bool = False) -> VectorInfo:
        """The raw embedding: norm, first `dims` values, and whether a token's norm is an outlier (|z| ≥ 3;
        under-trained "glitch" tokens tend to have unusually small norms)."""
        term = self.resolve(query, exact=exact)
        vec = self.raw_vectors(term.ids).mean(axis=0)
        pieces = [PieceNorm(self.vocabulary.token(i), float(self.norms[i]),
                            (float(self.norms[i]) - self.norm_mean) / self.norm_std) for i in term.ids]
        outlier = any(abs(p.z_score) >= OUTLIER_Z for p in pieces)
        dims = max(1, min(int(dims), self.dim))
        return VectorInfo(term, self.dim, float(np.linalg.norm(vec)), [float(v) for v in vec[:dims]],
                          self.norm_mean, self.norm_std, pieces, outlier)

    def pca_map(self, items: Sequence[str | int | ResolvedQuery], kinds: Sequence[str] | None = None,
                metric: str = "cosine", exact: bool = False) -> PcaMap:
        """2D PCA of the items' vectors (words, `#id` strings, int ids or resolved queries), for a labelled scatter
        plot. `kinds` (one per item, e.g. "query", "neighbour") tells the points apart; duplicates are dropped."""
        metric = normalize_metric(metric)
        if kinds is not None and len(kinds) != len(items):
            raise ValueError("kinds must have one entry per item")
        if len(items) > MAX_K + MAX_TERMS:
            raise InvalidInputError(f"At most {MAX_K + MAX_TERMS} points on a map.")
        seen: set[tuple[int, ...]] = set()
        terms: list[ResolvedQuery] = []
        point_kinds: list[str] = []
        for i, item in enumerate(items):
            term = item if isinstance(item, ResolvedQuery) else self.resolve(item, exact=exact)
            if tuple(term.ids) in seen:
                continue
            seen.add(tuple(term.ids))
            terms.append(term)
            point_kinds.append(kinds[i] if kinds is not None else "token")
        if len(terms) < 2:
            raise InvalidInputError("A map needs at least two different words or tokens.")
        vecs = np.stack([self._query_vector(t.ids, metric) for t in terms]).astype(np.float64)
        vecs -= vecs.mean(axis=0)
        u, s, _ = np.linalg.svd(vecs, full_matrices=False)
        coords = np.zeros((len(terms), 2))
        width = min(2, len(s))
        coords[:, :width] = u[:, :width] * s[:width]
        total = float((s**2).sum()) or 1.0
        explained = tuple(float(s[j] ** 2 / total) if j < len(s) else 0.0 for j in range(2))
        points = [MapPoint(terms[j], float(coords[j, 0]), float(coords[j, 1]), point_kinds[j])
                  for j in range(len(terms))]
        return PcaMap(points, (explained[0], explained[1]), metric)
