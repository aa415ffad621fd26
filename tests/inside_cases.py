"""Driving a model-side generator to its end in a test, as the engine's worker does."""

from __future__ import annotations

import torch


def run(fn, *args, **kwargs):
    """Drive a model-side generator to its end, as the engine's worker does."""
    steps = fn(*args, **kwargs)
    with torch.inference_mode():
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
