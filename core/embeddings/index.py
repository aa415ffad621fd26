"""The model's vocabulary in FAISS: nearest tokens, analogies, similarity, odd one out, vector facts and 2D maps.

Only the real tokens of the input embedding matrix are indexed (Phi-3 pads 32,011 tokens to 32,064 rows). Cosine
similarity is an inner product on L2-normalised float32 vectors. Index design, chosen by measurement on the bundled
vocabulary (49,152 x 576, see bench/bench_index.py):

- on the CPU, a small batch (fewer than `SMALL_BATCH` queries) scans 8-bit `IndexScalarQuantizer`s (a quarter of
  numpy's float32 bytes), one shard per core (up to `MAX_SHARDS`) scanned in parallel by a small thread pool whose
  threads run FAISS with one OpenMP thread each; the candidates are re-scored exactly in float32, and the result is
  provably the exact top k: the quantization error of every coarse score is bounded (per dimension, measured when
  the index is built), and the scan is widened until no item it left out can beat the k-th exact score;
- larger batches, on a CPU with native bfloat16 (AVX512-BF16 or AMX), score all rows with one bfloat16 matmul
  (oneDNN, rows packed once in its blocked layout; 64 queries: ~4.5 ms against ~18 ms for float32 BLAS), take
  the best k + RERANK_MARGIN and re-score them exactly in float32; again provably exact: `_bf16_ceiling` bounds
  what bfloat16 rounding can hide, and a query whose margin is too thin for it takes more candidates, or the exact
  path;
- larger batches elsewhere use an exact `IndexFlatIP` through BLAS: FAISS 1.15's default BLAS threshold (128,000
  queries) would scan 64 queries without BLAS, ~7x slower here, so building an index sets it to `SMALL_BATCH` (a
  process-wide FAISS setting);
- with CUDA (and FAISS built with GPU support), one exact GPU flat index (float32; `gpu_float16=True` halves its
  memory, and its k + RERANK_MARGIN candidates are then re-scored in float32) behind a lock, since FAISS GPU
  indexes are not thread-safe.

A word resolves to its word-initial token (` king` is `Ġking` in byte-level BPE, `▁king` in SentencePiece); a word
split into several tokens is the mean of its pieces, and the split is reported; `#1234` is token id 1234:

    >>> index = VocabIndex.from_model(loaded.model, loaded.tokenizer)  # doctest: +SKIP
    >>> [n.text for n in index.neighbors("king", k=4).neighbors]  # doctest: +SKIP
    [' queen', ' Queen', ' emperor', ' prince']
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import faiss
import numpy as np
import torch

from core import checks
from core.checks import quote
from core.embeddings.table_cache import cached_json
from core.errors import InvalidInputError
from core.model.hardware import cpu_has_native_bfloat16
from core.model.packed_linear import PackedLinear, packing_works

METRICS = ("cosine", "centered", "inner_product")
METRIC_LABELS = {"cosine": "cosine", "centered": "centred cosine (mean removed)", "inner_product": "inner product"}
_METRIC_ALIASES = {"cosine": "cosine", "cos": "cosine", "centered": "centered", "centred": "centered",
                   "centered_cosine": "centered", "centred_cosine": "centered", "centered cosine": "centered",
                   "centred cosine": "centered", "inner_product": "inner_product", "inner product": "inner_product",
                   "ip": "inner_product", "dot": "inner_product"}
ANALOGY_METHODS = ("3cosadd", "3cosmul")

MAX_K = 200  # the most neighbours one request may ask for
MAX_QUERY_CHARS = 100
MAX_QUERY_PIECES = 16
MAX_TERMS = 12  # words in an analogy, an odd-one-out list or a map request
SMALL_BATCH = 20  # below this many queries the sharded 8-bit scan beats the flat (BLAS) index
RERANK_MARGIN = 32  # extra coarse candidates (per shard) re-scored exactly in float32
BF16_MAX_FETCH = 2048  # candidates per query the bfloat16 batch path may re-score before the exact path takes over
MAX_SHARDS = 8  # threads scanning one single-query search's shards in parallel
GPU_MAX_K = 2048  # FAISS GPU's largest k
VOCAB_TABLES_FORMAT = "vocab-tables-v1"  # change it when the tables' contents or meaning change
OUTLIER_Z = 3.0  # a norm this many standard deviations from the mean is flagged
COSMUL_EPS = 1e-3  # as in gensim's most_similar_cosmul
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_TOKEN_ID = re.compile(r"^#([0-9]{1,9})$")
_NUMBER_LIKE = re.compile(r"^#[-+]?[\d.,eE_]*\d[\d.,eE_]*$")  # "#-5", "#1e3", "#٣": meant as ids, not valid ones
_WORD_MARKERS = ("Ġ", "▁")
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(text: str) -> str:
    """Whitespace made visible (space ␣, newline ↵, tab ⇥) and other control characters escaped, for display."""
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _is_byte_token(piece: str, text: str) -> bool:
    """A byte-fallback piece (`<0x0A>`), part of a multi-byte character (text `�`), or a lone control byte."""
    if _BYTE_PIECE.match(piece) or "\ufffd" in text:
        return True
    return bool(text) and all(unicodedata.category(c) == "Cc" and c not in " \n\t\r" for c in text)


def shown(text: str, piece: str) -> str:
    """How a token is displayed: its text with visible whitespace, or its piece for a byte token (text `�`)."""
    return piece if "\ufffd" in text or not text else visible(text)


def variant_key(text: str) -> str:
    """What case, leading-space and simple plural variants share: ` Kings`, `king` and `Ġking` all give `king`."""
    word = text.strip().lower()
    if not word:
        return text
    if len(word) > 3 and word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalize_metric(metric: str | None) -> str:
    """`cosine` (also for None), `centered` (alias `centred`) or `inner_product` (alias `ip`); anything else is an
    InvalidInputError."""
    return checks.choice("cosine" if metric is None else metric, "metric", METRICS, _METRIC_ALIASES)


# ---------------------------------------------------------------------------------------------------------------
# Results: plain dataclasses, and the API's shapes


class NeighborDict(TypedDict):
    rank: int
    id: int
    piece: str
    text: str
    score: float


class NeighborsDict(TypedDict):
    """The API's answer for /neighbors and /analogy."""

    query: str
    query_tokens: list[str]
    neighbors: list[NeighborDict]


class SimilarityDict(TypedDict):
    """The API's answer for /similarity."""

    a: str
    b: str
    cosine: float


class OddOneOutDict(TypedDict):
    """The API's answer for /doesnt_match."""

    words: list[str]
    odd_one_out: str
    similarity_to_mean: dict[str, float]


@dataclass(frozen=True)
class TokenInfo:
    """One vocabulary entry: its id, its piece as stored in the vocabulary (`Ġking`), and its text (` king`)."""

    id: int
    piece: str
    text: str

    @property
    def shown(self) -> str:
        """The text with whitespace made visible; the piece for a byte token, whose text alone is `�`."""
        return shown(self.text, self.piece)


@dataclass(frozen=True)
class ResolvedQuery:
    """What a query became: the tokens whose (mean) vector is searched, and how they were found."""

    query: str
    tokens: tuple[TokenInfo, ...]
    how: str  # "word-initial token", "exact piece", "token id", "special token"

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    @property
    def pieces(self) -> list[str]:
        return [t.piece for t in self.tokens]

    @property
    def is_split(self) -> bool:
        return len(self.tokens) > 1

    def describe(self) -> str:
        """One line, e.g. `"apologizing" → ␣apolog + izing (mean of 3 tokens)`."""
        shown = " + ".join(t.shown for t in self.tokens)
        if self.is_split:
            return f'"{self.query}" → {shown} (mean of {len(self.tokens)} tokens)'
        return f'"{self.query}" → {shown} (id {self.tokens[0].id}, {self.how})'


@dataclass
class Neighbor:
    rank: int
    id: int
    piece: str
    text: str
    score: float
    variants: list[TokenInfo] = field(default_factory=list)  # folded into this row by group_variants

    @property
    def shown(self) -> str:
        return shown(self.text, self.piece)

    def to_dict(self) -> NeighborDict:
        return {"rank": self.rank, "id": self.id, "piece": self.piece, "text": self.text, "score": self.score}


@dataclass
class NeighborResult:
    """Neighbours of a query or of an analogy. `to_dict()` is the API's shape."""

    query: str
    terms: list[ResolvedQuery]  # one for a plain query; the positive then the negative words of an analogy
    metric: str
    neighbors: list[Neighbor]
    excluded: list[TokenInfo] = field(default_factory=list)  # the query's tokens and variants found and skipped
    method: str = ""  # "3cosadd" / "3cosmul" for analogies
    positive_terms: int = 1  # terms[:positive_terms] are added, the rest subtracted

    @property
    def query_tokens(self) -> list[str]:
        return [piece for term in self.terms for piece in term.pieces]

    def to_dict(self) -> NeighborsDict:
        return {"query": self.query, "query_tokens": self.query_tokens,
                "neighbors": [n.to_dict() for n in self.neighbors]}


@dataclass
class Similarity:
    a: ResolvedQuery
    b: ResolvedQuery
    score: float
    metric: str = "cosine"

    def to_dict(self) -> SimilarityDict:
        return {"a": self.a.query, "b": self.b.query, "cosine": self.score}


@dataclass
class OddOneOut:
    """gensim's doesnt_match: the word least similar to the mean of all of them."""

    words: list[ResolvedQuery]
    odd: str
    similarity_to_mean: list[float]  # one per word, in input order

    def to_dict(self) -> OddOneOutDict:
        return {"words": [w.query for w in self.words], "odd_one_out": self.odd,
                "similarity_to_mean": {w.query: s for w, s in zip(self.words, self.similarity_to_mean, strict=True)}}


@dataclass
class PieceNorm:
    token: TokenInfo
    norm: float
    z_score: float


@dataclass
class VectorInfo:
    """The raw embedding of a query: its norm against the vocabulary's norms, and its first dimensions."""

    query: ResolvedQuery
    dim: int
    norm: float
    values: list[float]  # the first dimensions of the vector
    norm_mean: float
    norm_std: float
    pieces: list[PieceNorm]  # per token: norm and z-score among all token norms
    outlier: bool  # some token's norm is OUTLIER_Z standard deviations or more from the mean
    note: str


@dataclass
class MapPoint:
    label: str
    x: float
    y: float
    kind: str
    ids: list[int]


@dataclass
class PcaMap:
    points: list[MapPoint]
    explained_variance: tuple[float, float]  # share of the selection's variance on each axis
    metric: str


# ---------------------------------------------------------------------------------------------------------------
# One searchable space (cosine, centred, inner product)


class _Space:
    """FAISS indexes over one n x d float32 matrix; `search` returns exact top-k inner products."""

    def __init__(self, name: str, matrix: np.ndarray, gpu: _GpuContext | None, pool: ThreadPoolExecutor | None,
                 shards: int) -> None:
        n, d = matrix.shape
        self.name, self.n, self.d, self.gpu, self.pool = name, n, d, gpu, pool
        self.flat = faiss.IndexFlatIP(d)
        self.flat.add(matrix)
        # a zero-copy float32 view of the flat index's storage, for exact re-ranking and vector maths
        self.matrix = faiss.rev_swig_ptr(self.flat.get_xb(), n * d).reshape(n, d)
        self.gpu_index = None
        self._bf16: _Bf16Copy | None = None  # built by the first batch that needs it (bf16_copy)
        self._bf16_lock = threading.Lock()
        self.shards: list[tuple[Any, int]] = []  # (8-bit index, id of its first row)
        if gpu is not None:
            self.gpu_index = gpu.clone(self.flat)
            return
        # per dimension, the largest |x - decode(encode(x))| over all rows: bounds the coarse scores' error
        self.coarse_error = np.zeros(d, dtype=np.float32)
        for rows in np.array_split(np.arange(n), shards if pool is not None else 1):
            if not len(rows):
                continue
            part = np.ascontiguousarray(matrix[rows[0]:rows[-1] + 1])
            sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            sq.train(part)
            sq.add(part)
            error = np.abs(part - sq.sa_decode(sq.sa_encode(part))).max(axis=0)
            np.maximum(self.coarse_error, error, out=self.coarse_error)
            self.shards.append((sq, int(rows[0])))
        self.largest_shard = max(sq.ntotal for sq, _ in self.shards)
        self.max_abs = float(np.abs(matrix).max())
        self.max_norm = float(np.linalg.norm(matrix, axis=1).max())

    @property
    def cpu_bytes(self) -> int:
        return self.n * self.d * (4 + (1 if self.shards else 0) + (2 if self._bf16 is not None else 0))

    @property
    def gpu_bytes(self) -> int:
        if self.gpu_index is None:
            return 0
        return self.n * self.d * (2 if self.gpu.float16 else 4)

    @property
    def max_k(self) -> int:
        return min(self.n, GPU_MAX_K) if self.gpu_index is not None else self.n

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product for each row of `queries` (float32, m x d): (scores, ids), best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(int(k), self.max_k))
        if self.gpu_index is not None:
            fetch = min(self.max_k, k + RERANK_MARGIN) if self.gpu.float16 else k
            with self.gpu.lock:
                scores, ids = self.gpu_index.search(queries, fetch)
            return self._rerank(queries, ids, k) if self.gpu.float16 else (scores, ids)
        if len(queries) < SMALL_BATCH:
            return self._coarse_then_exact(queries, k)
        if self.gpu_index is None and cpu_has_native_bfloat16():
            return self._bf16_then_exact(queries, k)
        return self.flat.search(queries, k)

    def bf16_copy(self) -> _Bf16Copy:
        """The bfloat16 copy of the rows for batch scoring, built on first use (~0.3 s and 2 bytes per value that a
        server answering single queries never needs)."""
        with self._bf16_lock:
            if self._bf16 is None:
                self._bf16 = _Bf16Copy.of(self.matrix)
            return self._bf16

    def _bf16_ceiling(self, coarse: np.ndarray, slack: np.ndarray) -> np.ndarray:
        """The largest exact score an item can have when its bfloat16 score is `coarse` ([queries, ...]), given
        each query's `slack` from `_bf16_slack`.

        With q~, x~ the bfloat16 vectors and s^ the float32 sum the matmul rounds to bfloat16 (unit roundoff
        u = 2^-8): q.x = q~.x~ - q~.(x~ - x) - (q~ - q).x, so |q.x - s^| <= |q~| max|x~ - x| + |q~ - q| max|x|
        + float32 accumulation (d 2^-24 |q~| max|x~|); and a bfloat16 score c means s^ <= c/(1-u) (c >= 0) or
        c/(1+u) (c < 0). Both rounding terms use the real vectors' errors (measured, with 0.1% slack for float32
        norms), not the worst case u|q||x|: the bound is about 3x tighter, so far fewer queries need more
        candidates."""
        u = 2.0 ** -8
        upper = np.where(coarse >= 0, coarse / (1 - u), coarse / (1 + u))
        return upper + slack.reshape(-1, *([1] * (coarse.ndim - 1)))

    def _bf16_slack(self, queries: np.ndarray, queries16: torch.Tensor) -> np.ndarray:
        """Per query, the rounding terms of `_bf16_ceiling`'s bound."""
        rounded = queries16.float().numpy()
        q_norm = np.linalg.norm(rounded, axis=1) * 1.001
        q_error = np.linalg.norm(rounded - queries, axis=1) * 1.001  # the difference itself is exact in float32
        accumulate = self.d * 2.0 ** -24 * 1.01
        copy = self.bf16_copy()
        return (q_norm * (copy.row_error * 1.001 + accumulate * copy.max_norm + 1e-6 * self.max_norm)
                + q_error * self.max_norm)

    def _bf16_then_exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates from one bfloat16 matmul over all rows, re-scored exactly in float32; provably the exact top
        k. An item left out has a bf16 score <= the last candidate's, so its exact score is at most
        `_bf16_ceiling` of that. Rows whose exact k-th score does not clear it take 4x more candidates from the
        same scores (tightly packed neighbourhoods, e.g. untrained tokens with near-identical rows), and past
        BF16_MAX_FETCH candidates the exact path answers them."""
        m = len(queries)
        with torch.inference_mode():
            queries16 = torch.from_numpy(queries).to(torch.bfloat16)
            approx = self.bf16_copy().scores(queries16)
        slack = self._bf16_slack(queries, queries16)
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        ids = np.full((m, k), -1, dtype=np.int64)
        pending = np.arange(m)
        fetch = min(self.n, k + RERANK_MARGIN)
        while len(pending) and fetch <= BF16_MAX_FETCH:
            with torch.inference_mode():
                rows = approx if len(pending) == m else approx[torch.from_numpy(pending)]
                coarse, candidates = torch.topk(rows, fetch, dim=1)
            coarse, candidates = coarse.float().numpy(), candidates.numpy()
            scores[pending], ids[pending] = self._rerank(queries[pending], candidates, k)
            ceiling = self._bf16_ceiling(coarse[:, -1], slack[pending])
            sure = (scores[pending, -1] >= ceiling) | (fetch == self.n)
            pending = pending[~sure]
            fetch = min(self.n, fetch * 4)
        if len(pending):
            scores[pending], ids[pending] = self._exact(np.ascontiguousarray(queries[pending]), k)
        return scores, ids

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """The float32 rows `ids` (any shape), gathered by torch's parallel index_select: the rows are cold in cache
        after a full scan, and numpy's single-threaded gather took ~0.8 ms for 64 x 42 of them."""
        flat = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64).ravel())
        return torch.from_numpy(self.matrix).index_select(0, flat).numpy().reshape(*ids.shape, self.d)

    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact CPU paths without the bfloat16 one: the certified 8-bit scan for few queries, BLAS for more."""
        return self._coarse_then_exact(queries, k) if len(queries) < SMALL_BATCH else self.flat.search(queries, k)

    def _scan(self, queries: np.ndarray, fetch: int) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """Each shard's best `fetch` (coarse scores, global ids, whether the shard was exhausted), shards scanned in
        parallel by the pool."""
        jobs = []
        for sq, start in self.shards:
            want = min(fetch, sq.ntotal)
            if self.pool is not None and len(self.shards) > 1:
                jobs.append((self.pool.submit(sq.search, queries, want), start, want == sq.ntotal))
            else:
                jobs.append((sq.search(queries, want), start, want == sq.ntotal))
        out = []
        for job, start, exhausted in jobs:
            scores, ids = job if isinstance(job, tuple) else job.result()
            out.append((scores, np.where(ids >= 0, ids + start, -1), exhausted))
        return out

    def _coarse_then_exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates from the 8-bit scan, re-scored exactly in float32; provably the exact top k.

        An item the scan did not return scores at most (its shard's last returned coarse score) + eps in truth,
        where eps = sum_i |q_i| * coarse_error_i bounds the quantization error (plus float rounding slack). When
        the exact k-th score is not above that bound, the scan is repeated with 4x more candidates."""
        m = len(queries)
        out_scores = np.full((m, k), -np.inf, dtype=np.float32)
        out_ids = np.full((m, k), -1, dtype=np.int64)
        abs_q = np.abs(queries)
        eps = abs_q @ self.coarse_error + 1e-5 * abs_q.sum(axis=1) * self.max_abs + 1e-6
        pending = np.arange(m)
        fetch = k + RERANK_MARGIN
        while len(pending):
            scans = self._scan(queries[pending], fetch)
            still = []
            for j, row in enumerate(pending):
                cand = np.concatenate([ids[j] for _, ids, _ in scans])
                cand = cand[cand >= 0]
                exact = self.matrix[cand] @ queries[row]
                order = np.argsort(-exact, kind="stable")[:k]
                bounds = [scores[j][-1] for scores, _, exhausted in scans if not exhausted]
                done = not bounds or (len(order) == k and exact[order[-1]] >= max(bounds) + eps[row])
                if done:
                    out_scores[row, :len(order)] = exact[order]
                    out_ids[row, :len(order)] = cand[order]
                else:
                    still.append(row)
            pending = np.asarray(still, dtype=np.int64)
            fetch = min(self.largest_shard, fetch * 4)
        return out_scores, out_ids

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-score candidate ids exactly in float32 and keep the best k of each row (FAISS's -1, "no candidate",
        scores -inf and stays -1)."""
        valid = candidates >= 0
        exact = np.einsum("mfd,md->mf", self._rows(np.where(valid, candidates, 0)), queries)
        exact = np.where(valid, exact, -np.inf).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(exact, order, axis=1)
        ids = np.where(np.isfinite(scores), np.take_along_axis(candidates, order, axis=1), -1).astype(np.int64)
        return scores, ids


@dataclass
class _Bf16Copy:
    """A space's rows in bfloat16 and the rounding facts that `_Space._bf16_ceiling` needs.

    The rows are packed once in oneDNN's blocked layout (core/packed_linear.py) where that runs here and scores
    bit-identically to a plain bfloat16 matmul (packing once saves re-blocking 56 MB on every call: 64 queries
    4.5 vs 6.8 ms), else kept as a plain tensor."""

    rows: torch.Tensor | PackedLinear
    row_error: float  # the largest |x~ - x| over the rows (float32 arithmetic; 0.1% slack added where used)
    max_norm: float  # the largest |x~|

    @classmethod
    def of(cls, matrix: np.ndarray) -> _Bf16Copy:
        rows = torch.from_numpy(matrix).to(torch.bfloat16)
        rounded = rows.float().numpy()
        copy = cls(rows, row_error=float(np.linalg.norm(rounded - matrix, axis=1).max()),
                   max_norm=float(np.linalg.norm(rounded, axis=1).max()))
        if packing_works(torch.bfloat16):
            packed = PackedLinear(rows)
            probe = rows[:3]
            with torch.inference_mode():
                if torch.equal(packed(probe), probe @ rows.T):
                    copy.rows = packed
        return copy

    def scores(self, queries16: torch.Tensor) -> torch.Tensor:
        """queries16 @ rows.T in bfloat16 (float32 accumulation), [queries, rows]."""
        return self.rows(queries16) if isinstance(self.rows, PackedLinear) else queries16 @ self.rows.T


class _GpuContext:
    """FAISS GPU resources for one device, and the lock every GPU search takes."""

    def __init__(self, device: int, float16: bool) -> None:
        self.device = device
        self.float16 = float16
        self.lock = threading.Lock()
        self.resources = faiss.StandardGpuResources()
        self.resources.setTempMemory(256 << 20)

    def clone(self, index: Any) -> Any:
        options = faiss.GpuClonerOptions()
        options.useFloat16 = self.float16
        return faiss.index_cpu_to_gpu(self.resources, self.device, index, options)


def gpu_available() -> bool:
    """True when torch sees CUDA and this FAISS build has GPU support and sees a GPU."""
    return (torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources")
            and faiss.get_num_gpus() > 0)


# ---------------------------------------------------------------------------------------------------------------


class VocabIndex:
    """Nearest-neighbour search over a model's token embeddings. Build it with `VocabIndex.from_model`."""

    def __init__(self, embeddings: np.ndarray, tokenizer: Any, use_gpu: bool | None = None,
                 gpu_device: int = 0, gpu_float16: bool = False, cache_dir: Path | None = None) -> None:
        start = time.perf_counter()
        raw = np.asarray(embeddings, dtype=np.float32)
        self.size, self.dim = raw.shape
        if self.size == 0:
            raise ValueError("the embedding matrix has no rows")
        self.tokenizer = tokenizer
        if use_gpu is None:
            use_gpu = gpu_available()
        if use_gpu and not gpu_available():
            raise RuntimeError("use_gpu=True, but CUDA or FAISS GPU support is not available")
        self._gpu = _GpuContext(gpu_device, gpu_float16) if use_gpu else None
        faiss.cvar.distance_compute_blas_threshold = SMALL_BATCH  # flat searches of SMALL_BATCH+ queries use BLAS
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
        self._spaces: dict[str, _Space] = {"cosine": _Space("cosine", raw / safe, self._gpu, self._pool, self.shards)}
        self._space_lock = threading.Lock()
        self._load_vocabulary(tokenizer, cache_dir)
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

    # -- vocabulary facts ----------------------------------------------------------------------------------------

    def _load_vocabulary(self, tokenizer: Any, cache_dir: Path | None = None) -> None:
        """Per-token tables (pieces, texts, variant keys, special and byte ids, the piece → id map); read from
        `cache_dir` when this exact tokenizer was seen before (they cost ~0.4 s of Python to build)."""
        n = self.size
        backend = getattr(tokenizer, "backend_tokenizer", None)
        key = [VOCAB_TABLES_FORMAT, type(tokenizer).__name__, str(n), backend.to_str() if backend is not None else ""]
        tables, self.tables_from_cache = cached_json("vocab-tables", key, lambda: self._vocab_tables(tokenizer, n),
                                                     cache_dir if backend is not None else None)
        self.pieces: list[str] = tables["pieces"]
        self.texts: list[str] = tables["texts"]
        self.keys: list[str] = tables["keys"]
        self.special_ids = frozenset(tables["special_ids"])
        self.byte_ids = frozenset(tables["byte_ids"])
        self.vocab: dict[str, int] = tables["vocab"]
        self._anchor: list[int] | None = tables["anchor"]

    @classmethod
    def _vocab_tables(cls, tokenizer: Any, n: int) -> dict[str, Any]:
        pieces = [str(p) for p in tokenizer.convert_ids_to_tokens(list(range(n)))]
        texts = cls._token_texts(tokenizer, n)
        special = {int(i) for i in tokenizer.all_special_ids}
        for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
            if getattr(tok, "special", False):
                special.add(int(i))
        anchor = tokenizer.encode("a", add_special_tokens=False)
        return {
            "pieces": pieces,
            "texts": texts,
            "keys": [variant_key(t) for t in texts],
            "special_ids": sorted(i for i in special if 0 <= i < n),
            "byte_ids": [i for i in range(n) if _is_byte_token(pieces[i], texts[i])],
            "vocab": {piece: i for piece, i in tokenizer.get_vocab().items() if 0 <= i < n},
            "anchor": anchor if len(anchor) == 1 else None,
        }

    @staticmethod
    def _token_texts(tokenizer: Any, n: int) -> list[str]:
        """Each token's text as it reads after another token (so SentencePiece's `▁king` keeps its space)."""
        kwargs = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
        anchor = tokenizer.encode("a", add_special_tokens=False)
        if len(anchor) == 1:
            prefix = tokenizer.decode(anchor, **kwargs)
            texts = tokenizer.batch_decode([[anchor[0], i] for i in range(n)], **kwargs)
            if prefix and all(t.startswith(prefix) for t in texts):
                return [t[len(prefix):] for t in texts]
        return [tokenizer.decode([i], **kwargs) for i in range(n)]

    def token(self, token_id: int) -> TokenInfo:
        return TokenInfo(int(token_id), self.pieces[token_id], self.texts[token_id])

    def is_hidden(self, token_id: int) -> bool:
        """Special tokens and byte tokens (byte-fallback `<0xNN>` pieces, partial UTF-8 pieces, control bytes)."""
        return token_id in self.special_ids or token_id in self.byte_ids

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
        """One line: size, design, memory and build time."""
        if self._gpu is not None:
            design = f"FAISS GPU flat index on {self.device} ({'float16' if self._gpu.float16 else 'float32'})"
            memory = f"{self.memory_bytes / 2**20:.0f} MiB host + {self.gpu_memory_bytes / 2**20:.0f} MiB GPU"
        else:
            batches = "bfloat16 matmul + exact float32 re-rank" if cpu_has_native_bfloat16() else "flat float32"
            design = (f"FAISS CPU: 8-bit scan in {self.shards} shard(s) + exact float32 re-rank; "
                      f"{batches} for batches of {SMALL_BATCH}+")
            memory = f"{self.memory_bytes / 2**20:.0f} MiB"
        return (f"{self.size:,} tokens × {self.dim} dims, {design}, {memory}, "
                f"spaces built: {', '.join(self._spaces)}; built in {self.build_seconds:.2f} s")

    # -- spaces ------------------------------------------------------------------------------------------------------

    def _space(self, metric: str) -> _Space:
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
                self._spaces[metric] = _Space(metric, raw, self._gpu, self._pool, self.shards)
            return self._spaces[metric]

    @property
    def unit_vectors(self) -> np.ndarray:
        """The L2-normalised float32 embedding rows (a read-only view of the cosine index's storage)."""
        view = self._spaces["cosine"].matrix.view()
        view.flags.writeable = False
        return view

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

    def query_vector(self, query: str | int | ResolvedQuery, metric: str = "cosine", exact: bool = False) -> np.ndarray:
        """A query's vector in a metric's space (what `neighbors` searches with), for `search`."""
        term = query if isinstance(query, ResolvedQuery) else self.resolve(query, exact=exact)
        return self._query_vector(term.ids, normalize_metric(metric))

    def search(self, queries: np.ndarray, k: int = 10, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
        """Raw index search: exact top-k (scores, ids) for each row of `queries` (already in the metric's space:
        L2-normalised for cosine). No exclusions or filters; `k` is capped to what the index supports."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise InvalidInputError(f"queries have {queries.shape[1]} dimensions; the index has {self.dim}")
        return self._space(metric).search(queries, k)

    # -- queries -------------------------------------------------------------------------------------------------

    def resolve(self, query: str | int, exact: bool = False) -> ResolvedQuery:
        """A word → its word-initial token(s); `exact` → the piece as typed; `#1234` or an int → that token id."""
        if isinstance(query, (int, np.integer)) and not isinstance(query, bool):
            return self._resolve_id(int(query), f"#{int(query)}")
        text = checks.text(query, "A query", MAX_QUERY_CHARS, required=True,
                           what="Type a word, a token piece, or a token id like #1234.")
        stripped = text.strip()
        match = _TOKEN_ID.match(stripped)
        if match:
            return self._resolve_id(int(match.group(1)), stripped)
        if _NUMBER_LIKE.match(stripped):
            raise InvalidInputError(f"Token ids are written #1234, a whole number from 0 to {self.size - 1:,}; got "
                                    f"{quote(stripped)}.")
        if exact:
            if text in self.vocab:
                return ResolvedQuery(text, (self.token(self.vocab[text]),), "exact piece")
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            how = "exact piece"
        else:
            tid = self.vocab.get(stripped)
            if tid is not None and (tid in self.special_ids or stripped.startswith(_WORD_MARKERS)):
                how = "special token" if tid in self.special_ids else "exact piece"
                return ResolvedQuery(stripped, (self.token(tid),), how)
            ids = self._word_initial_ids(stripped)
            how = "word-initial token"
        return self._checked(stripped if not exact else text, ids, how)

    def _resolve_id(self, token_id: int, label: str) -> ResolvedQuery:
        if not 0 <= token_id < self.size:
            raise InvalidInputError(f"Token id {token_id} is not in the vocabulary (ids 0 to {self.size - 1}).")
        return ResolvedQuery(label, (self.token(token_id),), "token id")

    def _word_initial_ids(self, word: str) -> list[int]:
        """Encode the word as it appears after a space: `a king` → [a, Ġking], and drop the leading `a`."""
        tok = self.tokenizer
        if self._anchor is not None:
            ids = tok.encode("a " + word, add_special_tokens=False)
            if ids[:1] == self._anchor and len(ids) > 1:
                return ids[1:]
        ids = tok.encode(" " + word, add_special_tokens=False)
        if len(ids) > 1 and ids[0] < self.size and not self.texts[ids[0]].strip():
            ids = ids[1:]  # a lone space token in front of the word
        return ids

    def _checked(self, label: str, ids: Sequence[int], how: str) -> ResolvedQuery:
        ids = [int(i) for i in ids]
        if not ids:
            raise InvalidInputError(f"{quote(label)} gives no tokens.")
        unk = getattr(self.tokenizer, "unk_token_id", None)
        unk_piece = getattr(self.tokenizer, "unk_token", None)
        if unk is not None and unk in ids and label.strip() != unk_piece:
            raise InvalidInputError(f"{quote(label)} is not in the vocabulary (the tokenizer maps it to {unk_piece}).")
        if any(i >= self.size or i < 0 for i in ids):
            raise InvalidInputError(f"{quote(label)} maps to a token id outside the indexed vocabulary.")
        if len(ids) > MAX_QUERY_PIECES:
            raise InvalidInputError(f"{quote(label)} splits into {len(ids)} tokens; a query may have at most "
                                    f"{MAX_QUERY_PIECES}.")
        return ResolvedQuery(label, tuple(self.token(i) for i in ids), how)

    def _resolve_terms(self, terms: str | Sequence[str] | None, exact: bool, what: str) -> list[ResolvedQuery]:
        words = checks.words(terms, what, MAX_TERMS, MAX_QUERY_CHARS)
        return [self.resolve(w, exact=exact) for w in words]

    # -- neighbours ----------------------------------------------------------------------------------------------

    def _check_k(self, k: int) -> int:
        return min(checks.integer(k, "k", 1, MAX_K), self.size)

    def _excluded_keys(self, terms: Iterable[ResolvedQuery]) -> set[str]:
        keys: set[str] = set()
        for term in terms:
            keys.add(variant_key("".join(t.text for t in term.tokens)))
            keys.add(variant_key(term.query))
            keys.update(self.keys[i] for i in term.ids)
        return keys

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
                    if len(excluded) < 50 and not self.is_hidden(tid):
                        excluded.append(self.token(tid))
                    continue
                if group_variants and self.keys[tid] in by_key:
                    by_key[self.keys[tid]].variants.append(self.token(tid))
                    continue
                if len(rows) == k:
                    continue
                info = self.token(tid)
                row = Neighbor(len(rows) + 1, tid, info.piece, info.text, float(score))
                rows.append(row)
                by_key[self.keys[tid]] = row
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
            return tid in own or (hide_special and self.is_hidden(tid)) or self.keys[tid] in keys

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
        their variants are excluded. Lists may be comma-separated strings."""
        method = checks.choice("3cosadd" if method is None else method, "method", ANALOGY_METHODS)
        k = self._check_k(k)
        pos = self._resolve_terms(positive, exact, "positive")
        neg = self._resolve_terms(negative, exact, "negative")
        if not pos:
            raise InvalidInputError("Give at least one positive word, e.g. king, woman (and man as negative).")
        terms = pos + neg
        if len(terms) > MAX_TERMS:
            raise InvalidInputError(f"At most {MAX_TERMS} words in an analogy ({len(terms)} given).")
        own = {i for t in terms for i in t.ids}
        keys = self._excluded_keys(terms)
        space = self._spaces["cosine"]
        pos_vecs = np.stack([self._query_vector(t.ids, "cosine") for t in pos])
        neg_vecs = np.stack([self._query_vector(t.ids, "cosine") for t in neg]) if neg else np.zeros((0, self.dim))

        def skip(tid: int) -> bool:
            return tid in own or self.keys[tid] in keys or (hide_special and self.is_hidden(tid))

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
        terms = self._resolve_terms(words, exact, "words")
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
        pieces = [PieceNorm(self.token(i), float(self.norms[i]),
                            (float(self.norms[i]) - self.norm_mean) / self.norm_std) for i in term.ids]
        outliers = [p for p in pieces if abs(p.z_score) >= OUTLIER_Z]
        if outliers:
            note = "; ".join(f"{p.token.shown} has an unusually {'small' if p.z_score < 0 else 'large'} norm "
                             f"({p.norm:.3f}, z = {p.z_score:+.1f})" for p in outliers)
        else:
            note = (f"norm within {OUTLIER_Z:g} standard deviations of the vocabulary's mean "
                    f"({self.norm_mean:.3f} ± {self.norm_std:.3f})")
        if term.is_split:
            note += f"; the vector is the mean of {len(term.ids)} tokens, so its norm is smaller than theirs"
        dims = max(1, min(int(dims), self.dim))
        return VectorInfo(term, self.dim, float(np.linalg.norm(vec)), [float(v) for v in vec[:dims]],
                          self.norm_mean, self.norm_std, pieces, bool(outliers), note)

    def pca_map(self, items: Sequence[str | int | ResolvedQuery], kinds: Sequence[str] | None = None,
                metric: str = "cosine", exact: bool = False) -> PcaMap:
        """2D PCA of the items' vectors (words, `#id` strings, int ids or resolved queries), for a labelled scatter
        plot. `kinds` (one per item, e.g. "query", "neighbour") tells the points apart; duplicates are dropped.
        A split word is labelled with the word, a single token with its text (whitespace made visible)."""
        metric = normalize_metric(metric)
        if kinds is not None and len(kinds) != len(items):
            raise ValueError("kinds must have one entry per item")
        if len(items) > MAX_K + MAX_TERMS:
            raise InvalidInputError(f"At most {MAX_K + MAX_TERMS} points on a map.")
        seen: set[tuple[int, ...]] = set()
        terms: list[ResolvedQuery] = []
        labels: list[str] = []
        point_kinds: list[str] = []
        for i, item in enumerate(items):
            term = item if isinstance(item, ResolvedQuery) else self.resolve(item, exact=exact)
            if tuple(term.ids) in seen:
                continue
            seen.add(tuple(term.ids))
            terms.append(term)
            labels.append(term.query if term.is_split else term.tokens[0].shown)
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
        points = [MapPoint(labels[j], float(coords[j, 0]), float(coords[j, 1]), point_kinds[j], terms[j].ids)
                  for j in range(len(terms))]
        return PcaMap(points, (explained[0], explained[1]), metric)
