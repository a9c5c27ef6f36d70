"""Does the router read people's questions as the kind they are? docqa's kinds against `task_kind`, no model.

docqa's labels are what each question needs (lookup, multihop, aggregation; an unanswerable question is read as
the lookup it is phrased as). The baseline is `task_kind` as it was at another commit (`--baseline`), loaded from
git into this process, so both are measured on the same questions in one run.

    python -m bench.docqa_kinds --split test --baseline 8ce4992 --name docqa-kinds-test
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.common import write_results
from engines.types import Task
from evals.tasks.docqa import docqa_items
from workflows.analysis import task_kind

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("lookup", "multihop", "aggregation")


def kind_reader_at(commit: str) -> Callable[[Task], str]:
    """`task_kind` from workflows/analysis.py as committed at `commit`."""
    shown = subprocess.run(["git", "show", f"{commit}:workflows/analysis.py"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode != 0:
        raise SystemExit(f"--baseline {commit}: no workflows/analysis.py there ({shown.stderr.strip()})")
    source = shown.stdout
    module = types.ModuleType(f"analysis_at_{commit}")
    sys.modules[module.__name__] = module  # dataclasses look their module up while the file runs
    exec(compile(source, f"{commit}:workflows/analysis.py", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module.task_kind


def rows_for(name: str, read: Callable[[Task], str], split: str) -> list[dict[str, object]]:
    confusion: Counter[tuple[str, str]] = Counter()
    for item in docqa_items():
        if item.split == split:
            gold = "lookup" if item.kind == "unanswerable" else item.kind
            confusion[gold, read(Task(item.question))] += 1
    rows = []
    for gold in KINDS:
        n = sum(v for (g, _), v in confusion.items() if g == gold)
        rows.append(
            {
                "reader": name,
                "split": split,
                "kind": gold,
                "n": n,
                "read_right": round(confusion[gold, gold] / n, 3),
                **{f"as_{k}": confusion[gold, k] for k in KINDS},
            }
        )
    right = sum(confusion[k, k] for k in KINDS)
    rows.append(
        {
            "reader": name,
            "split": split,
            "kind": "all",
            "n": sum(confusion.values()),
            "read_right": round(right / sum(confusion.values()), 3),
        }
    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--split", default="dev", choices=["dev", "test"])
    p.add_argument("--baseline", required=True, help="commit whose task_kind is the baseline")
    p.add_argument("--name", default="docqa-kinds-dev")
    args = p.parse_args()
    rows = rows_for(f"baseline ({args.baseline})", kind_reader_at(args.baseline), args.split)
    rows += rows_for("current", task_kind, args.split)
    for r in rows:
        print(r)
    write_results(
        args.name,
        "docqa_kinds",
        "none (no model: the router's kind reading)",
        rows,
        split=args.split,
        baseline=args.baseline,
        note="read_right: share of the kind's questions read as that kind; as_K: how many were read as K",
    )


if __name__ == "__main__":
    main()
