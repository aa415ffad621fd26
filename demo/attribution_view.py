"""Inside → Attribution, and the chat's "why this token": which input tokens a token's probability rests on, drawn as
the text's tokens coloured by their contribution (red for, blue against) with both scores on hover, and a table.
The computing is core.inside.attribution; this file draws it.

The coloured text is a Vega-Lite chart whose tokens are chart data drawn on a canvas, so no user text or vocabulary
piece becomes HTML. No `from __future__ import annotations` here: gr.api reads the return annotations as real types.
"""

import json
from typing import Any

import gradio as gr
import pandas as pd
from gradio.components.plot import AltairPlotData, PlotData

from core.errors import InvalidInputError
from core.host import ModelHost
from core.inside.attribution import DEFAULT_STEPS, MAX_STEPS, Attribution, attribution, attribution_of_ids
from demo.cancellation import cancellable
from demo.errors import api_errors, ui_errors
from demo.progress_bar import shown_on
from demo.token_view import piece_shown

INTRO = ("How much each token of the text contributes to the log-probability of one target token (by default the "
         "model's most likely next token). Gradient × input multiplies each token's input embedding by the gradient "
         "of that log-probability: a fast first-order estimate. Integrated gradients integrate the gradient along a "
         "straight path from a baseline (the text with every ordinary word replaced by \"the\"; the first token and "
         "the chat template's markers kept) to the real text; their scores add up to the change in log-probability "
         "along that path, and the completeness error says how close this many steps come (more steps, closer). "
         "Tokens the baseline keeps score 0 by integrated gradients.")
TABLE_HEADERS = ["#", "token", "integrated gradients", "gradient × input"]
LINE_CHARS = 90  # characters per line of the coloured text, before it wraps
LINE_PX = 30  # the height of a line of tokens


def shown_scores(result: Attribution) -> tuple[str, list[float]]:
    """The scores that colour the text: integrated gradients where computed (they add up), else gradient × input."""
    if result["integrated_gradients"] is not None:
        return "integrated gradients", result["integrated_gradients"]
    return "gradient × input", result["grad_x_input"] or []


def tokens_plot(result: Attribution) -> PlotData:
    """The tokens laid out as running text (wrapping at LINE_CHARS), each on a cell coloured by its score on a
    red–blue scale centred on 0; hovering a token shows both methods' scores."""
    name, scores = shown_scores(result)
    cells, x, line = [], 0, 0
    for i, token in enumerate(result["tokens"]):
        text = piece_shown(token["text"], token["piece"])
        width = max(1, len(text))
        if x and x + width > LINE_CHARS:
            x, line = 0, line + 1
        cells.append({"x": x, "x2": x + width, "line": line, "token": text, "index": i, "score": round(scores[i], 4),
                      "gxi": None if result["grad_x_input"] is None else round(result["grad_x_input"][i], 4),
                      "ig": None if result["integrated_gradients"] is None else
                      round(result["integrated_gradients"][i], 4)})
        x += width
    reach = max([abs(c["score"]) for c in cells] + [1e-6])
    tooltip = [{"field": "index", "title": "#"}, {"field": "token"}]
    if result["integrated_gradients"] is not None:
        tooltip.append({"field": "ig", "title": "integrated gradients", "format": "+.3f"})
    if result["grad_x_input"] is not None:
        tooltip.append({"field": "gxi", "title": "gradient × input", "format": "+.3f"})
    position = {"x": {"field": "x", "type": "quantitative", "axis": None, "scale": {"domain": [0, LINE_CHARS]}},
                "y": {"field": "line", "type": "ordinal", "axis": None, "scale": {"paddingInner": 0.15}}}
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json", "height": LINE_PX * (line + 1) + 16,
        "padding": {"top": 30, "left": 5, "right": 5, "bottom": 5},  # below the plot's floating label
        "data": {"values": cells},
        "encoding": {**position, "tooltip": tooltip},
        "layer": [
            {"mark": {"type": "rect", "stroke": "white", "strokeWidth": 1},
             "encoding": {"x2": {"field": "x2"},
                          "color": {"field": "score", "type": "quantitative", "title": name,
                                    "scale": {"scheme": "redblue", "reverse": True, "domain": [-reach, reach]},
                                    "legend": None}}},  # the plot's label names the colours; hover gives scores
            {"mark": {"type": "text", "align": "left", "dx": 3, "fontSize": 13, "font": "monospace", "stroke": None},
             "encoding": {"text": {"field": "token"},  # white on the darkest cells, dark on the rest
                          "color": {"condition": {"test": f"abs(datum.score) > {0.6 * reach}", "value": "white"},
                                    "value": "#111827"}}},
        ],
        "config": {"view": {"stroke": None}},
    }
    return AltairPlotData(chart="scatter", plot=json.dumps(spec))


def scores_frame(result: Attribution) -> pd.DataFrame:
    gxi, ig = result["grad_x_input"], result["integrated_gradients"]
    return pd.DataFrame([[i, piece_shown(t["text"], t["piece"]), "" if ig is None else round(ig[i], 4),
                          "" if gxi is None else round(gxi[i], 4)] for i, t in enumerate(result["tokens"])],
                        columns=TABLE_HEADERS)


def summary_line(result: Attribution) -> str:
    target = result["target"]
    line = (f"Target {piece_shown(target['text'], target['piece'])} (id {target['id']}, token {target['index']}): "
            f"probability {target['prob']:.1%}, rank {target['rank']}, log-probability "
            f"{result['logprob_input']:.3f}, over {len(result['tokens'])} tokens.")
    if result["integrated_gradients"] is not None:
        total = sum(result["integrated_gradients"])
        line += (f" Integrated gradients, {result['steps']} steps: the scores add up to {total:+.3f}; from the "
                 f"baseline to the text the log-probability changes by "
                 f"{result['logprob_input'] - result['logprob_baseline']:+.3f} (completeness error "
                 f"{result['completeness_error']:.3f}).")
    if result["note"]:
        line += " " + result["note"]
    return line


METHODS = [("both", "both"), ("integrated gradients", "integrated_gradients"), ("gradient × input", "grad_x_input")]
EXAMPLES = ["The capital of France is", "The doctor said that she", "def add(a, b):\n    return"]
PAGE_STEPS = 32  # the page's default: closer to complete than the API's 16, still a few seconds on a CPU


def outputs_of(result: Attribution) -> tuple[str, PlotData, pd.DataFrame]:
    return summary_line(result), tokens_plot(result), scores_frame(result)


def attribution_api(host: ModelHost) -> Any:
    @cancellable
    @api_errors
    def attribute(text: str, target: str | int | None = None, method: str = "both",
                  steps: int = DEFAULT_STEPS) -> Attribution:
        """Each token's contribution to the log-probability of a target token after the text, by gradient × input
        and by integrated gradients.

        Args:
            text: the text the model reads (at most 256 tokens).
            target: the token whose log-probability is explained: null for the model's most likely next token, a
                token id, a vocabulary piece, or a text that is exactly one token (" Paris").
            method: "both", "grad_x_input" or "integrated_gradients".
            steps: integrated gradients' steps, 1 to 64 (more steps, smaller completeness error).
        Returns:
            {"tokens": [{"index", "id", "piece", "text"}], "target": {"index", "id", "piece", "text", "logprob",
            "prob", "rank"}, "method", "grad_x_input": [score per token] | null, "integrated_gradients": [...] |
            null, "steps", "completeness_error", "logprob_input", "logprob_baseline", "baseline", "prompt_tokens",
            "note"}; scores are in log-probability units (nats).
        """
        return attribution(host.require().engine, text, target=target, method=method, steps=steps)

    return attribute


def build_attribution_tab(host: ModelHost, common: dict[str, Any]) -> None:
    """The Attribution view inside the Inside tab's gr.Tabs, and its wiring."""

    @cancellable
    @ui_errors
    def show(text: str, target: str, method: str, steps: float,
             progress: gr.Progress = gr.Progress()) -> tuple[str, PlotData, pd.DataFrame]:
        return outputs_of(attribution(host.require().engine, text, target=target or None, method=method,
                                      steps=int(steps), progress=shown_on(progress, "passes")))

    with gr.Tab("Attribution", id="inside-attribution", elem_id="inside-attribution"):
        gr.Markdown(INTRO)
        with gr.Row():
            text = gr.Textbox(value=EXAMPLES[0], label="Text", lines=3, scale=3, elem_id="attr-text")
            with gr.Column(scale=2, min_width=260):
                target = gr.Textbox(label="Target token", elem_id="attr-target",
                                    placeholder="empty = the model's most likely next token; or ' Paris', or #1234")
                method = gr.Radio(METHODS, value="both", label="Method", elem_id="attr-method")
                steps = gr.Slider(1, MAX_STEPS, value=PAGE_STEPS, step=1, label="Integrated gradients' steps",
                                  elem_id="attr-steps")
        with gr.Row():
            buttons = [gr.Button(example.split("\n")[0], size="sm") for example in EXAMPLES]
            run = gr.Button("Explain the token", variant="primary", elem_id="attr-run")
        summary = gr.Textbox(show_label=False, interactive=False, container=False, lines=2, elem_id="attr-summary")
        plot = gr.Plot(label="Tokens by contribution (red raises the target's probability, blue lowers it)",
                       elem_id="attr-plot")
        table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, label="Scores per token", max_height=360,
                             elem_id="attr-table", line_breaks=False)

    inputs, outputs = [text, target, method, steps], [summary, plot, table]
    gr.on([run.click, text.submit, target.submit], show, inputs, outputs, **common)
    for button, example in zip(buttons, EXAMPLES, strict=True):
        button.click(lambda e=example: e, None, text, api_visibility="private", queue=False).then(
            show, inputs, outputs, **common)


WHY_INTRO = ("Pick a token above, then ask why: the model's own float32 weights (the ones the chat's int8 model was "
             "built from) score each token of the prompt and of the answer before it by integrated gradients, "
             "between two steps of the chats being answered.")
NOT_THIS_ANSWER = ("The token ids of this answer were not kept (a conversation restored from the browser keeps its "
                   "text only): ask again, then pick a token of the new answer.")


def why_state(prompt_ids: list[int], answer_ids: list[int], entries: list[dict], listed: list[int]) -> dict:
    """What "why this token" needs of the answer just given: every token id, and for each token the probability view
    shows (an entry with text) its position in those ids and its text, to check that the view still shows this
    answer when a token is picked."""
    kept = [(e["token"], len(prompt_ids) + at) for e, at in zip(entries, listed, strict=False) if e["token"]]
    return {"ids": [*prompt_ids, *answer_ids], "tokens": [t for t, _ in kept], "positions": [at for _, at in kept]}


def build_why_this_token(host: ModelHost, entries: gr.State, picked_at: gr.State, state: gr.State) -> None:
    """The chat's "why this token" (inside the answer-probabilities accordion): the picked answer token attributed
    over the prompt and the answer before it."""

    @cancellable
    @ui_errors
    def explain(shown: list[dict], at: int | None, kept: dict | None,
                progress: gr.Progress = gr.Progress()) -> tuple[str, PlotData]:
        if at is None or not shown or not 0 <= at < len(shown):
            raise InvalidInputError("Click a token of the answer first.")
        if not kept or kept["tokens"] != [e["token"] for e in shown]:
            raise InvalidInputError(NOT_THIS_ANSWER)
        result = attribution_of_ids(host.require().engine, kept["ids"], kept["positions"][at], method="both",
                                    steps=PAGE_STEPS, progress=shown_on(progress, "passes"))
        return summary_line(result), tokens_plot(result)

    gr.Markdown(WHY_INTRO)
    button = gr.Button("Why this token?", size="sm", elem_id="answer-why")
    summary = gr.Textbox(show_label=False, interactive=False, container=False, lines=2, elem_id="answer-why-summary")
    plot = gr.Plot(label="The prompt and the answer before the token, by contribution", elem_id="answer-why-plot")
    button.click(explain, [entries, picked_at, state], [summary, plot], api_visibility="private",
                 concurrency_limit=4, concurrency_id="inside", trigger_mode="always_last")
