"""The model's next-token distribution for a text: the top-k tokens, its entropy, and what the sampling settings
leave of it.

The probabilities are the model's own (temperature 1); `kept` and `prob_after` are what the chat sampler would draw
from with the given temperature, top-k and top-p (core.engine.sampling.sampling_scores: the same processors in the same
order), so greedy's top-1 is the token chat writes. With `chat`, the text is a user message in the chat template,
exactly the prompt the engine builds.

    r = next_tokens(engine, "The capital of France is", k=3)
    [(t["text"], round(t["prob"], 2)) for t in r["tokens"]]
    # [(' Paris', 0.71), (' the', 0.05), (' a', 0.03)]
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any, TypedDict

import torch

from core import checks
from core.engine.base import Engine
from core.engine.sampling import sampling_scores
from core.engine.settings import GenerationSettings
from core.errors import InvalidInputError
from core.inside.anatomy import require_weights
from core.inside.forward import Step, last_logits
from core.model.loading import LoadedModel
from core.text.token_strings import token_strings
from core.text.tokens import MAX_CHARS
from core.work.progress import Progress

MAX_K = 100


class NextToken(TypedDict):
    rank: int
    id: int
    piece: str
    text: str
    logprob: float
    prob: float
    kept: bool  # the sampler may still draw it after temperature, top-k and top-p
    prob_after: float  # its probability among the kept tokens (0.0 when filtered out)


class NextTokens(TypedDict):
    """The answer of /next_tokens."""

    tokens: list[NextToken]
    entropy: float  # bits, of the model's distribution
    entropy_after: float  # bits, of what the sampler draws from
    kept_count: int  # tokens the sampler may draw
    kept_mass: float  # the model's probability mass on them
    prompt_tokens: int
    prompt: str  # the text the model read (the rendered chat prompt with `chat`)


def text_ids(loaded: LoadedModel, text: Any, what: str = "The text") -> list[int]:
    """`text` tokenized as the Tokens tab shows it, checked: not empty, within the model's context."""
    text = checks.text(text, what, MAX_CHARS, required=True, what="Type a text first.")
    ids = [int(i) for i in loaded.tokenizer(text)["input_ids"]]
    if len(ids) > loaded.context_length:
        raise InvalidInputError(f"{what} is {len(ids):,} tokens; the model reads at most {loaded.context_length:,}. "
                                "Shorten it.")
    return ids


def read_ids(engine: Engine, text: Any, chat: bool) -> tuple[list[int], str]:
    """The tokens a view reads for `text`, and the text they are: the text itself, or with `chat` the prompt the chat
    builds for it as a user message."""
    if chat:
        prompt = engine.prompt(text, [], "", max_new_tokens=1)
        return prompt.ids, prompt.text
    return text_ids(engine.loaded, text), text


def entropy_bits(logprobs: torch.Tensor) -> float:
    """Entropy of a distribution given as log-probabilities (-inf where a token is impossible), in bits."""
    p = logprobs.exp()
    # a single surviving token sums to -0.0 or a rounding error below zero; entropy is never negative
    return max(0.0, float(-torch.where(p > 0, p * logprobs, torch.zeros_like(p)).sum()) / math.log(2))


def _compute(loaded: LoadedModel, ids: list[int], settings: GenerationSettings,
             k: int) -> Generator[Step, None, dict[str, Any]]:
    """On the model's side: the top k and the sampler's view of them, as plain numbers."""
    require_weights(loaded.model)
    logits = yield from last_logits(loaded.model, ids)
    logprobs = torch.log_softmax(logits, dim=-1)
    after = torch.log_softmax(sampling_scores(logits, settings, ids), dim=-1)
    top = logprobs.topk(min(k, logprobs.numel()))
    kept = after.exp() > 0  # what the sampler can draw: at a temperature near 0 the rest rounds to probability 0
    mass = float(logprobs[kept].double().exp().sum())  # float32 sums of ~50,000 terms drift above 1
    return {"ids": top.indices.tolist(), "logprobs": top.values.tolist(), "kept": kept[top.indices].tolist(),
            "after": after[top.indices].exp().tolist(), "entropy": entropy_bits(logprobs),
            "entropy_after": entropy_bits(after), "kept_count": int(kept.sum()), "kept_mass": min(1.0, mass)}


def next_tokens(engine: Engine, text: Any, k: Any = 10, temperature: Any = 1.0, top_p: Any = 1.0, top_k: Any = 0,
                chat: Any = False, progress: Progress | None = None) -> NextTokens:
    """The top `k` next tokens of `text` with their probabilities before and after the sampling settings."""
    loaded = engine.loaded
    k = checks.integer(k, "k", 1, MAX_K)
    chat = checks.flag(chat, "chat")
    settings = GenerationSettings(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=1).validated(1)
    ids, read = read_ids(engine, text, chat)
    raw = engine.inspect(_compute, ids, settings, k, progress=progress)
    strings = token_strings(loaded.tokenizer)
    tokens = [NextToken(rank=rank, id=i, piece=strings.piece(i), text=strings.text(i), logprob=lp, prob=math.exp(lp),
                        kept=kept, prob_after=after)
              for rank, (i, lp, kept, after) in enumerate(zip(raw["ids"], raw["logprobs"], raw["kept"], raw["after"],
                                                              strict=True), 1)]
    return NextTokens(tokens=tokens, entropy=raw["entropy"], entropy_after=raw["entropy_after"],
                      kept_count=raw["kept_count"], kept_mass=raw["kept_mass"], prompt_tokens=len(ids), prompt=read)
