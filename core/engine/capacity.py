"""How many chats may decode together: every row's keys and values can grow to the full context, and a step that
runs out of memory fails every request in the batch, so the batch is bounded by the memory that is free where the
cache lives.

    rows_that_fit(model, context_length=4096, free_bytes=15 << 30)
    # 5
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def kv_bytes_per_token(model: PreTrainedModel) -> int:
    """Bytes of keys and values one token takes in every layer's cache (Phi-3-mini in bfloat16: 384 KiB)."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * next(model.parameters()).element_size()


MAX_ROWS = 32  # beyond this a decoding step grows so long that each chat's tokens/s drops (docs/performance.md)


def rows_that_fit(model: PreTrainedModel, context_length: int, free_bytes: int, cap: int = MAX_ROWS,
                  share: float = 0.6) -> int:
    """How many rows may decode together so that, even with every row at the full context, their caches take at
    most `share` of `free_bytes`; between 1 and `cap`. Beyond the cap, requests wait for a row.

    Phi-3-mini in bfloat16 at its full 4k context on an A10G gets a handful of rows; the bundled model on a
    CPU with plenty of free memory reaches the cap."""
    per_row = kv_bytes_per_token(model) * context_length
    return max(1, min(cap, int(free_bytes * share // per_row)))


def free_memory_bytes(device: torch.device) -> int:
    """Free memory where the cache will live: the GPU's, or the machine's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 8 << 30  # not Linux: assume a modest machine
