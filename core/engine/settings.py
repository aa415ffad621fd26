"""The sampling controls of one chat request, checked against the server's limits."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from core import checks

MAX_TEMPERATURE = 5.0
MAX_REPETITION_PENALTY = 5.0
MAX_TOP_K = 100_000
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass
class GenerationSettings:
    """Sampling controls; temperature 0 means greedy. The same seed and settings give the same answer.

    The fields may hold whatever a request sent (API callers send JSON); `validated` turns them into checked numbers
    or raises InvalidInputError naming the field and its range."""

    temperature: Any = 0.7
    top_p: Any = 0.95
    top_k: Any = 50
    repetition_penalty: Any = 1.0
    max_new_tokens: Any = 256
    seed: Any = None
    top_logprobs: Any = None  # None: no log-probabilities; n: each answer token's and the n most likely tokens'

    def validated(self, max_new_tokens_limit: int) -> GenerationSettings:
        return replace(
            self,
            temperature=checks.number(self.temperature, "temperature", 0, MAX_TEMPERATURE),
            top_p=checks.number(self.top_p, "top_p", 0, 1, low_open=True),
            top_k=checks.integer(self.top_k, "top_k (0 = off)", 0, MAX_TOP_K),
            repetition_penalty=checks.number(self.repetition_penalty, "repetition_penalty", 0, MAX_REPETITION_PENALTY,
                                             low_open=True),
            max_new_tokens=checks.integer(self.max_new_tokens, "max_new_tokens", 1, max_new_tokens_limit),
            seed=checks.seed(self.seed),
            top_logprobs=None if self.top_logprobs is None else checks.integer(self.top_logprobs, "top_logprobs",
                                                                                0, MAX_TOP_LOGPROBS),
        )
