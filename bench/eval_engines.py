"""Which engine should run the eval baseline? Times the same questions through `full` on each engine config.

Writes bench/results/eval-engines.json and .md. Usage (vLLM spawns, hence the main guard):
    PYTHONPATH=. python bench/eval_engines.py [CONFIG ...] [--questions=N]
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from engines import EngineConfig, create_engine
from engines.settings import Settings
from evals.report import commit, machine
from evals.runner import run_question
from evals.tasks import generate
from workflows.registry import build_strategies

QUESTIONS = [("niah_single", 2048, 0), ("niah_single", 2048, 1), ("qa", 4096, 0), ("babilong", 4096, 1)]
CONFIGS = {
    "native-1-thread": EngineConfig(kind="native", threads=1),
    "native-2-threads": EngineConfig(kind="native", threads=2),
    "vllm-in-process": EngineConfig(kind="vllm"),
}


def write(rows: list[dict], first: str) -> None:
    """Rewritten after every question, so a run stopped early keeps what it measured."""
    base = {(r["task"], r["length"], r["seed"]): r["seconds"] for r in rows if r["engine"] == first}
    for r in rows:
        key = (r["task"], r["length"], r["seed"])
        r["speedup_vs_" + first] = round(base[key] / r["seconds"], 2) if key in base else None
    doc = {
        "benchmark": "eval_engines",
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
        "Same questions through `full` on each engine, one after another; the machine was shared with other jobs,",
        "so compare within this run only.",
        "",
        "| " + " | ".join(head) + f" | speedup_vs_{first} |",
        "|" + "---|" * (len(head) + 1),
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r[h]) for h in head) + f" | {r['speedup_vs_' + first]} |")
    (out / "eval-engines.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    args = [a for a in sys.argv[1:] if not a.startswith("--questions=")]
    count = next((int(a.split("=")[1]) for a in sys.argv[1:] if a.startswith("--questions=")), len(QUESTIONS))
    names = args or list(CONFIGS)
    strategies = build_strategies(Settings())
    rows: list[dict] = []
    for name in names:
        start = time.perf_counter()
        engine = create_engine(CONFIGS[name])
        load = time.perf_counter() - start
        for task, length, seed in QUESTIONS[:count]:
            r = run_question("full", generate(task, engine, length, seed), engine, strategies=strategies)
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
            write(rows, names[0])
        del engine


if __name__ == "__main__":
    main()
