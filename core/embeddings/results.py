"""What the embedding views return: plain dataclasses, and the typed dicts that are the API's JSON shapes.

No display strings here: the page decides how a token or a vector is shown (demo/embeddings_tab.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from core.embeddings.queries import ResolvedQuery
from core.embeddings.vocabulary import TokenInfo


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


@dataclass
class Neighbor:
    rank: int
    id: int
    piece: str
    text: str
    score: float
    variants: list[TokenInfo] = field(default_factory=list)  # folded into this row by group_variants

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


@dataclass
class MapPoint:
    term: ResolvedQuery
    x: float
    y: float
    kind: str


@dataclass
class PcaMap:
    points: list[MapPoint]
    explained_variance: tuple[float, float]  # share of the selection's variance on each axis
    metric: str


class VocabularyMapDict(TypedDict):
    """The API's answer for /vocabulary_map: column lists, one entry per token, ids 0 … limit−1."""

    projection: str  # what the coordinates come from: "pca" until a requested "umap" is ready
    requested: str
    ready: bool  # the coordinates are the requested projection's
    note: str
    tokens: int  # tokens in the whole map
    ids: list[int]
    pieces: list[str]
    categories: list[str]
    coordinates: list[list[float]]  # [x, y] or [x, y, z] per token
