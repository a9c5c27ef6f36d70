"""Running strategies over samples through the product's own path (workflows.graph.run_job), one question at a time.

Every question becomes one flat record, appended to a JSONL log as soon as it is done, so a long run that
stops loses nothing and a rerun with the same log resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.base import ContextOverflowError, Engine
from evals.tasks import Sample, generate
from workflows.graph import run_job
from workflows.policy import Policy
from workflows.registry import Strategies
from workflows.router import NoStrategyError

log = logging.getLogger(__name__)

AUTO = "auto"  # the router's choice: not a registered strategy but runnable like one


def strategy_names(requested: str, registered: Collection[str]) -> list[str]:
    """`all` means every registered strategy; otherwise a comma list of registered names (or `auto`)."""
    if requested == "all":
        return list(registered)
    names = [n.strip() for n in requested.split(",") if n.strip()]
    unknown = [n for n in names if n not in registered and n != AUTO]
    if unknown:
        raise ValueError(f"unknown strategy {', '.join(unknown)}; registered: {', '.join(registered)} (or auto, all)")
    return names


class PeakMemory:
    """Highest resident memory of this process while the block runs (sampled), and the CUDA peak if any."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_rss = 0
        self.cuda_peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self.rss())

    @contextmanager
    def track(self) -> Iterator[PeakMemory]:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        self.peak_rss = self.rss()
        watcher = threading.Thread(target=self._watch, daemon=True)
        watcher.start()
        try:
            yield self
        finally:
            self._stop.set()
            watcher.join()
            self.peak_rss = max(self.peak_rss, self.rss())
            if cuda:
                self.cuda_peak = torch.cuda.max_memory_allocated()


def run_question(
    strategy: str, sample: Sample, engine: Engine, policy: Policy | None = None, *, strategies: Strategies
) -> dict[str, Any]:
    """One question through run_job. A strategy that cannot take the document says so; nothing is truncated."""
    record: dict[str, Any] = {
        "strategy": strategy,
        "engine": engine.name,
        "model": engine.model_name,
        **sample.record(),
    }
    memory = PeakMemory()
    start = time.perf_counter()
    try:
        with memory.track():
            result = run_job(
                sample.document, [sample.question], engine, strategy=strategy, policy=policy, strategies=strategies
            )
    except NoStrategyError as exc:  # raised by the router before any model call
        return {**record, "status": "does_not_fit", "accuracy": None, "reason": str(exc)}
    except ContextOverflowError as exc:  # the strategy said it fits but the engine disagreed: a strategy bug
        return {**record, "status": "error", "accuracy": None, "reason": f"context overflow: {exc}"}
    except Exception as exc:  # one failing question must not lose a long run; the record keeps the trace
        log.exception("%s failed on %s/%s/%s", strategy, sample.task, sample.length, sample.seed)
        trace = traceback.format_exc(limit=3)
        return {**record, "status": "error", "accuracy": None, "reason": f"{type(exc).__name__}: {exc}\n{trace}"}
    answer = result.answers[0]
    return {
        **record,
        "status": "ok",
        "ran": result.strategy,
        "supported": result.supported[0],
        "router_kind": result.kind,
        **sample.scored(answer),
        "seconds": round(time.perf_counter() - start, 3),
        "peak_rss_mb": round(memory.peak_rss / 2**20, 1),
        "peak_cuda_mb": round(memory.cuda_peak / 2**20, 1) if memory.cuda_peak else None,
        "details": answer.details or None,  # a strategy's own account (memagent: the per-segment trace)
    }


@dataclass(frozen=True)
class Plan:
    """Which questions to ask: every strategy x task x length, with `samples[length]` seeds each.

    Questions come in rounds of one seed over every length and task, so a run stopped early is still a
    balanced (smaller) sample of the whole grid.
    """

    strategies: Sequence[str]
    tasks: Sequence[str]
    lengths: Sequence[int]
    samples: dict[int, int]
    seeds_from: int = 0
    split: str = "dev"  # docqa's documents: dev for every choice, test for claims only

    def questions(self) -> Iterator[tuple[str, int, int]]:
        for i in range(max(self.samples.values())):
            for length in self.lengths:
                if i < self.samples[length]:
                    for task in self.tasks:
                        yield task, length, self.seeds_from + i

    def keys(self) -> set[tuple[str, str, int, int]]:
        """The log keys (runner.question_key) of every planned question."""
        tag = lambda t: f"{t}:{self.split}" if t == "docqa" else t  # noqa: E731
        return {(s, tag(t), n, d) for s in self.strategies for t, n, d in self.questions()}

    @property
    def total(self) -> int:
        return len(self.strategies) * sum(self.samples[length] * len(self.tasks) for length in self.lengths)


def question_key(r: dict[str, Any]) -> tuple[str, str, int, int]:
    task = f"{r['task']}:{r['split']}" if r.get("split") else r["task"]  # docqa's splits share seeds
    return (r["strategy"], task, r["length"], r["seed"])


def read_log(path: Path) -> list[dict[str, Any]]:
    """The questions answered so far; the first record of a question wins (two runs may share one log)."""
    if not path.exists():
        return []
    records: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records.setdefault(question_key(record), record)
    return list(records.values())


def run_plan(
    plan: Plan,
    engine: Engine,
    log_path: Path,
    progress: Callable[[int, int, str], None] | None = None,
    policy: Policy | None = None,
    *,
    strategies: Strategies,
) -> list[dict[str, Any]]:
    """Ask every planned question of every strategy; records already in `log_path` are kept, not rerun."""
    records = read_log(log_path)
    done = {question_key(r) for r in records}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    count = len(done)
    with log_path.open("a", encoding="utf-8") as out:
        for task, length, seed in plan.questions():
            keyed = f"{task}:{plan.split}" if task == "docqa" else task
            todo = [s for s in plan.strategies if (s, keyed, length, seed) not in done]
            if not todo:
                continue
            sample = generate(task, engine, length, seed, plan.split)  # once per question, shared by every strategy
            for strategy in todo:
                if progress:
                    progress(count, plan.total, f"{strategy} {task} {length} #{seed}")
                record = run_question(strategy, sample, engine, policy, strategies=strategies)
                records.append(record)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
                count += 1
    if progress:
        progress(count, plan.total, "done")
    wanted = plan.keys()
    return [r for r in records if question_key(r) in wanted]
