"""The sampling controls of one chat request, checked against the server's limits."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import InvalidInputError


@dataclass
class GenerationSettings:
    """Sampling controls; temperature 0 means greedy. The same seed and settings give the same answer."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None

    def validated(self, max_new_tokens_limit: int) -> GenerationSettings:
        checks = [
            (0 <= self.temperature <= 5, f"temperature must be between 0 and 5 (got {self.temperature})"),
            (0 < self.top_p <= 1, f"top-p must be in (0, 1] (got {self.top_p})"),
            (self.top_k >= 0, f"top-k must be 0 (off) or more (got {self.top_k})"),
            (0 < self.repetition_penalty <= 5, f"repetition penalty must be in (0, 5] (got {self.repetition_penalty})"),
            (1 <= self.max_new_tokens <= max_new_tokens_limit,
             f"max new tokens must be between 1 and {max_new_tokens_limit} (got {self.max_new_tokens})"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message)
        return self
