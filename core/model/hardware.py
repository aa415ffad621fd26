"""Facts about the machine that change which code path is fastest."""

from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """True on CPUs with bfloat16 instructions (AVX512-BF16 or AMX), where oneDNN runs bfloat16 matmuls faster than
    float32; elsewhere bfloat16 is emulated and slower than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False
