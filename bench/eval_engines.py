"""Which engine should run the eval baseline? Times the same questions through `full` on each engine config.

Writes bench/results/eval-engines.json and .md. Usage (vLLM spawns, hence the main guard):
    PYTHONPATH=. python bench/eval_engines.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from engines import EngineConfig, create_engine
from evals.report import commit, machine
from evals.runner import run_question
from evals.tasks import generate

QUESTIONS = [("niah_single", 2048, 0), ("niah_single", 2048, 1), ("qa", 4096, 0), ("babilong", 4096, 1)]
CONFIGS = {
    "native-1-thread": EngineConfig(kind="native", threads=1),
    "native-2-threads": EngineConfig(kind="native", threads=2),
    "vllm-in-process": EngineConfig(kind="vllm"),
}


def main() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    names = sys.argv[1:] or list(CONFIGS)
    rows = []
    for name in names:
        start = time.perf_counter()
        engine = create_engine(CONFIGS[name])
        load = time.perf_counter() - start
        for task, length, seed in QUESTIONS:
            sample = generate(task, engine, length, seed)
            r = run_question("full", sample, engine)
            rows.append(
                {
                    "engine": name,
                    "task": task,
                    "length": length,
                    "seed": seed,
                    "load_seconds": round(load, 1),
                    "seconds": r["seconds"],
                    "tokens_generated": r["tokens_generated"],
                    "accuracy": r["accuracy"],
                    "prediction": r["prediction"],
                }
            )
            print(rows[-1], flush=True)
        del engine
    base = {(r["task"], r["length"], r["seed"]): r["seconds"] for r in rows if r["engine"] == names[0]}
    for r in rows:
        r["speedup_vs_" + names[0]] = round(base[(r["task"], r["length"], r["seed"])] / r["seconds"], 2)
    doc = {
        "benchmark": "eval-engines",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "model": "smollm2",
        "rows": rows,
    }
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval-engines.json").write_text(json.dumps(doc, indent=2) + "\n")
    head = ["engine", "task", "length", "seed", "load_seconds", "seconds", "tokens_generated", "accuracy"]
    lines = [
        f"# eval-engines ({doc['date']}, {doc['machine']}, commit {doc['commit']})",
        "",
        "Same questions through `full` on each engine; the machine was shared with other jobs, so compare "
        "within this run only.",
        "",
        "| " + " | ".join(head) + f" | speedup_vs_{names[0]} |",
        "|" + "---|" * (len(head) + 1),
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r[h]) for h in head) + f" | {r['speedup_vs_' + names[0]]} |")
    (out / "eval-engines.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
