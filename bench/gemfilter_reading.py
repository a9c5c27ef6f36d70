"""How the answering model reads gemfilter's kept text: one selection per question, read in several ways.

At 128K the needle's sentence reaches the answering model in 37 of 40 fresh questions, but 8 of those are misread
(bench/results/gemfilter-contrast-128k-confirm.md): with a noise haystack the model answers one of the ~150 noise
sentences kept beside the needle ("The sun is yellow."). This script runs gemfilter's selection once per
`niah_single` question (`compressors.gemfilter.select`, the product's defaults, any length) and answers from it
read three ways: the kept spans in document order (`order="document"`, the paper), best last (`order="best_last"`:
the best-scored span nearest the question), and only the best `--small` tokens in document order (`read_tokens`).
Each question is appended to <out>/gemfilter-reading-<name>-<seeds>.questions.jsonl (a stopped run resumes);
`--report-only` turns every log of that name into <out>/gemfilter-reading-<name>.json + .md, per variant and
per haystack.

    PYTHONPATH=. python bench/gemfilter_reading.py --seeds 0-19 --length 8K --name 8k
    PYTHONPATH=. python bench/gemfilter_reading.py --report-only --name 8k
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write_results  # noqa: E402
from compressors.gemfilter import GemFilterConfig, reading, select  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from engines.base import Engine  # noqa: E402
from engines.grounding import complete_fragments  # noqa: E402
from engines.prompting import answer_from_context  # noqa: E402
from evals.cli import parse_length  # noqa: E402
from evals.metrics import score  # noqa: E402
from evals.tasks import generate  # noqa: E402


def ask(engine: Engine, length: int, seed: int, small: int, config: GemFilterConfig) -> dict[str, Any]:
    sample = generate("niah_single", engine, length, seed)
    started = time.perf_counter()
    chosen = select(engine, sample.document.text, sample.question, config)
    record: dict[str, Any] = {
        "seed": seed,
        "length": length,
        "haystack": sample.info["haystack"],
        "depth": sample.depth,
        "layer": chosen.layer,
        "survivor_order": config.survivor_order,
        "select_seconds": round(time.perf_counter() - started, 3),
        "kept": score(sample.metric, chosen.text, sample.answers),
    }
    texts = {o: reading(chosen, o) for o in ("document", "best_last")} | {
        f"best_{small}": reading(chosen, "document", small)
    }
    for name, text in texts.items():
        answer = answer_from_context(engine, text, [sample.question], "gemfilter", [])[0]
        fixed, _ = complete_fragments(answer.text, text, sample.question.question)
        record[name] = score(sample.metric, fixed, sample.answers)
        record[name + "_kept"] = score(sample.metric, text, sample.answers)
        record[name + "_answer"] = fixed[:160]
    return record


def report(name: str, out: Path, machine: str | None) -> None:
    logs = sorted(out.glob(f"gemfilter-reading-{name}-*.questions.jsonl"))
    questions = [json.loads(line) for f in logs for line in f.open()]
    variants = [k for k in questions[0] if k + "_kept" in questions[0]]
    rows = []
    for variant in variants:
        for haystack in (None, "noise", "text"):
            group = [q for q in questions if haystack in (None, q["haystack"])]
            if not group:
                continue
            seeds = sorted(q["seed"] for q in group)
            rows.append(
                {
                    "reading": variant,
                    "survivor_order": group[0].get("survivor_order", "document"),
                    "haystack": haystack or "all",
                    "length": group[0]["length"],
                    "seeds": f"{seeds[0]}-{seeds[-1]}",
                    "n": len(group),
                    "accuracy": round(sum(q[variant] for q in group) / len(group), 4),
                    "needle_read": round(sum(q[variant + "_kept"] for q in group) / len(group), 4),
                    "select_seconds": round(sum(q["select_seconds"] for q in group) / len(group), 2),
                }
            )
    write_results(
        f"gemfilter-reading-{name}",
        f"gemfilter-reading-{name}: one gemfilter selection per question, read in {len(variants)} ways",
        "smollm2",
        rows,
        folder=out,
        machine=machine,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0-19", help="first-last, inclusive, or a comma-separated list")
    p.add_argument("--length", default="8K")
    p.add_argument("--small", type=int, default=256, help="tokens the focused reading keeps")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--name", default="8k")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--survivor-order", default=GemFilterConfig.survivor_order, help="score or document")
    p.add_argument("--deadline", type=float, default=None, help="seconds; no new question starts after this")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--machine", default=None, help="report: where the questions ran (default: this machine)")
    args = p.parse_args()
    if args.report_only:
        report(args.name, args.out, args.machine)
        return 0
    started = time.perf_counter()
    seeds = [int(x) for x in args.seeds.split(",")] if "," in args.seeds else []
    if not seeds:
        first, last = (int(x) for x in args.seeds.split("-"))
        seeds = list(range(first, last + 1))
    log = args.out / f"gemfilter-reading-{args.name}-{args.seeds}.questions.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["seed"] for line in log.open()} if log.exists() else set()
    engine = create_engine(EngineConfig(kind="native", device=args.device, dtype=args.dtype))
    for seed in seeds:
        if seed in done:
            continue
        if args.deadline and time.perf_counter() - started > args.deadline:
            print("deadline reached", flush=True)
            break
        config = GemFilterConfig(survivor_order=args.survivor_order)
        record = ask(engine, parse_length(args.length), seed, args.small, config)
        record["dtype"] = str(engine.dtype)
        with log.open("a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(json.dumps(record, ensure_ascii=False)[:400], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
