"""Is an answer supported by the evidence it was read from? A model-free check the graph uses to fall back."""

from __future__ import annotations

from engines.grounding import content_words, is_abstention
from engines.types import Answer, Task, TaskKind

SUPPORTED = 0.5  # share of the answer's new content words that must occur in its evidence


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
    return sum(w in found for w in new) / len(new) >= SUPPORTED
