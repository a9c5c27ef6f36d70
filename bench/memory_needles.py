"""Planted needles in long real text, answered by the memory strategies (and `full` where it fits, as baseline).

A stop-gap yardstick until the evaluation harness lands: RULER-style needles ("The special magic number
for K is V.") planted at random depths in a public-domain haystack, one document per sample.
- niah_single: one needle, one question.
- niah_multikey: four needles with different keys, one asked.
- niah_multiquery: four needles, all four asked about the same document in one pass (one memory each).
Writes bench/results/<name>.json (+ .md) and the per-step traces of every sample to <name>.traces.jsonl.

    python bench/memory_needles.py --lengths 8192 32768 --n 4 --strategies memagent rag full
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write_results  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from engines.settings import Settings  # noqa: E402
from engines.text import paragraphs_of, plant  # noqa: E402
from engines.types import Document, Task  # noqa: E402
from evals.corpus import CORPUS_DIR  # noqa: E402
from memory.memagent import MemAgent, MemAgentConfig  # noqa: E402
from memory.rag import Rag, RagConfig  # noqa: E402
from workflows.registry import build_strategies, get_strategy  # noqa: E402

KEYS = [
    "blue harbor", "silent forest", "copper kettle", "northern bridge", "paper lantern", "quiet engine",
    "amber valley", "frozen orchard", "velvet tower", "broken compass", "crimson meadow", "hollow drum",
]  # fmt: skip


def needle(key: str, value: str) -> str:
    return f"The special magic number for the {key} is {value}."


def question(key: str) -> str:
    return f"What is the special magic number for the {key}?"


def make_sample(engine, haystack_ids: list[int], length: int, task: str, rng: random.Random):
    keys = rng.sample(KEYS, 1 if task == "niah_single" else 4)
    values = [str(rng.randint(1_000_000, 9_999_999)) for _ in keys]
    needles = [needle(k, v) for k, v in zip(keys, values, strict=True)]
    budget = length - sum(engine.count_tokens(n) + 4 for n in needles)
    start = rng.randint(0, max(0, len(haystack_ids) - budget))
    body = engine.detokenize(haystack_ids[start : start + budget])
    units = paragraphs_of(body)
    order: list[int | str] = list(range(len(units)))  # the paragraphs, then each needle inserted after a random one
    for n in needles:
        order.insert(rng.randint(1, max(1, len(order) - 1)), n)
    before = [sum(isinstance(x, int) for x in order[:i]) for i, x in enumerate(order)]  # paragraphs before each
    placed = [(before[i] / len(units), x) for i, x in enumerate(order) if isinstance(x, str)]
    text = plant(units, placed, paragraphs=True)
    asked = list(range(len(keys))) if task == "niah_multiquery" else [0]
    tasks = [Task(question(keys[i]), max_answer_tokens=32) for i in asked]
    return Document(text), tasks, [values[i] for i in asked]


VARIANTS = {
    "memagent-append": lambda: MemAgent(MemAgentConfig(update="append")),
    "memagent-2k": lambda: MemAgent(MemAgentConfig(segment_tokens=2048)),
    "rag-3k": lambda: Rag(RagConfig(unit_tokens=1024, read_tokens=3072)),
}


def strategy_for(name: str):
    return VARIANTS[name]() if name in VARIANTS else get_strategy(build_strategies(Settings()), name)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--tasks", nargs="+", default=["niah_single", "niah_multikey", "niah_multiquery"])
    p.add_argument("--strategies", nargs="+", default=["memagent", "rag", "full"])
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--haystack", default=str(CORPUS_DIR / "thoreau_walden_and_civil_disobedience.txt"))
    p.add_argument("--name", default="memory_needles")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit", default=None, help="the code's commit, where the checkout is not a git clone of it")
    args = p.parse_args()

    engine = create_engine(EngineConfig(kind="native"))
    haystack_ids = engine.tokenize(Path(args.haystack).read_text())
    rows = []
    commit = {"commit": args.commit} if args.commit else {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    traces = open(RESULTS / f"{args.name}.traces.jsonl", "w")
    for length in args.lengths:
        for task in args.tasks:
            rng = random.Random(f"{args.seed}-{length}-{task}")
            samples = [make_sample(engine, haystack_ids, length, task, rng) for _ in range(args.n)]
            for name in args.strategies:
                strategy = strategy_for(name)
                tokens = engine.count_tokens(samples[0][0].text)
                if not strategy.fits(tokens, samples[0][1], engine):
                    continue
                correct = asked = calls = read = 0
                seconds = 0.0
                for i, (doc, tasks, values) in enumerate(samples):
                    start = time.perf_counter()
                    answers = strategy.run(doc, tasks, engine, lambda d, t, m: None)
                    seconds += time.perf_counter() - start
                    for a, t, v in zip(answers, tasks, values, strict=True):
                        ok = v in a.text
                        correct += ok
                        asked += 1
                        calls += a.cost.calls
                        read += a.cost.tokens_read
                        trace = {"strategy": name, "task": task, "length": length, "sample": i,
                                 "question": t.question, "expected": v, "answer": a.text, "correct": ok,
                                 "details": a.details}  # fmt: skip
                        traces.write(json.dumps(trace) + "\n")
                        traces.flush()
                row = {
                    "strategy": name, "task": task, "length": length, "n": asked, "accuracy": correct / asked,
                    "calls": calls / asked, "tokens_read": read / asked, "seconds": seconds / asked,
                }  # fmt: skip
                print(json.dumps(row), flush=True)
                rows.append(row)
                device = str(getattr(engine, "device", "cpu"))
                extra = {"device": device, "seed": args.seed, **commit}
                write_results(args.name, "memory_needles", engine.model_name, rows, **extra)


if __name__ == "__main__":
    main()
