"""Fitting a conversation into the context: exact, and bounded by the context rather than by the history.

The reference is the plain algorithm (re-encode the whole conversation after each dropped turn), which is exact but
quadratic; the builder must give the same ids and the same count of dropped messages, for both tokenizer families.
"""

from __future__ import annotations

import random

import pytest

from core.errors import InvalidInputError
from core.text.messages import check_history, newest_within, normalize_messages
from core.text.prompt import PromptBuilder

WORDS = ["the", "cat", "sat", "on", "a", "mat", "with", "🎵", "鸟", "<|im_end|>", "<|end|>", "code", "`x<y`",
         "and\nnewlines", "", "", "spaces"]


def reference_build(builder: PromptBuilder, message: str, history: list, system_prompt: str, max_new_tokens: int,
                    context_length: int):
    """Drop the oldest turn (a user message and its replies) until the prompt fits, re-encoding everything."""
    turns = normalize_messages(history)
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    if turns and turns[0]["role"] == "system":
        system = system or [turns[0]]
        turns = turns[1:]
    dropped = 0
    while True:
        prompt = builder.encode(system + turns + [{"role": "user", "content": message}])
        if len(prompt.ids) <= context_length - max_new_tokens:
            prompt.dropped_turns = dropped
            return prompt
        cut = 1
        while cut < len(turns) and turns[cut]["role"] != "user":
            cut += 1
        dropped += cut
        turns = turns[cut:]


def random_history(rng: random.Random) -> list[dict[str, str]]:
    history = []
    for _ in range(rng.randint(0, 40)):
        role = rng.choice(["user", "assistant", "user", "assistant", "system"])
        history.append({"role": role, "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 30)))})
    return history


class CountingBuilder(PromptBuilder):
    """Counts the messages it renders and encodes: the work of fitting, without a clock."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        self.messages_encoded = 0

    def encode(self, messages, add_generation_prompt=True):
        self.messages_encoded += len(messages)
        return super().encode(messages, add_generation_prompt)


def chatter(turns: int) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi" if i % 2 == 0 else "hello"}
            for i in range(turns)]


@pytest.mark.parametrize("family", ["bundled", "phi3"])
def test_fitting_equals_the_plain_algorithm(family, request):
    tokenizer = request.getfixturevalue("bundled").tokenizer if family == "bundled" \
        else request.getfixturevalue("phi3_tokenizer")
    builder = PromptBuilder(tokenizer)
    rng = random.Random(7)
    for _ in range(30):
        history = random_history(rng)
        system_prompt = rng.choice(["", "Be brief."])
        context = rng.randint(150, 600)
        expected = reference_build(builder, "question?", history, system_prompt, 32, context)
        got = builder.build("question?", history, system_prompt, 32, context)
        assert got.ids == expected.ids
        assert got.dropped_turns == expected.dropped_turns


@pytest.mark.parametrize("turns", [10_000, 100_000])
def test_long_histories_keep_the_newest_turns_that_fit(bundled, turns):
    builder = CountingBuilder(bundled.tokenizer)
    prompt = builder.build("q", chatter(turns), "", 256, 8192)
    kept = turns - prompt.dropped_turns
    assert len(prompt.ids) <= 8192 - 256
    assert prompt.dropped_turns % 2 == 0 and kept > 100
    # the next older turn would not have fitted: the cut is the best one
    longer = builder.encode([*normalize_messages(chatter(turns)[-kept - 2:]), {"role": "user", "content": "q"}])
    assert len(longer.ids) > 8192 - 256


def test_the_work_of_fitting_does_not_grow_with_the_history(bundled):
    """Only the newest messages that the context can hold (and a few more) are ever rendered: the same number for
    10,000 and for 100,000 turns."""
    counts = []
    for turns in (10_000, 100_000):
        builder = CountingBuilder(bundled.tokenizer)
        builder.build("q", chatter(turns), "", 256, 8192)
        counts.append(builder.messages_encoded)
    assert counts[0] == counts[1]
    assert counts[0] < 10 * 8192 / 5  # a few passes over the window a context of 8,192 tokens can hold


def test_history_bounds_are_checked_before_tokenizing():
    messages = normalize_messages(chatter(6))
    check_history(messages, max_messages=6, max_chars=100)
    with pytest.raises(InvalidInputError, match="has 6 messages; the limit is 5"):
        check_history(messages, max_messages=5, max_chars=100)
    with pytest.raises(InvalidInputError, match="more than 10 characters"):
        check_history(messages, max_messages=6, max_chars=10)
    with pytest.raises(InvalidInputError, match="history item 0 contains unpaired surrogate"):
        check_history([{"role": "user", "content": "\ud800"}], max_messages=6, max_chars=100)


def test_the_page_sends_only_the_newest_messages_within_the_bounds():
    history = chatter(10)
    assert newest_within(history, 4, 1000) == history[-4:]
    assert newest_within(history, 100, 7) == history[-2:]  # "hi" + "hello" = 7 characters


@pytest.mark.parametrize(("history", "message"), [
    ("not a list", "history must be a list of messages"),
    ([1, 2], "history item 0 is not a message"),
    ([{"content": "x"}], "history item 0 has no role"),
    ([{"role": "robot", "content": "x"}], "history item 0 has role 'robot'"),
    ([{"role": "user", "content": 5}], "history item 0's content must be text"),
    ([{"role": "user", "content": [{"type": "text", "text": 7}]}], "history item 0's content must be text"),
])
def test_malformed_histories_are_named(history, message):
    with pytest.raises(InvalidInputError, match=message):
        normalize_messages(history)
