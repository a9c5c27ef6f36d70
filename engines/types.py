"""Plain data shared by every layer.

They live in `engines/`, the lowest package that strategies, the graph and the service all import,
so that a Document or an Answer means the same thing everywhere without an upward import.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Document:
    text: str
    source: str = "inline"
    media_type: str = "text/plain"
    metadata: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""

    def __post_init__(self) -> None:
        if not self.content_hash:
            object.__setattr__(self, "content_hash", content_hash(self.text))

    def locate(self, offset: int) -> tuple[int | None, str | None]:
        """The page (1-based) and the outline heading a character offset falls under, where the loader kept
        them (`metadata["page_spans"]`: `[[page, start, end], ...]`; `metadata["outline"]`: `[{title, start}]`)."""
        page = section = None
        spans = self.metadata.get("page_spans") or []
        if spans:
            i = bisect.bisect_right([s[1] for s in spans], offset) - 1
            page = spans[max(i, 0)][0]
        outline = [h for h in self.metadata.get("outline") or [] if h.get("start", 0) <= offset]
        if outline:
            section = max(outline, key=lambda h: h["start"])["title"]
        return page, section


class TaskKind(StrEnum):
    QA = "qa"
    SUMMARY = "summary"
    EXTRACT = "extract"


@dataclass(frozen=True)
class Task:
    """One thing to do with a document: answer a question, summarise it, or extract fields."""

    question: str
    kind: TaskKind = TaskKind.QA
    json_schema: dict[str, Any] | None = None
    max_answer_tokens: int = 64


@dataclass
class Cost:
    """The cost fields every strategy reports, so the router and the evals compare like with like."""

    calls: int = 0
    tokens_read: int = 0
    tokens_generated: int = 0
    seconds: float = 0.0

    def add(self, other: Cost) -> Cost:
        return Cost(
            self.calls + other.calls,
            self.tokens_read + other.tokens_read,
            self.tokens_generated + other.tokens_generated,
            self.seconds + other.seconds,
        )


@dataclass(frozen=True)
class Evidence:
    """A span of the document (character offsets) that the answer was read from; `page` and `section` where the
    document has pages or an outline (filled in by the job graph from `Document.locate`)."""

    start: int
    end: int
    text: str
    page: int | None = None
    section: str | None = None


@dataclass
class Answer:
    text: str
    strategy: str
    evidence: list[Evidence] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# (done, total, message): strategies report progress on long work through this.
Progress = Callable[[int, int, str], None]


def no_progress(done: int, total: int, message: str) -> None:
    return None
