"""Is an answer supported by the evidence it was read from? A model-free check the graph uses to fall back.

Two tests. The answer's own words must be in what it was read from (it was not made up). And, for a question
asking one stated fact, they must be found near what the question asks about: a name that merely occurs somewhere
in a long passage read (asked whom Mr. Collins marries, "Elizabeth") is not backed by it; the sentence that holds
it, or its neighbours, must share the question's other words (stemmed: "marries" finds "married").
"""

from __future__ import annotations

import re
from functools import cache

from engines.grounding import content_words, is_abstention
from engines.types import Answer, Task, TaskKind
from workflows.analysis import task_kind

SUPPORTED = 0.5  # share of the answer's new content words that must occur in its evidence
# Share of the question's other content words (stems) that the sentences around the answer must hold, for lookups;
# or this many of them: a question describing what its answer's sentence names (a chain of two facts, which the
# router cannot tell from a lookup by its words) holds only a few of its many words there. 3: on docqa's dev books,
# multi-hop answers right after the verify step 0 -> 2 of 32, lookups 17 -> 18 of 64, precision kept
# (bench/results/docqa-reading-dev-copy.md's answers; chosen on half of the books, confirmed on the other half).
ASKED_NEAR = 0.34
ASKED_NEAR_WORDS = 3
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


@cache
def _stemmer():  # noqa: ANN202 - PyStemmer's type
    import Stemmer

    return Stemmer.Stemmer("english")


def stems(words: set[str]) -> set[str]:
    return set(_stemmer().stemWords(sorted(words)))


def near_question(answer: str, question: str, source: str, around: int = 1) -> tuple[int, int]:
    """The most of the question's other content-word stems held by a window of sentences (one with an answer word
    and `around` on each side) in `source`, and how many it has: (held, asked)."""
    answer_words = content_words(answer) - content_words(question)
    asked = stems(content_words(question) - content_words(answer))
    sentences = [stems(content_words(m.group(0))) for m in _SENTENCE.finditer(source)]
    wanted = stems(answer_words)
    best = 0
    for i, words in enumerate(sentences):
        if words & wanted:
            window = set().union(*sentences[max(0, i - around) : i + around + 1])
            best = max(best, len(asked & window))
    return best, len(asked)


def answer_supported(answer: Answer, task: Task, document_text: str) -> bool:
    if not answer.text.strip():
        return False
    if task.kind != TaskKind.QA:
        return True  # summaries and extractions restate the document; there is no short claim to check
    if is_abstention(answer.text):
        return False
    # Words the question already has prove nothing; the rest must be found where the answer was read.
    new = content_words(answer.text) - content_words(task.question)
    if not new:
        return False
    if not answer.evidence:
        return False  # an answer that shows nothing it was read from cannot be checked
    source = "\n".join(document_text[e.start : e.end] for e in answer.evidence)
    found = content_words(source)
    if sum(w in found for w in new) / len(new) < SUPPORTED:
        return False
    if task_kind(task) != "lookup":
        return True  # a multi-hop answer sits by the last fact of its chain, not by the question's words
    held, asked = near_question(answer.text, task.question, source)
    return not asked or held >= min(ASKED_NEAR * asked, ASKED_NEAR_WORDS)
