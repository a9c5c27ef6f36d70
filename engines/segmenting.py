"""Cutting a document into token-bounded segments at natural boundaries (paragraphs, then sentences, then words).

Shared by every strategy that reads a document piece by piece; offsets are characters of the document text,
so any segment can be shown back to a person as evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engines.base import Engine
from engines.text import SENTENCE_END

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?;:])\s+")
_WORD = re.compile(r"\s+")
# Sentence ends, paragraph breaks, and line breaks before a heading or list item (hard-wrapped lines are not units).
_BOUNDARY = re.compile(SENTENCE_END + r"\s+|\n\s*\n\s*|\n(?=\s*(?:#|[-*\u2022]\s|\d+[.)]\s))")


@dataclass(frozen=True)
class Segment:
    index: int
    start: int  # character offsets into the document text
    end: int
    text: str
    tokens: int


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentences and line breaks as character spans covering the text (a heading or list item is its own unit)."""
    cuts = [0, *(m.end() for m in _BOUNDARY.finditer(text)), len(text)]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def _pieces(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    spans, last = [], start
    for m in pattern.finditer(text, start, end):
        if m.start() > last:
            spans.append((last, m.start()))
        last = m.end()
    if last < end:
        spans.append((last, end))
    return spans


def _units(text: str, engine: Engine, max_tokens: int) -> list[tuple[int, int, int]]:
    """(start, end, tokens) pieces, each at most max_tokens, splitting finer only where needed."""
    out: list[tuple[int, int, int]] = []
    levels = [_PARAGRAPH, _SENTENCE, _WORD]

    def visit(start: int, end: int, level: int) -> None:
        n = engine.count_tokens(text[start:end])
        # A single word longer than a segment is kept whole: segments are thousands of tokens, words are not.
        if n <= max_tokens or level == len(levels):
            out.append((start, end, n))
            return
        for s, e in _pieces(text, start, end, levels[level]):
            visit(s, e, level + 1)

    visit(0, len(text), 0)
    return out


def split_segments(text: str, engine: Engine, max_tokens: int, overlap_units: int = 0) -> list[Segment]:
    """Greedy packing of natural units into segments of at most `max_tokens` tokens (approximately: joins may
    add a token or two, so callers keep a small margin)."""
    if max_tokens <= 0:
        raise ValueError(f"segment size must be positive, got {max_tokens}")
    units = _units(text, engine, max_tokens)
    segments: list[Segment] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and total + units[j][2] <= max_tokens:
            total += units[j][2]
            j += 1
        j = max(j, i + 1)
        start, end = units[i][0], units[j - 1][1]
        segments.append(Segment(len(segments), start, end, text[start:end], total or units[i][2]))
        i = j if j >= len(units) else max(i + 1, j - overlap_units)
    return segments
