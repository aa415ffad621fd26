"""The parts of a causal LM the views need, found through the model's own accessors and one watched forward pass,
never by one architecture's attribute names.

The LM head is `get_output_embeddings()`, the input embedding `get_input_embeddings()`, the decoder layers the one
ModuleList of `config.num_hidden_layers` modules in `get_decoder()`. The final norm has no accessor (Llama and Phi-3
call it `model.norm`, GPT-2 `transformer.ln_f`), so it is found as the module that runs after the last decoder layer
and whose output is exactly what the LM head receives. (transformers' `hidden_states[-1]` is *after* that norm while
every other entry is the raw residual stream; core/inside/forward.py reads the stream at the layers.) Forward hooks
belong to the module, not to a call: they also see a forward pass another thread runs meanwhile, and the decoding
steps the worker runs between two steps of an inspection, so each hook here is there for its own forward call only
and keeps its own thread's calls.

    parts = anatomy(model)
    parts.logits(residual)      # final norm, LM head (and soft-capping): the model's own way to logits
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.errors import UnavailableError

_FOUND: weakref.WeakKeyDictionary[nn.Module, Anatomy] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Anatomy:
    embed: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module  # nn.Identity for a model without one
    lm_head: nn.Module
    logit_softcap: float | None  # Gemma-2 style tanh capping after the LM head, where the config asks for it

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def logits(self, residual: torch.Tensor) -> torch.Tensor:
        """From residual-stream rows [..., hidden] to float32 logits, as the model itself goes."""
        logits = self.lm_head(self.final_norm(residual)).float()
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


def require_weights(model: nn.Module) -> None:
    """UnavailableError, in words, for a model without an LM head (the embeddings-only stand-in)."""
    head = getattr(model, "get_output_embeddings", None)
    if head is None or head() is None:
        raise UnavailableError("This needs the model's weights, and only its input embeddings are loaded here.")


def _decoder(model: nn.Module) -> nn.Module:
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model


def _decoder_layers(model: nn.Module, count: int) -> nn.ModuleList:
    lists = [m for m in _decoder(model).modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if len(lists) != 1:
        raise UnavailableError(f"Cannot tell this model's {count} decoder layers apart ({len(lists)} candidates).")
    return lists[0]


def _find_final_norm(model: nn.Module, layers: nn.ModuleList, lm_head: nn.Module) -> nn.Module:
    """Run two tokens through the model, recording the modules that run after the last layer and what the LM head
    receives; the final norm is the last of them whose output is the LM head's input."""
    inside_layers = {id(m) for m in layers.modules()}
    after_last: list[tuple[nn.Module, Any]] = []
    head_input: list[torch.Tensor] = []
    seen_last = [False]
    me = threading.get_ident()

    def record(module: nn.Module, _args: Any, output: Any) -> None:
        if threading.get_ident() != me:
            return
        if module is layers[-1]:
            seen_last[0] = True
        elif seen_last[0] and id(module) not in inside_layers and isinstance(output, torch.Tensor):
            after_last.append((module, output))

    def record_head(_module: nn.Module, args: tuple) -> None:
        if threading.get_ident() == me:
            head_input.append(args[0])

    hooks = [m.register_forward_hook(record) for m in _decoder(model).modules()]
    hooks.append(lm_head.register_forward_pre_hook(record_head))
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([[1, 2]], device=model.device), logits_to_keep=0)
    finally:
        for hook in hooks:
            hook.remove()
    for module, output in reversed(after_last):
        if output.shape == head_input[0].shape and torch.equal(output, head_input[0]):
            return module
    return nn.Identity()


def anatomy(model: nn.Module) -> Anatomy:
    """The embedding, decoder layers, final norm and LM head of a causal LM (found once per model)."""
    with _LOCK:
        if model in _FOUND:
            return _FOUND[model]
        require_weights(model)
        config = model.config.get_text_config()
        lm_head = model.get_output_embeddings()
        layers = _decoder_layers(model, int(config.num_hidden_layers))
        parts = Anatomy(embed=model.get_input_embeddings(), layers=layers,
                        final_norm=_find_final_norm(model, layers, lm_head), lm_head=lm_head,
                        logit_softcap=getattr(config, "final_logit_softcapping", None))
        _FOUND[model] = parts
        return parts
