"""What every benchmark writes: bench/results/<name>.json in DESIGN.md's format, and a markdown table beside it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from evals.report import commit, machine  # one definition of what identifies a run

RESULTS = Path(__file__).parent / "results"


def write_results(
    name: str, benchmark: str, model: str, rows: list[dict[str, Any]], folder: Path = RESULTS, **extra: Any
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": benchmark,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": extra.pop("machine", None) or machine(),
        "model": model,
        **extra,
        "rows": rows,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    (folder / f"{name}.md").write_text(markdown_table(doc))
    return path


def markdown_table(doc: dict[str, Any]) -> str:
    rows = doc["rows"]
    head = f"# {doc['benchmark']}\n\n{doc['date']} · commit {doc['commit']} · {doc['machine']} · {doc['model']}\n\n"
    if not rows:
        return head + "(no rows)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r.get(c):.3g}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"
