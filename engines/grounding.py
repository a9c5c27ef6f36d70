"""How well a piece of text is supported by a source: the share of its content words found in the source.

A cheap, model-free check that small models need: they answer confidently from parts that do not contain the
answer. Used to drop unsupported partial answers and by the router's verify step.
"""

from __future__ import annotations

import os
import re
from difflib import SequenceMatcher

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


NOT_STATED = "The document does not say."  # the answer to a question nothing read could back (the reader's refusal)


def is_abstention(text: str) -> bool:
    t = text.strip().strip(".").upper()
    return not t or t.startswith("NONE") or "NOT MENTION" in t or "DOES NOT" in t or "NO INFORMATION" in t


# A word as an answer copies it: letters and digits, joined by inner hyphens (keys, UUIDs, compound names).
_COPY_WORD = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")


def complete_fragments(
    answer: str, source: str, question: str = "", min_chars: int = 4
) -> tuple[str, list[tuple[str, str]]]:
    """The answer with every broken copy of a source word completed to that word, and the (copy, word) pairs.

    Small models copying a long rare word from the source drop one piece of it, a token or two, at its start,
    end or inside (`solvent-musing` or `inspect-relish` for `insolvent-musing`, `inspector-relish`), or a piece
    at both ends of a long one (`7287c3f-...-62e6fd4414` for `c7287c3f-...-62e6fd441444`). An answer word that is
    not itself a word of the source, but is exactly one source word with such pieces left out, is replaced by
    that word; failing that, an identifier-like copy (a hyphen or a digit in it) miscopied in a small part
    (`prix-lisps` for `prize-lisps`, see `_miscopied`) is replaced by the one source word it matches so. Words
    of the question are left alone (the model echoes the question), and so are copies shorter than `min_chars`,
    or fitting several source words, which prove nothing.
    """
    source_words: dict[str, str] = {}
    for w in _COPY_WORD.findall(source):
        source_words.setdefault(w.lower(), w)
    asked = {w.lower() for w in _COPY_WORD.findall(question)}
    completed: list[tuple[str, str]] = []

    def complete(m: re.Match[str]) -> str:
        piece = m.group(0)
        low = piece.lower()
        if len(low) < min_chars or low in source_words or low in asked:
            return piece
        whole = [w for w in source_words if len(w) > len(low) and (_one_piece_dropped(low, w) or _ends_dropped(low, w))]
        if not whole:
            whole = [w for w in source_words if _miscopied(low, w)]
        if len(whole) != 1:
            return piece
        completed.append((piece, source_words[whole[0]]))
        return source_words[whole[0]]

    return _COPY_WORD.sub(complete, answer), completed


def _miscopied(copy: str, word: str, min_chars: int = 6, long_chars: int = 16) -> bool:
    """Whether an identifier-like `copy` (with a hyphen or a digit) is `word` miscopied in a small part.

    Either one short piece is changed, the shared start and end covering at least half of the longer one
    (`prix-lisps` for `prize-lisps`, `dear-west` for `needy-west`), or a long copy (a UUID) matches at least 80%
    of the word's characters in order (`3f184c5-3f18-...-fc6` for `a7e344c5-3f18-...-fc64`). Plain words are left
    alone: a changed letter in one is as likely a different word (`walkes`, `Parisian`) as a miscopy.
    """
    if len(copy) < min_chars or not ("-" in copy or any(ch.isdigit() for ch in copy)):
        return False
    if 2 * _shared_ends(copy, word) >= max(len(copy), len(word)):
        return True
    return len(copy) >= long_chars and SequenceMatcher(None, copy, word, autojunk=False).ratio() >= 0.8


def _ends_dropped(copy: str, word: str, min_chars: int = 8) -> bool:
    """Whether a long `copy` is the middle of `word`, holding at least half of it (a short one proves nothing)."""
    return len(copy) >= min_chars and 2 * len(copy) >= len(word) and copy in word


def _one_piece_dropped(copy: str, word: str) -> bool:
    """Whether `copy` is `word` with one contiguous piece left out (its start, its end or a run inside)."""
    return _shared_ends(copy, word) >= len(copy)


def _shared_ends(copy: str, word: str) -> int:
    """Characters `copy` and `word` share at their start and end together, never counting one twice."""
    head = len(os.path.commonprefix([copy, word]))
    tail = len(os.path.commonprefix([copy[::-1], word[::-1]]))
    return head + min(tail, min(len(copy), len(word)) - head)
