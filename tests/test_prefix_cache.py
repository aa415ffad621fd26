"""The prefix cache: prompts that start alike (the system prompt, the conversation so far) reuse stored keys/values,
and the model's answers do not change because of it."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from core.config import AppConfig, RequestLimits
from core.engine.local import ChatEngine
from core.engine.prefix_cache import PrefixCache, common_prefix_length
from core.engine.settings import GenerationSettings
from demo.chat_tab import stats_line
from tests.engines import chat_engine
from tests.streams import collect

GREEDY = GenerationSettings(temperature=0, max_new_tokens=24)


def fake_kv(length: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer [heads=1, length, head_dim=2], each position holding its own index (to check slicing)."""
    k = torch.arange(length, dtype=torch.float32).repeat_interleave(2).reshape(1, length, 2)
    return [(k.clone(), -k.clone()) for _ in range(layers)]


def test_lookup_uses_the_longest_common_prefix_but_never_the_last_token():
    cache = PrefixCache(max_bytes=1 << 20)
    cache.store([1, 2, 3, 4, 5, 6], fake_kv(6))
    cache.store([1, 2, 9, 9, 9, 9], fake_kv(6))
    length, kv = cache.lookup([1, 2, 3, 4, 7, 7])
    assert length == 4
    assert kv[0][0].shape == (1, 4, 2) and kv[0][0][0, :, 0].tolist() == [0, 1, 2, 3]
    assert cache.lookup([1, 2, 3, 4, 5, 6])[0] == 5, "the last prompt token must still be run for its logits"
    assert cache.lookup([7, 1, 2, 3, 4])[0] == 0
    assert cache.lookup([1, 2, 3])[0] == 0, "matches shorter than min_tokens are not worth a copy"
    assert (cache.stats.lookups, cache.stats.hits) == (4, 2)


def test_store_drops_covered_prefixes_and_evicts_the_least_recently_used():
    entry = PrefixCache._size(fake_kv(10))
    cache = PrefixCache(max_bytes=2 * entry)
    cache.store(list(range(10)), fake_kv(10))
    cache.store(list(range(12))[2:], fake_kv(10))
    assert len(cache) == 2
    cache.store(list(range(10)), fake_kv(10))  # the same key again: replaced, not duplicated
    assert len(cache) == 2 and cache.bytes == 2 * entry
    cache.lookup([*list(range(10)), 5])  # touches the first entry: the second is now the oldest
    cache.store([50 + i for i in range(10)], fake_kv(10))
    assert cache.lookup([*list(range(2, 12)), 0])[0] == 0, "the least recently used entry was evicted"
    assert cache.lookup([*list(range(10)), 5])[0] == 10
    longer = [*list(range(10)), 1, 2, 3, 4]
    cache.store(longer, fake_kv(14))
    assert all(len(key) != 10 for key in cache._entries), "a stored prefix of a new entry is redundant"


@pytest.fixture(scope="module", params=["torch", "onnx"])
def engines(request, bundled):
    limits = RequestLimits(max_queue=8)
    cached = chat_engine(request, request.param, bundled, limits)
    plain = chat_engine(request, request.param, bundled, limits, prefix_cache_mb=0)
    yield cached, plain
    cached.close()
    plain.close()


def test_the_system_prompt_is_cached_from_the_start(engines):
    cached, plain = engines
    stream = cached.chat("What is the capital of France?", [], "", GREEDY)
    answer = collect(stream)
    warm_up = cached.prompts.build("Hello", [], "", 1, 8192).ids  # what the engine prefilled at start
    opening = common_prefix_length(tuple(warm_up), tuple(stream.prompt.ids))  # template + default system prompt
    assert opening > 10 and stream.cached_tokens >= opening
    assert "reused from cache" in stats_line(stream.stats)
    assert plain.prefix_cache is None
    again = plain.chat("What is the capital of France?", [], "", GREEDY)
    assert collect(again) == answer and again.cached_tokens == 0


def test_next_turn_reuses_the_whole_conversation_and_answers_as_without_cache(engines):
    cached, plain = engines
    history: list[dict] = []
    for question in ["Name a large animal.", "How heavy is it?", "Where does it live?"]:
        with_cache = cached.chat(question, history, "", GREEDY)
        answer = collect(with_cache)
        assert answer == collect(plain.chat(question, history, "", GREEDY))
        if history:
            previous = cached.prompt(history[-2]["content"], history[:-2], "", GREEDY.max_new_tokens).ids
            assert with_cache.cached_tokens >= len(previous), "the previous turn was recomputed"
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_a_mixed_batch_of_cached_and_fresh_prompts_answers_as_alone(engines):
    cached, plain = engines
    requests = [("Tell me a fact about the sun.", ""), ("Tell me a fact about the moon.", "You are terse."),
                ("Count to five.", "You speak like a pirate.")]
    alone = [collect(plain.chat(q, [], system, GREEDY)) for q, system in requests]
    collect(cached.chat(requests[0][0], [], "", GREEDY))  # the first prompt is now cached whole
    streams = [cached.chat(q, [], system, GREEDY) for q, system in requests]  # admitted together
    assert [collect(s) for s in streams] == alone
    # the torch runner reuses all but the last prompt token; ONNX Runtime reads at least two (onnx_decoder.MIN_RUN)
    assert streams[0].cached_tokens == len(streams[0].prompt.ids) - (1 if cached.onnx is None else 2)
    assert streams[2].cached_tokens < streams[0].cached_tokens


def test_stored_keys_equal_a_fresh_forward_on_phi3(phi3_tiny):
    """The cache stores what the model would compute from scratch, for prompt and generated tokens alike
    (Phi-3's shape: 32 query heads of 96 dims, float32)."""
    engine = ChatEngine(phi3_tiny, RequestLimits(max_queue=2))
    try:
        stream = engine.chat("Hello there", [], "", GenerationSettings(temperature=0, max_new_tokens=6))
        collect(stream)
        ids = stream.prompt.ids + stream.token_ids[:-1]
        length, kv = engine.prefix_cache.lookup([*ids, 0])
        assert length == len(ids)
        with torch.inference_mode():
            fresh = DynamicCache()
            phi3_tiny.model(input_ids=torch.tensor([ids]), past_key_values=fresh, use_cache=True)
        for (keys, values), layer in zip(kv, fresh.layers, strict=True):
            torch.testing.assert_close(keys, layer.keys[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(values, layer.values[0], atol=1e-4, rtol=1e-4)
    finally:
        engine.close()


def test_prefix_cache_and_batch_size_are_configurable():
    assert AppConfig.from_args([]).prefix_cache_mb == 256
    assert AppConfig.from_args([]).max_batch == 0  # as many as fit
    assert AppConfig.from_args(["--max-batch", "4"]).max_batch == 4
    assert AppConfig.from_args(["--prefix-cache-mb", "0"]).prefix_cache_mb == 0
    assert AppConfig.from_args([], env={"TOKEN_LAB_PREFIX_CACHE_MB": "64"}).prefix_cache_mb == 64
    assert AppConfig.from_args([]).prefill_chunk == 256
    assert AppConfig.from_args(["--prefill-chunk", "0"]).prefill_chunk == 0
    assert AppConfig.from_args([], env={"TOKEN_LAB_PREFILL_CHUNK": "512"}).prefill_chunk == 512
