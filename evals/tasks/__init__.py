"""Long-context task generators (RULER- and BABILong-style), by name as in DESIGN.md.

Every generator is `(tokenizer, length, seed) -> Sample`: offline, deterministic in (task, length, seed), with
the length counted in the engine's own tokens.

Held out for evaluation (a training issue must never train on these): the seeds in EVAL_SEEDS and the
documents in evals.corpus.EVAL_DOCS. Training data may reuse the generators with seeds outside EVAL_SEEDS
and other corpus documents.
"""

from __future__ import annotations

from collections.abc import Callable

from evals.corpus import EVAL_DOCS
from evals.tasks.aggregation import cwe, fwe
from evals.tasks.babilong import babilong
from evals.tasks.docqa import SPLITS, WHOLE, docqa
from evals.tasks.niah import niah_multikey, niah_multiquery, niah_multivalue, niah_single
from evals.tasks.qa import qa
from evals.tasks.sample import DEPTHS, Sample, Tokenizer
from evals.tasks.vt import vt

Generator = Callable[[Tokenizer, int, int], Sample]

TASKS: dict[str, Generator] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "vt": vt,
    "cwe": cwe,
    "fwe": fwe,
    "babilong": babilong,
    "qa": qa,
    "docqa": docqa,  # the dev split; generate(..., split="test") asks the test split
}

# Seeds the evals use; training generators must draw from seeds >= len(EVAL_SEEDS).
EVAL_SEEDS = range(0, 10_000)

LENGTHS: tuple[int, ...] = (2048, 4096, 8192, 16384, 32768, 65536, 131072)


def generate(task: str, tok: Tokenizer, length: int, seed: int, split: str = "dev") -> Sample:
    """One question. `split` chooses docqa's documents (dev for every choice, test for claims only); the
    generated tasks have no split."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    if task == "docqa":
        return docqa(tok, length, seed, split)
    return TASKS[task](tok, length, seed)


__all__ = ["DEPTHS", "EVAL_DOCS", "EVAL_SEEDS", "LENGTHS", "SPLITS", "TASKS", "WHOLE", "Sample", "generate"]
