"""Two eval runs on the same questions, question by question: a change against its baseline.

Reads bench/results/eval-BASE.questions.jsonl and eval-NEW.questions.jsonl (written by `tome eval` with the same
tasks, lengths and seeds; e.g. one strategy before and after a change, or the same strategy under two engine
settings) and writes bench/results/NAME.json + .md: per task and length, and per length over all tasks, the
accuracy of each on the questions both answered, how many answers changed, and the time each took.

    PYTHONPATH=. python bench/eval_pair.py sparse-quality-sdpa sparse-quality-vertical_slash --output kernel-quality-cpu
    PYTHONPATH=. python bench/eval_pair.py rag-old rag-new:rag --output rag-cover   # NAME:strategy picks one

With --by-strategy the two runs may hold several strategies each (e.g. `tome eval --strategy all` once per engine):
a row per strategy over the questions both answered with it, its difference in points, and whether the new run is
within --tolerance points of the baseline and no slower a question.

    PYTHONPATH=. python bench/eval_pair.py all-native all-vllm --by-strategy --output engines-vllm-vs-native
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Any

from bench.common import RESULTS, write_results
from evals.runner import read_log

Question = tuple[str, int, int]


def answered(name: str) -> list[dict[str, Any]]:
    return [r for r in read_log(RESULTS / f"eval-{name}.questions.jsonl") if r["status"] == "ok"]


def answers(run: str) -> dict[Question, dict[str, Any]]:
    """One run's answered questions by (task, length, seed); `NAME:strategy` keeps that strategy's."""
    name, _, strategy = run.partition(":")
    records = answered(name)
    strategies = {r["strategy"] for r in records}
    if not strategy and len(strategies) > 1:
        raise SystemExit(f"run {name} holds {sorted(strategies)}: pick one as {name}:STRATEGY")
    return {(r["task"], r["length"], r["seed"]): r for r in records if not strategy or r["strategy"] == strategy}


def row(task: str, length: int | str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    n = len(pairs)
    mean = lambda xs: round(sum(xs) / n, 4)  # noqa: E731
    return {
        "task": task,
        "length": length,
        "n": n,
        "accuracy": mean([new["accuracy"] or 0.0 for _, new in pairs]),
        "baseline_accuracy": mean([base["accuracy"] or 0.0 for base, _ in pairs]),
        "difference": mean([(new["accuracy"] or 0.0) - (base["accuracy"] or 0.0) for base, new in pairs]),
        "same_answer": mean([float(new["prediction"] == base["prediction"]) for base, new in pairs]),
        "tokens_read": mean([new.get("tokens_read") or 0 for _, new in pairs]),
        "baseline_tokens_read": mean([base.get("tokens_read") or 0 for base, _ in pairs]),
        "seconds": mean([new["seconds"] for _, new in pairs]),
        "baseline_seconds": mean([base["seconds"] for base, _ in pairs]),
        **evidence_and_support(pairs),
    }


def evidence_and_support(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """docqa's questions: evidence recall of each run, and how often each called its answer supported and was right
    then (the product's claim and its precision)."""
    out: dict[str, Any] = {}
    for side, prefix in ((1, ""), (0, "baseline_")):
        records = [p[side] for p in pairs]
        recalls = [r["evidence_recall"] for r in records if r.get("evidence_recall") is not None]
        backed = [r for r in records if r.get("supported")]
        if recalls:
            out[f"{prefix}evidence_recall"] = round(sum(recalls) / len(recalls), 4)
        if any("supported" in r for r in records):
            out[f"{prefix}supported"] = round(len(backed) / len(records), 4)
            precision = sum(r["accuracy"] or 0.0 for r in backed) / len(backed) if backed else None
            out[f"{prefix}supported_precision"] = round(precision, 4) if backed else None
    return out


def pair(base: dict[Question, dict[str, Any]], new: dict[Question, dict[str, Any]]) -> list[dict[str, Any]]:
    both = sorted(set(base) & set(new), key=lambda q: (q[1], q[0], q[2]))
    cells: dict[tuple[str, int], list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for q in both:
        kind = new[q].get("kind")  # docqa: a row per question kind
        cells[(f"{q[0]}:{kind}" if kind else q[0], q[1])].append((base[q], new[q]))
        cells[("all", q[1])].append((base[q], new[q]))
    order = sorted(cells, key=lambda c: (c[1], c[0] == "all", c[0]))  # by length, its "all" row last
    return [row(task, length, cells[(task, length)]) for task, length in order]


def by_strategy(base: list[dict[str, Any]], new: list[dict[str, Any]], tolerance: float = 5.0) -> list[dict[str, Any]]:
    """A row per strategy both runs asked, over the questions both answered with it (all tasks and lengths)."""
    key = lambda r: (r["strategy"], r["task"], r["length"], r["seed"])  # noqa: E731
    old = {key(r): r for r in base}
    rows = []
    for strategy in dict.fromkeys(r["strategy"] for r in new):
        pairs = [(old[key(r)], r) for r in new if r["strategy"] == strategy and key(r) in old]
        if not pairs:
            continue
        lengths = sorted({r["length"] for _, r in pairs})
        span = "-".join(f"{n // 1024}K" for n in dict.fromkeys([lengths[0], lengths[-1]]))
        r = {"strategy": strategy, **row("all", span, pairs)}
        r["difference_points"] = round(100 * r["difference"], 1)
        r[f"within_{tolerance:g}_points"] = abs(r["difference_points"]) <= tolerance
        r["not_slower"] = r["seconds"] <= r["baseline_seconds"]
        rows.append(r)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base", help="the baseline run (NAME or NAME:strategy)")
    p.add_argument("new", help="the run measured against it (NAME or NAME:strategy)")
    p.add_argument("--output", required=True, help="results name: bench/results/OUTPUT.{json,md}")
    p.add_argument("--title", default=None, help="the report's heading (default: NEW vs BASE)")
    p.add_argument("--by-strategy", action="store_true", help="a row per strategy of two multi-strategy runs")
    p.add_argument("--tolerance", type=float, default=5.0, help="--by-strategy: points the new run may differ by")
    p.add_argument("--note", default=None, help="a paragraph for the markdown, after the table")
    args = p.parse_args(argv)
    if args.by_strategy:
        base_records, new_records = answered(args.base), answered(args.new)
        rows = by_strategy(base_records, new_records, args.tolerance)
        model = new_records[0]["model"] if new_records else None
    else:
        base, new = answers(args.base), answers(args.new)
        rows = pair(base, new)
        model = next(iter(new.values()), {}).get("model")
    if not rows:
        raise SystemExit("the two runs share no answered question")
    report = RESULTS / f"eval-{args.new.partition(':')[0]}.json"  # the run's machine; absent while it still runs
    path = write_results(
        args.output,
        args.title or f"{args.new} vs {args.base}",
        model,
        rows,
        baseline=args.base,
        measured=args.new,
        machine=json.loads(report.read_text()).get("machine") if report.exists() else None,
        **({"note": args.note} if args.note else {}),  # shown under the table
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
