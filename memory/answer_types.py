"""What kind of value a question asks for, and whether a passage holds one.

People ask "How old is Charlotte when she marries?", and the text answers "at the age of twenty-seven" in a
sentence that shares almost no words with the question: lexical and dense scores both pass it by. But the question
says what its answer looks like (an age, a sum of money, a count, a date, a time of day, a duration, a measure),
and a passage holding such an expression, near the question's own words, is where the answer usually is. rag lifts
those passages (RagConfig.answer_type_weight); a question of no such type is scored as before.
"""

from __future__ import annotations

import re
from functools import cache

# No "one" (and no "score"): too common in prose to say that a passage holds a number.
_NUMBER_WORDS = (
    r"(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|"
    r"eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|million|dozen)"
)
_NUMBER = rf"(?:\d[\d,.]*|{_NUMBER_WORDS}(?:[- ]{_NUMBER_WORDS})*)"
_MONTHS = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_UNITS = (
    r"(?:feet|foot|inch(?:es)?|yards?|miles?|leagues?|fathoms?|acres?|pounds?|ounces?|tons?|grains?|degrees?|"
    r"gallons?|pints?|bushels?|paces|rods?|metres?|meters?|kilometres?|bytes?|bits?)"
)
_SPANS = r"(?:seconds?|minutes?|hours?|days?|nights?|weeks?|fortnights?|months?|years?|generations?|centuries)"

# (what the question says, what the answer looks like); the first question pattern that matches decides.
TYPES: tuple[tuple[str, str, str], ...] = (
    (
        "age",
        r"\bhow old\b|\bat what age\b|\bwhat age\b",
        rf"\bage of\b|\baged\b|\byears? (?:old|of age)\b|\b\w+-and-(?:twenty|thirty|forty)\b|\b{_NUMBER}\b",
    ),
    (
        "money",
        r"\bhow much (?:money|did|does|do|was|is|were|are|could|would|will|had|has)\b"
        r"|\bwhat (?:price|sum|fortune|income|salary|wages|fee|fare)\b"
        r"|\bhow (?:large|big|great) (?:is|was) [\w' ]{0,30}?(?:fortune|income|sum|debt)\b",
        r"£|\$|\b(?:dollars?|pounds?|shillings?|pence|penny|guineas?|crowns?|roubles?|kopecks?|drachmae?|"
        r"ducats?|livres?|francs?|sovereigns?)\b|\ba year\b",
    ),
    (
        "time",
        r"\bwhat time\b|\bat what hour\b|\bwhat hour\b",
        r"\bo'clock\b|\b\d{1,2}[:.]\d{2}\b|\bnoon\b|\bmidnight\b",
    ),
    (
        "date",
        r"\b(?:on|at) what (?:date|day)\b|\bwhat (?:date|year)\b|\bin what (?:year|month)\b|\bwhich (?:year|month)\b",
        rf"\b{_MONTHS}\b|\b1[0-9]{{3}}\b|\b\d{{1,2}}(?:st|nd|rd|th)\b",
    ),
    ("duration", r"\bhow long\b|\bfor how many (?:days|weeks|months|years|hours)\b", rf"\b{_NUMBER}\s+{_SPANS}\b"),
    (
        "measure",
        r"\bhow (?:far|tall|high|deep|wide|broad|long|big|large|heavy|thick)\b",
        rf"\b{_NUMBER}\s+{_UNITS}\b",
    ),
    ("count", r"\bhow many\b|\bwhat number of\b|\bthe number of\b", rf"\b{_NUMBER}\b"),
)


@cache
def _compiled() -> tuple[tuple[str, re.Pattern[str], re.Pattern[str]], ...]:
    return tuple((name, re.compile(q, re.I), re.compile(a, re.I)) for name, q, a in TYPES)


def answer_type(question: str) -> str | None:
    """The kind of value the question asks for, or None."""
    return next((name for name, q, _ in _compiled() if q.search(question)), None)


def holds_answer_type(kind: str, passage: str) -> bool:
    """Whether the passage holds an expression of that kind (an age, a sum, a count...)."""
    pattern = next(a for name, _, a in _compiled() if name == kind)
    return pattern.search(passage) is not None
