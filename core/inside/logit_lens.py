"""The logit lens (nostalgebraist, 2020): what each layer would predict as the next token if the model stopped there.

Every layer's residual stream goes through the model's own final norm and LM head (core/inside/anatomy.py), so the
last row is the model's real prediction. One forward pass keeps the residual stream at the positions shown; then the
LM head scores (layers + 1) × positions rows, CHUNK_ROWS at a time with a pause after each. Exact probabilities need
every logit of a row, so each cell costs one full LM-head row: on a small model with a large vocabulary (SmolLM2:
30 layers, 49,152 × 576) a column of cells costs a sizeable share of a forward pass over a short text, which is why
the default shows fewer positions on the CPU than on a GPU (docs/performance.md has the measured cost).

    grid = logit_lens(engine, "The capital of France is")
    grid["rows"][-1][-1]["text"], round(grid["rows"][-1][-1]["prob"], 2)
    # (' Paris', 0.71)
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypedDict

import torch

from core import checks
from core.engine.base import Engine
from core.inside.anatomy import anatomy
from core.inside.contextual import TokenRef, token_ref
from core.inside.forward import Step, residual_stream
from core.inside.next_tokens import text_ids
from core.model.loading import LoadedModel
from core.text.token_strings import token_strings
from core.work.progress import Progress

MAX_LENS_TOKENS = 64
CPU_POSITIONS, GPU_POSITIONS = 8, 32  # the default positions shown, by where the model runs
CHUNK_ROWS = 128  # LM-head rows scored at once: small enough for the allocator to reuse its block between chunks
MAX_BLOCK = 1024  # vocabulary entries per block in row_max


class LensCell(TypedDict):
    id: int  # the layer's top-1 next token at this position
    piece: str
    text: str
    prob: float
    actual_prob: float | None  # the probability this layer gives the text's real next token (None at the end)


class LogitLens(TypedDict):
    """The answer of /logit_lens: rows[layer][column], layer 0 = the input embeddings."""

    tokens: list[TokenRef]  # the positions shown, in order
    next_tokens: list[TokenRef | None]  # the text's real next token after each position shown
    layers: int  # decoder layers; rows has layers + 1 entries
    rows: list[list[LensCell]]
    prompt_tokens: int
    note: str


def default_positions(device: str) -> int:
    return CPU_POSITIONS if str(device).startswith("cpu") else GPU_POSITIONS


def row_max(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What `logits.max(-1)` returns (each row's maximum and the first index holding it), found through the
    maxima of blocks of MAX_BLOCK entries: torch's value-and-index reduction over a wide row is several times
    slower than its value-only `amax`, and a lens scores hundreds of vocabulary-wide rows.

        >>> best, index = row_max(torch.randn(248, 49_152))   # the same tensors as logits.max(-1)
    """
    rows, vocab = logits.shape
    whole = vocab - vocab % MAX_BLOCK
    if whole == 0:
        return logits.max(-1)
    blocks = logits[:, :whole].view(rows, whole // MAX_BLOCK, MAX_BLOCK)
    best, block = blocks.amax(-1).max(-1)  # the first block that holds the maximum
    index = block * MAX_BLOCK + blocks[torch.arange(rows, device=logits.device), block].argmax(-1)
    if whole < vocab:  # the last entries, fewer than a block: they win only when strictly greater
        tail_best, tail_index = logits[:, whole:].max(-1)
        later = tail_best > best
        best, index = torch.where(later, tail_best, best), torch.where(later, tail_index + whole, index)
    return best, index


def _compute(loaded: LoadedModel, ids: list[int], first: int) -> Generator[Step, None, dict[str, list]]:
    """On the model's side: top-1 ids and probabilities, and the real next token's probability, per layer and
    position from `first` on."""
    parts = anatomy(loaded.model)
    [stream] = yield from residual_stream(loaded.model, parts, [ids], [range(first, len(ids))])
    layers, shown = stream.shape[0], stream.shape[1]
    states = stream.reshape(layers * shown, -1)
    following = [ids[i + 1] if i + 1 < len(ids) else -1 for i in range(first, len(ids))]
    actual = torch.tensor(following, device=states.device).repeat(layers)
    top, prob, actual_prob = [], [], []
    for start in range(0, len(states), CHUNK_ROWS):
        logits = parts.logits(states[start:start + CHUNK_ROWS])
        want = actual[start:start + CHUNK_ROWS]
        picked = logits.gather(1, want.clamp(min=0).unsqueeze(1))[:, 0]
        best, best_id = row_max(logits)
        # log-sum-exp in place on the chunk (what logsumexp does, without its full-size temporaries)
        lse = logits.sub_(best.unsqueeze(1)).exp_().sum(-1).log_().add_(best)
        top += best_id.tolist()
        prob += (best - lse).exp().tolist()
        actual_prob += torch.where(want >= 0, (picked - lse).exp(), torch.full_like(lse, float("nan"))).tolist()
        yield min(start + CHUNK_ROWS, len(states)), len(states), "each layer's guesses"

    def grid(values: list) -> list[list]:
        return [values[layer * shown:(layer + 1) * shown] for layer in range(layers)]

    return {"top": grid(top), "prob": grid(prob), "actual_prob": grid(actual_prob)}


def logit_lens(engine: Engine, text: Any, max_tokens: Any = None, progress: Progress | None = None) -> LogitLens:
    """A (layers + 1) × positions grid of top-1 next-token predictions over the last `max_tokens` tokens of `text`
    (None: the default for where the model runs), the model reading the whole text."""
    loaded = engine.loaded
    if max_tokens is None:
        max_tokens = default_positions(loaded.device)
    max_tokens = checks.integer(max_tokens, "max_tokens", 1, MAX_LENS_TOKENS)
    ids = text_ids(loaded, text)
    shown = min(max_tokens, len(ids))
    first = len(ids) - shown
    raw = engine.inspect(_compute, ids, first, progress=progress)
    strings = token_strings(loaded.tokenizer)
    columns = range(first, len(ids))
    rows = [[LensCell(id=top, piece=strings.piece(top), text=strings.text(top), prob=prob,
                      actual_prob=None if i + 1 >= len(ids) else actual)
             for i, top, prob, actual in zip(columns, tops, probs, actuals, strict=True)]
            for tops, probs, actuals in zip(raw["top"], raw["prob"], raw["actual_prob"], strict=True)]
    note = f"Showing the last {shown} of {len(ids)} tokens." if first else ""
    return LogitLens(tokens=[token_ref(strings, ids, i) for i in columns],
                     next_tokens=[token_ref(strings, ids, i + 1) if i + 1 < len(ids) else None for i in columns],
                     layers=len(rows) - 1, rows=rows, prompt_tokens=len(ids), note=note)
