"""Cutting a document into sentences and packing consecutive pieces, always as character spans.

Both memory strategies work on spans of the original text, so that whatever they keep or retrieve
maps back to exact evidence offsets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from engines.text import SENTENCE_END

Span = tuple[int, int]  # [start, end) character offsets into the document text

# A sentence ends at . ! ? (optionally closed by a quote or bracket) followed by space, or at a blank line / newline.
_BOUNDARY = re.compile(SENTENCE_END + r"\s+|\n+")


def split_sentences(text: str, start: int = 0, end: int | None = None, max_chars: int = 400) -> list[Span]:
    """Sentence spans of text[start:end], whitespace trimmed; runs without punctuation are cut at max_chars."""
    end = len(text) if end is None else end
    spans: list[Span] = []
    pos = start
    for m in _BOUNDARY.finditer(text, start, end):
        spans.extend(_trimmed_pieces(text, pos, m.start() + len(m.group(0).rstrip()), max_chars))
        pos = m.end()
    spans.extend(_trimmed_pieces(text, pos, end, max_chars))
    return spans


def _trimmed_pieces(text: str, start: int, end: int, max_chars: int) -> list[Span]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    pieces = []
    while end - start > max_chars:
        cut = text.rfind(" ", start + max_chars // 2, start + max_chars)
        cut = cut if cut > start else start + max_chars
        pieces.append((start, cut))
        start = cut
        while start < end and text[start].isspace():
            start += 1
    if end > start:
        pieces.append((start, end))
    return pieces


def pack(spans: Sequence[Span], size: Callable[[Span], int], limit: int) -> list[Span]:
    """Greedily join consecutive spans into pieces of at most `limit` (a single oversized span stays alone)."""
    packed: list[Span] = []
    current: Span | None = None
    used = 0
    for span in spans:
        n = size(span)
        if current is not None and used + n <= limit:
            current, used = (current[0], span[1]), used + n
            continue
        if current is not None:
            packed.append(current)
        current, used = span, n
    if current is not None:
        packed.append(current)
    return packed
