"""The routing policy as data: measured accuracy and cost per strategy x task kind x length bucket.

`tome router fit` builds it from evaluation results (bench/results/eval-*.json); the router ranks the strategies
that fit a request by it, within the request's budgets.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workflows.analysis import KIND_OF_EVAL_TASK

POLICIES = Path(__file__).with_name("policies")  # shipped with the model settings: <model alias>.json
TOLERANCE = 0.02  # accuracies this close count as equal, and the cheaper strategy wins
MAX_LOG2_DISTANCE = 1.0  # an entry speaks for lengths within a factor of 2 of its own


@dataclass(frozen=True)
class Entry:
    strategy: str
    kind: str
    length: int  # bucket: the evaluated length in tokens
    accuracy: float
    tokens_read: float
    seconds: float
    n: int


@dataclass
class Policy:
    model: str
    entries: list[Entry] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def estimate(self, strategy: str, kind: str, length: int) -> Entry | None:
        """The entry measured nearest to this length for this strategy and kind; none beyond a factor of 2 away
        (accuracy at 8K says little about 128K or 2K)."""
        rows = [e for e in self.entries if e.strategy == strategy and e.kind == kind]
        rows = [e for e in rows if abs(math.log2(max(e.length, 1) / max(length, 1))) <= MAX_LOG2_DISTANCE]
        if not rows:
            return None
        return min(rows, key=lambda e: (abs(math.log2(max(e.length, 1) / max(length, 1))), -e.n))

    def rank(
        self, candidates: Sequence[str], kind: str, length: int, max_tokens_read: int | None = None
    ) -> list[tuple[str, Entry | None]]:
        """Best first: highest measured accuracy; within TOLERANCE of it, fewest tokens read. Unmeasured last."""
        scored = [(name, self.estimate(name, kind, length)) for name in candidates]
        if max_tokens_read is not None and self.entries:
            # A budget is a promise: only strategies measured within it qualify (an unmeasured model has none).
            scored = [(n, e) for n, e in scored if e is not None and e.tokens_read <= max_tokens_read]
        measured = [(n, e) for n, e in scored if e is not None]
        unmeasured = [(n, e) for n, e in scored if e is None]
        ranked: list[tuple[str, Entry | None]] = []
        while measured:
            best = max(e.accuracy for _, e in measured)
            tier = sorted((x for x in measured if x[1].accuracy >= best - TOLERANCE), key=lambda x: x[1].tokens_read)
            ranked.append(tier[0])
            measured.remove(tier[0])
        return ranked + unmeasured

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


def fit(results: Iterable[dict[str, Any]], sources: Sequence[str] = ()) -> Policy:
    """Average eval rows (DESIGN.md's format) into entries; rows that did not run (no accuracy) are skipped.

    Where several results measured the same strategy on the same task at the same length, only the newest
    (by its `date`) counts: strategies change between runs, and an old row would pull the new one toward code
    that no longer runs. Tasks of one kind still pool across results."""
    newest: dict[tuple[str, str, int], tuple[str, dict[str, Any]]] = {}
    model = "unknown"
    for doc in results:
        model = doc.get("model", model)
        date = str(doc.get("date", ""))
        for row in doc["rows"]:
            if row.get("accuracy") is None or row.get("strategy") == "auto" or not row.get("n"):
                continue
            key = (row["strategy"], row["task"], int(row["length"]))
            if key not in newest or date >= newest[key][0]:
                newest[key] = (date, row)
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for (strategy, task, length), (_, row) in newest.items():
        groups[(strategy, KIND_OF_EVAL_TASK.get(task, task), length)].append(row)
    entries = []
    for (strategy, kind, length), rows in sorted(groups.items()):
        n = sum(int(r["n"]) for r in rows)

        def mean(key: str, rows: list[dict[str, Any]] = rows, n: int = n) -> float:
            return sum(float(r.get(key) or 0) * int(r["n"]) for r in rows) / n

        entries.append(
            Entry(
                strategy,
                kind,
                length,
                round(mean("accuracy"), 4),
                round(mean("tokens_read"), 1),
                round(mean("seconds"), 3),
                n,
            )
        )
    return Policy(model, entries, list(sources))


def fit_files(paths: Sequence[Path]) -> Policy:
    return fit((json.loads(p.read_text()) for p in paths), [p.name for p in paths])
