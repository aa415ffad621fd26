"""The standard word-vector benchmarks, read from the copies gensim ships as test data (gensim.test.utils.datapath),
and parsed exactly as gensim's evaluate_word_analogies and evaluate_word_pairs parse them:

- the Google analogy set (Mikolov et al. 2013, `questions-words.txt`): 19,544 questions `a b c d` ("a is to b as c
  is to d") in 14 sections, five semantic and nine syntactic (`gram1-…` to `gram9-…`);
- WordSim-353 and SimLex-999: word pairs with a human similarity score.

    sections = analogy_sections()
    sections[0].name, sections[0].questions[0]
    # ('capital-common-countries', ('Athens', 'Greece', 'Baghdad', 'Iraq'))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from core.errors import TokenLabError

ANALOGIES = "google_analogy"
WORDSIM = "wordsim353"
SIMLEX = "simlex999"
FILES = {ANALOGIES: "questions-words.txt", WORDSIM: "wordsim353.tsv", SIMLEX: "simlex999.txt"}
TITLES = {ANALOGIES: "Google analogies", WORDSIM: "WordSim-353", SIMLEX: "SimLex-999"}
PAIR_SETS = (WORDSIM, SIMLEX)

Question = tuple[str, str, str, str]


@dataclass(frozen=True)
class Section:
    """One section of the analogy set, e.g. `capital-common-countries`, with its questions in file order."""

    name: str
    questions: tuple[Question, ...]

    @property
    def semantic(self) -> bool:
        return not self.name.startswith("gram")


@dataclass(frozen=True)
class Pair:
    first: str
    second: str
    human: float


def data_path(benchmark: str) -> Path:
    """The benchmark's file inside the installed gensim (its test data)."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise TokenLabError("The benchmark files come with gensim, which is not installed here "
                            "(pip install gensim==4.4.0).") from None
    path = Path(datapath(FILES[benchmark]))
    if not path.is_file():
        raise TokenLabError(f"{path.name} is missing from the installed gensim ({path.parent}).")
    return path


def read_analogies(path: Path) -> list[Section]:
    """`: name` starts a section; a line that is not four words is skipped (gensim's rules)."""
    sections: list[tuple[str, list[Question]]] = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith(": "):
            sections.append((line.lstrip(": ").strip(), []))
            continue
        words = line.split()
        if len(words) != 4:
            continue
        if not sections:
            raise TokenLabError(f"{Path(path).name}: line {line_no} comes before any ': section' line.")
        sections[-1][1].append((words[0], words[1], words[2], words[3]))
    return [Section(name, tuple(questions)) for name, questions in sections]


def read_pairs(path: Path) -> list[Pair]:
    """`#` lines are comments; a line that is not word, word, number (tab-separated) is skipped (gensim's rules)."""
    pairs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        try:
            pairs.append(Pair(parts[0], parts[1], float(parts[2])))
        except ValueError:
            continue
    return pairs


@functools.cache
def analogy_sections() -> tuple[Section, ...]:
    return tuple(read_analogies(data_path(ANALOGIES)))


@functools.cache
def word_pairs(benchmark: str) -> tuple[Pair, ...]:
    return tuple(read_pairs(data_path(benchmark)))
