"""Why `rag` missed: for each question of an eval log, where the facts it needed were ranked and if they were read.

Reads `tome eval --strategy rag` logs (bench/results/eval-NAME.questions.jsonl, whose `details` hold the units
read and the best ranked units), regenerates each question's document (deterministic by task, length and seed)
to find the facts the answer needs, and writes one row per question: the rank of the unit holding each fact
among the ranked units (None: not among them), how many facts were inside the units read, and the answer's
accuracy; with `--baseline LOG`, the accuracy the other log's run had on the same question. Only the questions
that either run missed, unless `--all`.

    python bench/rag_traces.py eval-rag128-niah-128k --baseline eval-rag128-niah-128k-old
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write_results  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from evals.runner import read_log  # noqa: E402
from evals.tasks import Sample, generate  # noqa: E402


def needed_facts(sample: Sample) -> list[str]:
    """Strings of the document the answer must be read from (each occurs once there)."""
    if sample.task == "qa":
        return [sample.info["evidence"]]
    if sample.task == "babilong":
        return list(sample.info["facts"])
    if sample.task == "vt":
        return [f"VAR {name} =" for name in sample.answers]
    return list(sample.answers)  # needles: the values themselves


def rank_of(at: int, ranked: list[list[Any]]) -> int | None:
    return next((i for i, (start, end, _) in enumerate(ranked) if start <= at < end), None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("log", help="eval name (bench/results/eval-NAME.questions.jsonl without the prefix and suffix)")
    p.add_argument("--baseline", default=None, help="another eval name asked the same questions")
    p.add_argument("--name", default=None, help="results name (default: rag-traces-LOG)")
    p.add_argument("--all", action="store_true", help="every question, not only those missed by either run")
    args = p.parse_args()

    engine = create_engine(EngineConfig(kind="native"))  # the tokenizer only: documents are counted in its tokens
    path = lambda name: RESULTS / f"eval-{name}.questions.jsonl"  # noqa: E731
    base = {(r["task"], r["length"], r["seed"]): r for r in read_log(path(args.baseline))} if args.baseline else {}
    rows = []
    for r in read_log(path(args.log)):
        other = base.get((r["task"], r["length"], r["seed"]))
        if r["status"] != "ok" or r.get("strategy") != "rag":
            continue
        if not args.all and r["accuracy"] == 1 and (other is None or other["accuracy"] == 1):
            continue  # at 128K a document takes a minute to regenerate: by default only the misses are traced
        sample = generate(r["task"], engine, r["length"], r["seed"])
        text = sample.document.text
        read = r["details"]["read"]
        positions = [text.index(f) for f in needed_facts(sample)]
        ranks = [rank_of(at, r["details"]["ranked"]) for at in positions]
        rows.append(
            {
                "task": r["task"],
                "length": r["length"],
                "seed": r["seed"],
                "haystack": r.get("haystack"),
                "facts": len(positions),
                "facts_read": sum(any(s <= at < e for s, e in read) for at in positions),
                "fact_unit_ranks": " ".join(str(k) for k in ranks),
                "units_read": len(read),
                "top_scores": " ".join(f"{s:.3f}" for *_, s in r["details"]["ranked"][:3]),
                "tokens_read": r["tokens_read"],
                "completed": " ".join(f"{a}->{b}" for a, b in r["details"].get("completed", [])),
                "accuracy": r["accuracy"],
                "baseline_accuracy": other["accuracy"] if other else None,
                "baseline_tokens_read": other["tokens_read"] if other else None,
                "prediction": r["prediction"][:100],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    write_results(args.name or f"rag-traces-{args.log}", "rag_traces", engine.model_name, rows, log=args.log)


if __name__ == "__main__":
    main()
