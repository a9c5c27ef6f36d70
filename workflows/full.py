"""`full`: the whole document in one prompt. Never truncates: it fits or it is not chosen."""

from __future__ import annotations

from collections.abc import Sequence

from engines.base import Engine
from engines.prompting import answer_from_context, answer_overhead
from engines.types import Answer, Document, Evidence, Progress, Task


class FullContext:
    name = "full"

    def needed_tokens(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> int:
        return document_tokens + max(answer_overhead(engine, t) for t in tasks)

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        return self.needed_tokens(document_tokens, tasks, engine) <= engine.max_context

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        progress(0, 1, "reading the whole document")
        evidence = [Evidence(0, len(document.text), "")]  # all of it; the text is the document itself
        answers = answer_from_context(engine, document.text, tasks, self.name, evidence)
        progress(1, 1, "answered")
        return answers
