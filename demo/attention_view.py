"""Inside → Attention: every head's attention map as an overview (bertviz's model view) and one head, or a layer's
heads together, as a map to hover (its head view), with the heads that mostly look at the first, the previous or the
same token named. The computing is core.inside.attention; this file draws it.

The overview is an image of numbers only (no token text); the head view is a Vega-Lite chart whose token labels
are chart data, drawn on a canvas; the roles are a table. No user text or vocabulary piece becomes HTML.
No `from __future__ import annotations` here: gr.api reads the return annotations as real types.
"""

import json
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from gradio.components.plot import AltairPlotData, PlotData
from PIL import Image, ImageDraw

from core.host import ModelHost
from core.inside.attention import (
    MAX_ATTENTION_TOKENS,
    ROLES,
    Attention,
    SentAttention,
    attention,
    default_tokens,
    fits_all_layers,
    sent,
)
from demo.cancellation import cancellable
from demo.errors import api_errors, ui_errors
from demo.progress_bar import shown_on
from demo.token_view import piece_shown

INTRO = ("Each token's query is compared with the keys of the tokens before it, and softmax turns the scores into "
         "weights that sum to 1: how much of each earlier token the head mixes in. The overview draws every layer's "
         "heads (darker = more weight; click one to open it), framed by their role: blue for heads that mostly "
         "look at the first token, orange at the previous token, green at the same token. Below, the chosen head as "
         "a map: a row is where a token looks, a column what looks at it; hover a cell to light up both.")
ALL_HEADS = "all (mean)"
ROLE_COLORS = {ROLES[0]: (37, 99, 235), ROLES[1]: (249, 115, 22), ROLES[2]: (22, 163, 74)}
CELL, GAP, MARGIN = 40, 4, 36  # overview: pixels per head map, between maps, for the layer and head numbers
ROLE_HEADERS = ["layer", "head", "role", "on the first token", "on the previous token", "on the same token"]


def overview_image(result: Attention) -> Image.Image | None:
    """Layers (rows, layer 0 at the top) × heads (columns) of small maps, each scaled to CELL pixels, brightness
    √weight so that small weights stay visible, framed in its role's colour. Only numbers are drawn."""
    if any(m is None for m in result["maps"]):
        return None
    layers, heads = result["layers"], result["heads"]
    width, height = MARGIN + heads * (CELL + GAP), MARGIN + layers * (CELL + GAP)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for h in range(heads):
        draw.text((MARGIN + h * (CELL + GAP) + CELL // 2 - 4, 8), str(h), fill=(80, 80, 80))
    for layer in range(layers):
        top = MARGIN + layer * (CELL + GAP)
        draw.text((4, top + CELL // 2 - 6), str(layer), fill=(80, 80, 80))
        maps = result["maps"][layer]
        for h in range(heads):
            left = MARGIN + h * (CELL + GAP)
            pixels = (255 - np.sqrt(np.clip(maps[h], 0, 1)) * 255).astype(np.uint8)
            tile = Image.fromarray(pixels, mode="L").resize((CELL, CELL), Image.NEAREST).convert("RGB")
            image.paste(tile, (left, top))
            color = ROLE_COLORS.get(result["summary"][layer][h]["role"])
            if color:
                draw.rectangle([left - 2, top - 2, left + CELL + 1, top + CELL + 1], outline=color, width=2)
    return image


def clicked_head(result: Attention, x: int, y: int) -> tuple[int, int] | None:
    """The (layer, head) under a click at pixel (x, y) of the overview, or None between maps."""
    column, row = (x - MARGIN) // (CELL + GAP), (y - MARGIN) // (CELL + GAP)
    if x < MARGIN or y < MARGIN or not (0 <= row < result["layers"] and 0 <= column < result["heads"]):
        return None
    return int(row), int(column)


def labels(result: Attention) -> list[str]:
    """Axis labels: position and token, unique even where a token repeats."""
    return [f"{t['index']}: {piece_shown(t['text'], t['piece'])}" for t in result["tokens"]]


def head_plot(result: Attention, layer: int, head: int | None) -> PlotData | None:
    """The map of one head (or the mean of the layer's heads) as a heatmap: rows are queries, columns keys."""
    maps = result["maps"][layer]
    if maps is None:
        return None
    weights = maps.mean(axis=0) if head is None else maps[head]
    names = labels(result)
    rows = [{"query": names[q], "key": names[k], "weight": round(float(weights[q, k]), 4)}
            for q in range(len(names)) for k in range(q + 1)]
    side = min(720, max(320, 22 * len(names)))
    which = f"layer {layer}, " + ("the mean of its heads" if head is None else f"head {head}")
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json", "height": side, "title": which,
        "data": {"values": rows},
        "params": [{"name": "row", "select": {"type": "point", "fields": ["query"], "on": "pointerover",
                                              "clear": "pointerout"}},
                   {"name": "column", "select": {"type": "point", "fields": ["key"], "on": "pointerover",
                                                 "clear": "pointerout"}}],
        "mark": {"type": "rect", "stroke": None},
        "encoding": {
            "x": {"field": "key", "type": "ordinal", "sort": names, "title": "looked at (key)",
                  "axis": {"labelAngle": -60, "labelLimit": 90}},
            "y": {"field": "query", "type": "ordinal", "sort": names, "title": "looking (query)",
                  "axis": {"labelLimit": 90}},
            "color": {"field": "weight", "type": "quantitative", "title": "weight", "scale": {"domain": [0, 1]}},
            "opacity": {"condition": {"test": {"or": [{"param": "row", "empty": False},
                                                      {"param": "column", "empty": False}]}, "value": 1},
                        "value": 0.75},
            "tooltip": [{"field": "query", "title": "token"}, {"field": "key", "title": "looks at"},
                        {"field": "weight", "format": ".1%"}],
        },
    }
    return AltairPlotData(chart="scatter", plot=json.dumps(spec))


def roles_frame(result: Attention) -> pd.DataFrame:
    """The named heads, with their three shares."""
    rows = [[s["layer"], s["head"], s["role"], f"{s['first']:.0%}", f"{s['previous']:.0%}", f"{s['same']:.0%}"]
            for layer in result["summary"] for s in layer if s["role"]]
    return pd.DataFrame(rows, columns=ROLE_HEADERS)


def summary_line(result: Attention, layer: int, head: int | None) -> str:
    named = sum(1 for layer_heads in result["summary"] for s in layer_heads if s["role"])
    line = (f"{len(result['tokens'])} tokens · {result['layers']} layers × {result['heads']} heads "
            f"({result['kv_heads']} key/value heads) · {named} heads named below.")
    if head is not None and result["summary"][layer][head]["first"] is not None:
        s = result["summary"][layer][head]
        line += (f" Layer {layer}, head {head}: {s['first']:.0%} on the first token, {s['previous']:.0%} on the "
                 f"previous, {s['same']:.0%} on itself" + (f": a {s['role']} head." if s["role"] else "."))
    if result["note"]:
        line += " " + result["note"]
    if result["maps"][layer] is not None and any(m is None for m in result["maps"]):
        line += " The overview needs fewer tokens; only this layer's maps were computed."
    return line


def head_choices(heads: int) -> list[str | int]:
    return [ALL_HEADS, *range(heads)]


def max_tokens_slider(device: str) -> gr.Slider:
    return gr.Slider(2, MAX_ATTENTION_TOKENS, value=default_tokens(device), step=1, label="Tokens covered",
                     info="The first tokens of the text; the overview needs every layer's maps, so fewer tokens",
                     elem_id="attn-tokens")


def chosen_head(value: Any) -> int | None:
    return None if value in (None, ALL_HEADS) else int(value)


EXAMPLES = ["The cat sat on the mat because the cat was tired.",
            "Alice gave Bob a book, and then Bob gave Alice a pen."]


def attention_api(host: ModelHost) -> Any:
    @cancellable
    @api_errors
    def attention_maps(text: str, max_tokens: int | None = None, layer: int | None = None,
                       chat: bool = False) -> SentAttention:
        """Every layer's and head's attention weights over the first tokens of a text, and each head's role.

        Args:
            text: the text the model reads (within the model's context).
            max_tokens: how many of its first tokens the maps cover, 1 to 256 (later tokens cannot change them);
                null for the default (64 on the CPU, 128 on a GPU, fewer where every layer's maps would pass
                1,000,000 weights).
            layer: send only this layer's maps (0 = the first); null for every layer's.
            chat: true to read the text as a user message in the chat template (the prompt chat builds).
        Returns:
            {"tokens": [{"index", "id", "piece", "text"}], "layers", "heads", "kv_heads", "layer",
            "maps": [layer][head][query][key] (row q holds keys 0..q; null for layers not sent), "summary":
            [layer][head] = {"layer", "head", "kv_head", "first", "previous", "same", "role"}, "prompt_tokens",
            "prompt", "note"}; shares are mean weights over queries 1.., a role names a share of at least 0.5.
        """
        return sent(attention(host.require().engine, text, max_tokens=max_tokens, layer=layer, chat=chat))

    return attention_maps


def build_attention_tab(host: ModelHost, common: dict[str, Any], device: str) -> None:
    """The Attention view inside the Inside tab's gr.Tabs, and its wiring."""

    def compute(text: str, chat: bool, tokens: float, layer: Any, progress: Any) -> Attention:
        config = host.require().loaded.model.config.get_text_config()
        layers, heads = int(config.num_hidden_layers), int(config.num_attention_heads)
        layer = min(int(layer or 0), layers - 1)
        wanted = None if fits_all_layers(layers * heads, int(tokens)) else layer
        return attention(host.require().engine, text, max_tokens=int(tokens), layer=wanted, chat=chat,
                         progress=shown_on(progress, "chunks"))

    def drawn(result: Attention, layer: int, head: int | None) -> tuple[Any, ...]:
        return (result, summary_line(result, layer, head), overview_image(result), head_plot(result, layer, head),
                roles_frame(result), gr.Dropdown(choices=list(range(result["layers"])), value=layer),
                gr.Dropdown(choices=head_choices(result["heads"]), value=ALL_HEADS if head is None else head))

    @cancellable
    @ui_errors
    def show(text: str, chat: bool, tokens: float, layer: Any, head: Any,
             progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        result = compute(text, chat, tokens, layer, progress)
        layer = min(int(layer or 0), result["layers"] - 1)
        head = chosen_head(head)
        return drawn(result, layer, None if head is None or head >= result["heads"] else head)

    @cancellable
    @ui_errors
    def redraw(result: Attention | None, text: str, chat: bool, tokens: float, layer: Any, head: Any,
               progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        """A layer or head picked: drawn from the maps at hand, or computed for that layer when they are not."""
        if not result:
            return (gr.skip(),) * 7
        layer, head = int(layer or 0), chosen_head(head)
        if result["maps"][layer] is None:
            result = compute(text, chat, tokens, layer, progress)
        return drawn(result, layer, head)

    def picked(result: Attention | None, evt: gr.SelectData) -> tuple[Any, Any]:
        where = clicked_head(result, *evt.index) if result and isinstance(evt.index, list | tuple) else None
        return (gr.skip(), gr.skip()) if where is None else where

    with gr.Tab("Attention", id="inside-attention", elem_id="inside-attention"):
        gr.Markdown(INTRO)
        with gr.Row():
            text = gr.Textbox(value=EXAMPLES[0], label="Text", lines=3, scale=3, elem_id="attn-text")
            with gr.Column(scale=2, min_width=260):
                chat = gr.Checkbox(False, label="As a chat message (through the chat template)")
                tokens = max_tokens_slider(device)
        with gr.Row():
            buttons = [gr.Button(example[:40] + "…", size="sm") for example in EXAMPLES]
            run = gr.Button("Show attention", variant="primary", elem_id="attn-run")
        summary = gr.Textbox(show_label=False, interactive=False, container=False, elem_id="attn-summary")
        result = gr.State(None)
        with gr.Row(equal_height=False):
            overview = gr.Image(label="Every head (layer rows, head columns); click one", type="pil",
                                interactive=False, elem_id="attn-overview", scale=2, buttons=["fullscreen", "download"])
            with gr.Column(scale=3):
                with gr.Row():
                    layer = gr.Dropdown(choices=[0], value=0, label="Layer", elem_id="attn-layer")
                    head = gr.Dropdown(choices=[ALL_HEADS], value=ALL_HEADS, label="Head", elem_id="attn-head")
                head_map = gr.Plot(label="Where each token looks", elem_id="attn-map")
        roles = gr.Dataframe(headers=ROLE_HEADERS, interactive=False, label="Heads with a role", max_height=300,
                             elem_id="attn-roles", line_breaks=False)

    inputs = [text, chat, tokens, layer, head]
    outputs = [result, summary, overview, head_map, roles, layer, head]
    gr.on([run.click, text.submit], show, inputs, outputs, **common)
    for button, example in zip(buttons, EXAMPLES, strict=True):
        button.click(lambda e=example: e, None, text, api_visibility="private", queue=False).then(
            show, inputs, outputs, **common)
    gr.on([layer.input, head.input], redraw, [result, *inputs], outputs, **common)
    overview.select(picked, result, [layer, head], api_visibility="private", queue=False).then(
        redraw, [result, *inputs], outputs, **common)
