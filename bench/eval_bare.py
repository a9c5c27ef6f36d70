"""The harness's questions answered by `memagent` or `gemfilter` without the service stack: for a GPU host that has
only torch, transformers and peft (no LangGraph, no Qdrant, no vLLM).

Each question is a harness sample (evals.tasks.generate, the evaluation seeds) read by the strategy's own `run`
(memagent with or without its adapter), scored with the harness metric, and
appended to `eval-<name>.questions.jsonl` in the question-log format of `tome eval` (the strategy's details, such
as memagent's per-segment memory trace, included), so that here

    tome eval --report-only --strategy STRATEGY --name NAME --tasks ... --lengths ... --samples N

writes the usual eval table and plots from it. Questions already in the log are skipped (a stopped run resumes),
and `--deadline` stops before a host's time limit, between questions.

    python bench/eval_bare.py --strategy memagent --tasks niah_single,vt --lengths 128K --n 2 --name memagent-128k
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from compressors.gemfilter import GemFilter, GemFilterConfig  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from engines.base import Engine  # noqa: E402
from engines.strategy import Strategy  # noqa: E402
from evals.cli import parse_length  # noqa: E402
from evals.tasks import Sample, generate  # noqa: E402
from memory.memagent import MemAgent, MemAgentConfig  # noqa: E402

STRATEGIES: dict[str, Callable[[argparse.Namespace], Strategy]] = {
    "memagent": lambda args: MemAgent(MemAgentConfig(adapter=args.adapter)),
    "gemfilter": lambda args: GemFilter(
        GemFilterConfig(
            layer=args.layer, top_k=args.top_k, unit=args.unit, unit_top=args.unit_top, contrast=args.contrast
        )
    ),
}


def ask(strategy: Strategy, sample: Sample, engine: Engine) -> dict[str, Any]:
    started = time.perf_counter()
    last = [started]

    def progress(done: int, total: int, message: str) -> None:
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"  {sample.task} {sample.length} seed {sample.seed}: {done}/{total} {message}", flush=True)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    answer = strategy.run(sample.document, [sample.question], engine, progress)[0]
    return {
        "status": "ok",
        "ran": strategy.name,
        **sample.scored(answer),
        "seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "details": answer.details,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--strategy", choices=sorted(STRATEGIES), default="memagent")
    p.add_argument("--tasks", default="niah_single,niah_multikey,vt,babilong,qa")
    p.add_argument("--lengths", default="128K")
    p.add_argument("--seeds-from", type=int, default=0)
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--adapter", default="auto", help="memagent: auto (the shipped one), none (base model), a folder")
    p.add_argument("--top-k", type=int, default=GemFilterConfig.top_k, help="gemfilter: context tokens kept")
    p.add_argument("--unit", default=GemFilterConfig.unit, help="gemfilter: kept whole, sentence or token")
    p.add_argument("--layer", type=int, default=None, help="gemfilter: layer r (default: the model's calibrated one)")
    p.add_argument(
        "--contrast",
        action=argparse.BooleanOptionalAction,
        default=GemFilterConfig.contrast,
        help="gemfilter: score against a prompt without the question",
    )
    p.add_argument("--unit-top", type=int, default=GemFilterConfig.unit_top, help="gemfilter: tokens a unit averages")
    p.add_argument("--name", default="bare")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--deadline", type=float, default=None, help="seconds; no new question starts after this")
    args = p.parse_args()

    started = time.perf_counter()
    engine = create_engine(EngineConfig(kind="native", device=args.device, dtype=args.dtype))
    strategy = STRATEGIES[args.strategy](args)
    log = Path(args.out) / f"eval-{args.name}.questions.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if log.exists():
        done = {(r["task"], r["length"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())}
    for seed in range(args.seeds_from, args.seeds_from + args.n):  # rounds of one seed: a stopped run stays balanced
        for length in map(parse_length, args.lengths.split(",")):
            for task in args.tasks.split(","):
                if (task, length, seed) in done:
                    continue
                if args.deadline and time.perf_counter() - started > args.deadline:
                    print("deadline reached", flush=True)
                    return
                sample = generate(task, engine, length, seed)
                record = {"strategy": args.strategy, "engine": engine.name, "model": engine.model_name}
                setting = {
                    "memagent": {"adapter_setting": args.adapter},
                    "gemfilter": {"top_k": args.top_k, "unit": args.unit, "unit_top": args.unit_top},
                }.get(args.strategy, {})
                record |= sample.record() | setting | {"dtype": str(engine.dtype)}
                record |= ask(strategy, sample, engine)
                with log.open("a") as f:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                print(
                    f"{task} {length} seed {seed}: {record['accuracy']} in {record['seconds']} s "
                    f"({record['calls']} calls): {record['prediction'][:100]!r}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
