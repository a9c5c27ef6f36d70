"""What every benchmark writes: bench/results/<name>.json in DESIGN.md's format, and a markdown table beside it."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from evals.report import commit, machine  # one definition of what identifies a run

RESULTS = Path(__file__).parent / "results"


def write_results(
    name: str, title: str, model: str, rows: list[dict[str, Any]], folder: Path = RESULTS, **extra: Any
) -> Path:
    """`benchmark` is the running script's name and `command` how it was run, so bench/index.py can say both."""
    folder.mkdir(parents=True, exist_ok=True)
    script = Path(sys.argv[0])
    note = extra.get("note")  # a paragraph given on the command line is kept as `note`, not repeated in `command`
    doc = {
        "benchmark": script.stem,
        "title": title,
        "command": " ".join(["python -m bench." + script.stem, *("NOTE" if a == note else a for a in sys.argv[1:])]),
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
    head = f"# {doc['title']}\n\n{doc['date']} · commit {doc['commit']} · {doc['machine']} · {doc['model']}\n\n"
    if not rows:
        return head + "(no rows)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r.get(c):.3g}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    note = f"\n{doc['note'].strip()}\n" if doc.get("note") else ""  # how to read the table, where the run says
    return head + "\n".join(lines) + "\n" + note
