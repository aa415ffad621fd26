"""Published figures on the same benchmarks, shown beside the model's own so a reader sees where an LLM's input
embeddings stand against the word vectors textbooks cite. Each row names its source; only figures checked against
that source are listed (docs/evaluation.md lists the ones left out and why).

The protocols differ from ours in ways a reader must know: word vectors are searched over vocabularies of hundreds
of thousands of whole words, and accuracy counts only the questions whose words are all in that vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.embeddings.benchmarks import ANALOGIES, SIMLEX


@dataclass(frozen=True)
class Published:
    """One published result: analogy accuracies in percent ("semantic", "syntactic", "total") or a Spearman rho."""

    vectors: str  # what was evaluated
    benchmark: str  # a name from core.embeddings.benchmarks
    figures: dict[str, float]
    protocol: str  # how it was counted, where that differs from this app
    cite: str  # short, for a table cell
    source: str  # in full
    url: str


PUBLISHED: tuple[Published, ...] = (
    Published("GloVe, 300 dimensions, 42B tokens of Common Crawl", ANALOGIES,
              {"semantic": 81.9, "syntactic": 69.3, "total": 75.0},
              "the word nearest to b − a + c by cosine (3CosAdd), over GloVe's own vocabulary",
              "Pennington et al. 2014, Table 2",
              "Pennington, Socher & Manning (2014), GloVe: Global Vectors for Word Representation, EMNLP, Table 2",
              "https://nlp.stanford.edu/pubs/glove.pdf"),
    Published("word2vec GoogleNews vectors, 300 dimensions, about 100B words", ANALOGIES, {"total": 74.26},
              "gensim's former accuracy(): only the 30,000 most frequent words, so 7,614 questions asked",
              "gensim accuracy(), 2015",
              "gensim's Word2Vec.accuracy on GoogleNews-vectors-negative300.bin (a gist by iamaziz, 2015)",
              "https://gist.github.com/iamaziz/8d8d8c08c7eeda707b9e"),
    Published("word2vec skip-gram, 1B words of Wikipedia", SIMLEX, {"spearman": 0.37},
              "Spearman's rho of cosine against the human scores", "Hill et al. 2015",
              "Hill, Reichart & Korhonen (2015), SimLex-999 (its page's State-of-the-Art section)",
              "https://fh295.github.io/simlex.html"),
)
