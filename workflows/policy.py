"""The routing policy as data: measured accuracy, evidence recall and cost per strategy x task kind x length bucket.

`tome router fit` builds it from evaluation results (bench/results/eval-*.json); the router ranks the strategies
that fit a request by it, within the request's budgets. It ranks by quality: per question, the mean of accuracy and
evidence recall where that was measured (docqa's answerable questions), else accuracy. With a small reader both
strategies can answer nothing right on real prose while one of them put the evidence in front of it and the other
did not; the recall is what carries over to a larger reader.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workflows.analysis import KIND_OF_EVAL_TASK

POLICIES = Path(__file__).with_name("policies")  # shipped with the model settings: <model alias>.json
TOLERANCE = 0.02  # accuracies this close count as equal, and the cheaper strategy wins
MAX_LOG2_DISTANCE = 1.0  # an entry speaks for lengths within a factor of 2 of its own
PRIOR_QUESTIONS = 2.0  # fit: pseudo-questions at the strategy's accuracy on the kind over all lengths


@dataclass(frozen=True)
class Entry:
    strategy: str
    kind: str
    length: int  # bucket: the evaluated length in tokens
    accuracy: float
    tokens_read: float
    seconds: float
    n: int
    evidence_recall: float | None = None  # over the questions that measured it; None: none did
    quality: float | None = None  # what the ranking compares (module doc); None (older policies): the accuracy

    @property
    def merit(self) -> float:
        return self.accuracy if self.quality is None else self.quality


@dataclass
class Policy:
    model: str
    entries: list[Entry] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def nearest(self, strategy: str, kind: str, length: int, shorter: bool = False) -> Entry | None:
        """The entry measured nearest to this length for this strategy and kind, however far from it; `shorter`:
        only entries measured at shorter lengths."""
        rows = [e for e in self.entries if e.strategy == strategy and e.kind == kind]
        rows = [e for e in rows if e.length < length] if shorter else rows
        return min(rows, key=lambda e: (log2_distance(e.length, length), -e.n), default=None)

    def estimate(self, strategy: str, kind: str, length: int) -> Entry | None:
        """The nearest entry, if within a factor of 2 of this length (accuracy at 8K says little about 128K)."""
        entry = self.nearest(strategy, kind, length)
        return entry if entry is not None and log2_distance(entry.length, length) <= MAX_LOG2_DISTANCE else None

    def rank(
        self, candidates: Sequence[str], kind: str, length: int, max_tokens_read: int | None = None
    ) -> list[tuple[str, Entry | None]]:
        """Best first: highest measured quality; within TOLERANCE of it, fewest tokens read. Then the strategies
        measured for this kind only at much shorter lengths, ranked the same way by their nearest such entry (weak
        evidence, but better than none: with no near entry at all, 128K aggregation used to go by the default
        order to a 10-minute `mapreduce`); the rest last, in the given order (the default order, which puts
        `full` first where it fits: a document shorter than anything measured is read whole). Far ones come with
        their entry."""
        scored = [(name, self.estimate(name, kind, length)) for name in candidates]
        if max_tokens_read is not None and self.entries:
            # A budget is a promise: only strategies measured within it qualify (an unmeasured model has none).
            scored = [(n, e) for n, e in scored if e is not None and e.tokens_read <= max_tokens_read]
        far = [(n, self.nearest(n, kind, length, shorter=True)) for n, e in scored if e is None]
        return (
            best_first([(n, e) for n, e in scored if e is not None])
            + best_first([(n, e) for n, e in far if e is not None])
            + [(n, None) for n, e in far if e is None]
        )

    def to_json(self) -> str:
        return (
            json.dumps(
                {"model": self.model, "sources": self.sources, "entries": [asdict(e) for e in self.entries]}, indent=1
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str) -> Policy:
        data = json.loads(text)
        return cls(data["model"], [Entry(**e) for e in data["entries"]], data.get("sources", []))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> Policy:
        return cls.from_json(path.read_text())

    @classmethod
    def for_model(cls, model: str) -> Policy:
        """The shipped policy of a model; an unmeasured model gets an empty one (the default order decides)."""
        path = POLICIES / f"{Path(model).name}.json"
        return cls.load(path) if path.exists() else cls(model=model)


def log2_distance(a: int, b: int) -> float:
    return abs(math.log2(max(a, 1) / max(b, 1)))


def best_first(scored: list[tuple[str, Entry]]) -> list[tuple[str, Entry | None]]:
    """Highest quality first; among those within TOLERANCE of the best left, the one reading fewest tokens."""
    left, ranked = list(scored), []
    while left:
        best = max(e.merit for _, e in left)
        pick = min((x for x in left if x[1].merit >= best - TOLERANCE), key=lambda x: x[1].tokens_read)
        ranked.append(pick)
        left.remove(pick)
    return ranked


def fit(results: Iterable[dict[str, Any]], sources: Sequence[str] = ()) -> Policy:
    """Average eval rows (DESIGN.md's format) into entries; rows that did not run (no accuracy) are skipped.

    Every row of the given results counts, weighted by its questions: which runs speak for today's strategies is
    the caller's choice of files (leave out the runs of a strategy that has changed since). Most cells hold a few
    questions, so an entry's accuracy is shrunk toward the strategy's accuracy on the kind at all lengths by
    PRIOR_QUESTIONS pseudo-questions: one lucky question no longer outranks a strategy measured on ten. Quality is
    pooled and shrunk the same way, so a cell's few docqa questions weigh by their number against its templated ones;
    evidence recall is the mean over the questions that measured it (not the unanswerable: they have no evidence)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    model = "unknown"
    for doc in results:
        model = doc.get("model", model)
        for row in doc["rows"]:
            if row.get("accuracy") is None or row.get("strategy") == "auto" or not row.get("n"):
                continue
            # docqa's rows are per question kind (an unanswerable question reads as a lookup) and whole documents
            # (length 0) are filed at their size
            kind = row.get("kind") or KIND_OF_EVAL_TASK.get(row["task"], row["task"])
            kind = "lookup" if kind == "unanswerable" else kind
            length = int(row["length"]) or int(row["document_tokens"])
            groups[(row["strategy"], kind, length)].append(row)

    def total(rows: list[dict[str, Any]], key: str) -> float:
        return sum(float(r.get(key) or 0) * int(r["n"]) for r in rows)

    def recall_of(row: dict[str, Any]) -> float | None:
        """docqa's evidence recall (gold spans of real prose); a templated task's row has one too (was the needle
        kept), but there the accuracy says it all."""
        return row.get("evidence_recall") if row["task"] == "docqa" else None

    def quality(row: dict[str, Any]) -> float:  # a row's questions: accuracy, with evidence recall where measured
        recall = recall_of(row)
        return row["accuracy"] if recall is None else (row["accuracy"] + recall) / 2

    def shrunk(
        value: Callable[[dict[str, Any]], float], rows: list[dict[str, Any]], around: list[dict[str, Any]]
    ) -> float:
        """The cell's mean of `value` over its questions with PRIOR_QUESTIONS more at the kind's mean."""
        mean = lambda rs: sum(value(r) * int(r["n"]) for r in rs)  # noqa: E731
        expected = mean(around) / sum(int(r["n"]) for r in around)
        return (mean(rows) + PRIOR_QUESTIONS * expected) / (sum(int(r["n"]) for r in rows) + PRIOR_QUESTIONS)

    prior: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for (strategy, kind, _), rows in groups.items():
        prior[(strategy, kind)].extend(rows)
    entries = []
    for (strategy, kind, length), rows in sorted(groups.items()):
        n = sum(int(r["n"]) for r in rows)
        around = prior[(strategy, kind)]
        accuracy = shrunk(lambda r: r["accuracy"], rows, around)
        merit = shrunk(quality, rows, around)
        measured = [r for r in rows if recall_of(r) is not None]
        recall = total(measured, "evidence_recall") / sum(int(r["n"]) for r in measured) if measured else None
        entries.append(
            Entry(
                strategy,
                kind,
                length,
                round(accuracy, 4),
                round(total(rows, "tokens_read") / n, 1),
                round(total(rows, "seconds") / n, 3),
                n,
                None if recall is None else round(recall, 4),
                round(merit, 4),
            )
        )
    return Policy(model, entries, list(sources))


def fit_files(paths: Sequence[Path]) -> Policy:
    return fit((json.loads(p.read_text()) for p in paths), [p.name for p in paths])
