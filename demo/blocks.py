"""The app's one gr.Blocks: a header with the model's facts and a live status line, and the tabs."""

from __future__ import annotations

from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from core.config import AppConfig
from core.host import ModelHost
from demo.chat_tab import build_chat_tab
from demo.embeddings_tab import build_embeddings_tab
from demo.evaluation_tab import build_evaluation_tab
from demo.inside_tab import build_inside_tab
from demo.rest_defaults import RestDefaults
from demo.security import ContentSecurityPolicy
from demo.tokens_tab import build_tokens_tab
from demo.vocabulary_map_view import prefetch_head

TITLE = "Token Lab"
QUEUE_POLL_S = 0.01  # how often gradio's idle queue looks for a new event (see build_demo)
INTRO = ("Chat with a language model and look inside it: how your text becomes tokens, and where those tokens sit "
         "in the model's own embedding space.")


def header_markdown(host: ModelHost) -> str:
    """Model, device, dtype, what computes the chat, vocabulary size and context length; while loading, the
    loader's progress."""
    if not host.ready:
        return f"**Model:** {host.config.model or 'default'} · **Status:** {host.status}"
    parts = host.require()
    loaded, runner = parts.loaded, parts.engine.runner
    note = f"\n\n⚠️ {loaded.note}" if loaded.note else ""
    chat = f"**Chat:** {runner} · " if runner else ""
    return (f"**Model:** `{loaded.name}` · **Device:** {loaded.device} · **dtype:** {loaded.dtype} · {chat}"
            f"**Vocabulary:** {loaded.vocab_size:,} tokens · **Context:** {loaded.context_length:,} tokens"
            f"{note}\n\n<small>{host.status}</small>")


def launch_options(config: AppConfig) -> dict[str, Any]:
    """`demo.launch` arguments from the configuration (app.py and the tests launch with these).

    state_session_capacity: gradio keeps every session's copy of the app's config, and each API call made without a
    session_hash opens a new session, so gradio's default bound would let anonymous calls hold gigabytes.
    The middleware adds the page's Content-Security-Policy and completes REST calls that leave out trailing values.
    With `config.mcp` (also set by gradio's GRADIO_MCP_SERVER=true) the app's own MCP server (demo/mcp_server.py) is
    mounted at /gradio_api/mcp; gradio's stays off, whatever that variable says. The page's head asks the browser to
    download the vocabulary map's plotly.js once the page has loaded (demo/vocabulary_map_view.py)."""
    app_kwargs: dict[str, Any] = {"middleware": [Middleware(ContentSecurityPolicy), Middleware(RestDefaults)]}
    if config.mcp:
        from demo.mcp_server import McpServer  # imports the mcp package only when it is served

        mcp = McpServer()  # one per launch: its session manager runs once
        app_kwargs["middleware"].append(mcp.middleware)
        app_kwargs["lifespan"] = mcp.lifespan
    return {"server_name": config.host, "server_port": config.port, "share": config.share,
            "state_session_capacity": config.max_sessions, "app_kwargs": app_kwargs, "mcp_server": False,
            "head": prefetch_head()}


def build_demo(host: ModelHost, config: AppConfig | None = None) -> gr.Blocks:
    """Build the whole app around `host` (which may still be loading), with its queue configured."""
    config = config or host.config
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        header = gr.Markdown(header_markdown(host), elem_id="model-header")
        timer = gr.Timer(1.0, active=not host.ready)

        def refresh_header() -> tuple[str, gr.Timer]:
            return header_markdown(host), gr.Timer(active=not host.ready)

        timer.tick(refresh_header, outputs=[header, timer], show_progress="hidden", api_visibility="private")
        demo.load(refresh_header, outputs=[header, timer], show_progress="hidden", api_visibility="private")
        with gr.Tabs():
            build_chat_tab(host)
            build_tokens_tab(host)
            build_embeddings_tab(host)
            build_evaluation_tab(host)
            build_inside_tab(host)
    # Bounded waiting line: beyond it gradio answers "queue full" instead of letting requests wait forever.
    demo.queue(max_size=config.max_queue * 4, default_concurrency_limit=1)
    # gradio's queue looks for a new event every millisecond while it has none (`sleep_when_free`); on a 2-core Space
    # those wake-ups take CPU from the chat being decoded. A new event waits at most QUEUE_POLL_S instead.
    queue = getattr(demo, "_queue", None)
    if hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = QUEUE_POLL_S
    return demo
