"""Dense-only against hybrid (dense + lexical) retrieval in `rag`, on the same harness questions in one run.

For every question the document is indexed once (both configs share the index: the lexical score is computed
from the passages' text, nothing more is stored) and then:
- for each `--weights` value, retrieval alone: whether the units holding the needed facts are read, and whether
  the read was focused (one unit, the model's easiest case);
- for each `--answer` config (lexical weight, focused-read window), the whole strategy (`Rag.run`) answers and is
  scored with the harness metric.
Rows follow DESIGN.md (strategy, task, length, n, accuracy, calls, tokens_read, seconds) with `lexical_weight`
and `focus_tokens` as the config and the first `--answer` config on the same questions as the baseline.

    python bench/rag_hybrid.py --tasks niah_single --lengths 128K --seeds-from 420 --n 20 --name rag-hybrid-niah-128k
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402
from bench.rag_traces import needed_facts  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from evals.cli import parse_length  # noqa: E402
from evals.metrics import score  # noqa: E402
from evals.tasks import generate  # noqa: E402
from memory.rag import Rag, RagConfig  # noqa: E402


def quiet(done: int, total: int, message: str) -> None:
    pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", default="niah_single")
    p.add_argument("--lengths", default="128K")
    p.add_argument("--seeds-from", type=int, default=400)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5], help="retrieval only")
    p.add_argument(
        "--answer",
        nargs="*",
        default=["0:0", "0.3:0", "0.3:384"],
        help="configs that also answer, WEIGHT:FOCUS_TOKENS (0 focus: a unit read alone is read whole); the first "
        "is the baseline",
    )
    p.add_argument("--name", default="rag-hybrid")
    args = p.parse_args()

    engine = create_engine(EngineConfig(kind="native"))
    store = Path(tempfile.mkdtemp(prefix="rag-hybrid-"))
    focus = RagConfig().focus_tokens
    answer_configs = [(float(w), int(f)) for w, f in (a.split(":") for a in args.answer)]
    configs = sorted({(w, focus) for w in args.weights} | set(answer_configs))
    retrieval: dict[tuple[str, int, tuple[float, int]], list[dict[str, Any]]] = defaultdict(list)
    answers: dict[tuple[str, int, tuple[float, int]], list[dict[str, Any]]] = defaultdict(list)
    log = Path("bench/results") / f"{args.name}.questions.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    for task in args.tasks.split(","):
        for length in map(parse_length, args.lengths.split(",")):
            for seed in range(args.seeds_from, args.seeds_from + args.n):
                sample = generate(task, engine, length, seed)
                doc, text = sample.document, sample.document.text
                facts = [text.index(f) for f in needed_facts(sample)]
                for w, f in configs:
                    rag = Rag(RagConfig(qdrant_path=store, lexical_weight=w, focus_tokens=f))
                    start = time.perf_counter()
                    r = rag.retrieve(doc, [sample.question], engine, quiet)[0]
                    read = sum(any(s <= at < e for s, e in r.units) for at in facts) / len(facts)
                    record = {"task": task, "length": length, "seed": seed, "lexical_weight": w, "focus_tokens": f}
                    record["facts_read"] = read
                    record |= {"focused": len(r.units) == 1, "units_read": len(r.units), "top": r.ranked[0][1]}
                    record["margin"] = round(r.ranked[0][1] - r.ranked[1][1], 4) if len(r.ranked) > 1 else None
                    record["retrieve_seconds"] = round(time.perf_counter() - start, 3)
                    if (w, f) in answer_configs or f == focus:
                        retrieval[(task, length, (w, f))].append(record)
                    if (w, f) in answer_configs:
                        start = time.perf_counter()
                        a = rag.run(doc, [sample.question], engine, quiet)[0]
                        record |= {
                            "accuracy": score(sample.metric, a.text, sample.answers),
                            "prediction": a.text,
                            "calls": a.cost.calls,
                            "tokens_read": a.cost.tokens_read,
                            "seconds": round(time.perf_counter() - start, 3),
                        }
                        answers[(task, length, (w, f))].append(record)
                    with log.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(json.dumps(record), flush=True)
                rows = summarize(retrieval, answers, answer_configs[0])
                write_results(args.name, "rag_hybrid", "all-MiniLM-L6-v2 + " + engine.model_name, rows)


def mean(records: list[dict[str, Any]], key: str) -> float:
    return round(sum(float(r[key]) for r in records) / len(records), 4)


def summarize(
    retrieval: dict[tuple[str, int, tuple[float, int]], list[dict[str, Any]]],
    answers: dict[tuple[str, int, tuple[float, int]], list[dict[str, Any]]],
    baseline: tuple[float, int],
) -> list[dict[str, Any]]:
    rows = []
    for (task, length, (w, f)), records in sorted(retrieval.items()):
        answered = answers.get((task, length, (w, f)), [])
        base = answers.get((task, length, baseline), [])
        row: dict[str, Any] = {"strategy": "rag", "lexical_weight": w, "focus_tokens": f, "task": task}
        row["length"] = length
        row |= {"n": len(records), "facts_read": mean(records, "facts_read"), "focused": mean(records, "focused")}
        row |= {"units_read": mean(records, "units_read")}
        margins = [r for r in records if r["margin"] is not None]
        row["margin"] = mean(margins, "margin") if margins else None  # best unit's lead over the second
        row |= dict.fromkeys(("accuracy", "calls", "tokens_read", "seconds", "baseline", "baseline_accuracy"))
        row["baseline_tokens_read"] = None  # every row has every column: the markdown table reads the first
        if answered:
            row |= {k: mean(answered, k) for k in ("accuracy", "calls", "tokens_read", "seconds")}
        if base and len(base) == len(answered):
            row |= {"baseline": f"lexical_weight {baseline[0]}, focus_tokens {baseline[1]}"}
            row["baseline_accuracy"] = mean(base, "accuracy")
            row["baseline_tokens_read"] = mean(base, "tokens_read")
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
