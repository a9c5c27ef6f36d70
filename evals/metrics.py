"""RULER's scores: string_match_all (niah, vt, cwe, fwe, babilong) and string_match_part (qa), per question, 0..1."""

from __future__ import annotations

from collections.abc import Sequence


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """The fraction of references contained in the prediction, case-insensitively."""
    text = prediction.lower()
    return sum(r.lower() in text for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1 if any reference is contained in the prediction, case-insensitively."""
    text = prediction.lower()
    return float(any(r.lower() in text for r in references))


METRICS = {"all": string_match_all, "part": string_match_part}


def score(metric: str, prediction: str, references: Sequence[str]) -> float:
    return METRICS[metric](prediction, references)
