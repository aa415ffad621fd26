"""The embedding evaluation on the bundled model, timed against gensim in one run:

- the full Google analogy set (rule A, 3CosAdd) through the app's code (core.embeddings.evaluation, one
  VocabIndex.search per batch of questions) ÷ gensim's evaluate_word_analogies on a KeyedVectors of the same
  vectors (one most_similar per question); ours runs before and after gensim, so a change in the machine's load
  shows; the two must give the same answer to every question;
- the whole evaluation as /evaluate("all") computes it on a cold cache (both rules, both word-pair sets), 3CosMul,
  and the exclusion rules compared per section (gensim's case rule against also leaving out plurals).

    python -m bench.bench_evaluation
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.results_io import write_results

TARGET_RATIO = 0.5
EVIDENCE_SECTIONS = ("family", "gram5-present-participle", "gram8-plural", "gram9-plural-verbs")


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def correct_set(answers) -> set[tuple[str, tuple[str, ...]]]:
    return {(section, tuple(w.upper() for w in words)) for section, words, given in answers
            if given is not None and given.upper() == words[3].upper()}


def main() -> None:
    from core.config import default_cache_dir
    from core.embeddings.benchmarks import ANALOGIES, analogy_sections, data_path
    from core.embeddings.evaluation import score_analogies
    from core.embeddings.evaluator import Evaluator, check_request
    from core.embeddings.index import VocabIndex
    from core.embeddings.lexicon import Lexicon
    from core.model.loading import load_model

    load_at_start = os.getloadavg()
    loaded = load_model("bundled", device="cpu", dtype="auto", cache_dir=default_cache_dir(), progress=lambda m: None)
    index = VocabIndex.from_model(loaded.model, loaded.tokenizer, use_gpu=False)
    lexicon = Lexicon(index)
    sections = analogy_sections()
    keyed = lexicon.keyed_vectors()
    keyed.fill_norms()

    ours, gensim_runs = [], []
    first, seconds = timed(lambda: score_analogies(index, lexicon, sections))
    ours.append(seconds)
    (gensim_accuracy, gensim_sections), seconds = timed(
        lambda: keyed.evaluate_word_analogies(str(data_path(ANALOGIES))))
    gensim_runs.append(seconds)
    second, seconds = timed(lambda: score_analogies(index, lexicon, sections))
    ours.append(seconds)
    gensim_correct = {(s["section"], q) for s in gensim_sections[:-1] for q in s["correct"]}
    gensim_asked = len(gensim_sections[-1]["correct"]) + len(gensim_sections[-1]["incorrect"])
    same_answers = correct_set(first.answers) == gensim_correct == correct_set(second.answers)
    ratio = min(ours) / min(gensim_runs)

    whole, whole_seconds = timed(lambda: Evaluator(index, loaded.name).evaluate(check_request("all", "3cosadd", 0)))
    cosmul, cosmul_seconds = timed(lambda: score_analogies(index, lexicon, sections, method="3cosmul"))
    plural, _ = timed(lambda: score_analogies(index, lexicon, sections, exclude="plural"))
    by_name = {s.name: s for s in first.sections}
    folded = {s.name: s for s in plural.sections}
    evidence = {name: {"case": by_name[name].accuracy, "plural": folded[name].accuracy} for name in EVIDENCE_SECTIONS}
    evidence["total"] = {"case": first.total.accuracy, "plural": plural.total.accuracy}

    analogies, pairs = whole["analogies"], whole["word_pairs"]
    data = {
        "load_average": {"start": load_at_start, "end": os.getloadavg()},
        "questions": first.total.questions, "asked_rule_a": first.total.asked,
        "ours_seconds": ours, "gensim_seconds": gensim_runs, "ratio": ratio, "target_ratio": TARGET_RATIO,
        "accuracy": {"ours": first.total.accuracy, "gensim": gensim_accuracy}, "asked": {"gensim": gensim_asked},
        "same_answer_to_every_question": same_answers,
        "whole_evaluation_seconds": whole_seconds, "whole_evaluation": whole,
        "cosmul_rule_a": {"seconds": cosmul_seconds, "accuracy": cosmul.total.accuracy},
        "exclusion_evidence": evidence,
    }
    pct = "{:.1%}".format
    table = [
        ("Google set, rule A: questions asked", f"{first.total.asked:,} of {first.total.questions:,}"),
        ("ours, 3CosAdd through VocabIndex.search (before / after gensim)", " / ".join(f"{s:.1f} s" for s in ours)),
        ("gensim evaluate_word_analogies, same vectors", f"{min(gensim_runs):.1f} s"),
        (f"ratio ours ÷ gensim (target ≤ {TARGET_RATIO})", f"{ratio:.3f} {'✅' if ratio <= TARGET_RATIO else '❌'}"),
        ("accuracy ours / gensim", f"{first.total.accuracy:.6f} / {gensim_accuracy:.6f}"),
        ("same answer to every question", "✅" if same_answers else "❌"),
        ("whole /evaluate('all'), cold: both rules, both word-pair sets", f"{whole_seconds:.1f} s"),
        ("analogies rule A / rule B (3CosAdd)", f"{pct(analogies['single']['total']['accuracy'])} / "
                                                f"{pct(analogies['mean']['total']['accuracy'])}"),
        ("3CosMul rule A", f"{pct(cosmul.total.accuracy)} in {cosmul_seconds:.1f} s"),
        ("WordSim-353 ρ, rule A / B", f"{pairs['wordsim353']['single']['spearman']:.4f} / "
                                     f"{pairs['wordsim353']['mean']['spearman']:.4f}"),
        ("SimLex-999 ρ, rule A / B", f"{pairs['simlex999']['single']['spearman']:.4f} / "
                                    f"{pairs['simlex999']['mean']['spearman']:.4f}"),
    ]
    table += [(f"exclusion: {name}, case rule / also plurals", f"{pct(v['case'])} / {pct(v['plural'])}")
              for name, v in evidence.items()]
    write_results("evaluation", data, table)


if __name__ == "__main__":
    main()
