"""Evaluation tab: how good the model's input embeddings are on the benchmarks word vectors are judged by (Google
analogies, WordSim-353, SimLex-999), with published word2vec and GloVe figures beside them, and the typed API
endpoint /evaluate. The scoring lives in core.embeddings.evaluation, the caching in core.embeddings.evaluator.

A run reports progress between batches of questions; Cancel (or a client's cancel) stops it after the batch it is on.
No `from __future__ import annotations` here: gr.api reads the return annotations as real types.
"""

import collections
import threading

import gradio as gr
import pandas as pd

from core.embeddings.benchmarks import ANALOGIES, SIMLEX, TITLES, WORDSIM
from core.embeddings.evaluation import SectionDict
from core.embeddings.evaluator import MAX_LIMIT, EvaluationDict, check_request, evaluator_for
from core.embeddings.literature import PUBLISHED
from core.host import ModelHost
from demo.cancellation import cancellable
from demo.errors import api_errors, ui_errors
from demo.progress_bar import shown_on

INTRO = (
    "How good is this model's input embedding space on the benchmarks word vectors are judged by? The **Google "
    "analogies** (Mikolov et al. 2013: 19,544 questions such as *Athens : Greece :: Baghdad : ?*) are answered with "
    "3CosAdd (the word nearest to b − a + c, gensim's `most_similar`) or 3CosMul; **WordSim-353** and **SimLex-999** "
    "compare the cosine of word pairs with human judgements (Spearman's ρ). The datasets are gensim's copies, scored "
    "as gensim's `evaluate_word_analogies` and `evaluate_word_pairs` score word vectors.\n\n"
    "*In the vocabulary* means, under **rule A**, that a word is one word-initial token (`␣king`), matched "
    "case-insensitively with the lowest id first: what a gensim KeyedVectors over those tokens holds, and what the "
    "published figures assume. **Rule B** also takes a word the tokenizer splits, as the mean of its pieces. Accuracy "
    "counts the questions asked; coverage says how many of the set those are.\n\n"
    "An analogy's own words never answer it, nor their case and leading-space variants (`␣King`, `KING`), as in "
    "gensim; plurals may, so *cat : cats :: dog : ?* can answer *dogs* (the Embeddings tab's analogies follow the "
    "same rule).")
LITERATURE_NOTE = ("Published figures come from vocabularies of hundreds of thousands of whole words, so they ask more "
                   "questions than rule A can here; compare coverage before accuracy.")
BENCHMARK_CHOICES = [("All", "all"), (TITLES[ANALOGIES], ANALOGIES), (TITLES[WORDSIM], WORDSIM),
                     (TITLES[SIMLEX], SIMLEX)]
METHOD_CHOICES = [("3CosAdd (gensim most_similar)", "3cosadd"), ("3CosMul", "3cosmul")]
SECTION_HEADERS = ["section", "questions", "asked (A)", "accuracy (A) %", "asked (B)", "accuracy (B) %"]
PAIR_HEADERS = ["benchmark", "rule", "pairs scored", "coverage %", "Spearman ρ", "computed by"]
COMPARISON_HEADERS = ["vectors", "semantic %", "syntactic %", "total %", f"{TITLES[WORDSIM]} ρ",
                      f"{TITLES[SIMLEX]} ρ", "source"]
RULE_NAMES = {"single": "A", "mean": "B"}
NONE = "—"


# -- formatting (pure functions of the API's dicts) ----------------------------------------------------------------

def percent(value: float | None) -> str:
    return NONE if value is None else f"{100 * value:.1f}"


def rho(value: float | None) -> str:
    return NONE if value is None else f"{value:.3f}"


def sections_frame(result: EvaluationDict | None) -> pd.DataFrame:
    """One row per analogy section, then the semantic, syntactic and total rows; both rules side by side."""
    rows = []
    if result is not None and result["analogies"] is not None:
        a, b = result["analogies"]["single"], result["analogies"]["mean"]
        both: list[tuple[SectionDict, SectionDict]] = list(zip(a["sections"], b["sections"], strict=True))
        both += [(a["semantic"], b["semantic"]), (a["syntactic"], b["syntactic"]), (a["total"], b["total"])]
        rows = [[sa["section"], sa["questions"], sa["asked"], percent(sa["accuracy"]), sb["asked"],
                 percent(sb["accuracy"])] for sa, sb in both]
    return pd.DataFrame(rows, columns=SECTION_HEADERS)


def pairs_frame(result: EvaluationDict | None) -> pd.DataFrame:
    rows = []
    if result is not None:
        for name, by_rule in result["word_pairs"].items():
            for rule, p in by_rule.items():
                rows.append([TITLES[name], RULE_NAMES[rule], f"{p['covered']} of {p['pairs']}",
                             percent(p["coverage"]), rho(p["spearman"]), p["computed_by"]])
    return pd.DataFrame(rows, columns=PAIR_HEADERS)


def comparison_frame(result: EvaluationDict | None) -> pd.DataFrame:
    """This model's rows (once evaluated) above the published ones, in the same columns."""
    rows = []
    if result is not None:
        for rule, letter in RULE_NAMES.items():
            analogy = result["analogies"][rule] if result["analogies"] is not None else None
            pairs = {name: by_rule[rule]["spearman"] for name, by_rule in result["word_pairs"].items()}
            accuracy = ([percent(analogy["semantic"]["accuracy"]), percent(analogy["syntactic"]["accuracy"]),
                         percent(analogy["total"]["accuracy"])] if analogy is not None else [NONE] * 3)
            rows.append([f"{result['model']}, rule {letter}", *accuracy, rho(pairs.get(WORDSIM)),
                         rho(pairs.get(SIMLEX)), f"measured here ({result['method']})"])
    for row in PUBLISHED:
        figures = row.figures
        analogy = [f"{figures[p]:.1f}" if p in figures and row.benchmark == ANALOGIES else NONE
                   for p in ("semantic", "syntactic", "total")]
        wordsim = rho(figures["spearman"]) if row.benchmark == WORDSIM else NONE
        simlex = rho(figures["spearman"]) if row.benchmark == SIMLEX else NONE
        rows.append([row.vectors, *analogy, wordsim, simlex, row.cite])
    return pd.DataFrame(rows, columns=COMPARISON_HEADERS)


def sources_markdown() -> str:
    """The published rows' full sources and how each was counted."""
    return "\n".join(f"- **{row.cite}**: {row.source}, <{row.url}>; {row.protocol}." for row in PUBLISHED)


def summary_markdown(result: EvaluationDict) -> str:
    """A few lines: the model, the analogy totals under both rules with coverage, and the correlations."""
    limit = {0: "every question", 1: "the first question of each section"}.get(
        result["limit"], f"the first {result['limit']:,} questions of each section")
    lines = [f"**`{result['model']}`** · {result['method']} · {limit}"]
    if result["analogies"] is not None:
        for rule, letter in RULE_NAMES.items():
            total = result["analogies"][rule]["total"]
            lines.append(f"- Analogies, rule {letter}: **{percent(total['accuracy'])} %** of {total['asked']:,} "
                         f"questions asked ({percent(total['coverage'])} % of {total['questions']:,})")
    for name, by_rule in result["word_pairs"].items():
        a, b = by_rule["single"], by_rule["mean"]
        lines.append(f"- {TITLES[name]}: ρ = **{rho(a['spearman'])}** over {a['covered']} of {a['pairs']} pairs "
                     f"(rule A), {rho(b['spearman'])} over {b['covered']} (rule B)")
    return "\n".join(lines)


# -- the tab -------------------------------------------------------------------------------------------------------

def build_evaluation_tab(host: ModelHost) -> None:
    """The Evaluation tab and its API endpoint, inside the current gr.Blocks."""
    in_progress: collections.Counter[str] = collections.Counter()  # evaluations in progress, per browser session
    in_progress_lock = threading.Lock()

    def evaluator():
        parts = host.require()
        return evaluator_for(parts.index, parts.loaded.name, host.config.cache_dir, host.work)

    @cancellable
    @ui_errors
    def run(benchmark: str, method: str, limit: float, request: gr.Request,
            progress: gr.Progress = gr.Progress()) -> tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        asked = check_request(benchmark, method, limit)
        session = request.session_hash or ""
        with in_progress_lock:
            in_progress[session] += 1
        try:
            result = evaluator().evaluate(asked, progress=shown_on(progress, "questions"))
        finally:
            with in_progress_lock:
                in_progress[session] -= 1
                if not in_progress[session]:
                    del in_progress[session]
        return summary_markdown(result), sections_frame(result), pairs_frame(result), comparison_frame(result)

    def cancel(request: gr.Request) -> str:
        """The button's own message; `cancels=` stops the run (demo/cancellation.py)."""
        with in_progress_lock:
            if not in_progress.get(request.session_hash or ""):
                return "Nothing is running."
        return "Cancelled: the evaluation stops after the batch of questions it is on."

    @cancellable
    @api_errors
    def evaluate(benchmark: str, method: str = "3cosadd", limit: int = 0) -> EvaluationDict:
        """Score the model's input embeddings on the standard word-vector benchmarks, under two vocabulary rules.

        Analogies (Google set, 19,544 questions in 14 sections): accuracy per section, semantic, syntactic and total,
        with coverage (questions asked / in the set). Word pairs (WordSim-353, SimLex-999): Spearman's rho of cosine
        with human scores, with coverage. Rule A ("single"): a word counts when it is one word-initial token, as in
        a gensim KeyedVectors (the published figures' rule); rule B ("mean"): a split word is the mean of its
        pieces. An analogy's own words and their case and leading-space variants never answer it (gensim's rule).
        Results are cached per model; a first full run takes minutes on a CPU.

        Args:
            benchmark: "all", "google_analogy", "wordsim353" or "simlex999".
            method: "3cosadd" (gensim's most_similar) or "3cosmul" (Levy & Goldberg 2014), for the analogies.
            limit: questions per analogy section, 0 (all) to 5,000; the word-pair sets are always scored whole.
        """
        asked = check_request(benchmark, method, limit)
        return evaluator().evaluate(asked)

    common = {"concurrency_limit": 1, "concurrency_id": "evaluation"}
    with gr.Tab("Evaluation", id="evaluation"):
        gr.api(evaluate, api_name="evaluate", **common)  # inside the Tab: gr.Tabs holds only tabs
        gr.Markdown(INTRO)
        with gr.Row():
            benchmark = gr.Dropdown(BENCHMARK_CHOICES, value="all", label="Benchmark", scale=2)
            method = gr.Radio(METHOD_CHOICES, value="3cosadd", label="Analogy method", scale=3)
            limit = gr.Number(0, precision=0, minimum=0, maximum=MAX_LIMIT, scale=2, elem_id="eval-limit",
                              label="Questions per analogy section (0 = all)")
        with gr.Row():
            start = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
            stop = gr.Button("Cancel", variant="stop", elem_id="eval-cancel")
        summary = gr.Markdown("Choose a benchmark and press Evaluate.", elem_id="eval-summary")
        sections = gr.Dataframe(sections_frame(None), headers=SECTION_HEADERS, interactive=False,
                                label="Google analogies per section", elem_id="eval-sections", max_height=520)
        pairs = gr.Dataframe(pairs_frame(None), headers=PAIR_HEADERS, interactive=False,
                             label="Word similarity (Spearman's ρ of cosine against human scores)",
                             elem_id="eval-pairs")
        gr.Markdown(f"### Beside published word vectors\n{LITERATURE_NOTE}")
        comparison = gr.Dataframe(comparison_frame(None), headers=COMPARISON_HEADERS, interactive=False, wrap=True,
                                  label="This model and the literature", elem_id="eval-literature")
        gr.Markdown(sources_markdown(), elem_id="eval-sources")

    running = start.click(run, [benchmark, method, limit], [summary, sections, pairs, comparison],
                          api_visibility="private", **common)
    stop.click(cancel, None, summary, cancels=[running], api_visibility="private", queue=False)
