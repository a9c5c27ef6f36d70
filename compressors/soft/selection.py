"""Which segments a question reads raw: compllm's question-aware rate allocation.

A small model reads exact values poorly from compressed vectors, but the few segments that hold an answer are cheap
to keep whole: with the rest compressed at 4x, a third of the document can stay as its own tokens in the prompt
budget of 2x. Compressed segments stay question-independent, so the content-hash cache still serves every question
and job; only the choice of raw segments depends on the question.

Windows of two neighbouring segments are scored as rag scores a passage (memory/rag.py): the embedder's cosine
to the question plus `lexical_weight` times the IDF-weighted share of the question's words it holds
(engines/lexical.py); a segment takes the better of its two windows. Tens of tokens alone are a fragment of a
sentence, and a fact cut by a segment boundary is whole in one window, so both its halves score high. The
windows' vectors are kept per document in the process, so a later question embeds only itself. The embedder runs
in bfloat16 where the device has bf16 arithmetic (`auto`): a cold request embeds twice the document's tokens
before anything else, and bf16 about halves that on such CPUs (cosine to the float32 vectors >= 0.998), while
rag's index keeps float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from engines.embedder import get_embedder
from engines.lexical import LexicalScorer

DTYPE = "auto"


@functools.lru_cache(maxsize=16)
def window_vectors(embedder: str, windows: tuple[str, ...]) -> np.ndarray:
    return get_embedder(embedder, DTYPE).embed(windows)


def segment_scores(
    texts: Sequence[str], questions: Sequence[str], embedder: str, lexical_weight: float
) -> list[list[float]]:
    """Per question, per segment: the better score of the two windows (the segment and a neighbour) holding it."""
    windows = tuple("".join(texts[i : i + 2]) for i in range(max(1, len(texts) - 1)))
    dense = get_embedder(embedder, DTYPE).embed(list(questions)) @ window_vectors(embedder, windows).T
    lexical = LexicalScorer(windows)
    out = []
    for row, q in zip(dense, questions, strict=True):
        scored = [float(d) + lexical_weight * w for d, w in zip(row, lexical.scores(q), strict=True)]
        # window i holds segments i and i + 1
        out.append([max(scored[max(0, i - 1) : i + 1]) for i in range(len(texts))])
    return out


def raw_segments(scores: Sequence[float], sizes: Sequence[int], rate: int, segment_rate: int) -> set[int]:
    """The best-scored segments that fit, read as tokens, while every other one is compressed at `segment_rate`,
    in no more vectors than the whole document compressed at `rate` (segment by segment, as compllm counts)."""
    budget = sum(math.ceil(n / rate) - math.ceil(n / segment_rate) for n in sizes)
    raw: set[int] = set()
    for i in sorted(range(len(sizes)), key=lambda i: (-scores[i], i)):
        extra = sizes[i] - math.ceil(sizes[i] / segment_rate)
        if extra <= budget:
            raw.add(i)
            budget -= extra
    return raw
