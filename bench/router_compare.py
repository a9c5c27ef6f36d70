"""`auto` against every single strategy on the same mixed questions (issue 10's measurement).

Reads an eval questions log (bench/results/eval-NAME.questions.jsonl, written by `tome eval`) holding `auto` and
the single strategies on the same (task, length, seed) questions (or only the single strategies, to compare replayed
policies), and writes bench/results/router-NAME.json + .md: accuracy and tokens read per strategy, overall and per
task kind, what `auto` chose, and the issue's targets.
A strategy that cannot take a question (does_not_fit) scores 0 on it: over a mixed set a single strategy has to
answer everything, as `auto` does.

    PYTHONPATH=. python bench/router_compare.py mixed
    PYTHONPATH=. python bench/router_compare.py mixed-4k-32k mixed-128k --output mixed-all   # several runs as one set
    PYTHONPATH=. python bench/router_compare.py mixed --replay policy-a.json policy-b.json     # + replayed policies
    PYTHONPATH=. python bench/router_compare.py auto-rerun mixed:rag,memagent     # auto of one run, singles of another

`--replay POLICY`: what `auto` would score with that policy file, replayed from the single strategies' answers to
the same questions (the policy's first choice among the strategies in the log; no fallback, no `fits` check). A
cheap, offline way to compare policies (or fit rules) on held-out questions; only real `auto` rows are a result.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.common import RESULTS, write_results
from evals.runner import AUTO, read_log
from workflows.analysis import KIND_OF_EVAL_TASK
from workflows.policy import Policy

KINDS_TOLERANCE = 0.02  # auto may be this far below the best single strategy on a kind
REPLAY = "replay:"  # prefix of replayed policies' rows


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


def replay(records: list[dict[str, Any]], policy: Policy, name: str) -> list[dict[str, Any]]:
    """The single strategies' records that `policy` would have chosen, one per question, renamed `name`."""
    singles: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        if r["strategy"] != AUTO and not r["strategy"].startswith(REPLAY):
            singles[question(r)][r["strategy"]] = r
    chosen = []
    for (task, length, _), by_name in singles.items():
        ranked = policy.rank(sorted(by_name), KIND_OF_EVAL_TASK[task], length)
        chosen.append({**by_name[ranked[0][0]], "strategy": name, "ran": ranked[0][0]})
    return chosen


def compare(records: list[dict[str, Any]]) -> dict[str, Any]:
    # The runs are one set: a question asked of a strategy in several of them counts once (the last run's answer).
    records = list({(r["strategy"], *question(r)): r for r in records}.values())
    by_strategy: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_strategy[r["strategy"]].append(r)
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
    singles = [r for r in rows if r["strategy"] != AUTO and not r["strategy"].startswith(REPLAY)]
    best = max(singles, key=lambda r: (r["accuracy"], -r["tokens_read"]))
    # Without `auto` in the log (singles only), the replayed policies are the comparison.
    auto = next((r for r in rows if r["strategy"] == AUTO), None)
    per_kind = {}
    for kind in kinds:
        top = max(r[f"{kind}_accuracy"] for r in singles)
        per_kind[kind] = {**({"auto": auto[f"{kind}_accuracy"]} if auto else {}), "best_single": top}
    chosen = Counter(r.get("ran", r["status"]) for r in by_strategy.get(AUTO, []) if question(r) in common)
    replayed = {
        name: {
            "accuracy": r["accuracy"],
            "tokens_read": r["tokens_read"],
            "chose": dict(Counter(x["ran"] for x in by_strategy[name] if question(x) in common)),
        }
        for name, r in ((r["strategy"], r) for r in rows if r["strategy"].startswith(REPLAY))
    }
    targets: dict[str, Any] = {"best_single": best["strategy"]}
    if auto:
        targets |= {
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
        **({"auto_ran": dict(chosen)} if auto else {}),
        "targets": targets,
        **({"replayed": replayed} if replayed else {}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "names",
        nargs="+",
        help="eval runs: reads bench/results/eval-NAME.questions.jsonl of each; NAME:a,b keeps only those strategies",
    )
    p.add_argument("--output", help="results name (default: the first run's): bench/results/router-OUTPUT.*")
    p.add_argument("--replay", type=Path, nargs="*", default=[], help="policy files to replay on the same questions")
    p.add_argument("--note", default=None, help="a paragraph for the markdown, after the table")
    args = p.parse_args(argv)
    runs = [name.partition(":") for name in args.names]
    logs = [RESULTS / f"eval-{name}.questions.jsonl" for name, _, _ in runs]
    records = [
        r
        for log, (_, _, only) in zip(logs, runs, strict=True)
        for r in read_log(log)
        if not only or r["strategy"] in only.split(",")
    ]
    for path in args.replay:
        records += replay(records, Policy.load(path), f"{REPLAY}{path.stem}")
    result = compare(records)
    reports = [RESULTS / f"eval-{name}.json" for name, _, _ in runs]  # each run's meta: which policy `auto` used
    policies = {json.loads(r.read_text()).get("policy", "shipped") if r.exists() else "shipped" for r in reports}
    path = write_results(
        f"router-{args.output or runs[0][0]}",
        "auto vs single strategies on a mixed set"
        if "auto_ran" in result
        else "replayed policies vs single strategies",
        records[0]["model"],
        result.pop("rows"),
        source=[log.name for log in logs],
        lengths=sorted({r["length"] for r in records}),
        tasks=sorted({r["task"] for r in records}),
        **({"policy": ", ".join(sorted(policies))} if "auto_ran" in result else {}),  # the policy `auto` ran with
        replayed_policies=[str(p) for p in args.replay],
        **result,
        **({"note": args.note} if args.note else {}),  # shown under the table
    )
    print(path)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
