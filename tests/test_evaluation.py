"""The embedding evaluation on the bundled model: the same answers as gensim where both apply, plurals answerable,
progress reported, a stop honoured, results cached per model."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest

from core.embeddings.benchmarks import (
    ANALOGIES,
    SIMLEX,
    WORDSIM,
    Section,
    analogy_sections,
    data_path,
    read_analogies,
    word_pairs,
)
from core.embeddings.evaluation import EvaluationCancelled, gensim_pairs, score_analogies, score_pairs
from core.embeddings.evaluator import Evaluator, check_request
from core.embeddings.index import VocabIndex
from core.embeddings.lexicon import Lexicon
from core.errors import InvalidInputError
from core.work.cancel import Cancelled

SAMPLE_PER_SECTION = 12  # gensim answers one question at a time: the agreement tests use a sample


@pytest.fixture(scope="module")
def index(bundled) -> VocabIndex:
    return VocabIndex.from_model(bundled.model, bundled.tokenizer, use_gpu=False)


@pytest.fixture(scope="module")
def lexicon(index) -> Lexicon:
    return Lexicon(index)


@pytest.fixture(scope="module")
def keyed(lexicon):
    """gensim's view of the vocabulary: a KeyedVectors over every word-initial token."""
    vectors = lexicon.keyed_vectors()
    vectors.fill_norms()
    return vectors


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """Each section's first questions of questions-words.txt (some with words outside the vocabulary)."""
    lines = []
    for section in analogy_sections():
        lines.append(f": {section.name}")
        lines += [" ".join(q) for q in section.questions[:SAMPLE_PER_SECTION]]
    path = tmp_path_factory.mktemp("analogies") / "sample.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def answered(result) -> dict[tuple[str, tuple[str, ...]], bool]:
    return {(section, tuple(w.upper() for w in words)): given is not None and given.upper() == words[3].upper()
            for section, words, given in result.answers}


def test_the_benchmark_files_are_gensims():
    sections = analogy_sections()
    assert len(sections) == 14 and sum(s.semantic for s in sections) == 5
    assert sum(len(s.questions) for s in sections) == 19_544
    assert sections[0].questions[0] == ("Athens", "Greece", "Baghdad", "Iraq")
    assert sections[-1].name == "gram9-plural-verbs"
    assert len(word_pairs(WORDSIM)) == 353 and len(word_pairs(SIMLEX)) == 999
    assert data_path(ANALOGIES).name == "questions-words.txt"


def test_3cosadd_answers_every_question_as_gensims_evaluate_word_analogies(index, lexicon, keyed, sample):
    accuracy, sections = keyed.evaluate_word_analogies(str(sample))
    ours = score_analogies(index, lexicon, read_analogies(sample))
    theirs = {(s["section"], q): ok for s in sections[:-1] for ok, key in ((True, "correct"), (False, "incorrect"))
              for q in s[key]}
    assert answered(ours) == theirs
    assert ours.total.accuracy == accuracy
    assert 0 < ours.total.asked < ours.total.questions  # some questions leave the vocabulary under rule A


def test_3cosmul_answers_as_gensims_most_similar_cosmul(index, lexicon, keyed, sample):
    """gensim's evaluate_word_analogies always uses 3CosAdd; this is its loop with most_similar_cosmul instead."""
    ours = score_analogies(index, lexicon, read_analogies(sample), method="3cosmul")
    for section, words, given in ours.answers[::3]:
        upper = [w.upper() for w in words]
        keys = [lexicon.word(lexicon.by_key[w]) for w in upper]
        predicted = None
        for key, _ in keyed.most_similar_cosmul(positive=[keys[1], keys[2]], negative=[keys[0]], topn=5):
            predicted = key.upper()
            if predicted not in upper[:3]:
                break
        assert (predicted == upper[3]) == (given is not None and given.upper() == upper[3]), (section, words)


@pytest.mark.parametrize("benchmark", [WORDSIM, SIMLEX])
def test_word_pairs_agree_with_gensims_evaluate_word_pairs(lexicon, keyed, benchmark):
    pearson, spearman, oov_percent = keyed.evaluate_word_pairs(str(data_path(benchmark)))
    ours = score_pairs(lexicon, benchmark, word_pairs(benchmark), "single")
    assert ours.spearman == pytest.approx(spearman[0], abs=1e-9)
    assert ours.pearson == pytest.approx(pearson[0], abs=1e-6)
    assert 100 * (1 - ours.coverage) == pytest.approx(oov_percent)
    small = gensim_pairs(lexicon, benchmark)  # gensim on a KeyedVectors of the set's words only
    assert small.spearman == spearman[0] and small.covered == ours.covered
    averaged = score_pairs(lexicon, benchmark, word_pairs(benchmark), "mean")
    assert averaged.covered == averaged.pairs > ours.covered
    assert 0.2 < averaged.spearman < 0.6


QUESTIONS = ["cat cats dog dogs", "mouse mice lion lions", "man king woman queen", "walk walked swim swam"]


def ask(index, lexicon, tmp_path, exclude: str) -> dict[str, str | None]:
    path = tmp_path / "examples.txt"
    path.write_text(": examples\n" + "\n".join(QUESTIONS) + "\n")
    result = score_analogies(index, lexicon, read_analogies(path), exclude=exclude)
    return {" ".join(words[:3]): given and given.lower() for _, words, given in result.answers}


def test_grammatical_and_semantic_analogies_are_answered(index, lexicon, tmp_path):
    assert ask(index, lexicon, tmp_path, "case") == {"cat cats dog": "dogs", "mouse mice lion": "lions",
                                                      "man king woman": "queen", "walk walked swim": "swam"}
    folded = ask(index, lexicon, tmp_path, "plural")  # leaving out plurals too makes the plural questions wrong
    assert folded["cat cats dog"] != "dogs" and folded["mouse mice lion"] != "lions"


@pytest.mark.parametrize(("positive", "negative", "answer"), [
    ("cats, dog", "cat", " dogs"), ("mice, lion", "mouse", " lions"), ("king, woman", "man", " queen"),
    ("walked, swim", "walk", " swam")])
@pytest.mark.parametrize("method", ["3cosadd", "3cosmul"])
def test_the_analogy_view_answers_plurals_too(index, positive, negative, answer, method):
    result = index.analogy(positive, negative, k=3, method=method)
    assert result.neighbors[0].text == answer
    inputs = {w.strip().lower() for w in f"{positive},{negative}".split(",")}
    assert not {n.text.strip().lower() for n in result.neighbors} & inputs  # no case variant of an input


def test_rule_b_asks_the_questions_rule_a_cannot(index, lexicon, sample):
    sections = read_analogies(sample)
    single = score_analogies(index, lexicon, sections)
    mean = score_analogies(index, lexicon, sections, rule="mean")
    assert mean.total.asked == mean.total.questions > single.total.asked
    assert all(s.asked == s.questions for s in mean.sections)


def test_progress_is_reported_between_batches_and_a_stop_is_honoured(index, lexicon, sample):
    sections = read_analogies(sample)
    seen: list[tuple[int, int]] = []
    result = score_analogies(index, lexicon, sections, batch=16, progress=lambda d, t: seen.append((d, t)))
    done = [d for d, _ in seen]
    assert done[0] == 0 and done == sorted(set(done)) and seen[-1] == (result.total.asked, result.total.asked)
    turns: list[int] = []

    def step():  # the third batch's turn is refused, as a cancelled request's is
        turns.append(1)
        if len(turns) == 3:
            raise Cancelled()
        return contextlib.nullcontext(False)  # no chats running: whole batches

    with pytest.raises(EvaluationCancelled, match=f"Stopped after 32 of {result.total.asked} analogy questions"):
        score_analogies(index, lexicon, sections, batch=16, step=step)


def test_batches_are_a_quarter_as_large_while_chats_run(index, lexicon, sample):
    seen: list[int] = []
    result = score_analogies(index, lexicon, read_analogies(sample), batch=16, progress=lambda d, t: seen.append(d),
                             step=lambda: contextlib.nullcontext(True))
    assert seen[:4] == [0, 4, 8, 12] and seen[-1] == result.total.asked


def test_limit_takes_each_sections_first_questions(index, lexicon):
    result = score_analogies(index, lexicon, analogy_sections(), rule="mean", limit=2)
    assert [s.questions for s in result.sections] == [2] * 14 and result.total.asked == 28


def test_results_are_cached_per_model_in_memory_and_on_disk(index, tmp_path):
    first = Evaluator(index, "bundled", tmp_path)
    request = check_request("wordsim353", "3cosadd", 0)
    assert not first.cached(request)
    result = first.evaluate(request)
    assert first.cached(request) and first.evaluate(request) == result
    assert result["analogies"] is None and set(result["word_pairs"]) == {WORDSIM}
    assert result["word_pairs"][WORDSIM]["single"]["computed_by"] == "gensim evaluate_word_pairs"
    assert len(list((tmp_path / "embedding-evaluation").glob("*.json"))) == 2  # one file per rule
    restarted = Evaluator(index, "bundled", tmp_path)
    assert restarted.evaluate(request) == result  # read back from disk
    assert not Evaluator(index, "another model", tmp_path).cached(request)


def test_a_small_request_scores_every_part(index, tmp_path):
    stages: list[str] = []
    result = Evaluator(index, "bundled", tmp_path).evaluate(check_request("all", "3cosmul", 1),
                                                            progress=lambda d, t, stage: stages.append(stage))
    assert set(result["analogies"]) == {"single", "mean"} and set(result["word_pairs"]) == {WORDSIM, SIMLEX}
    assert result["method"] == "3cosmul" and result["limit"] == 1
    assert stages[0] == "Google analogies, rule A (3cosmul)" and stages[-1] == "Google analogies, rule B (3cosmul)"
    assert len(list((tmp_path / "embedding-evaluation").glob("*.json"))) == 4  # limited runs stay in memory only


@pytest.mark.parametrize(("args", "message"), [
    (("mmlu", "3cosadd", 0), "benchmark must be one of all, google_analogy, wordsim353, simlex999; got 'mmlu'"),
    ((None, "3cosadd", 0), "benchmark must be one of .*; got null"),
    (("all", "4cosadd", 0), "method must be one of 3cosadd, 3cosmul; got '4cosadd'"),
    (("all", "3cosadd", -1), "limit must be a whole number from 0 to 5,000; got the number -1"),
    (("all", "3cosadd", 10**9), "limit must be a whole number from 0 to 5,000"),
    (("all", "3cosadd", math.nan), "limit must be a whole number"),
    (("all", "3cosadd", True), "got true"),
])
def test_bad_requests_are_refused_before_any_work(args, message):
    with pytest.raises(InvalidInputError, match=message):
        check_request(*args)


def test_aliases_and_defaults():
    assert check_request("Google", None, None) == check_request("google_analogy", "3cosadd", 0)
    assert check_request(" SimLex ", "3CosMul", 3.0).benchmark == SIMLEX


def test_a_section_file_is_read_as_gensim_reads_it(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text(": first\na b c d\nnot four words\n: gram1-second\ne f g h\n")
    assert read_analogies(path) == [Section("first", (("a", "b", "c", "d"),)),
                                    Section("gram1-second", (("e", "f", "g", "h"),))]


def test_phi3s_sentencepiece_vocabulary_under_both_rules(phi3_tiny):
    """Phi-3's 32,011 tokens hold far fewer whole words than SmolLM2's 49,152 (▁king is a word-initial token too)."""
    index = VocabIndex.from_model(phi3_tiny.model, phi3_tiny.tokenizer, use_gpu=False)
    lexicon = Lexicon(index)
    vocab = index.vocabulary.vocab
    assert lexicon.pieces("king", "single") == (min(vocab["▁King"], vocab["▁king"]),)  # the lowest id, as in gensim
    result = score_analogies(index, lexicon, analogy_sections())
    assert (result.total.asked, result.semantic.asked, result.syntactic.asked) == (3_020, 315, 2_705)
    assert [score_pairs(lexicon, name, word_pairs(name), "single").covered for name in (WORDSIM, SIMLEX)] == [185, 542]
    assert score_pairs(lexicon, WORDSIM, word_pairs(WORDSIM), "mean").covered == 353
