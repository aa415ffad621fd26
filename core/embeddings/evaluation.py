"""How good is a vocabulary's input embedding space? Scores on the Google analogy set and on word-pair similarity sets
(core/embeddings/benchmarks.py), computed as gensim computes them for word vectors, but with a whole batch of analogy
questions answered by one exact batch search instead of one search per question.

Analogies (`score_analogies`), for a question a : b :: c : ?
- 3CosAdd answers with the word nearest to unit(b̂ + ĉ − â) (gensim's most_similar), 3CosMul with the best
  cos(d,b)·cos(d,c) / (cos(d,a) + ε), cosines shifted to [0, 1] (most_similar_cosmul, Levy & Goldberg 2014).
- As gensim's evaluate_word_analogies: the candidates are the words (the lexicon's word-initial tokens, and under
  rule B the benchmark's split words too, as if added to a KeyedVectors); the question's own words never answer it,
  nor their case and leading-space variants (`exclude="case"`); only the five best other candidates are looked at;
  accuracy counts the questions whose four words are in the vocabulary, and coverage says how many those are.
  `exclude="plural"` also leaves out the inputs' plurals (what the neighbour views fold together), to measure what
  that rule costs.
- 3CosAdd goes through VocabIndex.search (a float32 matmul and top-k per batch on the CPU, a flat index on a GPU);
  3CosMul needs three cosines for every token, so it multiplies the batch by the unit rows itself.

Word pairs (`score_pairs`, `gensim_pairs`): Spearman's rho of cosine against the human scores, over the pairs whose
two words are in the vocabulary. Rule A is gensim's own evaluate_word_pairs on a KeyedVectors of the lexicon.

Each batch of questions runs inside `step()` when one is given: the caller's turn among heavy work, which rests while
chats run (the batch is then a quarter of the size, so that the chats wait less for it) and raises Cancelled once
the caller has cancelled (core/work/); the scoring then stops with EvaluationCancelled, saying how far it got.
`progress(done, total)` is called between batches.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
import torch

from core import checks
from core.embeddings.benchmarks import TITLES, Pair, Question, Section, data_path, word_pairs
from core.embeddings.index import COSMUL_EPS, VocabIndex
from core.embeddings.lexicon import RULES, Lexicon
from core.embeddings.vocabulary import case_key, variant_key
from core.errors import TokenLabError
from core.work.cancel import Cancelled

METHODS = ("3cosadd", "3cosmul")
EXCLUSIONS = ("case", "plural")
BATCH = 256  # questions per search: one heavy step (a quarter of it while chats run)
FIRST_FETCH = 32  # candidates fetched per question; the few questions that need more fetch again
WINDOW = 5  # gensim's evaluate_word_analogies looks at the 5 best candidates other than the question's words
_UNDECIDED = -2

Progress = Callable[[int, int], None]
Step = Callable[[], contextlib.AbstractContextManager[bool]]  # a heavy step; it says whether chats are running


class EvaluationCancelled(Cancelled):
    """The caller cancelled; raised between two batches, saying how far the scoring got."""


class SectionDict(TypedDict):
    section: str
    questions: int
    asked: int
    correct: int
    accuracy: float | None
    coverage: float


class AnalogyDict(TypedDict):
    rule: str
    method: str
    sections: list[SectionDict]
    semantic: SectionDict
    syntactic: SectionDict
    total: SectionDict
    seconds: float


class PairsDict(TypedDict):
    benchmark: str
    rule: str
    pairs: int
    covered: int
    coverage: float
    spearman: float
    pearson: float
    computed_by: str


@dataclass
class SectionScore:
    name: str
    semantic: bool
    questions: int  # in the file (or the first `limit` of them)
    asked: int  # the four words in the vocabulary under the rule
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        """Over the questions asked, as gensim (dummy4unknown=False), word2vec and GloVe report it."""
        return self.correct / self.asked if self.asked else None

    @property
    def coverage(self) -> float:
        return self.asked / self.questions if self.questions else 0.0

    def to_dict(self) -> SectionDict:
        return {"section": self.name, "questions": self.questions, "asked": self.asked, "correct": self.correct,
                "accuracy": self.accuracy, "coverage": self.coverage}


@dataclass
class AnalogyScores:
    """Per-section scores; `answers` holds each question asked and the word given (None: no candidate qualified)."""

    method: str
    rule: str
    exclude: str
    sections: list[SectionScore]
    seconds: float
    answers: list[tuple[str, Question, str | None]] = field(default_factory=list, repr=False)

    def _sum(self, name: str, chosen: list[SectionScore]) -> SectionScore:
        return SectionScore(name, all(s.semantic for s in chosen), sum(s.questions for s in chosen),
                            sum(s.asked for s in chosen), sum(s.correct for s in chosen))

    @property
    def semantic(self) -> SectionScore:
        return self._sum("semantic", [s for s in self.sections if s.semantic])

    @property
    def syntactic(self) -> SectionScore:
        return self._sum("syntactic", [s for s in self.sections if not s.semantic])

    @property
    def total(self) -> SectionScore:
        return self._sum("total", self.sections)

    def to_dict(self) -> AnalogyDict:
        return {"rule": self.rule, "method": self.method, "sections": [s.to_dict() for s in self.sections],
                "semantic": self.semantic.to_dict(), "syntactic": self.syntactic.to_dict(),
                "total": self.total.to_dict(), "seconds": self.seconds}


@dataclass
class PairScores:
    benchmark: str
    rule: str
    pairs: int
    covered: int
    spearman: float
    pearson: float
    computed_by: str  # "gensim evaluate_word_pairs" or "core"

    @property
    def coverage(self) -> float:
        return self.covered / self.pairs if self.pairs else 0.0

    def to_dict(self) -> PairsDict:
        return {"benchmark": self.benchmark, "rule": self.rule, "pairs": self.pairs, "covered": self.covered,
                "coverage": self.coverage, "spearman": self.spearman, "pearson": self.pearson,
                "computed_by": self.computed_by}


# -- analogies -------------------------------------------------------------------------------------------------------

@dataclass
class _Question:
    section: int
    words: Question
    ids: tuple[int, int, int, int]  # candidate ids: a token id, or index.size + j for the j-th split word


class _Candidates:
    """The answer candidates: every token (only the lexicon's words may answer) and, under rule B, the benchmark's
    split words as extra rows numbered from index.size on."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon
        self.index = lexicon.index
        self.size = self.index.size
        self.extra_words: list[str] = []
        self._extra_ids: dict[str, int] = {}
        self._extra_rows: list[np.ndarray] = []

    def add(self, word: str, pieces: tuple[int, ...]) -> int:
        if len(pieces) == 1:
            return pieces[0]
        key = word.upper()
        if key not in self._extra_ids:
            self._extra_ids[key] = self.size + len(self.extra_words)
            self.extra_words.append(word)
            self._extra_rows.append(self.lexicon.unit(pieces))
        return self._extra_ids[key]

    def finish(self) -> None:
        self.extra = (np.stack(self._extra_rows) if self._extra_rows
                      else np.zeros((0, self.index.dim), dtype=np.float32))
        self.may_answer = np.concatenate([self.lexicon.is_word, np.ones(len(self.extra_words), dtype=bool)])

    def vectors(self, cids: np.ndarray) -> np.ndarray:
        out = np.empty((len(cids), self.index.dim), dtype=np.float32)
        tokens = cids < self.size
        out[tokens] = self.index.unit_vectors[cids[tokens]]
        out[~tokens] = self.extra[cids[~tokens] - self.size]
        return out

    def text(self, cid: int) -> str:
        return self.index.vocabulary.texts[cid] if cid < self.size else self.extra_words[cid - self.size]


def _prepare(lexicon: Lexicon, sections: Sequence[Section], rule: str,
             limit: int) -> tuple[list[SectionScore], list[_Question], _Candidates]:
    candidates = _Candidates(lexicon)
    scores: list[SectionScore] = []
    questions: list[_Question] = []
    pieces: dict[str, tuple[int, ...] | None] = {}
    for number, section in enumerate(sections):
        items = section.questions[:limit] if limit > 0 else section.questions
        asked = 0
        for words in items:
            for w in words:
                if w not in pieces:
                    pieces[w] = lexicon.pieces(w, rule)
            found = [pieces[w] for w in words]
            if any(p is None for p in found):
                continue
            asked += 1
            a, b, c, d = (candidates.add(w, p) for w, p in zip(words, found, strict=True) if p is not None)
            questions.append(_Question(number, words, (a, b, c, d)))
        scores.append(SectionScore(section.name, section.semantic, len(items), asked))
    candidates.finish()
    return scores, questions, candidates


TopTokens = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _cosadd(index: VocabIndex, candidates: _Candidates, a: np.ndarray, b: np.ndarray,
            c: np.ndarray) -> tuple[TopTokens, np.ndarray]:
    """3CosAdd: the tokens' top `fetch` from the index's exact batch search, and every extra word's score."""
    query = b + c - a
    query /= np.linalg.norm(query, axis=1, keepdims=True)

    def top(fetch: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return index.search(query[rows], fetch)

    return top, query @ candidates.extra.T


def _cosmul(index: VocabIndex, candidates: _Candidates, a: np.ndarray, b: np.ndarray,
            c: np.ndarray) -> tuple[TopTokens, np.ndarray]:
    """3CosMul: every token's score from three matmuls over the unit rows, and every extra word's score."""
    with torch.inference_mode():
        rows = index.unit_tensor

        def shifted(x: np.ndarray) -> torch.Tensor:
            return (torch.from_numpy(x) @ rows.T).add_(1.0).div_(2.0)

        score = shifted(b).mul_(shifted(c)).div_(shifted(a).add_(COSMUL_EPS))
    extra = candidates.extra.T
    extra_score = ((b @ extra + 1) / 2) * ((c @ extra + 1) / 2) / ((a @ extra + 1) / 2 + COSMUL_EPS)

    def top(fetch: int, pending: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            chosen = score if len(pending) == len(score) else score[torch.from_numpy(pending)]
            values, ids = torch.topk(chosen, min(fetch, chosen.shape[1]), dim=1)
        return values.numpy(), ids.numpy()

    return top, extra_score.astype(np.float32)


def _ranked(top: TopTokens, extra_scores: np.ndarray, size: int, fetch: int,
            rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, candidate ids, bound) per row, best first: the tokens' top `fetch` merged with the extra words. A
    token left out scores at most `bound` (-inf once every token was fetched)."""
    scores, ids = top(fetch, rows)
    exhausted = scores.shape[1] < fetch or scores.shape[1] >= size
    bound = np.full(len(rows), -np.inf, np.float32) if exhausted else scores[:, -1].copy()
    if extra_scores.shape[1]:
        extra = extra_scores[rows]
        scores = np.concatenate([scores, extra], axis=1)
        ids = np.concatenate([ids, np.broadcast_to(np.arange(size, size + extra.shape[1]), extra.shape)], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")
        scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
    return scores, ids, bound


def _pick(scores: np.ndarray, ids: np.ndarray, bound: float, may_answer: np.ndarray, own: set[int],
          key: Callable[[int], str], excluded: set[str]) -> int:
    """The answer among ranked candidates as gensim picks it: a candidate id, -1 (none qualified among the WINDOW
    best) or _UNDECIDED (more candidates are needed)."""
    seen = 0
    for score, cid in zip(scores.tolist(), ids.tolist(), strict=True):
        if score < bound:
            return _UNDECIDED
        if cid < 0 or not may_answer[cid] or cid in own:
            continue
        seen += 1
        if seen > WINDOW:
            return -1
        if key(cid) in excluded:
            continue
        return cid
    return _UNDECIDED if bound > -np.inf else -1


def score_analogies(index: VocabIndex, lexicon: Lexicon, sections: Sequence[Section], method: str = "3cosadd",
                    rule: str = "single", exclude: str = "case", limit: int = 0, batch: int = BATCH,
                    progress: Progress | None = None, step: Step | None = None) -> AnalogyScores:
    """Accuracy per section (see the module docstring). `limit` > 0 asks only each section's first `limit`
    questions."""
    start = time.perf_counter()
    method = checks.choice(method, "method", METHODS)
    rule = checks.choice(rule, "rule", RULES)
    exclude = checks.choice(exclude, "exclude", EXCLUSIONS)
    scores, questions, candidates = _prepare(lexicon, sections, rule, limit)
    key_of = case_key if exclude == "case" else variant_key

    def key(cid: int) -> str:
        return key_of(candidates.text(cid))

    answers: list[tuple[str, Question, str | None]] = []
    total = len(questions)
    if progress is not None:
        progress(0, total)
    begin = 0
    while begin < total:
        try:
            with step() if step is not None else contextlib.nullcontext(False) as chats_running:
                size = max(1, batch // 4) if chats_running else batch  # a shorter wait for the chats
                answers += _answer_batch(index, candidates, questions[begin:begin + size], method, scores, key,
                                         key_of)
        except Cancelled as exc:
            raise EvaluationCancelled(f"Stopped after {begin:,} of {total:,} analogy questions.") from exc
        begin = min(begin + size, total)
        if progress is not None:
            progress(begin, total)
    return AnalogyScores(method, rule, exclude, scores, time.perf_counter() - start, answers)


def _answer_batch(index: VocabIndex, candidates: _Candidates, chunk: Sequence[_Question], method: str,
                  scores: list[SectionScore], key: Callable[[int], str],
                  key_of: Callable[[str], str]) -> list[tuple[str, Question, str | None]]:
    """One batch's picks, counted into `scores`; (section, question, answer given) for each question."""
    answers = []
    ids = np.array([q.ids for q in chunk], dtype=np.int64)
    a, b, c = (candidates.vectors(ids[:, j]) for j in range(3))
    top, extra_scores = (_cosadd if method == "3cosadd" else _cosmul)(index, candidates, a, b, c)
    picks = np.full(len(chunk), -1, dtype=np.int64)
    pending = np.arange(len(chunk))
    fetch = FIRST_FETCH
    while len(pending):
        ranked, ranked_ids, bound = _ranked(top, extra_scores, candidates.size, fetch, pending)
        undecided = []
        for j, row in enumerate(pending.tolist()):
            q = chunk[row]
            pick = _pick(ranked[j], ranked_ids[j], float(bound[j]), candidates.may_answer, set(q.ids[:3]), key,
                         {key_of(w) for w in q.words[:3]})
            if pick == _UNDECIDED:
                undecided.append(row)
            else:
                picks[row] = pick
        pending = np.asarray(undecided, dtype=np.int64)
        fetch *= 4
    for q, pick in zip(chunk, picks.tolist(), strict=True):
        given = candidates.text(pick).strip() if pick >= 0 else None
        if given is not None and case_key(given) == case_key(q.words[3]):
            scores[q.section].correct += 1
        answers.append((scores[q.section].name, q.words, given))
    return answers


# -- word pairs ------------------------------------------------------------------------------------------------------

def score_pairs(lexicon: Lexicon, benchmark: str, pairs: Sequence[Pair], rule: str) -> PairScores:
    """Spearman (and Pearson) correlation of cosine with the human scores over the pairs in the vocabulary."""
    from scipy import stats

    rule = checks.choice(rule, "rule", RULES)
    gold, model = [], []
    for pair in pairs:
        first, second = lexicon.pieces(pair.first, rule), lexicon.pieces(pair.second, rule)
        if first is None or second is None:
            continue
        gold.append(pair.human)
        model.append(float(lexicon.unit(first) @ lexicon.unit(second)))
    if len(gold) < 3:
        raise TokenLabError(f"Only {len(gold)} pairs of {TITLES[benchmark]} are in this vocabulary; a correlation "
                            "needs at least 3.")
    return PairScores(benchmark, rule, len(pairs), len(gold), float(stats.spearmanr(gold, model).statistic),
                      float(stats.pearsonr(gold, model).statistic), "core")


def gensim_pairs(lexicon: Lexicon, benchmark: str) -> PairScores:
    """Rule A, computed by gensim's own evaluate_word_pairs on a KeyedVectors of the lexicon's words."""
    pairs = word_pairs(benchmark)
    vectors = lexicon.keyed_vectors({w for p in pairs for w in (p.first, p.second)})
    covered = sum(1 for p in pairs if p.first.upper() in lexicon.by_key and p.second.upper() in lexicon.by_key)
    if covered < 3:
        raise TokenLabError(f"Only {covered} pairs of {TITLES[benchmark]} are in this vocabulary; a correlation "
                            "needs at least 3.")
    pearson, spearman, _ = vectors.evaluate_word_pairs(str(data_path(benchmark)))
    return PairScores(benchmark, "single", len(pairs), covered, float(spearman[0]), float(pearson[0]),
                      "gensim evaluate_word_pairs")
