"""`tome eval` (also `python -m evals`): run strategies over the long-context tasks and write the report."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engines.settings import Settings
    from evals.presets import Preset
    from evals.runner import Plan
    from workflows.registry import Strategies

log = logging.getLogger(__name__)


def parse_length(text: str) -> int:
    """`8K`, `8192`, or `doc` (docqa: the whole document at its natural length, recorded as length 0)."""
    text = text.strip().upper()
    if text in ("DOC", "WHOLE"):
        return 0
    return int(text[:-1]) * 1024 if text.endswith("K") else int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tome eval",
        description="Evaluate strategies on RULER/BABILong-style tasks; writes bench/results/eval-NAME.{json,md,png}.",
    )
    p.add_argument("--strategy", default="all", help="all (default: every registered strategy), auto, or a comma list")
    p.add_argument("--preset", default="smoke", help="smoke (minutes) or full (about an hour a strategy)")
    p.add_argument("--tasks", default=None, help="comma list of tasks (default: the preset's)")
    p.add_argument("--lengths", default=None, help="comma list such as 2K,4K or 2048 (default: the preset's)")
    p.add_argument("--samples", type=int, default=None, help="questions per task and length (default: the preset's)")
    p.add_argument(
        "--seeds-from",
        type=int,
        default=0,
        help="first seed (default 0); a fresh range gives questions no earlier run (or fitted policy) has seen",
    )
    p.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="routing policy file for `auto` (default: the model's shipped one); `tome router fit` makes one",
    )
    p.add_argument(
        "--split",
        choices=["dev", "test"],
        default="dev",
        help="docqa's documents: dev (default; for every choice) or test (for claims only)",
    )
    p.add_argument("--name", default=None, help="results name (default: the preset name)")
    p.add_argument("--out", default="bench/results", help="results folder")
    p.add_argument("--engine", choices=["native", "vllm"], default=None, help="default: TOME_ENGINE or native")
    p.add_argument("--model", default=None, help="default: TOME_MODEL or smollm2")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the native engine (TOME_THREADS)")
    p.add_argument("--fresh", action="store_true", help="discard an earlier log of this name instead of resuming it")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="ask nothing: write the report from the questions already in the log (e.g. of a stopped run)",
    )
    return p


class UsageError(ValueError):
    """A request `tome eval` cannot run (unknown preset, task or strategy; nothing logged to report on)."""


def plan_of(args: argparse.Namespace, registry: Collection[str]) -> tuple[Preset, Plan]:
    """The preset and the questions to ask: the arguments where given, the preset's choices otherwise."""
    from evals.presets import PRESETS
    from evals.runner import Plan, strategy_names
    from evals.tasks import TASKS

    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[args.preset]
    strategies = strategy_names(args.strategy, registry)
    tasks = tuple(t.strip() for t in args.tasks.split(",")) if args.tasks else preset.tasks
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"unknown task {', '.join(unknown)}; tasks: {', '.join(TASKS)}")
    lengths = tuple(parse_length(n) for n in args.lengths.split(",")) if args.lengths else preset.lengths
    if args.samples:
        samples = {n: args.samples for n in lengths}
    elif tasks == ("docqa",):  # every question of the split that can be asked at each length
        from evals.tasks.docqa import asked

        samples = {n: len(asked(args.split, n)) for n in lengths}
    else:
        samples = {n: preset.samples.get(n, 1) for n in lengths}
    return preset, Plan(strategies, tasks, lengths, samples, seeds_from=args.seeds_from, split=args.split)


def logged_answers(
    args: argparse.Namespace, plan: Plan, log_path: Path, settings: Settings
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`--report-only`: the plan's questions already in the log, and the engine they name."""
    from evals.runner import question_key, read_log

    wanted = plan.keys()
    records = [r for r in read_log(log_path) if question_key(r) in wanted]
    if not records:
        raise UsageError(f"no questions of this plan in {log_path}")
    engine_meta = {
        "model": records[0].get("model", args.model or settings.model),
        "engine": records[0].get("engine", args.engine or settings.engine),
        "max_context": settings.max_context,
    }
    return records, engine_meta


def asked_answers(
    args: argparse.Namespace, plan: Plan, log_path: Path, settings: Settings, registry: Strategies, started: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ask the plan's questions not yet in the log (progress on stderr); all its records and the engine used."""
    from engines import create_engine
    from evals.runner import run_plan
    from workflows.policy import Policy

    engine = create_engine(settings.engine_config(kind=args.engine, model=args.model, threads=args.threads))
    engine_meta = {"model": engine.model_name, "engine": engine.name, "max_context": engine.max_context}

    def progress(done: int, total: int, message: str) -> None:
        print(f"[{done}/{total} {time.perf_counter() - started:.0f}s] {message}", file=sys.stderr, flush=True)

    policy = Policy.load(args.policy) if args.policy else None
    return run_plan(plan, engine, log_path, progress, policy, strategies=registry), engine_meta


def run_meta(
    args: argparse.Namespace,
    preset: Preset,
    plan: Plan,
    records: list[dict[str, Any]],
    settings: Settings,
    log_path: Path,
    started: float,
) -> dict[str, Any]:
    """What the report says about the run besides its rows."""
    return {
        "threads": settings.threads if args.threads is None else args.threads,
        "preset": preset.name,
        "strategies": list(plan.strategies),
        "tasks": list(plan.tasks),
        "lengths": list(plan.lengths),
        "samples": {str(n): k for n, k in plan.samples.items()},
        "seeds_from": args.seeds_from,
        "split": args.split if "docqa" in plan.tasks else None,
        "policy": str(args.policy) if args.policy else "shipped",
        "questions_planned": plan.total,
        "questions_answered": len(records),
        "wall_seconds": round(time.perf_counter() - started, 1),  # this invocation only (a resumed run adds up)
        "question_seconds_total": round(sum(r.get("seconds") or 0 for r in records), 1),
        "questions_log": log_path.name,
    }


def main(argv: list[str] | None = None) -> int:
    """Plan the questions, ask those not yet logged (or only read the log), write the report's files."""
    args = build_parser().parse_args(argv)
    from engines.settings import Settings
    from evals import report
    from workflows.registry import build_strategies

    settings = Settings()
    registry = build_strategies(settings)
    try:
        preset, plan = plan_of(args, registry)
    except ValueError as exc:
        print(f"tome eval: error: {exc}", file=sys.stderr)
        return 2
    name = args.name or preset.name
    out = Path(args.out)
    log_path = out / f"eval-{name}.questions.jsonl"
    if args.fresh and log_path.exists():
        log_path.unlink()
    started = time.perf_counter()
    if args.report_only:
        try:
            records, engine_meta = logged_answers(args, plan, log_path, settings)
        except UsageError as exc:
            print(f"tome eval: error: {exc}", file=sys.stderr)
            return 2
        commit = f"{report.commit()} (report only; questions from {log_path.name})"  # the log may span several runs
    else:
        commit = report.commit()  # the code that ran, taken before the (long) run
        records, engine_meta = asked_answers(args, plan, log_path, settings, registry, started)
    meta = {"commit": commit, **engine_meta, **run_meta(args, preset, plan, records, settings, log_path, started)}
    for path in report.write(name, records, meta, out):
        print(path)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(main())
