"""Choosing the next token from a row's logits, with that request's own settings and random generator.

The filters run in the order `transformers.generate` applies them (repetition penalty, temperature, top-k, top-p), with
transformers' own processors, so that a seeded answer here is the one `generate` would give.

    >>> sample(logits, GenerationSettings(temperature=0), seen_ids=[], generator=None)   # doctest: +SKIP
    464
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from core.engine.settings import GenerationSettings


def sample(logits: torch.Tensor, settings: GenerationSettings, seen_ids: list[int],
           generator: torch.Generator | None) -> int:
    """The next token from one row's last logits [vocab]; temperature 0 is greedy (argmax)."""
    scores = logits.float().unsqueeze(0)
    if settings.repetition_penalty != 1.0:
        seen = torch.tensor([seen_ids], device=scores.device)
        scores = RepetitionPenaltyLogitsProcessor(settings.repetition_penalty)(seen, scores)
    if settings.temperature <= 0:
        return int(scores.argmax(-1))
    scores = TemperatureLogitsWarper(settings.temperature)(None, scores)
    if settings.top_k > 0:
        scores = TopKLogitsWarper(settings.top_k)(None, scores)
    if settings.top_p < 1.0:
        scores = TopPLogitsWarper(settings.top_p)(None, scores)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
