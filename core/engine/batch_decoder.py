"""Continuous batching for chat: many requests decode together, one forward pass per step for all of them.

Batch-1 decoding reads every weight once per token, so it is memory-bound; decoding 8 sequences in one forward pass
reads the weights once for all 8. New requests are prefilled together (all that are waiting, so their first tokens
come quickly), a chunk of their prompts between two decoding steps so that a long prompt never stalls the rows
already decoding, and then join the running batch; a finished or cancelled request leaves it at once.

The batch keeps one KV cache, left-padded: every row's cache holds the same number of slots, the attention mask marks
which are real, and each row has its own position ids. Invariant: the cache holds every token of a row except the
row's last sampled token (`pending`), which is fed at the next step.

A prefix cache (core/engine/prefix_cache.py) lets a new row start from the keys/values of an earlier sequence that
begins the same way (the system prompt, or the conversation so far): only the rest of its prompt is prefilled. Such a
row's cache then has a gap between its reused prefix and its new tokens; the mask marks the gap, and position ids
continue from the prefix, so the model sees exactly the sequence it would without the cache.

    decoder = BatchDecoder(model, stop_ids=[2], prefix_cache=PrefixCache(256 << 20))
    decoder.admit([slot]); decoder.step()
    group = decoder.begin([long_slot])
    while not decoder.prefill(group, columns=256): decoder.step()
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from core.engine.prefix_cache import LayerKV, PrefixCache
from core.engine.sampling import StepLogprobs, record_logprobs, sample
from core.engine.settings import GenerationSettings
from core.engine.stream import END_OF_TURN, LENGTH


@dataclass
class Slot:
    """One request inside the batch. `emit` receives each new token id; setting `finish_reason` ends the row."""

    prompt_ids: list[int]
    params: GenerationSettings  # the request's own sampling controls and seed
    max_new_tokens: int
    emit: Callable[[int], None]
    generated: list[int] = field(default_factory=list)
    pending: int | None = None
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache
    logprobs: list[StepLogprobs] = field(default_factory=list)  # filled when params.top_logprobs is set

    def sampler_setup(self, device: torch.device) -> None:
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.params.seed if self.params.seed is not None else random.getrandbits(63))


@dataclass
class Prefill:
    """Requests being prefilled together (BatchDecoder.begin lays them out; BatchDecoder.prefill feeds them)."""

    slots: list[Slot]
    ids: torch.Tensor  # [rows, width]: each row's new prompt tokens, left-padded
    positions: torch.Tensor  # [rows, width]
    mask: torch.Tensor  # [rows, past + width], 1 = real token
    past: int  # columns of reused prefix-cache keys/values before the new tokens
    cache: DynamicCache
    fed: int = 0  # columns of `ids` fed so far

    @property
    def width(self) -> int:
        return self.ids.shape[1]


class Decoder(abc.ABC):
    """What every model runner of the local engine shares: the running rows (`slots`), how a row's next token is
    chosen and accepted, and the prefix cache. A runner lays out new requests (`begin`), reads their prompts
    (`prefill`, a chunk at a time), decodes one token for every row (`step`) and lets finished rows go (`prune`).
    Not thread-safe: exactly one thread (the engine's worker) calls it."""

    def __init__(self, stop_ids: list[int], prefix_cache: PrefixCache | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.prefix_cache = prefix_cache
        self.device = torch.device(device)
        self.stop_ids = set(stop_ids)
        self.slots: list[Slot] = []

    @staticmethod
    def _choose(logits: torch.Tensor | np.ndarray, slots: list[Slot]) -> list[int]:
        """Each row's next token from logits [rows, vocab], with the row's own settings and random generator: one
        argmax for all the greedy rows, and the log-probabilities of the rows that asked recorded in one pass.
        Logits in a numpy array (ONNX Runtime's) are read in place, and greedy rows then take no torch op: torch's
        threads would wake for the argmax and spin beside ONNX Runtime's."""
        greedy = [slot.params.temperature <= 0 and slot.params.repetition_penalty == 1.0 for slot in slots]
        argmax = logits.argmax(-1).tolist() if any(greedy) else []
        tokens = [argmax[row] if greedy[row] else sample(torch.as_tensor(logits[row]), slot.params,
                                                         slot.prompt_ids + slot.generated, slot.generator)
                  for row, slot in enumerate(slots)]
        asked = [row for row, slot in enumerate(slots) if slot.params.top_logprobs is not None]
        if asked:
            records = record_logprobs(logits[asked], [tokens[row] for row in asked],
                                      [slots[row].params.top_logprobs for row in asked])
            for row, record in zip(asked, records, strict=True):
                slots[row].logprobs.append(record)
        return tokens

    def _accept(self, slot: Slot, token: int) -> None:
        """Record and emit a sampled token; decide whether the row is finished."""
        slot.generated.append(token)
        slot.emit(token)
        if token in self.stop_ids:
            slot.finish_reason = END_OF_TURN
        elif len(slot.generated) >= slot.max_new_tokens:
            slot.finish_reason = LENGTH
        slot.pending = token

    def _lookup(self, ids: list[int]) -> tuple[int, LayerKV]:
        return self.prefix_cache.lookup(ids) if self.prefix_cache is not None else (0, [])

    def admit(self, slots: list[Slot]) -> None:
        """Prefill new requests in one go, sample each one's first token, and merge the unfinished ones into the
        running batch."""
        self.prefill(self.begin(slots))

    @abc.abstractmethod
    def begin(self, slots: list[Slot]) -> Any:
        """Lay out new requests for prefilling; nothing is computed until `prefill`."""

    @abc.abstractmethod
    def prefill(self, group: Any, columns: int | None = None) -> bool:
        """Read the next `columns` prompt tokens of `group` (None: all); after the last, choose each row's first
        token and merge the group into the running batch. Returns whether the group is done."""

    @abc.abstractmethod
    def step(self) -> None:
        """Decode one token for every unfinished row."""

    @abc.abstractmethod
    def prune(self) -> None:
        """Drop the finished rows (what a runner keeps of them for the prefix cache is its own choice)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every row (after an error in a batched step; the engine reports it to each request)."""


class BatchDecoder(Decoder):
    """The transformers forward as the model runner: one left-padded transformers cache for the running batch."""

    def __init__(self, model: PreTrainedModel, stop_ids: list[int], prefix_cache: PrefixCache | None = None) -> None:
        super().__init__(stop_ids, prefix_cache, model.device)
        self.model = model
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [batch, cache length], 1 = real token

    # -- membership --------------------------------------------------------------------------------------------
    def begin(self, slots: list[Slot]) -> Prefill:
        """Lay out new requests for prefilling (over the part of each prompt not found in the prefix cache); nothing
        is computed until `prefill`.

        Layout of row i (P = longest reused prefix in this group, S = longest new part; 0 = masked):
            [0 … 0 | reused prefix of row i][0 … 0 | new tokens of row i]
             ← P columns of past cache →    ← S columns fed now →
        """
        for slot in slots:
            slot.sampler_setup(self.device)
        reused = [self._lookup(slot.prompt_ids) for slot in slots]
        past = max(length for length, _ in reused)
        width = max(len(slot.prompt_ids) - length for slot, (length, _) in zip(slots, reused, strict=True))
        ids = torch.zeros((len(slots), width), dtype=torch.long, device=self.device)
        positions = torch.zeros_like(ids)
        mask = torch.zeros((len(slots), past + width), dtype=torch.long, device=self.device)
        for row, (slot, (length, _)) in enumerate(zip(slots, reused, strict=True)):
            new = slot.prompt_ids[length:]
            ids[row, width - len(new):] = torch.tensor(new)
            positions[row, width - len(new):] = torch.arange(length, len(slot.prompt_ids))
            mask[row, past - length:past] = 1
            mask[row, past + width - len(new):] = 1
            slot.cached_tokens = length
        cache = DynamicCache(_stack_past(reused, past)) if past else DynamicCache()
        return Prefill(slots, ids, positions, mask, past, cache)

    def prefill(self, group: Prefill, columns: int | None = None) -> bool:
        """Feed the next `columns` prompt columns of `group` (None: all that remain) in one forward pass; after the
        last, sample each row's first token and merge the group into the running batch. Returns whether the group
        is done. Feeding a long prompt in chunks, with decoding steps of the running batch in between, keeps the
        other chats streaming while it is read; the keys and values are those of one pass up to float rounding."""
        start = group.fed
        end = group.width if columns is None else min(group.width, start + columns)
        logits = self._feed(group, start, end)
        group.fed = end
        if end < group.width:
            return False
        first = self._choose(logits, group.slots)
        for slot, token in zip(group.slots, first, strict=True):  # first tokens first: storing keys can wait
            self._accept(slot, token)
        for row, slot in enumerate(group.slots):
            self._remember(slot.prompt_ids, group.cache, group.mask, row)
        self._merge(group.slots, group.cache, group.mask)
        self.prune()
        return True

    def _feed(self, group: Prefill, start: int, end: int) -> torch.Tensor:
        """Run columns start..end of `group` on its cache; the logits [rows, vocab] of its last column."""
        out = self.model(input_ids=group.ids[:, start:end], attention_mask=group.mask[:, :group.past + end],
                         position_ids=group.positions[:, start:end], past_key_values=group.cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1]

    # -- prefix cache ------------------------------------------------------------------------------------------
    def _remember(self, ids: list[int], cache: DynamicCache, mask: torch.Tensor, row: int) -> None:
        """Store row `row`'s keys/values (its unmasked columns, which hold exactly `ids`) in the prefix cache."""
        if self.prefix_cache is None:
            return
        columns = mask[row].nonzero().squeeze(1)
        if len(columns) != len(ids):  # never store keys that do not match their tokens
            return
        self.prefix_cache.store(ids, [(layer.keys[row].index_select(1, columns),
                                       layer.values[row].index_select(1, columns)) for layer in cache.layers])

    def _merge(self, slots: list[Slot], cache: DynamicCache, mask: torch.Tensor) -> None:
        if self.cache is None:
            self.slots, self.cache, self.mask = list(slots), cache, mask
            return
        old_len, new_len = self.mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        self.mask = torch.cat([_left_pad(self.mask, width, dim=1), _left_pad(mask, width, dim=1)])
        self.slots.extend(slots)

    def _drop(self, keep: list[int]) -> None:
        """Keep only rows `keep`, then cut the leading columns that no remaining row uses."""
        if not keep:
            self.slots, self.cache, self.mask = [], None, None
            return
        if len(keep) < len(self.slots):
            index = torch.tensor(keep, device=self.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask[index]
            self.slots = [self.slots[i] for i in keep]
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start > 0:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]
            self.mask = self.mask[:, start:]

    # -- decoding ----------------------------------------------------------------------------------------------
    def prune(self) -> None:
        """Drop the rows that have finished (end of turn, length, or stopped by the engine). Each leaves its whole
        sequence in the prefix cache, for the conversation's next turn."""
        keep = [i for i, slot in enumerate(self.slots) if slot.finish_reason is None]
        if len(keep) < len(self.slots):
            for row, slot in enumerate(self.slots):
                if slot.finish_reason is not None and slot.generated:
                    # the cache holds every token but the last sampled one (`pending`)
                    self._remember(slot.prompt_ids + slot.generated[:-1], self.cache, self.mask, row)
            self._drop(keep)

    def step(self) -> None:
        """Decode one token for every unfinished row, in one forward pass."""
        self.prune()
        if not self.slots:
            return
        pending = torch.tensor([[s.pending] for s in self.slots], dtype=torch.long, device=self.device)
        positions = self.mask.sum(dim=1, keepdim=True)  # each row's real length = the new token's position
        self.mask = torch.cat([self.mask, torch.ones_like(pending)], dim=1)
        out = self.model(input_ids=pending, attention_mask=self.mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=True)
        for slot, token in zip(self.slots, self._choose(out.logits[:, -1], self.slots), strict=True):
            self._accept(slot, token)

    def reset(self) -> None:
        """Forget every row (after an error in a batched step; the engine reports it to each request)."""
        self._drop([])


def _stack_past(reused: list[tuple[int, LayerKV]], past: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the reused prefixes of all rows as one left-padded [rows, kv_heads, past, head_dim] pair (rows
    without a reused prefix are all padding)."""
    template = next(kv for length, kv in reused if length)
    layers = []
    for layer, (k0, v0) in enumerate(template):
        keys, values = [], []
        for length, kv in reused:
            k, v = kv[layer] if length else (k0[:, :0], v0[:, :0])
            keys.append(_left_pad(k.unsqueeze(0), past))
            values.append(_left_pad(v.unsqueeze(0), past))
        layers.append((torch.cat(keys), torch.cat(values)))
    return layers


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """Pad `t` with zeros on the left of `dim` to `width` (keys/values: [batch, heads, length, head_dim])."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)
