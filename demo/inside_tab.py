"""Inside tab: the model's next-token probabilities and what sampling keeps of them, a word's hidden state through
every layer in two sentences, the logit lens, attention (demo/attention_view.py) and attribution
(demo/attribution_view.py); plus the typed API endpoints /next_tokens, /contextual, /logit_lens, /attention and
/attribution. The computing lives in core.inside; this file draws it.

Tokens only ever reach the page as data (chart data, table cells, text boxes), never as HTML or Markdown.
No `from __future__ import annotations` here: gr.api reads the return annotations as real types.
"""

import json
from typing import Any

import gradio as gr
import pandas as pd
from gradio.components.plot import AltairPlotData, PlotData
from pandas.io.formats.style import Styler

from core.host import ModelHost
from core.inside.contextual import Contextual, Neighbour, Occurrence, contextual
from core.inside.logit_lens import MAX_LENS_TOKENS, LogitLens, default_positions, logit_lens
from core.inside.next_tokens import MAX_K, NextTokens, next_tokens
from demo.attention_view import attention_api, build_attention_tab
from demo.attribution_view import attribution_api, build_attribution_tab
from demo.cancellation import cancellable
from demo.errors import api_errors, ui_errors
from demo.progress_bar import shown_on
from demo.token_view import piece_shown

INTRO = ("What happens between the tokens going in and the answer coming out. Each view runs the model on your text "
         "between two steps of the chats being answered, so a chat waits a moment at most.")
NEXT_INTRO = ("The model reads the text and gives every token of its vocabulary a probability of coming next; the "
              "first bar of each token is that probability. Temperature reshapes the probabilities and top-k and "
              "top-p cut the list: the second bar is what the chat's sampler would draw from, and a token without "
              "one is filtered out. Entropy, in bits, says how unsure the model is.")
CONTEXT_INTRO = ("Layer 0 is the word's row of the embedding matrix, the same in both sentences, so the cosine "
                 "starts at 1.0; every layer then mixes in the words around it, and the line shows how far the two "
                 "sentences pull the word apart. The table lists, per layer, the vocabulary tokens nearest to its "
                 "hidden state. A word made of several tokens is followed through its last token.")
LENS_INTRO = ("What each layer would predict as the next token if the model stopped there: its hidden state goes "
              "through the model's own final norm and output layer. Each column is a position of your text (the "
              "token read there is its header), each cell that layer's top guess and its probability, darker when "
              "surer. The top row is the model's real prediction; the bottom one reads only the input embedding.")
NEXT_EXAMPLES = ["I love programming.", "The capital of France is"]
CONTEXT_EXAMPLES = [("river bank vs bank account", "I sat on the river bank.", "bank", "I opened a bank account.",
                     "bank"),
                    ("the same sense", "I took my money to the bank.", "bank", "I opened a bank account.", "bank")]
NEXT_HEADERS = ["rank", "token", "id", "probability", "log-probability", "kept", "probability after"]
CONTEXT_HEADERS = ["layer", "cosine", "norm A", "norm B", "nearest to A", "nearest to B"]
SERIES = ("the model (temperature 1)", "what the sampler draws from")
API_CONCURRENCY = 4  # inspections wait their turn on the model's worker (at most 8 waiting)


# -- drawing (pure functions of core's results) ----------------------------------------------------------------------

def next_tokens_plot(result: NextTokens) -> PlotData:
    """Two bars per token, in rank order: the model's probability and the sampler's. Labels are chart data."""
    rows = []
    for t in result["tokens"]:
        label = f"{t['rank']}. {piece_shown(t['text'], t['piece'])}"
        rows += [{"token": label, "series": SERIES[0], "probability": round(t["prob"], 5)},
                 {"token": label, "series": SERIES[1], "probability": round(t["prob_after"], 5)}]
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json", "height": 300,
        "data": {"values": rows},
        "mark": {"type": "bar", "tooltip": True},
        "encoding": {
            "x": {"field": "token", "type": "nominal", "sort": None, "title": None, "axis": {"labelAngle": -40}},
            "xOffset": {"field": "series", "sort": list(SERIES)},
            "y": {"field": "probability", "type": "quantitative", "axis": {"format": "%"}},
            # gradio's bar theme maps the range onto the page's theme colours
            "color": {"field": "series", "type": "nominal", "title": None, "sort": list(SERIES),
                      "scale": {"range": ["#2563eb", "#f97316"]}, "legend": {"orient": "top-right"}},
        },
    }
    return AltairPlotData(chart="bar", plot=json.dumps(spec))


def next_tokens_frame(result: NextTokens) -> pd.DataFrame:
    return pd.DataFrame([[t["rank"], piece_shown(t["text"], t["piece"]), t["id"], f"{t['prob']:.2%}",
                          round(t["logprob"], 3), "yes" if t["kept"] else "no", f"{t['prob_after']:.2%}"]
                         for t in result["tokens"]], columns=NEXT_HEADERS)


def next_tokens_summary(result: NextTokens) -> str:
    kept = result["kept_count"]
    return (f"{result['prompt_tokens']:,} tokens read · entropy {result['entropy']:.2f} bits · the sampler keeps "
            f"{kept:,} token{'' if kept == 1 else 's'} ({result['kept_mass']:.1%} of the model's probability), "
            f"entropy {result['entropy_after']:.2f} bits")


def _neighbours(items: list[Neighbour]) -> str:
    return "  ".join(piece_shown(n["text"], n["piece"]) for n in items)


def occurrence_line(name: str, occ: Occurrence) -> str:
    """'A: "bank" is token 6 of 7, ␣bank (id 3275)' and, for a split word, its pieces."""
    taken = occ["taken"]
    line = (f"{name}: {occ['word']!r} is token {taken['index'] + 1} of {occ['sentence_tokens']}, "
            f"{piece_shown(taken['text'], taken['piece'])} (id {taken['id']})")
    if len(occ["word_tokens"]) > 1:
        pieces = " + ".join(piece_shown(t["text"], t["piece"]) for t in occ["word_tokens"])
        line += f"; the word is {pieces}, followed through its last token"
    return line


def contextual_outputs(result: Contextual) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    lines = [occurrence_line("A", result["a"]), occurrence_line("B", result["b"])]
    if result["note"]:
        lines.append(result["note"])
    line = pd.DataFrame({"layer": [r["layer"] for r in result["layers"]],
                         "cosine": [round(r["cosine"], 4) for r in result["layers"]]})
    table = pd.DataFrame([[r["layer"], round(r["cosine"], 4), round(r["norm_a"], 2), round(r["norm_b"], 2),
                           _neighbours(r["nearest_a"]), _neighbours(r["nearest_b"])] for r in result["layers"]],
                         columns=CONTEXT_HEADERS)
    return "\n".join(lines), line, table


def _shade(prob: float) -> str:
    """A cell's colour: darker blue for a surer guess, with text that stays readable on it."""
    alpha = 0.08 + 0.8 * prob
    text = "white" if alpha > 0.5 else "inherit"
    return f"background-color: rgba(37, 99, 235, {alpha:.2f}); color: {text}"


def lens_table(grid: LogitLens) -> Styler:
    """Layers × positions, the output layer first; each cell the top guess and its probability, shaded by it."""
    columns = [f"{t['index']}: {piece_shown(t['text'], t['piece'])}" for t in grid["tokens"]]
    last = grid["layers"]
    order = list(range(last, -1, -1))
    labels = [f"{layer} (output)" if layer == last else "0 (embeddings)" if layer == 0 else str(layer)
              for layer in order]
    cells = [[f"{piece_shown(c['text'], c['piece'])} {c['prob']:.0%}" for c in grid["rows"][layer]] for layer in order]
    frame = pd.DataFrame(cells, columns=columns)
    frame.insert(0, "layer", labels)
    shades = pd.DataFrame([[""] + [_shade(c["prob"]) for c in grid["rows"][layer]] for layer in order],
                          columns=frame.columns)
    return frame.style.apply(lambda _frame: shades, axis=None)


def lens_summary(grid: LogitLens) -> str:
    shown = len(grid["tokens"])
    where = grid["note"] or f"All {shown} tokens of the text."
    return f"{where} {grid['layers']} layers; darker cells are surer guesses."


# -- the tab -----------------------------------------------------------------------------------------------------------

def build_inside_tab(host: ModelHost) -> None:
    """The Inside tab and its API endpoints, inside the current gr.Blocks."""

    def parts():  # the loaded model, engine and index, or a sentence saying why not yet
        return host.require()

    @cancellable
    @ui_errors
    def show_next_tokens(text: str, chat: bool, k: float, temperature: float, top_k: float, top_p: float,
                         progress: gr.Progress = gr.Progress()) -> tuple[str, PlotData, pd.DataFrame, str]:
        result = next_tokens(parts().engine, text, k=int(k), temperature=temperature, top_p=top_p, top_k=int(top_k),
                             chat=chat, progress=shown_on(progress, "chunks"))
        return next_tokens_summary(result), next_tokens_plot(result), next_tokens_frame(result), result["prompt"]

    @cancellable
    @ui_errors
    def show_contextual(sentence_a: str, word_a: str, sentence_b: str, word_b: str,
                        progress: gr.Progress = gr.Progress()) -> tuple[str, pd.DataFrame, pd.DataFrame]:
        p = parts()
        return contextual_outputs(contextual(p.engine, p.index, sentence_a, word_a, sentence_b, word_b,
                                             progress=shown_on(progress, "chunks")))

    @cancellable
    @ui_errors
    def show_lens(text: str, positions: float, progress: gr.Progress = gr.Progress()) -> tuple[str, Styler]:
        grid = logit_lens(parts().engine, text, max_tokens=int(positions), progress=shown_on(progress, "steps"))
        return lens_summary(grid), lens_table(grid)

    # -- typed API -------------------------------------------------------------------------------------------------

    @cancellable
    @api_errors
    def predict_next_tokens(text: str, k: int = 10, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                        chat: bool = False) -> NextTokens:
        """The model's most likely next tokens after a text, and what the sampling settings leave of them.

        Args:
            text: the text the model reads (at most 50,000 characters, within the model's context).
            k: how many tokens to list, 1 to 100.
            temperature: the sampler's temperature (0 = greedy, up to 5); `prob` is always the model's own.
            top_p: nucleus sampling mass (above 0, at most 1).
            top_k: keep the k most likely tokens (0 = off).
            chat: true to read the text as a user message in the chat template (the prompt chat builds).
        Returns:
            {"tokens": [{"rank", "id", "piece", "text", "logprob", "prob", "kept", "prob_after"}], "entropy" (bits),
            "entropy_after", "kept_count", "kept_mass", "prompt_tokens", "prompt"}; `kept` and `prob_after` are
            what the chat sampler would draw from with these settings.
        """
        return next_tokens(parts().engine, text, k=k, temperature=temperature, top_p=top_p, top_k=top_k, chat=chat)

    @cancellable
    @api_errors
    def contextual_embeddings(sentence_a: str, word_a: str, sentence_b: str, word_b: str) -> Contextual:
        """The same word's hidden state in two sentences, layer by layer (contextual embeddings).

        Args:
            sentence_a: the first sentence (at most 2,000 characters).
            word_a: a word of it to follow (a word of several tokens is followed through its last token).
            sentence_b: the second sentence.
            word_b: a word of it to follow.
        Returns:
            {"a", "b": {"sentence", "word", "start", "end", "word_tokens", "taken": {"index", "id", "piece",
            "text"}, "sentence_tokens"}, "same_token", "layers": [{"layer", "cosine", "norm_a", "norm_b",
            "nearest_a", "nearest_b": [{"id", "piece", "text", "score"}]}], "note"}; layer 0 is the input
            embedding, and the nearest tokens are input-embedding neighbours of the hidden state after the final
            norm.
        """
        p = parts()
        return contextual(p.engine, p.index, sentence_a, word_a, sentence_b, word_b)

    @cancellable
    @api_errors
    def logit_lens_grid(text: str, max_tokens: int | None = None) -> LogitLens:
        """The logit lens: each layer's top next-token guess at each of the text's last positions.

        Args:
            text: the text the model reads (within the model's context).
            max_tokens: how many of the last positions to show, 1 to 64; null for the default (8 when the model
                runs on the CPU, where each cell costs a full output-layer row; 32 on a GPU).
        Returns:
            {"tokens": [{"index", "id", "piece", "text"}], "next_tokens": [the text's real next token or null],
            "layers", "rows": [layer 0 (input embeddings) … output][position] = {"id", "piece", "text", "prob",
            "actual_prob"}, "prompt_tokens", "note"}.
        """
        return logit_lens(parts().engine, text, max_tokens=max_tokens)

    # always_last: a click that lands while the same view is still finishing runs after it instead of being dropped
    common: dict[str, Any] = {"api_visibility": "private", "concurrency_limit": API_CONCURRENCY,
                              "concurrency_id": "inside", "trigger_mode": "always_last"}
    with gr.Tab("Inside", id="inside"):
        for fn, name in ((predict_next_tokens, "next_tokens"), (contextual_embeddings, "contextual"),
                         (logit_lens_grid, "logit_lens"), (attention_api(host), "attention"),
                         (attribution_api(host), "attribution")):  # inside the Tab: gr.Tabs holds only tabs
            gr.api(fn, api_name=name, concurrency_limit=API_CONCURRENCY, concurrency_id="inside")
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Next token", id="inside-next", elem_id="inside-next"):
                gr.Markdown(NEXT_INTRO)
                with gr.Row():
                    text = gr.Textbox(value=NEXT_EXAMPLES[1], label="Text", lines=3, scale=3,
                                      elem_id="next-text")
                    with gr.Column(scale=2, min_width=260):
                        chat = gr.Checkbox(False, label="As a chat message (through the chat template)")
                        k = gr.Slider(1, MAX_K // 2, value=10, step=1, label="Tokens shown")
                        # the chat's defaults, so the second bars show what chat does
                        temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
                        top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k (0 = off)")
                        top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="Top-p")
                with gr.Row():
                    next_buttons = [gr.Button(example, size="sm") for example in NEXT_EXAMPLES]
                    run_next = gr.Button("Show the next tokens", variant="primary", elem_id="next-run")
                next_summary = gr.Textbox(show_label=False, interactive=False, container=False, elem_id="next-summary")
                next_plot = gr.Plot(label="Next-token probabilities", elem_id="next-plot")
                next_table = gr.Dataframe(headers=NEXT_HEADERS, interactive=False, label="Next tokens",
                                          elem_id="next-table", max_height=360, line_breaks=False)
                with gr.Accordion("The text the model read", open=False):
                    read = gr.Textbox(show_label=False, interactive=False, lines=3, max_lines=12)

            with gr.Tab("Contextual embeddings", id="inside-contextual", elem_id="inside-contextual"):
                gr.Markdown(CONTEXT_INTRO)
                _, first_a, first_word_a, first_b, first_word_b = CONTEXT_EXAMPLES[0]
                with gr.Row():
                    sentence_a = gr.Textbox(value=first_a, label="Sentence A", scale=3, elem_id="ctx-a")
                    word_a = gr.Textbox(value=first_word_a, label="Word in A", scale=1, elem_id="ctx-word-a")
                with gr.Row():
                    sentence_b = gr.Textbox(value=first_b, label="Sentence B", scale=3, elem_id="ctx-b")
                    word_b = gr.Textbox(value=first_word_b, label="Word in B", scale=1, elem_id="ctx-word-b")
                with gr.Row():
                    context_buttons = [gr.Button(example[0], size="sm") for example in CONTEXT_EXAMPLES]
                    run_context = gr.Button("Compare the two", variant="primary", elem_id="ctx-run")
                followed = gr.Textbox(label="Tokens followed", lines=2, interactive=False, elem_id="ctx-followed")
                cosine_plot = gr.LinePlot(x="layer", y="cosine", label="Cosine between the two, per layer",
                                          elem_id="ctx-plot", height=280)
                context_table = gr.Dataframe(headers=CONTEXT_HEADERS, interactive=False, label="Per layer",
                                             elem_id="ctx-table", max_height=420, line_breaks=False)

            with gr.Tab("Logit lens", id="inside-lens", elem_id="inside-lens"):
                gr.Markdown(LENS_INTRO)
                with gr.Row():
                    lens_text = gr.Textbox(value=NEXT_EXAMPLES[1], label="Text", lines=2, scale=3,
                                           elem_id="lens-text")
                    positions = gr.Slider(1, MAX_LENS_TOKENS, value=default_positions(_device(host)), step=1,
                                          label="Last positions shown", scale=1,
                                          info="Each cell costs one output-layer row over the whole vocabulary")
                with gr.Row():
                    lens_buttons = [gr.Button(example, size="sm") for example in NEXT_EXAMPLES]
                    run_lens = gr.Button("Show the lens", variant="primary", elem_id="lens-run")
                lens_note = gr.Textbox(show_label=False, interactive=False, container=False, elem_id="lens-note")
                lens_grid = gr.Dataframe(interactive=False, label="Layers × positions", elem_id="lens-table",
                                         max_height=640, line_breaks=False, wrap=False)

            build_attention_tab(host, common, _device(host))
            build_attribution_tab(host, common)

    next_inputs = [text, chat, k, temperature, top_k, top_p]
    next_outputs = [next_summary, next_plot, next_table, read]
    gr.on([run_next.click, text.submit], show_next_tokens, next_inputs, next_outputs, **common)
    for button, example in zip(next_buttons, NEXT_EXAMPLES, strict=True):
        button.click(lambda e=example: e, None, text, api_visibility="private", queue=False).then(
            show_next_tokens, next_inputs, next_outputs, **common)
    context_inputs = [sentence_a, word_a, sentence_b, word_b]
    context_outputs = [followed, cosine_plot, context_table]
    gr.on([run_context.click, sentence_a.submit, sentence_b.submit, word_a.submit, word_b.submit], show_contextual,
          context_inputs, context_outputs, **common)
    for button, (_, *values) in zip(context_buttons, CONTEXT_EXAMPLES, strict=True):
        button.click(lambda v=tuple(values): v, None, context_inputs, api_visibility="private", queue=False).then(
            show_contextual, context_inputs, context_outputs, **common)
    gr.on([run_lens.click, lens_text.submit], show_lens, [lens_text, positions], [lens_note, lens_grid], **common)
    for button, example in zip(lens_buttons, NEXT_EXAMPLES, strict=True):
        button.click(lambda e=example: e, None, lens_text, api_visibility="private", queue=False).then(
            show_lens, [lens_text, positions], [lens_note, lens_grid], **common)


def _device(host: ModelHost) -> str:
    """Where the model runs (or will): the loaded model's device, else the configured one (auto = a GPU if any)."""
    if host.ready:
        return host.require().loaded.device
    import torch  # imported already by the loader before the UI is built

    configured = host.config.device or "auto"
    return ("cuda" if torch.cuda.is_available() else "cpu") if configured == "auto" else configured
