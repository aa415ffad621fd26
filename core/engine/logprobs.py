"""An answer's recorded log-probabilities in OpenAI's shape (`choices[0].logprobs.content`, as vLLM and SGLang return
it), so that a local answer and a remote server's answer read the same.

Each entry's `token` is the text that token adds in the answer, so the entries concatenate to the answer exactly: a
byte that only starts a character adds nothing, and the token that completes the character carries it whole; its
`bytes` keep the token's own bytes, from which split characters can be rebuilt. Special tokens (the end-of-turn token)
are left out, as the answer text leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from core.engine.sampling import StepLogprobs
from core.text.token_strings import token_strings
from core.text.tokens import special_ids, stream_texts


class TopLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TypedDict):
    """One answer token: its text in the answer, log-probability, bytes, and the most likely tokens at that step."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


def listed_positions(ids: Sequence[int], tokenizer: Any) -> list[int]:
    """The positions of an answer's tokens that `openai_logprobs` lists: special tokens are left out, as in the text."""
    skip = special_ids(tokenizer)
    return [i for i, token in enumerate(ids) if token not in skip]


def openai_logprobs(records: Sequence[StepLogprobs], tokenizer: Any) -> list[TokenLogprob]:
    """OpenAI's `logprobs.content` for an answer's records, in order."""
    strings = token_strings(tokenizer)
    texts = stream_texts(tokenizer, [r.token for r in records])
    out: list[TokenLogprob] = []
    for at in listed_positions([r.token for r in records], tokenizer):
        record, (text, _owner) = records[at], texts[at]
        own = strings.bytes(record.token) if strings.is_partial(record.token) else text.encode("utf-8")
        out.append(TokenLogprob(token=text, logprob=record.logprob, bytes=list(own), top_logprobs=[
            TopLogprob(token=strings.text(i), logprob=lp, bytes=list(strings.bytes(i)))
            for i, lp in zip(record.top_ids, record.top_logprobs, strict=True)]))
    return out
