"""One model's embedding evaluation as the API and the page ask for it: a benchmark (or all), a method, how many
questions per analogy section, scored under both vocabulary rules, with results cached per model.

The cache key is the model's name and a checksum of its embedding matrix (other weights under the same name are
evaluated afresh) plus what was asked. Results stay in memory (the last MAX_CACHED); whole-benchmark results are
also written as JSON to the cache directory, so a restarted app shows them at once:

    evaluator = evaluator_for(index, "bundled", cache_dir)
    result = evaluator.evaluate(check_request("all", "3cosadd", 0))
    result["analogies"]["single"]["total"]["accuracy"]
    # 0.709...
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from core import checks
from core.embeddings.benchmarks import ANALOGIES, PAIR_SETS, SIMLEX, TITLES, WORDSIM, analogy_sections, word_pairs
from core.embeddings.evaluation import (
    METHODS,
    AnalogyDict,
    PairsDict,
    Step,
    gensim_pairs,
    score_analogies,
    score_pairs,
)
from core.embeddings.index import VocabIndex
from core.embeddings.lexicon import RULES, Lexicon
from core.embeddings.table_cache import cache_key, cached_json
from core.work import cancel
from core.work.progress import Progress
from core.work.workload import Workload

ALL = "all"
BENCHMARKS = (ALL, ANALOGIES, WORDSIM, SIMLEX)
_ALIASES = {"google": ANALOGIES, "analogy": ANALOGIES, "analogies": ANALOGIES, "google-analogy": ANALOGIES,
            "questions-words": ANALOGIES, "wordsim": WORDSIM, "ws353": WORDSIM, "wordsim-353": WORDSIM,
            "simlex": SIMLEX, "simlex-999": SIMLEX}
MAX_LIMIT = 5_000  # more than the largest section (capital-world, 4,524 questions)
MAX_CACHED = 64  # results kept in memory per model
CACHE_FORMAT = "embedding-evaluation-v1"  # change it when a result's contents or meaning change
RULE_TEXT = {
    "single": "rule A: a word counts when it is one word-initial token (case-insensitive, the lowest id winning): "
              "what a gensim KeyedVectors over those tokens holds",
    "mean": "rule B: a word split into several tokens counts too, as the mean of its pieces",
}
EXCLUSION_TEXT = ("an analogy's own words and their case and leading-space variants never answer it (gensim's rule); "
                  "plurals may, so cat : cats :: dog : ? can answer dogs")



class EvaluationDict(TypedDict):
    """The API's answer for /evaluate."""

    model: str
    benchmark: str
    method: str
    limit: int
    rules: dict[str, str]
    exclusion: str
    analogies: dict[str, AnalogyDict] | None  # by rule: "single" (A) and "mean" (B)
    word_pairs: dict[str, dict[str, PairsDict]]  # by benchmark, then by rule


@dataclass(frozen=True)
class EvaluationRequest:
    benchmark: str
    method: str
    limit: int

    @property
    def analogies(self) -> bool:
        return self.benchmark in (ALL, ANALOGIES)

    @property
    def pair_sets(self) -> tuple[str, ...]:
        return PAIR_SETS if self.benchmark == ALL else tuple(b for b in PAIR_SETS if b == self.benchmark)


def check_request(benchmark: Any, method: Any = "3cosadd", limit: Any = 0) -> EvaluationRequest:
    """The request in canonical form, or InvalidInputError naming the parameter and what it accepts."""
    return EvaluationRequest(checks.choice(benchmark, "benchmark", BENCHMARKS, _ALIASES),
                             checks.choice("3cosadd" if method is None else method, "method", METHODS),
                             checks.integer(0 if limit is None else limit, "limit", 0, MAX_LIMIT))


def embedding_checksum(index: VocabIndex) -> str:
    """A digest of the embedding matrix (unit rows and norms determine it)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(memoryview(index.unit_vectors).cast("B"))
    digest.update(memoryview(index.norms).cast("B"))
    return digest.hexdigest()


class Evaluator:
    """Evaluates one model's index; thread-safe. Evaluations take turns (`work.evaluations`: one at a time, a bounded
    line behind it) and run their batches as heavy steps (`work.share`), whoever calls."""

    def __init__(self, index: VocabIndex, model_name: str, cache_dir: Path | None = None,
                 work: Workload | None = None) -> None:
        self.index = index
        self.model_name = model_name
        self.cache_dir = cache_dir
        self.work = work or Workload()
        self._lock = threading.Lock()
        self._lexicon: Lexicon | None = None
        self._checksum: str | None = None
        self._results: OrderedDict[str, dict] = OrderedDict()

    @property
    def lexicon(self) -> Lexicon:
        with self._lock:
            if self._lexicon is None:
                self._lexicon = Lexicon(self.index)
            return self._lexicon

    @property
    def checksum(self) -> str:
        if self._checksum is None:
            self._checksum = embedding_checksum(self.index)
        return self._checksum

    def evaluate(self, request: EvaluationRequest, progress: Progress | None = None) -> EvaluationDict:
        """Scores for the request under both rules. A result not in memory is computed in this request's turn
        (BusyError when the line is full); EvaluationCancelled when the request is cancelled (core/work/cancel.py)."""
        token = cancel.current()

        def step() -> contextlib.AbstractContextManager[bool]:  # what is not in memory is computed in heavy steps
            return self.work.share.step(token)

        if self.cached(request):
            return self._evaluate(request, progress, step)
        with self.work.evaluations.turn(token, progress):
            return self._evaluate(request, progress, step)

    def _evaluate(self, request: EvaluationRequest, progress: Progress | None, step: Step) -> EvaluationDict:
        analogies = None
        if request.analogies:
            analogies = {rule: self._analogies(request, rule, progress, step) for rule in RULES}
        pairs = {name: {rule: self._pairs(name, rule, step) for rule in RULES} for name in request.pair_sets}
        return {"model": self.model_name, "benchmark": request.benchmark, "method": request.method,
                "limit": request.limit, "rules": dict(RULE_TEXT), "exclusion": EXCLUSION_TEXT,
                "analogies": analogies, "word_pairs": pairs}

    def cached(self, request: EvaluationRequest) -> bool:
        """Whether every part of the request is already in memory."""
        keys = [self._key(ANALOGIES, request.method, rule, request.limit) for rule in RULES if request.analogies]
        keys += [self._key(name, rule) for name in request.pair_sets for rule in RULES]
        with self._lock:
            return all(k in self._results for k in keys)

    def _analogies(self, request: EvaluationRequest, rule: str, progress: Progress | None,
                   step: Step) -> AnalogyDict:
        stage = f"{TITLES[ANALOGIES]}, rule {'A' if rule == 'single' else 'B'} ({request.method})"

        def build() -> dict:
            report = (lambda done, total: progress(done, total, stage)) if progress is not None else None
            with step():  # the first call reads the data files
                sections, lexicon = analogy_sections(), self.lexicon
            return score_analogies(self.index, lexicon, sections, request.method, rule, limit=request.limit,
                                   progress=report, step=step).to_dict()

        parts = (ANALOGIES, request.method, rule, str(request.limit))
        return self._cached(parts, build, on_disk=request.limit == 0)  # type: ignore[return-value]

    def _pairs(self, benchmark: str, rule: str, step: Step) -> PairsDict:
        def build() -> dict:
            with step():  # one heavy step
                if rule == "single":
                    return gensim_pairs(self.lexicon, benchmark).to_dict()
                return score_pairs(self.lexicon, benchmark, word_pairs(benchmark), rule).to_dict()

        return self._cached((benchmark, rule), build, on_disk=True)  # type: ignore[return-value]

    def _key(self, *parts: object) -> str:
        return cache_key([CACHE_FORMAT, self.model_name, self.checksum, *map(str, parts)])

    def _cached(self, parts: tuple[str, ...], build: Callable[[], dict], on_disk: bool) -> dict:
        key = self._key(*parts)
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
        cache_dir = self.cache_dir if on_disk else None
        result, _ = cached_json("embedding-evaluation", [CACHE_FORMAT, self.model_name, self.checksum, *parts], build,
                                cache_dir)
        with self._lock:
            self._results[key] = result
            while len(self._results) > MAX_CACHED:
                self._results.popitem(last=False)
        return result


_EVALUATORS: weakref.WeakKeyDictionary[VocabIndex, Evaluator] = weakref.WeakKeyDictionary()
_EVALUATORS_LOCK = threading.Lock()


def evaluator_for(index: VocabIndex, model_name: str, cache_dir: Path | None = None,
                  work: Workload | None = None) -> Evaluator:
    """The one Evaluator of `index` (made on first use, dropped with the index)."""
    with _EVALUATORS_LOCK:
        evaluator = _EVALUATORS.get(index)
        if (evaluator is None or evaluator.model_name != model_name or evaluator.cache_dir != cache_dir
                or (work is not None and evaluator.work is not work)):
            evaluator = _EVALUATORS[index] = Evaluator(index, model_name, cache_dir, work)
        return evaluator
