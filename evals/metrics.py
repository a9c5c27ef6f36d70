"""Per-question scores, 0..1: RULER's string_match_all (niah, vt, cwe, fwe, babilong) and string_match_part (qa,
docqa), abstention for docqa's unanswerable questions, and evidence recall over character spans."""

from __future__ import annotations

import re
from collections.abc import Sequence

# A reply that says the document does not give the answer. Written for the yardstick, independently of how the
# product words its own abstentions, so that any clear phrasing counts.
_ABSTAIN = re.compile(
    r"\b(does not|doesn't|did not|do not|cannot|can't|could not|unable to) "
    r"(say|state|mention|tell|give|specify|say so|find|determine|answer|know)\b"
    r"|\bnot (stated|mentioned|given|specified|said|found|known|answered)\b"
    r"|\bno (information|mention|answer|evidence)\b|\b(unknown|unanswerable)\b|^\s*none\b",
    re.I,
)
# Share of a gold evidence span's characters that the text read must cover for the span to count as read.
SPAN_COVER = 0.5


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """The fraction of references contained in the prediction, case-insensitively."""
    text = prediction.lower()
    return sum(r.lower() in text for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1 if any reference is contained in the prediction, case-insensitively."""
    text = prediction.lower()
    return float(any(r.lower() in text for r in references))


def abstains(prediction: str) -> bool:
    return bool(_ABSTAIN.search(prediction))


def string_match_abstain(prediction: str, references: Sequence[str]) -> float:
    """1 if the reply says the document does not give the answer (docqa's unanswerable questions)."""
    return float(abstains(prediction))


METRICS = {"all": string_match_all, "part": string_match_part, "abstain": string_match_abstain}


def score(metric: str, prediction: str, references: Sequence[str]) -> float:
    return METRICS[metric](prediction, references)


def span_recall(gold: Sequence[Sequence[int]], read: Sequence[Sequence[int]], cover: float = SPAN_COVER) -> float:
    """Share of the gold [start, end) spans of which the `read` spans cover at least `cover` of the characters."""
    if not gold:
        raise ValueError("span_recall needs at least one gold span")
    hits = 0
    for gs, ge in gold:
        covered = sum(max(0, min(ge, e) - max(gs, s)) for s, e in _merged(read))
        hits += covered >= cover * (ge - gs)
    return hits / len(gold)


def _merged(spans: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted((int(a), int(b)) for a, b in spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out
