"""Prefix caching: keep the attention keys/values of recent prompts so that a new prompt starting the same way
skips recomputing that part (vLLM calls it automatic prefix caching; llama.cpp, its prompt cache).

A token's keys and values depend only on the tokens before it, so the KV of the first L tokens of any earlier
sequence is exactly what a new sequence sharing those L tokens needs. Two prefixes matter in a chat app:
- the chat template's system prompt, shared by every conversation (SmolLM2's default is 21 of a short prompt's
  36 tokens);
- the conversation so far: turn N+1's prompt is turn N's prompt plus the answer, so a long chat no longer pays for
  its whole history again at every turn.

Entries are whole sequences; a lookup finds the longest common prefix with any entry, so "system prompt + user A"
serves "system prompt + user B" for the shared part. Entries are bounded by a byte budget, least recently used
first out.

    cache = PrefixCache(max_bytes=64 << 20)
    cache.store([1, 2, 3, 4], kv)
    length, kv = cache.lookup([1, 2, 3, 9, 9])              # length == 3
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# One (keys, values) pair per layer, each [kv_heads, length, head_dim].
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class PrefixCacheStats:
    lookups: int = 0
    hits: int = 0
    tokens_reused: int = 0
    tokens_looked_up: int = 0

    @property
    def reused_share(self) -> float:
        """The share of all prompt tokens looked up that came from the cache."""
        return self.tokens_reused / self.tokens_looked_up if self.tokens_looked_up else 0.0


class PrefixCache:
    """Keys/values of recent token sequences, reused for any new sequence that starts the same way. Only the
    engine's worker thread uses it, so it takes no lock."""

    def __init__(self, max_bytes: int, min_tokens: int = 4) -> None:
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens  # shorter matches are not worth the copy
        self._entries: OrderedDict[tuple[int, ...], LayerKV] = OrderedDict()  # oldest use first
        self.bytes = 0
        self.stats = PrefixCacheStats()

    @staticmethod
    def _size(kv: LayerKV) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[int]) -> tuple[int, LayerKV]:
        """(L, KV of ids[:L]) for the longest cached prefix, never the whole of `ids` (its last token must still
        run through the model to give the next token's logits); (0, []) when nothing useful is cached."""
        self.stats.lookups += 1
        self.stats.tokens_looked_up += len(ids)
        ids = tuple(ids)
        best, best_key = 0, None
        for key in self._entries:
            common = common_prefix_length(key, ids)
            if common > best:
                best, best_key = common, key
        best = min(best, len(ids) - 1)
        if best_key is None or best < self.min_tokens:
            return 0, []
        self._entries.move_to_end(best_key)
        self.stats.hits += 1
        self.stats.tokens_reused += best
        return best, [(k[:, :best], v[:, :best]) for k, v in self._entries[best_key]]

    def store(self, ids: Sequence[int], kv: LayerKV) -> None:
        """Remember the KV of `ids` (a copy is the caller's business: the tensors are kept as given). Entries that
        are prefixes of `ids` are dropped, since this one serves every lookup they would."""
        key = tuple(ids)
        if len(key) < self.min_tokens or self.max_bytes <= 0:
            return
        size = self._size(kv)
        if size > self.max_bytes:
            return
        for other in [k for k in self._entries if len(k) <= len(key) and key[:len(k)] == k]:
            self.bytes -= self._size(self._entries.pop(other))
        self._entries[key] = kv
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.bytes -= self._size(oldest)


def common_prefix_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the longest common prefix, by binary search over slice comparisons (each one runs in C): a few
    microseconds for thousands of tokens, where a Python loop over the tokens takes milliseconds."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low
