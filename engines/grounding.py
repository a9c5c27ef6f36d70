"""How well a piece of text is supported by a source: the share of its content words found in the source.

A cheap, model-free check that small models need: they answer confidently from parts that do not contain the
answer. Used to drop unsupported partial answers and by the router's verify step.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
STOPWORDS = frozenset(
    """a an the and or but of to in on at by for with from as is are was were be been being it its this that these
    those there here he she they them his her their we you i me my our your not no yes so than then which who whom
    what when where why how do does did has have had will would can could should may might must shall about into
    over under also only very just any all some such part text document answer question none""".split()
)


def content_words(text: str) -> set[str]:
    return {w.lower().strip("'-") for w in _WORD.findall(text) if w.lower() not in STOPWORDS and len(w) > 1}


def support(claim: str, source: str) -> float:
    """Fraction of the claim's content words that occur in the source (1.0 for a claim with none)."""
    words = content_words(claim)
    if not words:
        return 1.0
    found = content_words(source)
    return sum(w in found for w in words) / len(words)


def is_abstention(text: str) -> bool:
    t = text.strip().strip(".").upper()
    return not t or t.startswith("NONE") or "NOT MENTION" in t or "DOES NOT" in t or "NO INFORMATION" in t
