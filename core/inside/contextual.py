"""Contextual embeddings: the same word in two sentences, followed through every layer.

Layer 0 is the word's static embedding row, identical in both sentences when it is the same token (cosine 1.0); each
layer then mixes in its sentence, and the cosine between the two occurrences says how far context has pulled them
apart. The cosines are taken on the residual stream before any norm, so every layer is measured in the same space.
A word of several tokens is followed through its last token, the one that has read the whole word.

Nearest tokens are cosine neighbours among the input embedding rows (the Embeddings tab's space and index) of the
hidden state after the model's final norm: the residual stream grows a few very large dimensions that every token
shares, and the final norm's gain is how the model itself discounts them; raw, the middle layers' neighbours would be
the same handful of odd tokens for any word.

    r = contextual(engine, index, "I sat on the river bank.", "bank", "I opened a bank account.", "bank")
    [round(x["cosine"], 2) for x in r["layers"]][:3]
    # [1.0, 0.94, 0.86]
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any, TypedDict

import numpy as np
import torch

from core import checks
from core.embeddings.index import VocabIndex
from core.engine.base import Engine
from core.errors import InvalidInputError
from core.inside.anatomy import anatomy
from core.inside.forward import Step, residual_stream
from core.model.loading import LoadedModel
from core.text.token_strings import TokenStrings, token_strings
from core.work.progress import Progress

MAX_SENTENCE_CHARS = 2_000
MAX_WORD_CHARS = 100
NEAREST_K = 5


class TokenRef(TypedDict):
    index: int  # its position in the text's tokens
    id: int
    piece: str
    text: str


class Occurrence(TypedDict):
    sentence: str
    word: str  # as it stands in the sentence
    start: int  # its character span in the sentence
    end: int
    word_tokens: list[TokenRef]  # every token the word touches
    taken: TokenRef  # the one followed: the word's last token
    sentence_tokens: int


class Neighbour(TypedDict):
    id: int
    piece: str
    text: str
    score: float


class LayerRow(TypedDict):
    layer: int  # 0 = the input embedding, then each decoder layer's output
    cosine: float
    norm_a: float
    norm_b: float
    nearest_a: list[Neighbour]
    nearest_b: list[Neighbour]


class Contextual(TypedDict):
    """The answer of /contextual."""

    a: Occurrence
    b: Occurrence
    same_token: bool
    layers: list[LayerRow]
    note: str


def token_ref(strings: TokenStrings, ids: list[int], index: int) -> TokenRef:
    return TokenRef(index=index, id=ids[index], piece=strings.piece(ids[index]), text=strings.text(ids[index]))


# Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Myanmar, Khmer): a word there sits
# inside a run of letters, so only letters of the other scripts make a match part of a longer word.
_UNSPACED = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_LETTER = rf"[^\W{_UNSPACED}]"  # a word character of a script that spaces its words


def _whole(word: str) -> str:
    """A pattern for `word` not glued to letters around it: "ban" does not match in "bank", "." matches anywhere."""
    left = rf"(?<!{_LETTER})" if re.match(_LETTER, word[0]) else ""
    right = rf"(?!{_LETTER})" if re.match(_LETTER, word[-1]) else ""
    return left + re.escape(word) + right


def find_word(sentence: str, word: Any, which: str) -> tuple[int, int]:
    """The character span of `word` in `sentence`: its first whole-word occurrence (exact case, else any case).

    A word found only inside a longer one ("ban" in "bank") is refused, naming the longer word: following that
    word's token would answer about a word the caller did not ask for. InvalidInputError when it does not occur.
    """
    word = checks.text(word, f"The word for sentence {which}", MAX_WORD_CHARS, required=True,
                       what=f"Type the word to follow in sentence {which}.").strip()
    for flags in (0, re.IGNORECASE):
        match = re.search(_whole(word), sentence, flags)
        if match:
            return match.start(), match.end()
    inside = re.search(rf"{_LETTER}*{re.escape(word)}{_LETTER}*", sentence, re.IGNORECASE)
    if inside:
        raise InvalidInputError(f"{checks.quote(word)} is not a whole word in sentence {which}: it occurs only inside "
                                f"{checks.quote(inside.group())}. Type the whole word to follow it.")
    raise InvalidInputError(f"{checks.quote(word)} does not occur in sentence {which} ({checks.quote(sentence)}). "
                            "Pick a word from it.")


def locate(loaded: LoadedModel, sentence: Any, word: Any, which: str) -> tuple[list[int], Occurrence]:
    """Tokenize `sentence` and find the tokens of `word` in it; the last of them is the one followed."""
    sentence = checks.text(sentence, f"Sentence {which}", MAX_SENTENCE_CHARS, required=True,
                           what=f"Sentence {which} is empty: type a sentence.")
    start, end = find_word(sentence, word, which)
    encoded = loaded.tokenizer(sentence, return_offsets_mapping=True)
    ids = [int(i) for i in encoded["input_ids"]]
    if len(ids) > loaded.context_length:
        raise InvalidInputError(f"Sentence {which} is {len(ids):,} tokens; the model reads at most "
                                f"{loaded.context_length:,}.")
    touched = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > start]
    if not touched:
        raise InvalidInputError(f"{checks.quote(sentence[start:end])} has no token of its own in sentence {which}.")
    strings = token_strings(loaded.tokenizer)
    occurrence = Occurrence(sentence=sentence, word=sentence[start:end], start=start, end=end,
                            word_tokens=[token_ref(strings, ids, i) for i in touched],
                            taken=token_ref(strings, ids, touched[-1]), sentence_tokens=len(ids))
    return ids, occurrence


def _compute(loaded: LoadedModel, rows: list[list[int]], positions: list[int]) -> Generator[Step, None, dict]:
    """On the model's side, both sentences in one forward pass (each cut after its word: later tokens cannot change
    it): per layer the cosine and norms of the two hidden states, and each one after the final norm, unit length."""
    parts = anatomy(loaded.model)
    cut = [row[:p + 1] for row, p in zip(rows, positions, strict=True)]
    states = yield from residual_stream(loaded.model, parts, cut, [range(p, p + 1) for p in positions])
    a, b = (s[:, 0].float() for s in states)  # [layers + 1, hidden]
    unit = [torch.nn.functional.normalize(parts.final_norm(s[:, 0]).float(), dim=-1).cpu().numpy() for s in states]
    return {"cosine": torch.nn.functional.cosine_similarity(a, b, dim=-1).tolist(), "norm_a": a.norm(dim=-1).tolist(),
            "norm_b": b.norm(dim=-1).tolist(), "unit_a": unit[0], "unit_b": unit[1]}


def _nearest(index: VocabIndex, unit: np.ndarray, k: int) -> list[list[Neighbour]]:
    scores, ids = index.search(np.ascontiguousarray(unit, dtype=np.float32), k, "cosine")

    def neighbour(token_id: int, score: float) -> Neighbour:
        token = index.token(int(token_id))
        return Neighbour(id=token.id, piece=token.piece, text=token.text, score=float(score))

    return [[neighbour(i, s) for s, i in zip(row_scores, row_ids, strict=True)]
            for row_scores, row_ids in zip(scores, ids, strict=True)]


def contextual(engine: Engine, index: VocabIndex, sentence_a: Any, word_a: Any, sentence_b: Any, word_b: Any,
               k: int = NEAREST_K, progress: Progress | None = None) -> Contextual:
    """Per layer: the cosine between the word's two occurrences, and each one's nearest vocabulary tokens."""
    ids_a, a = locate(engine.loaded, sentence_a, word_a, "A")
    ids_b, b = locate(engine.loaded, sentence_b, word_b, "B")
    raw = engine.inspect(_compute, [ids_a, ids_b], [a["taken"]["index"], b["taken"]["index"]], progress=progress)
    near_a, near_b = _nearest(index, raw["unit_a"], k), _nearest(index, raw["unit_b"], k)
    layers = [LayerRow(layer=layer, cosine=cosine, norm_a=raw["norm_a"][layer], norm_b=raw["norm_b"][layer],
                       nearest_a=near_a[layer], nearest_b=near_b[layer]) for layer, cosine in enumerate(raw["cosine"])]
    same = a["taken"]["id"] == b["taken"]["id"]
    note = "" if same else (f"The two occurrences are different tokens ({a['taken']['piece']!r} and "
                            f"{b['taken']['piece']!r}), so they differ already at layer 0.")
    return Contextual(a=a, b=b, same_token=same, layers=layers, note=note)
