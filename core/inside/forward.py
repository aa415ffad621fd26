"""Forward passes for the views, in chunks of tokens with a pause after each, so that a chat sharing the model waits
for one chunk at most (the engine's worker runs one step of a generator between two decoding steps).

Each pause yields how far the pass is, (chunks done, chunks in all, what is being done), for the caller's progress.
A text that fits in one chunk is one plain forward pass. A longer one continues from the keys and values of the
chunks before it, which computes the same thing. Several rows (contextual's two sentences) go through together,
right-padded: causal attention never lets a token see the padding that follows its row. Where the chat engine decodes
with the lean step (core/engine/lean_step.py), the views' passes run on it too: the same bits as the transformers
forward, in less time, and the stream comes straight out of it instead of through hooks.

    logits = yield from last_logits(model, ids)
    [states] = yield from residual_stream(model, parts, [ids], [range(3, 8)])      # [layers + 1, 5, hidden]
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import DynamicCache

from core.engine.lean_step import LeanLlamaStep, shared_step
from core.inside.anatomy import Anatomy

CHUNK_TOKENS = 128
READING = "reading the text"
Step = tuple[int, int, str]  # what a view's generator yields at each pause: done, in all, what is being done


def _stream_hooks(layers: nn.ModuleList, into: list[torch.Tensor]) -> list[RemovableHandle]:
    """Hooks that append this thread's residual stream to `into`: the first layer's input, then every layer's
    output (the last one raw, before the final norm)."""
    me = threading.get_ident()

    def first_input(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        if threading.get_ident() == me:
            into.append(args[0] if args else kwargs["hidden_states"])

    def output(_module: nn.Module, _args: tuple, out: Any) -> None:
        if threading.get_ident() == me:
            into.append(out[0] if isinstance(out, tuple) else out)

    return [layers[0].register_forward_pre_hook(first_input, with_kwargs=True),
            *(layer.register_forward_hook(output) for layer in layers)]


def _right_padded(model: Any, rows: list[list[int]]) -> torch.Tensor:
    width = max(len(row) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long, device=model.device)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return ids


def _chunks(model: Any, rows: list[list[int]], chunk: int, layers: nn.ModuleList | None = None,
            **kwargs: Any) -> Iterator[tuple[int, Any, list[torch.Tensor]]]:
    """(first column, model output, the residual stream `layers` carried) for each chunk of the right-padded rows.

    The stream is read by hooks on the decoder layers rather than with `output_hidden_states`: transformers returns
    the last hidden state after the final norm, and installs its own capturing hooks on a model for good the first
    time it is asked (closures, which make the shared model impossible to pickle). A hook belongs to the module, so
    it would also see the decoding steps the worker runs between two chunks, and a forward pass another thread runs
    meanwhile: each hook is there during this pass's own forward call only and keeps its own thread's calls."""
    ids = _right_padded(model, rows)
    width = ids.shape[1]
    cache = DynamicCache() if width > chunk else None
    for start in range(0, width, chunk):
        received: list[torch.Tensor] = []
        hooks = _stream_hooks(layers, received) if layers is not None else []
        try:
            out = model(input_ids=ids[:, start:start + chunk], past_key_values=cache, use_cache=cache is not None,
                        **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        yield start, out, received


def _lean_chunks(step: LeanLlamaStep, ids: torch.Tensor, chunk: int) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """(first column, the residual stream [layers + 1] of [rows, columns, hidden]) for each chunk of `ids`, on the
    lean step: what `_chunks` reads with hooks, computed the same way."""
    cache = DynamicCache()
    for start in range(0, ids.shape[1], chunk):
        columns = ids[:, start:start + chunk]
        positions = torch.arange(start, start + columns.shape[1], device=ids.device).expand_as(columns)
        yield start, step.forward(columns, positions, None, cache)


def _step(start: int, width: int, chunk: int) -> Step:
    """How far a pass is once the chunk at column `start` is read."""
    return start // chunk + 1, -(-width // chunk), READING


def last_logits(model: Any, ids: list[int], chunk: int = CHUNK_TOKENS) -> Generator[Step, None, torch.Tensor]:
    """The model's float32 logits [vocab] for the token after `ids`."""
    step = shared_step(model)
    if step is not None:
        last = None
        for start, stream in _lean_chunks(step, _right_padded(model, [ids]), chunk):
            last = stream[-1][0, -1:]
            yield _step(start, len(ids), chunk)
        return step.logits(last)[0]
    logits = None
    for start, out, _ in _chunks(model, [ids], chunk, logits_to_keep=1):
        logits = out.logits[0, -1]
        yield _step(start, len(ids), chunk)
    return logits.float()


def residual_stream(model: Any, parts: Anatomy, rows: list[list[int]], keep: list[range],
                    chunk: int = CHUNK_TOKENS) -> Generator[Step, None, list[torch.Tensor]]:
    """For each row, the residual stream at its `keep` positions, [layers + 1, positions, hidden]: 0 is the input
    embedding rows, then each decoder layer's output, the last one taken before the final norm."""
    kept: list[list[torch.Tensor]] = [[] for _ in rows]
    width = max(len(row) for row in rows)
    step = shared_step(model)
    if step is not None:
        chunks = _lean_chunks(step, _right_padded(model, rows), chunk)
    else:
        chunks = ((start, received) for start, _out, received in _chunks(model, rows, chunk, parts.layers,
                                                                           logits_to_keep=1))
    for start, received in chunks:
        if len(received) != parts.num_layers + 1:
            raise RuntimeError(f"expected {parts.num_layers + 1} residual-stream states, got {len(received)}")
        stack = torch.stack(received)  # [layers + 1, rows, chunk, hidden]
        width = stack.shape[2]
        for i, positions in enumerate(keep):
            low, high = max(positions.start, start), min(positions.stop, start + width)
            if low < high:
                kept[i].append(stack[:, i, low - start:high - start])
        yield _step(start, width, chunk)
    return [torch.cat(pieces, dim=1) for pieces in kept]
