"""Choosing the next token from a row's logits, with that request's own settings and random generator.

The filters run in the order `transformers.generate` applies them (repetition penalty, temperature, top-k, top-p), with
transformers' own processors, so that a seeded answer here is the one `generate` would give. `sampling_scores` is the
same filter as a distribution (what the Inside tab shows a sampler keeps), and `record_logprobs` what an answer token
carries when a request asks for log-probabilities.

    sample(logits, GenerationSettings(temperature=0), seen_ids=[], generator=None)
    # 464
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from core.engine.settings import GenerationSettings


def _penalised(logits: torch.Tensor, settings: GenerationSettings, seen_ids: list[int]) -> torch.Tensor:
    """[1, vocab] float32 scores after the repetition penalty (the one filter greedy decoding applies too)."""
    scores = logits.float().reshape(1, -1)
    if settings.repetition_penalty != 1.0:
        seen = torch.tensor([seen_ids], device=scores.device)
        scores = RepetitionPenaltyLogitsProcessor(settings.repetition_penalty)(seen, scores)
    return scores


def _argmax_only(scores: torch.Tensor) -> torch.Tensor:
    """Greedy as a distribution over [1, vocab] scores: 0 for the argmax, -inf for every other token."""
    greedy = torch.full_like(scores, float("-inf"))
    greedy[0, int(scores.argmax(-1))] = 0.0
    return greedy


def _warped(scores: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
    """Temperature, top-k and top-p (temperature > 0): -inf for every token they filter out. A temperature so close
    to 0 that dividing by it overflows (1e-40, 1e-300) is taken at its limit, greedy: softmax would otherwise turn
    the infinities into NaN."""
    scaled = TemperatureLogitsWarper(settings.temperature)(None, scores)
    if bool(torch.isinf(scaled).any()):
        return _argmax_only(scores)
    scores = scaled
    if settings.top_k > 0:
        scores = TopKLogitsWarper(settings.top_k)(None, scores)
    if settings.top_p < 1.0:
        scores = TopPLogitsWarper(settings.top_p)(None, scores)
    return scores


def sample(logits: torch.Tensor, settings: GenerationSettings, seen_ids: list[int],
           generator: torch.Generator | None) -> int:
    """The next token from one row's last logits [vocab]; temperature 0 is greedy (argmax)."""
    scores = _penalised(logits, settings, seen_ids)
    if settings.temperature <= 0:
        return int(scores.argmax(-1))
    probs = torch.softmax(_warped(scores, settings), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sampling_scores(logits: torch.Tensor, settings: GenerationSettings, seen_ids: list[int]) -> torch.Tensor:
    """[vocab] scores whose softmax is the distribution `sample` draws from; -inf for the tokens it cannot draw.
    Greedy keeps the argmax alone."""
    scores = _penalised(logits, settings, seen_ids)
    if settings.temperature <= 0:
        return _argmax_only(scores)[0]
    return _warped(scores, settings)[0]


@dataclass(frozen=True)
class StepLogprobs:
    """One answer token's log-probability and the `n` most likely tokens' at that step (ids, not text: turned into
    OpenAI's shape only when the answer is read, core/engine/logprobs.py)."""

    token: int
    logprob: float
    top_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]


def record_logprobs(logits: torch.Tensor | np.ndarray, tokens: list[int], counts: list[int]) -> list[StepLogprobs]:
    """For each row of raw logits [rows, vocab]: the chosen token's log-probability and the top `counts[row]`, from
    the model's own distribution, before penalty, temperature, top-k and top-p (vLLM's default, and the one that
    still means something at temperature 0). One pass over all the rows that asked; called after the tokens are
    chosen, so answers do not change. The log-sum-exp is numpy's, on the worker's own thread: a reduction per step is
    not worth waking torch's thread pool, which would then spin beside ONNX Runtime's."""
    scores = logits.float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits, np.float32)
    peak = scores.max(-1, keepdims=True)
    lse = peak + np.log(np.exp(scores - peak).sum(-1, keepdims=True))
    rows = np.arange(len(tokens))
    chosen = (scores[rows, tokens] - lse[:, 0]).tolist()
    top = torch.from_numpy(scores).topk(max(counts), dim=-1)  # numpy's argpartition is slower on one row
    top_values, top_ids = (top.values.numpy() - lse).tolist(), top.indices.tolist()
    return [StepLogprobs(token=token, logprob=logprob, top_ids=tuple(ids[:k]), top_logprobs=tuple(values[:k]))
            for token, logprob, ids, values, k in zip(tokens, chosen, top_ids, top_values, counts, strict=True)]
