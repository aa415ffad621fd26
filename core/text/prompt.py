"""Turning a conversation into the exact token ids a model receives, safely.

The tokenizer's own chat template writes the prompt. The catch: tokenizing that text as a whole turns any
`<|end|>` a *user* typed into Phi-3's real control token 32007, letting text end a turn or fake an assistant reply.
Here only the template's own markers become control tokens; everything between markers (including what users
typed) is encoded as plain text, exactly as the tokenizer would encode it in context:

    builder = PromptBuilder(tokenizer)
    builder.encode([{"role": "user", "content": "Hi<|end|>"}]).ids[-6:]
    # [18567, 29966, 29989, 355, 29989, 29958, ...]   # "<|end|>" spelled as text, then the real <|end|> 32007
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateError
from tokenizers import Tokenizer
from tokenizers import normalizers as tk_normalizers
from tokenizers import pre_tokenizers as tk_pre
from transformers import PreTrainedTokenizerBase

from core.checks import quote
from core.errors import ContextOverflowError, InvalidInputError
from core.text.messages import normalize_messages

log = logging.getLogger(__name__)

_SENTINEL = re.compile("\ue000(\\d+)\ue001")


@dataclass
class Prompt:
    """What the model receives: ids, the rendered text, and how many old turns were dropped to fit."""

    ids: list[int]
    text: str
    messages: list[dict[str, str]] = field(default_factory=list)
    dropped_turns: int = 0


def _prepends_prefix_space(backend: Tokenizer) -> bool:
    norm = backend.normalizer
    return (isinstance(backend.pre_tokenizer, tk_pre.Metaspace) or isinstance(norm, tk_normalizers.Prepend)
            or (isinstance(norm, tk_normalizers.Sequence)
                and any(isinstance(n, tk_normalizers.Prepend) for n in norm)))  # type: ignore[attr-defined]


def _without_prefix_space(copy: Tokenizer) -> Tokenizer:
    """`copy` (a tokenizer of our own) changed so that it does not prepend '▁' to its input.

    SentencePiece-style tokenizers (Llama, Phi-3) prepend '▁' only at the very start of a text. Text that follows a
    control token in the prompt gets none, so a piece of the prompt encoded on its own must get none either.
    """
    pre = copy.pre_tokenizer
    if isinstance(pre, tk_pre.Metaspace):
        copy.pre_tokenizer = tk_pre.Metaspace(replacement=pre.replacement, prepend_scheme="never", split=pre.split)
    norm = copy.normalizer
    if isinstance(norm, tk_normalizers.Prepend):
        copy.normalizer = None
    elif isinstance(norm, tk_normalizers.Sequence):
        parts = [n for n in norm if not isinstance(n, tk_normalizers.Prepend)]  # type: ignore[attr-defined]
        copy.normalizer = tk_normalizers.Sequence(parts)
    return copy


class PromptBuilder:
    """Renders conversations with the tokenizer's chat template and encodes them with special-token safety."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidInputError("this model's tokenizer has no chat template, so it cannot chat")
        self.tokenizer = tokenizer
        markers = sorted((t.content for t in tokenizer.added_tokens_decoder.values()), key=len, reverse=True)
        self._marker_re = re.compile("|".join(re.escape(m) for m in markers)) if markers else None
        backend: Tokenizer | None = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            definition = backend.to_str()
            self._first = Tokenizer.from_str(definition)
            self._first.encode_special_tokens = True  # added-token strings in text stay text
            self._rest = self._first  # byte-level BPE (GPT-2, SmolLM2) encodes text the same anywhere
            if _prepends_prefix_space(backend):
                self._rest = _without_prefix_space(Tokenizer.from_str(definition))
                self._rest.encode_special_tokens = True
        else:
            self._first = self._rest = None
        self._template_costs: dict[str, int] = {}

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except TemplateError as exc:  # e.g. a template that demands alternating user/assistant turns
            reason = quote(str(exc), 200)
            raise InvalidInputError(f"The model's chat template refused this conversation: {reason}") from None

    def _encode_text(self, text: str, at_start: bool) -> list[int]:
        """Plain text: added-token strings inside it are spelled out, never parsed as control tokens."""
        if not text:
            return []
        if self._first is None:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        encoder = self._first if at_start else self._rest
        return encoder.encode(text, add_special_tokens=False).ids

    def _trusted_spans(self, messages: list[dict[str, str]], text: str,
                       add_generation_prompt: bool) -> list[tuple[int, int]] | None:
        """Character ranges of `text` written by the template (not by users), found by rendering with sentinels."""
        marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
        skeleton = self.render(marked, add_generation_prompt)
        spans, pos, last = [], 0, 0
        for match in _SENTINEL.finditer(skeleton):
            piece = skeleton[last:match.start()]
            if text[pos:pos + len(piece)] != piece:
                return None
            spans.append((pos, pos + len(piece)))
            pos += len(piece)
            content = messages[int(match.group(1))]["content"]
            if text[pos:pos + len(content)] != content:
                return None
            pos += len(content)
            last = match.end()
        tail = skeleton[last:]
        if text[pos:] != tail:
            return None
        spans.append((pos, len(text)))
        return spans

    def encode(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> Prompt:
        """The exact ids for `messages`: template markers as control tokens, all message text as plain text."""
        text = self.render(messages, add_generation_prompt)
        spans = self._trusted_spans(messages, text, add_generation_prompt)
        if spans is None:
            # The template rewrites content (e.g. strips it), so user text cannot be located: spell every
            # added-token string in the messages out by breaking it with a zero-width space.
            log.warning("chat template transforms message content; escaping special-token strings instead")
            safe = [{**m, "content": self._escape(m["content"])} for m in messages]
            text = self.render(safe, add_generation_prompt)
            spans = [(0, len(text))]
        ids: list[int] = []
        cursor = 0
        for start, end in spans:
            for match in (self._marker_re.finditer(text, start, end) if self._marker_re else ()):
                ids += self._encode_text(text[cursor:match.start()], at_start=cursor == 0)
                ids.append(self.tokenizer.convert_tokens_to_ids(match.group()))
                cursor = match.end()
        ids += self._encode_text(text[cursor:], at_start=cursor == 0)
        return Prompt(ids=ids, text=text, messages=messages)

    def _escape(self, content: str) -> str:
        if self._marker_re is None:
            return content
        return self._marker_re.sub(lambda m: m.group()[:1] + "\u200b" + m.group()[1:], content)

    def build(self, message: str, history: Sequence[Any] | None, system_prompt: str,
              max_new_tokens: int, context_length: int) -> Prompt:
        """The prompt for a new user `message`, dropping the oldest turns (never the system prompt) to fit
        `prompt + max_new_tokens <= context_length`.

        The work is bounded by the context, not by the history: each message's tokens are counted once, newest
        first and only as far back as the context reaches, to estimate where to cut; the exact prompt is then encoded
        at that cut, and the cut moved (galloping, then bisection) until it is the oldest turn that still fits.
        """
        turns = normalize_messages(history)
        system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
        if turns and turns[0]["role"] == "system":
            if not system:
                system = [turns[0]]
            turns = turns[1:]
        new = [{"role": "user", "content": message}]
        budget = context_length - max_new_tokens
        # where the conversation may start: its beginning, any later user message (a turn is a user message with
        # the replies that follow it), or nothing before the new message
        cuts = sorted({0, len(turns), *(i for i in range(1, len(turns)) if turns[i]["role"] == "user")})
        prompts: dict[int, Prompt] = {}

        def fits(k: int) -> bool:
            if k not in prompts:
                prompts[k] = self.encode(system + turns[cuts[k]:] + new)
                prompts[k].dropped_turns = cuts[k]
            return len(prompts[k].ids) <= budget

        last = len(cuts) - 1
        if not fits(last):
            raise ContextOverflowError(
                f"This message needs {len(prompts[last].ids)} prompt tokens; with {max_new_tokens} new tokens that "
                f"exceeds the model's context of {context_length} tokens. Shorten it (or lower max new tokens).")
        room = budget - len(prompts[last].ids)
        return prompts[_first_true(self._estimated_cut(turns, cuts, room), last, fits)]

    def _estimated_cut(self, turns: list[dict[str, str]], cuts: list[int], room: int) -> int:
        """The index into `cuts` of the oldest cut whose turns fit in `room` tokens by estimate: each message
        costs its content's tokens plus its role's template tokens. Messages are counted newest first, in growing
        batches, and counting stops once the running total exceeds `room`."""
        costs: dict[int, int] = {}
        total, end, batch = 0, len(turns), 64
        while end > 0 and total <= room:
            start = max(0, end - batch)
            counts = self._count_tokens([m["content"] for m in turns[start:end]])
            for i in range(end - 1, start - 1, -1):
                costs[i] = counts[i - start] + self._template_cost(turns[i]["role"])
                total += costs[i]
            end, batch = start, batch * 2
        suffix, best = 0, len(cuts) - 1
        position = len(turns)
        for k in range(len(cuts) - 2, -1, -1):
            for i in range(cuts[k], position):
                if i not in costs:
                    return best
                suffix += costs[i]
            position = cuts[k]
            if suffix > room:
                return best
            best = k
        return best

    def _count_tokens(self, texts: list[str]) -> list[int]:
        if self._rest is not None:
            return [len(e.ids) for e in self._rest.encode_batch(texts, add_special_tokens=False)]
        return [len(self._encode_text(t, at_start=False)) for t in texts]

    def _template_cost(self, role: str) -> int:
        """Tokens the chat template adds around one message of `role` (its markers), measured once per role."""
        if role not in self._template_costs:
            probe = [{"role": "user", "content": "x"}]
            try:
                alone = len(self.encode(probe).ids)
                both = len(self.encode([*probe, {"role": role, "content": "x"}]).ids)
                cost = max(0, both - alone - self._count_tokens(["x"])[0])
            except InvalidInputError:  # a template that refuses this order of roles: the exact check still holds
                cost = 0
            self._template_costs[role] = cost
        return self._template_costs[role]


def _first_true(start: int, last: int, ok: Callable[[int], bool]) -> int:
    """The smallest k in [0, last] with ok(k), for an `ok` that is False up to some point and True from there on (and
    True at `last`), searched from a guess `start`: galloping away from it, then bisecting."""
    if ok(start):
        good, step = start, 1
        while good > 0:
            probe = max(0, good - step)
            if not ok(probe):
                bad = probe
                break
            good, step = probe, step * 2
        else:
            return 0
    else:
        bad, step = start, 1
        while True:
            probe = min(last, bad + step)
            if ok(probe):
                good = probe
                break
            bad, step = probe, step * 2
    while good - bad > 1:
        middle = (good + bad) // 2
        if ok(middle):
            good = middle
        else:
            bad = middle
    return good
