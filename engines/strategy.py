"""The Strategy interface: (document, tasks, engine) -> answers with evidence and cost.

Kept beside the shared types so strategies in memory/, compressors/ and workflows/ implement it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from engines.base import Engine
from engines.types import Answer, Document, Progress, Task


@runtime_checkable
class Strategy(Protocol):
    name: str

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        """Whether this strategy can run the tasks over a document of this many tokens on this engine."""
        ...

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        """One Answer per task, in order."""
        ...
