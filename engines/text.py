"""Text units every part cuts text by: where a sentence ends, where sentences start, words, and planting.

Callers build their own boundaries from SENTENCE_END (a span splitter also cuts at line breaks, the segmenter at
paragraphs and list items), so that one definition of a sentence end holds everywhere. `plant` puts facts (needles)
into a text at a depth counted in its units (words_of's words or paragraphs_of's paragraphs), for the evaluation
tasks, the benchmarks, the tests and GemFilter's calibration alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

# A sentence ends at . ! or ? and the closing quotes or brackets right after it.
SENTENCE_END = r"[.!?][\"')\]]*"
_BREAK = re.compile(SENTENCE_END + r"\s+")
_ENDS = re.compile(SENTENCE_END + "$")


def sentence_starts(text: str) -> list[int]:
    """Offsets where sentences start: 0, and after every sentence end that white space follows."""
    return [0] + [m.end() for m in _BREAK.finditer(text)]


@cache
def words_of(text: str) -> tuple[str, ...]:
    """Words with their trailing whitespace: joining them gives the text back."""
    return tuple(re.findall(r"\S+\s*", text))


def paragraphs_of(text: str) -> tuple[str, ...]:
    """Paragraphs, each with the blank line after it (`plant`'s paragraph boundaries): joining them gives the text
    back."""
    parts = text.split("\n\n")
    return (*(p + "\n\n" for p in parts[:-1]), parts[-1])


def ends_sentence(word: str) -> bool:
    return bool(_ENDS.search(word.rstrip()))


def plant(words: Sequence[str], needles: Sequence[tuple[float, str]], paragraphs: bool = False) -> str:
    """Join `words` and put each needle at the sentence boundary nearest its depth (0 = start, 1 = end, counted in
    the units given: words_of's words, or paragraphs_of's paragraphs), or with `paragraphs`, as a paragraph of its own
    at the nearest paragraph break (a unit ending in a blank line).

    Needles keep their given order when they share a boundary, so chains (variable tracking, bAbI facts) stay
    in order if their depths are sorted.
    """
    n = len(words)
    ends = (lambda w: w.endswith("\n\n")) if paragraphs else ends_sentence
    boundaries = [0] + [i + 1 for i, w in enumerate(words) if ends(w)] + [n]
    at: dict[int, list[str]] = {}
    last = 0
    for depth, needle in needles:
        target = depth * n
        # Never before an earlier needle: ordered needles stay ordered.
        b = min((b for b in boundaries if b >= last), key=lambda b: abs(b - target), default=n)
        at.setdefault(b, []).append(needle)
        last = b
    parts: list[str] = []
    for i in range(n + 1):
        for needle in at.get(i, []):
            if paragraphs:
                if parts and not parts[-1].endswith("\n\n"):
                    parts.append("\n\n" if not parts[-1].endswith("\n") else "\n")
                parts.append(needle + "\n\n")
                continue
            if parts and not parts[-1][-1:].isspace():
                parts.append(" ")
            parts.append(needle + " ")
        if i < n:
            parts.append(words[i])
    return "".join(parts).strip()
