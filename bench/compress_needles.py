"""Compression on needle tasks: `gemfilter` and `hard` against `full` (where it fits), SmolLM2 on this machine.

RULER-style niah_single: one "special magic number" sentence planted at evenly spread depths in public-domain
text; correct when the 7-digit number appears in the answer. Per question: accuracy, tokens reaching the
answering model (input_tokens) and wall time from the question to the whole answer (compression, prefill
and at most 32 answer tokens; `ttft_ms` holds it, an upper bound on the time to the first token, since a
separate first-token call would double every prefill on this CPU). Writes bench/results/<name>.json + .md.

    PYTHONPATH=. nice python bench/compress_needles.py [--lengths 8k,32k,128k] [--n 4,3,2] [--model DIR] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.common import machine, write_results
from compressors.calibration import Needle, plant_needle
from compressors.gemfilter import GemFilterConfig, select
from compressors.hard import HardCompression, compress
from engines import EngineConfig, create_engine
from engines.base import Engine, SamplingParams
from engines.prompting import answer_messages, answer_overhead
from engines.types import Task

CORPUS = Path("/work/shared/data/corpus")
FALLBACK = Path(__file__).resolve().parents[1] / "examples" / "walden_long.txt"
SIZES = {"8k": 8192, "32k": 32768, "128k": 131072}


def haystack(engine: Engine, corpus: Path, tokens: int, offset: int) -> str:
    """`tokens` tokens of corpus text (files in name order), starting `offset` files in."""
    files = sorted(corpus.glob("*.txt")) if corpus.exists() else [FALLBACK]
    files = files[offset % len(files) :] + files[: offset % len(files)]
    ids: list[int] = []
    for f in files:
        ids += engine.tokenize(f.read_text(encoding="utf-8") + "\n\n")
        if len(ids) >= tokens:
            break
    return engine.detokenize(ids[:tokens])


def timed_answer(engine: Engine, context: str, task: Task) -> tuple[str, float, int]:
    """(answer, seconds for the whole answer, prompt tokens)."""
    start = time.perf_counter()
    generation = engine.chat([answer_messages(context, task)], SamplingParams(max_tokens=task.max_answer_tokens))[0]
    return generation.text, time.perf_counter() - start, generation.prompt_tokens


def run_one(engine: Engine, method: str, needle: Needle, task: Task) -> dict[str, Any]:
    start = time.perf_counter()
    if method == "full":
        context = needle.text
    elif method == "gemfilter":
        context = select(engine, needle.text, task, GemFilterConfig()).text
    else:
        strategy = HardCompression()
        budget = strategy.budget(engine.count_tokens(needle.text), task, engine)
        context = compress(engine, needle.text, task.question, replace(strategy.config, target_tokens=budget)).text
    compression = time.perf_counter() - start
    text, whole, prompt_tokens = timed_answer(engine, context, task)
    return {
        "correct": needle.answer in text,
        "kept": needle.answer in context,
        "compression_s": compression,
        "seconds": compression + whole,
        "input_tokens": prompt_tokens,
        "answer": text,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="8k,32k,128k")
    parser.add_argument("--n", default="4,3,2", help="questions per length, in the order of --lengths")
    parser.add_argument("--name", default="compress-needles")
    parser.add_argument("--methods", default="full,gemfilter,hard", help="full runs only where it fits")
    parser.add_argument("--model", default="smollm2", help="alias or converted model folder")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="folder of .txt haystacks")
    args = parser.parse_args()
    engine = create_engine(EngineConfig(kind="native", model=args.model))
    where = machine() + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    lengths = args.lengths.split(",")
    counts = [int(x) for x in args.n.split(",")]
    rows: list[dict[str, Any]] = []
    for label, n in zip(lengths, counts, strict=True):
        probe = Task("What is the special magic number for amber-harbor mentioned in the provided text?", 32)
        # "8k" is the most that fits the 8K-context model beside the prompt, so `full` has a baseline there.
        size = SIZES[label] if label != "8k" else engine.max_context - answer_overhead(engine, probe) - 32
        methods = args.methods.split(",")
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in ("full", "gemfilter", "hard")}
        rng = random.Random(label)
        for i in range(n):
            needle = plant_needle(haystack(engine, args.corpus, size - 40, i), (i + 0.5) / n, rng)
            task = Task(needle.question, max_answer_tokens=32)
            fits = engine.count_chat_tokens(answer_messages(needle.text, task)) + 32 <= engine.max_context
            for method in [m for m in methods if fits or m != "full"]:
                outcome = run_one(engine, method, needle, task)
                results[method].append(outcome)
                print(f"{label} #{i} {method}: {outcome}", file=sys.stderr, flush=True)
        document_tokens = engine.count_tokens(needle.text)
        base = results["full"]
        for method in [m for m in ("gemfilter", "hard") if results[m]]:
            got = results[method]
            rows.append(
                {
                    "compressor": method,
                    "rate": round(mean(got, "input_tokens") / document_tokens, 4),
                    "length": document_tokens,
                    "n": n,
                    "accuracy": mean(got, "correct"),
                    "baseline_accuracy": mean(base, "correct") if base else None,
                    "ttft_ms": round(1000 * mean(got, "seconds")),
                    "baseline_ttft_ms": round(1000 * mean(base, "seconds")) if base else None,
                    "compression_ms": round(1000 * mean(got, "compression_s")),
                    "needle_kept": mean(got, "kept"),
                    "input_tokens": round(mean(got, "input_tokens")),
                    "baseline_input_tokens": round(mean(base, "input_tokens")) if base else None,
                    "task": "niah_single",
                }
            )
        write_results(args.name, "compression on needle tasks vs full", "SmolLM2-135M-Instruct", rows, machine=where)
    return 0


def mean(results: list[dict[str, Any]], key: str) -> float:
    return sum(float(r[key]) for r in results) / len(results)


if __name__ == "__main__":
    sys.exit(main())
