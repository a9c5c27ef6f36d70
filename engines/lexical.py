"""Lexical match of a question against passages: the IDF-weighted share of the question's words a passage holds.

Dense embeddings of a 128-word-piece passage blur rare keys (a made-up name, a code, a number): two passages
about nothing in particular can score as close to the question as the one that names its key. Exact word
overlap, weighted by how rare each word is in the document (BM25's IDF), separates them; the dense score still
ranks passages that share no word with the question. The score is in [0, 1] (1: every question word that occurs
anywhere in the document occurs in the passage), so it adds to a cosine on a fixed scale.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

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


class BM25Scorer:
    """Okapi BM25 over one document's passages (the `bm25s` library, Snowball-stemmed English, stopwords out).

    Natural questions paraphrase ("married" for "marries", "voyages" for "voyage"): stemming matches the forms that
    the plain word overlap above misses, and BM25's length normalisation keeps long passages from winning on bulk.
    Scores are divided by the question's best passage score, so they lie in [0, 1] like `LexicalScorer.scores` and
    add to a cosine on a fixed scale. `terms` and `df` are the plain-word view that coverage checks still use.
    """

    def __init__(self, passages: Sequence[str]) -> None:
        import Stemmer

        bm25s = _bm25s_without_numba()

        self.terms = [words(p) for p in passages]
        self.df = Counter(t for terms in self.terms for t in terms)
        self.n = len(passages)
        self._stemmer = Stemmer.Stemmer("english")
        self._tokenize = bm25s.tokenize
        self._index = bm25s.BM25()
        tokens = bm25s.tokenize(list(passages), stopwords="en", stemmer=self._stemmer, show_progress=False)
        self._index.index(tokens, show_progress=False)

    def scores(self, question: str) -> list[float]:
        tokens = self._tokenize(
            [question], stopwords="en", stemmer=self._stemmer, show_progress=False, return_ids=False
        )[0]
        known = [t for t in tokens if t in self._index.vocab_dict]
        if not known:
            return [0.0] * self.n
        raw = self._index.get_scores(known)
        best = float(raw.max())
        return (raw / best).tolist() if best > 0 else [0.0] * self.n


def _bm25s_without_numba() -> Any:
    """bm25s, imported with numba hidden: bm25s imports numba where it can, and numba's llvmlite leaves objects in
    sys.modules that vLLM's kernel registration cannot scan (an in-process vLLM engine started after a BM25 index
    failed to start). BM25Scorer scores with bm25s's numpy backend, which needs no numba."""
    if "bm25s" in sys.modules or "numba" in sys.modules:
        import bm25s

        return bm25s
    sys.modules["numba"] = None  # type: ignore[assignment]  # `import numba` raises ImportError
    try:
        import bm25s
    finally:
        del sys.modules["numba"]
    # bm25s sets its logger to DEBUG on import, which prints every index build under any root handler (the CLI's
    # stderr): let it follow the application's level instead.
    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s
