"""Greedy decoding straight on the converted model, with nothing around it: the baseline bench_chat times the chat
against, and the loop bench_fidelity reads the default engine's distributions from. The prompt is read in one run,
then one run per token, as the chat engine computes them.

    >>> for token, logits in greedy(model, prompt_ids, tokens=64, stop={2}): ...   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from core.engine.onnx_model import OnnxModel


def greedy(model: OnnxModel, prompt: list[int], tokens: int, stop: set[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Each answer token and the logits [vocab] it was chosen from (valid until the next token is asked for), up to
    `tokens` tokens or a stop token, which is yielded too."""
    cache = model.cache(1, len(prompt) + tokens + 1)
    logits = model.run(np.asarray([prompt]), cache, np.asarray([0]))[0]
    for n in range(1, tokens + 1):
        token = int(logits.argmax())
        yield token, logits
        if token in stop or n == tokens:
            return
        logits = model.run(np.asarray([[token]]), cache, np.asarray([len(prompt) + n - 1]))[0]
