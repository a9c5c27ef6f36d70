"""Lexical match of a question against passages: the IDF-weighted share of the question's words a passage holds.

Dense embeddings of a 128-word-piece passage blur rare keys (a made-up name, a code, a number): two passages
about nothing in particular can score as close to the question as the one that names its key. Exact word
overlap, weighted by how rare each word is in the document (BM25's IDF), separates them; the dense score still
ranks passages that share no word with the question. The score is in [0, 1] (1: every question word that occurs
anywhere in the document occurs in the passage), so it adds to a cosine on a fixed scale.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


def words(text: str) -> set[str]:
    """Lower-cased word tokens, a final plural -s dropped; a hyphenated or dotted name counts as its parts."""
    # The question asks for "the word" where the text says "the words": a crude plural fold, no stemmer needed.
    return {
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in _WORD.findall(text.lower())
    }


class LexicalScorer:
    """Document frequencies over one document's passages, then coverage scores for any number of questions."""

    def __init__(self, passages: Sequence[str]) -> None:
        self.terms = [words(p) for p in passages]
        self.df = Counter(t for terms in self.terms for t in terms)
        self.n = len(passages)

    def idf(self, term: str) -> float:
        df = self.df[term]
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))  # BM25's, never negative

    def scores(self, question: str) -> list[float]:
        """Per passage: the IDF mass of the question's words it holds over the mass of those the document holds."""
        weights = {t: self.idf(t) for t in words(question) if self.df[t]}
        total = sum(weights.values())
        if not total:
            return [0.0] * self.n
        return [sum(w for t, w in weights.items() if t in terms) / total for terms in self.terms]
