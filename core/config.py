"""All of Token Lab's settings in one dataclass, filled from CLI flags and environment variables.

A flag beats its environment variable, which beats the default:

    >>> AppConfig.from_args(["--model", "bundled", "--port", "7999"]).port
    7999
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

PHI3_MODEL_ID = "microsoft/Phi-3-mini-4k-instruct"
BUNDLED = "bundled"
ENGINES = ("auto", "onnx", "torch")
MAP_PROJECTIONS = ("umap", "pca")


def default_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where dequantized weights are cached: $TOKEN_LAB_CACHE, else $HF_HOME/token-lab, else XDG's cache."""
    if env.get("TOKEN_LAB_CACHE"):
        return Path(env["TOKEN_LAB_CACHE"])
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]) / "token-lab"
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "token-lab"


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for, and how many may be in progress at once."""

    max_queue: int = 16  # requests in progress (generating or waiting for a row) before new ones get "busy"
    max_new_tokens: int = 2048
    max_input_chars: int = 50_000  # the new message plus the system prompt
    max_history_messages: int = 10_000  # items in a conversation's history
    max_history_chars: int = 1_000_000  # characters in all of them together


@dataclass
class AppConfig:
    """How to load the model and serve the app.

    `model` is a hub id, a local directory, `bundled`, or None for the default
    (Phi-3 when CUDA is available, else `bundled`); `model_explicit` records whether the
    user chose it, since only an explicit choice that fails to load ends the program.
    """

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    cache_dir: Path = field(default_factory=default_cache_dir)
    # RequestLimits' fields, each with its default there (the `limits` property gathers them)
    max_queue: int = RequestLimits.max_queue
    max_input_chars: int = RequestLimits.max_input_chars
    max_new_tokens: int = RequestLimits.max_new_tokens
    max_history_messages: int = RequestLimits.max_history_messages
    max_history_chars: int = RequestLimits.max_history_chars
    max_sessions: int = 1000  # gradio sessions kept in memory, each with a copy of the app's config (gradio: 10,000)
    max_batch: int = 0  # requests decoded together (0 = as many as fit in memory at full context, at most 32)
    prefix_cache_mb: int = 256  # keys/values of recent prompts and conversations, reused by prompts that start alike
    prefill_chunk: int = 256  # prompt tokens read between two decoding steps, so a long prompt never stalls the others
    engine: str = "auto"  # chat's model runner on this machine: onnx (int8, ONNX Runtime), torch (exact), auto
    onnx_model: str | None = None  # a folder converted elsewhere (e.g. Microsoft's Phi-3 ONNX build) for --engine onnx
    engine_url: str | None = None  # an OpenAI-compatible server for chat (vLLM, SGLang, TGI, transformers serve)
    engine_model: str | None = None  # the model name that server serves; None = --model, else the server's first
    engine_timeout: float = 120.0  # seconds a remote server may stay silent before a request fails
    engine_api_key: str | None = field(default=None, repr=False)  # that server's bearer token (env ENGINE_API_KEY)
    mcp: bool = False  # also serve the API endpoints as MCP tools, under their API names
    pack_linears: bool = True  # on the CPU, linear layers on weights packed for oneDNN (core/model/packed_linear.py)
    heavy_share: float = 0.3  # while chats run, the most of the wall-clock time heavy steps take (core/work/)
    map_projection: str = "umap"  # what the vocabulary map shows first: umap starts its background computation

    @property
    def model_explicit(self) -> bool:
        return self.model is not None

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(**{f.name: getattr(self, f.name) for f in fields(RequestLimits)})

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> AppConfig:
        """Parse flags (unknown ones are ignored, so `gradio app.py` and Spaces work)."""
        base = cls(cache_dir=default_cache_dir(env))
        p = argparse.ArgumentParser(prog="app.py", description="Token Lab: chat with an LLM and look inside it.")
        p.add_argument("--model", default=env.get("MODEL_ID") or None,
                       help=f"hub id, local directory, or '{BUNDLED}' (env MODEL_ID; default: "
                            f"{PHI3_MODEL_ID} with CUDA, else {BUNDLED})")
        p.add_argument("--device", default=env.get("TOKEN_LAB_DEVICE", base.device),
                       help="auto, cpu, cuda or cuda:N (env TOKEN_LAB_DEVICE)")
        p.add_argument("--dtype", default=env.get("TOKEN_LAB_DTYPE", base.dtype),
                       choices=["auto", "float32", "bfloat16", "float16"], help="weights dtype (env TOKEN_LAB_DTYPE)")
        p.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", base.host),
                       help="address to listen on (env GRADIO_SERVER_NAME)")
        p.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", base.port)),
                       help="port (env GRADIO_SERVER_PORT)")
        p.add_argument("--share", action="store_true", default=env.get("TOKEN_LAB_SHARE", "") == "1",
                       help="create a public gradio.live link")
        p.add_argument("--cache-dir", type=Path, default=base.cache_dir,
                       help="cache for dequantized weights (env TOKEN_LAB_CACHE, HF_HOME, XDG_CACHE_HOME)")

        def count(flag: str, env_name: str, default: int, help_text: str) -> None:
            """A whole-number flag whose environment variable is its default."""
            p.add_argument(flag, type=int, default=int(env.get(env_name, default)),
                           help=f"{help_text} (env {env_name})")

        count("--max-queue", "TOKEN_LAB_MAX_QUEUE", base.max_queue, "requests waiting beyond this get a 'busy' message")
        count("--max-history-messages", "TOKEN_LAB_MAX_HISTORY_MESSAGES", base.max_history_messages,
              "the most messages a chat request's history may hold; longer ones are refused before any tokenizing")
        count("--max-history-chars", "TOKEN_LAB_MAX_HISTORY_CHARS", base.max_history_chars,
              "the most characters a chat request's history may hold in all")
        count("--max-sessions", "TOKEN_LAB_MAX_SESSIONS", base.max_sessions,
              "gradio sessions kept in memory, least recently used dropped first; every API call without a "
              "session_hash is a new session")
        count("--max-batch", "TOKEN_LAB_MAX_BATCH", base.max_batch,
              "the most requests decoded together in one forward pass; 0 = as many as fit in memory with every row "
              "at the full context, at most 32")
        count("--prefix-cache-mb", "TOKEN_LAB_PREFIX_CACHE_MB", base.prefix_cache_mb,
              "memory for reusing the attention keys/values of prompts that start alike (the system prompt, the "
              "conversation so far); 0 turns it off")
        count("--prefill-chunk", "TOKEN_LAB_PREFILL_CHUNK", base.prefill_chunk,
              "prompt tokens read between two decoding steps of the running chats, so that a long prompt never "
              "stalls them; 0 reads every prompt in one pass")
        p.add_argument("--engine", default=env.get("TOKEN_LAB_ENGINE", base.engine), choices=ENGINES,
                       help="what runs chat in-process: 'onnx' = ONNX Runtime on int8 weights converted at the first "
                            "start (fast on a CPU), 'torch' = the loaded weights as they are (float32 on a CPU: "
                            "greedy answers equal transformers' generate), 'auto' = onnx on a CPU where the model's "
                            "architecture converts, else torch (env TOKEN_LAB_ENGINE)")
        p.add_argument("--onnx-model", default=env.get("TOKEN_LAB_ONNX_MODEL") or None,
                       help="chat on this already converted model (a folder written by onnxruntime-genai's model "
                            "builder, such as Microsoft's Phi-3 ONNX builds) instead of converting --model's weights; "
                            "its vocabulary must be --model's (env TOKEN_LAB_ONNX_MODEL)")
        p.add_argument("--engine-url", default=env.get("ENGINE_URL") or None,
                       help="send chat to this OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (env "
                            "ENGINE_URL; API key from env ENGINE_API_KEY); --model then loads only the tokenizer "
                            "and the embedding matrix")
        p.add_argument("--engine-model", default=env.get("ENGINE_MODEL") or None,
                       help="the model name the server serves (env ENGINE_MODEL; default: --model, else the "
                            "server's first model)")
        p.add_argument("--engine-timeout", type=float,
                       default=float(env.get("ENGINE_TIMEOUT", base.engine_timeout)),
                       help="seconds the server may stay silent before a chat request fails (env ENGINE_TIMEOUT)")
        mcp_env = env.get("TOKEN_LAB_MCP", "") == "1" or env.get("GRADIO_MCP_SERVER", "").lower() == "true"
        p.add_argument("--mcp", action="store_true", default=mcp_env,
                       help="also serve the API endpoints as MCP tools at /gradio_api/mcp/ (env TOKEN_LAB_MCP=1, or "
                            "gradio's GRADIO_MCP_SERVER=true)")
        p.add_argument("--no-pack-linears", dest="pack_linears", action="store_false",
                       default=env.get("TOKEN_LAB_PACK_LINEARS", "1") != "0",
                       help="on the CPU, keep torch's default matmuls instead of oneDNN's on pre-packed weights "
                            "(slower; env TOKEN_LAB_PACK_LINEARS=0)")
        p.add_argument("--heavy-share", type=float, default=float(env.get("TOKEN_LAB_HEAVY_SHARE", base.heavy_share)),
                       help="while chats are being generated, the most of the time the Inside views and evaluations "
                            "may take, between 0 and 1; they rest the remainder (env TOKEN_LAB_HEAVY_SHARE)")
        p.add_argument("--map-projection", choices=MAP_PROJECTIONS,
                       default=env.get("TOKEN_LAB_MAP_PROJECTION", base.map_projection),
                       help="what the Embeddings tab's vocabulary map shows when opened: umap (computed once in a "
                            "low-priority background process, about a minute, then cached; PCA until then) or pca "
                            "(env TOKEN_LAB_MAP_PROJECTION)")
        args, _unknown = p.parse_known_args(argv)
        if not 0 < args.heavy_share <= 1:
            p.error(f"--heavy-share must be more than 0 and at most 1, not {args.heavy_share}")
        if args.map_projection not in MAP_PROJECTIONS:  # argparse checks a flag's value, not an environment default
            p.error(f"--map-projection must be one of {', '.join(MAP_PROJECTIONS)}, not {args.map_projection!r}")
        return cls(model=args.model, device=args.device, dtype=args.dtype, host=args.host, port=args.port,
                   share=args.share, cache_dir=args.cache_dir, max_queue=args.max_queue,
                   max_history_messages=args.max_history_messages, max_history_chars=args.max_history_chars,
                   max_sessions=args.max_sessions, max_batch=args.max_batch, prefix_cache_mb=args.prefix_cache_mb,
                   prefill_chunk=args.prefill_chunk, engine=args.engine, onnx_model=args.onnx_model,
                   engine_url=args.engine_url, engine_model=args.engine_model,
                   engine_timeout=args.engine_timeout, engine_api_key=env.get("ENGINE_API_KEY") or None,
                   mcp=args.mcp, pack_linears=args.pack_linears,
                   heavy_share=args.heavy_share, map_projection=args.map_projection)


DEFAULTS = AppConfig()  # each setting's default, for code that takes one as a parameter (the one definition is above)
