"""A Llama-family model (Llama, SmolLM2) as the few torch ops it needs, on the model's own packed weights: on the
CPU, the chat engine's decoding step (`__call__`, on a static cache) and its prompts' prefill, and the views'
forward passes (`forward`, on a transformers cache).

Why: a forward pass through transformers runs every op under layers of Python (module calls, output capturing,
mask building, cache objects), and at a small model's size that overhead, not arithmetic, is much of a step. This
runs only the ops a layer needs and no modules, and computes the same bits as the transformers forward in float32:
each op is the one transformers runs on the same operands. Fusing q|k|v and gate|up into one packed matmul gives
each output column the same dot product; the rotary "rotate half" is a flip with its sign moved onto a precomputed
sine; the mask is transformers' own, and attention takes the branch its SDPA path takes (`_attend`).
tests/test_lean_step.py checks logits, caches and residual streams bit for bit.

    step = shared_step(model)
    step.reserve(1024)
    logits = step(tokens, positions, keys, values, length, None)   # [rows, vocab]
    stream = step.forward(ids, positions, None, DynamicCache())
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from core.model.packed_linear import PackedLinear, bucketed_matmul, pack_weight, packed_matmul

ARCHITECTURES = ("LlamaForCausalLM",)
_SHARED: weakref.WeakKeyDictionary[nn.Module, LeanLlamaStep] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def supports(model: nn.Module) -> bool:
    """Whether the lean step computes exactly what `model`'s forward does: a Llama-architecture model in float32 on
    the CPU, with default rotary embeddings, no biases, SiLU, SDPA attention and every linear layer packed."""
    config = model.config
    first = next(model.parameters())
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, PackedLinear))]
    rope = getattr(config, "rope_parameters", None) or {}
    return (type(model).__name__ in ARCHITECTURES and first.dtype == torch.float32 and first.device.type == "cpu"
            and rope.get("rope_type", "default") == "default" and not config.attention_bias
            and not config.mlp_bias and config.hidden_act == "silu"
            and getattr(config, "_attn_implementation", "sdpa") == "sdpa"
            and bool(linears) and all(isinstance(m, PackedLinear) for m in linears))


def shared_step(model: nn.Module) -> LeanLlamaStep | None:
    """The one LeanLlamaStep of `model` (built on first use), or None where `supports` says no. The chat's decoder
    and the views share it: its fused weights are a copy of the model's, made once."""
    if not supports(model):
        return None
    with _LOCK:
        step = _SHARED.get(model)
        if step is None:
            step = _SHARED[model] = LeanLlamaStep(model)
        return step


def _fused(*layers: PackedLinear) -> torch.Tensor:
    """One packed weight for linear layers that read the same input (their outputs side by side)."""
    return pack_weight(torch.cat([layer.weight for layer in layers]).contiguous())


class LeanLlamaStep:
    """The step. Holds packed copies of the fused weights (q|k|v and gate|up of each layer); the embedding, the
    norms, o_proj, down_proj and the LM head are the model's own tensors."""

    def __init__(self, model: nn.Module) -> None:
        config, inner = model.config, model.model
        self.config = config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.groups = self.heads // self.kv_heads
        self.scale = self.head_dim ** -0.5
        self.eps = inner.norm.variance_epsilon
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.lm_head = model.lm_head.packed
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((layer.input_layernorm.weight, _fused(attn.q_proj, attn.k_proj, attn.v_proj),
                                attn.o_proj.packed, layer.post_attention_layernorm.weight,
                                _fused(mlp.gate_proj, mlp.up_proj), mlp.down_proj.packed))
        self.inv_freq = inner.rotary_emb.inv_freq
        self.attention_scaling = inner.rotary_emb.attention_scaling
        self._cos = self._sin = torch.empty(0, self.head_dim)

    def reserve(self, positions: int) -> None:
        """Make the rotary tables cover positions 0 .. positions-1, computed by transformers' formula (the same
        elementwise ops, so the same bits)."""
        if positions <= len(self._cos):
            return
        size = max(positions, 2 * len(self._cos), 1024)
        freqs = torch.arange(size).float()[:, None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        half = self.head_dim // 2
        self._cos, self._sin = cos, torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def _mlp(self, x: torch.Tensor, norm: torch.Tensor, gate_up_w: torch.Tensor, down_w: torch.Tensor,
             mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """x plus the layer's MLP of x [rows, hidden], its matmuls run by `mm` (the step's or the forward's)."""
        gate_up = mm(self._rms(x, norm), gate_up_w)
        half = gate_up.shape[1] // 2
        return x + mm(F.silu(gate_up[:, :half]) * gate_up[:, half:], down_w)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, keys: list[torch.Tensor],
                 values: list[torch.Tensor], length: int, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits [rows, vocab] for one new token per row.

        tokens, positions: [rows] (positions below `reserve`'s bound); keys/values: per layer
        [rows, kv_heads, capacity, head_dim] holding `length` columns, the new one is written at column `length`;
        mask: None when no column is masked, else a boolean [rows, capacity] (True = attend) that also marks
        column `length`.
        """
        rows = tokens.shape[0]
        # a lone row runs as two copies, as the packed matmul would pad it, but only the first is cached and attends
        lone = rows == 1
        if lone:
            tokens, positions, rows = tokens.repeat(2), positions.repeat(2), 2
        n = length + 1
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        cos, sin = self._cos[positions, None], self._sin[positions, None]
        attn_mask = None if mask is None else mask[:, None, None, :n]
        mm = packed_matmul
        x = F.embedding(tokens, self.embed)
        for (norm1, qkv_w, o_w, norm2, gate_up_w, down_w), k_cache, v_cache in zip(self.layers, keys, values,
                                                                                    strict=True):
            qkv = mm(self._rms(x, norm1), qkv_w)
            qk = qkv[:, :(h + kv) * d].view(rows, h + kv, d)
            qk = _rotary(qk, cos, sin)
            cached = 1 if lone else rows
            k_cache[:, :, length] = qk[:cached, h:]
            v_cache[:, :, length] = qkv[:cached, (h + kv) * d:].view(cached, kv, d)
            out = self._attend(qk[:cached, :h].unsqueeze(2), k_cache[:, :, :n], v_cache[:, :, :n], attn_mask)
            out = out.reshape(cached, h * d)
            x = x + mm(out.expand(rows, h * d) if lone else out, o_w)
            x = self._mlp(x, norm2, gate_up_w, down_w, mm)
        logits = mm(self._rms(x, self.norm), self.lm_head)
        return logits[:1] if lone else logits

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor | None,
                cache: DynamicCache) -> list[torch.Tensor]:
        """The residual stream for new columns `ids` [rows, n] at `positions` [rows, n] after the columns `cache`
        holds, whose keys and values it extends: [layers + 1] tensors [rows, n, hidden] (the input embeddings, then
        each layer's output before the final norm), as transformers' forward computes them from the same arguments.
        attention_mask: [rows, cached + n], 1 = a real token, or None when every column is real.

        A prompt's prefill (LeanBatchDecoder) and the views' passes (core/inside/forward.py). The mask is the one
        transformers builds for the same arguments, and attention takes the branch its SDPA path would take."""
        rows, n = ids.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        self.reserve(int(positions.max()) + 1)
        cos, sin = self._cos[positions].unsqueeze(2), self._sin[positions].unsqueeze(2)
        x = F.embedding(ids, self.embed)
        mask = create_causal_mask(config=self.config, inputs_embeds=x, attention_mask=attention_mask,
                                  past_key_values=cache, position_ids=positions)
        x = x.reshape(rows * n, -1)
        stream = [x]
        for i, (norm1, qkv_w, o_w, norm2, gate_up_w, down_w) in enumerate(self.layers):
            qkv = bucketed_matmul(self._rms(x, norm1), qkv_w).view(rows, n, -1)
            qk = qkv[..., :(h + kv) * d].reshape(rows, n, h + kv, d)
            qk = _rotary(qk, cos, sin)
            keys, values = cache.update(qk[:, :, h:].transpose(1, 2),
                                        qkv[..., (h + kv) * d:].view(rows, n, kv, d).transpose(1, 2), i)
            out = self._attend(qk[:, :, :h].transpose(1, 2), keys, values, mask)
            x = x + bucketed_matmul(out.transpose(1, 2).reshape(rows * n, h * d), o_w)
            x = self._mlp(x, norm2, gate_up_w, down_w, bucketed_matmul)
            stream.append(x)
        return [s.view(rows, n, -1) for s in stream]

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """SDPA over q [rows, heads, n, d] as transformers' sdpa_attention_forward calls it: grouped-query SDPA
        without a mask (causal for more than one query), the query heads grouped per key head for a single query
        with a mask, the keys and values repeated per query head otherwise."""
        rows, _, n, d = q.shape
        if mask is None:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=n > 1, scale=self.scale,
                                                  enable_gqa=True)
        if n == 1:
            out = F.scaled_dot_product_attention(q.reshape(rows, self.kv_heads, self.groups, d), keys, values,
                                                 attn_mask=mask, scale=self.scale)
            return out.reshape(rows, self.heads, 1, d)
        return F.scaled_dot_product_attention(q, _repeat(keys, self.groups), _repeat(values, self.groups),
                                              attn_mask=mask, scale=self.scale)

    def logits(self, last: torch.Tensor) -> torch.Tensor:
        """The model's logits [rows, vocab] for residual-stream rows [rows, hidden] out of the last layer."""
        return bucketed_matmul(self._rms(last, self.norm), self.lm_head)


def _rotary(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of q|k heads [..., d] as transformers applies it: its "rotate half" is the two halves
    swapped (a flip, exact) with the first half's sign carried by the precomputed `sin`."""
    *heads, d = qk.shape
    return qk * cos + qk.view(*heads, 2, d // 2).flip(-2).view(*heads, d) * sin


def _repeat(cache: torch.Tensor, groups: int) -> torch.Tensor:
    """[rows, kv_heads, columns, d] → [rows, kv_heads * groups, columns, d], each key/value head once per query
    head it serves (transformers' repeat_kv)."""
    rows, kv, columns, d = cache.shape
    return cache[:, :, None].expand(rows, kv, groups, columns, d).reshape(rows, kv * groups, columns, d)
