"""Text units every part cuts text by: where a sentence ends, and where sentences start.

Callers build their own boundaries from SENTENCE_END (a span splitter also cuts at line breaks, the segmenter at
paragraphs and list items), so that one definition of a sentence end holds everywhere.
"""

from __future__ import annotations

import re

# A sentence ends at . ! or ? and the closing quotes or brackets right after it.
SENTENCE_END = r"[.!?][\"')\]]*"
_BREAK = re.compile(SENTENCE_END + r"\s+")


def sentence_starts(text: str) -> list[int]:
    """Offsets where sentences start: 0, and after every sentence end that white space follows."""
    return [0] + [m.end() for m in _BREAK.finditer(text)]
