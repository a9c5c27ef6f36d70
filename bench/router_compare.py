"""`auto` against every single strategy on the same mixed questions (issue 10's measurement).

Reads an eval questions log (bench/results/eval-NAME.questions.jsonl, written by `tome eval`) holding `auto` and
the single strategies on the same (task, length, seed) questions, and writes bench/results/router-NAME.json + .md:
accuracy and tokens read per strategy, overall and per task kind, what `auto` chose, and the issue's targets.
A strategy that cannot take a question (does_not_fit) scores 0 on it: over a mixed set a single strategy has to
answer everything, as `auto` does.

    PYTHONPATH=. python bench/router_compare.py mixed
    PYTHONPATH=. python bench/router_compare.py mixed-4k-32k mixed-128k --output mixed-all   # several runs as one set
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from typing import Any

from bench.common import RESULTS, write_results
from evals.runner import AUTO, read_log
from workflows.analysis import KIND_OF_EVAL_TASK

KINDS_TOLERANCE = 0.02  # auto may be this far below the best single strategy on a kind


def question(r: dict[str, Any]) -> tuple[str, int, int]:
    return (r["task"], r["length"], r["seed"])


def summarise(records: list[dict[str, Any]], questions: set[tuple[str, int, int]]) -> dict[str, float]:
    mine = [r for r in records if question(r) in questions]
    answered = [r for r in mine if r["status"] == "ok"]
    return {
        "accuracy": round(sum(r["accuracy"] or 0.0 for r in answered) / len(questions), 4),
        "tokens_read": round(sum(r.get("tokens_read") or 0 for r in answered) / len(questions), 1),
        "answered": len(answered),
        "seconds": round(sum(r.get("seconds") or 0 for r in answered) / len(questions), 1),
    }


def compare(records: list[dict[str, Any]]) -> dict[str, Any]:
    by_strategy: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_strategy[r["strategy"]].append(r)
    if AUTO not in by_strategy:
        raise SystemExit("no `auto` records in this log")
    # Only questions that every strategy was asked (errors count as asked: they are a strategy's failure).
    asked = [{question(r) for r in rs} for rs in by_strategy.values()]
    common = set.intersection(*asked)
    kinds = sorted({KIND_OF_EVAL_TASK[t] for t, _, _ in common})
    rows = []
    for strategy, rs in sorted(by_strategy.items()):
        row: dict[str, Any] = {"strategy": strategy, **summarise(rs, common)}
        for kind in kinds:
            of_kind = {q for q in common if KIND_OF_EVAL_TASK[q[0]] == kind}
            row[f"{kind}_accuracy"] = summarise(rs, of_kind)["accuracy"]
        rows.append(row)
    singles = [r for r in rows if r["strategy"] != AUTO]
    auto = next(r for r in rows if r["strategy"] == AUTO)
    best = max(singles, key=lambda r: (r["accuracy"], -r["tokens_read"]))
    per_kind = {}
    for kind in kinds:
        top = max(r[f"{kind}_accuracy"] for r in singles)
        per_kind[kind] = {"auto": auto[f"{kind}_accuracy"], "best_single": top}
    chosen = Counter(r.get("ran", r["status"]) for r in by_strategy[AUTO] if question(r) in common)
    targets = {
        "best_single": best["strategy"],
        "auto_accuracy_at_least_best": auto["accuracy"] >= best["accuracy"],
        "auto_tokens_at_most_half_of_best": auto["tokens_read"] <= 0.5 * best["tokens_read"],
        "auto_within_2_points_on_every_kind": all(
            v["auto"] >= v["best_single"] - KINDS_TOLERANCE for v in per_kind.values()
        ),
    }
    return {
        "rows": rows,
        "questions": len(common),
        "per_kind": per_kind,
        "auto_ran": dict(chosen),
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="+", help="eval runs: reads bench/results/eval-NAME.questions.jsonl of each")
    p.add_argument("--output", help="results name (default: the first run's): bench/results/router-OUTPUT.*")
    args = p.parse_args(argv)
    logs = [RESULTS / f"eval-{name}.questions.jsonl" for name in args.names]
    records = [r for log in logs for r in read_log(log)]
    result = compare(records)
    reports = [RESULTS / f"eval-{name}.json" for name in args.names]  # each run's meta: which policy `auto` used
    policies = {json.loads(r.read_text()).get("policy", "shipped") if r.exists() else "shipped" for r in reports}
    path = write_results(
        f"router-{args.output or args.names[0]}",
        "auto vs single strategies on a mixed set",
        records[0]["model"],
        result.pop("rows"),
        source=[log.name for log in logs],
        lengths=sorted({r["length"] for r in records}),
        tasks=sorted({r["task"] for r in records}),
        policy=", ".join(sorted(policies)),
        **result,
    )
    print(path)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
