"""Soft compression (`compllm` or `gist` at 2x and 4x) against the uncompressed prompt (`full`), SmolLM2 here.

Two parts, each measured against its baseline in the same run:
- accuracy: the harness tasks that fit the 8K context (niah_single, qa, babilong; seeds from --first-seed, the
  harness's own scoring), `full` and the compressor at each rate on the same samples; for compllm also each
  question-aware RATE/SEGMENT_RATE pair (`--question-aware 2/4`: the question's nearest segments raw, the rest at
  4x, in the vectors of 2x) beside its control `raw-only` (the same raw segments, the rest dropped), which tells
  what the compressed rest adds to the answer;
- ttft: time to the first token (one generated token, so prefill plus one step) and input vectors for a
  4K and an 8K document: `full`; the compressor cold (the document compressed now) and warm (a second
  question over the same document: compllm reads every segment from the content-hash cache, gist continues
  the same gist KV). KV size is the engine's KV cache for the prompt (layers x 2 x kv heads x head dim x bytes
  per input position); for gist the input positions are the kept KV (prompt prefix and gists) and the question.

    PYTHONPATH=. TOME_THREADS=1 nice python -m bench.compress_soft [--compressor compllm|gist] [--part accuracy,ttft]
        [--lengths 2048,4096] [--n 3] [--rates 2,4] [--tasks niah_single,qa,babilong] [--dtype float32]

On a GPU host (a model folder, no service settings): `--device cuda --model-dir DIR --batch-tokens 65536` answers
the samples of a cell in batches of about that many prompt tokens (each row as it would be alone, left-padded);
`--adapter FILE` measures another compllm adapter, `--also-adapter FILE` (repeatable) adds its 2x rows beside the
main one's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, machine, write_results
from compressors.soft import gist_strategy
from compressors.soft.cache import file_digest
from compressors.soft.gist import kv_bytes
from compressors.soft.gist_strategy import Gist, GistStrategyConfig
from compressors.soft.model import EARLY
from compressors.soft.strategy import CompLLMConfig, build_prompts, choose_raw, prompt_embeddings, segment_ids
from engines import EngineConfig, create_engine
from engines.base import Engine, SamplingParams
from engines.prompting import answer_each, answer_messages, prompt_around
from engines.types import Cost, Task, no_progress
from evals.corpus import haystack_words
from evals.metrics import score
from evals.tasks import generate
from evals.tasks.sample import Sample

MODEL = "SmolLM2-135M-Instruct"


def kv_mb(engine: Engine, positions: int) -> float:
    model = engine.hf_model  # type: ignore[attr-defined]
    return round(kv_bytes(model.config, positions, next(model.parameters()).element_size()) / 2**20, 2)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


Method = tuple[str, int, int, Path]  # (full, gist, compllm or raw-only; rate; segment rate; adapter)


def raw_only(engine: Engine, text: str, task: Task, config: CompLLMConfig) -> torch.Tensor:
    """The control for question-aware compllm: the prompt of the segments the question reads raw, the others dropped
    (and never compressed, so its time is the selection's and the read's)."""
    segments = segment_ids(engine, text, config)
    raw = choose_raw(engine, segments, [task], config)[0]
    with torch.inference_mode():
        context = engine.hf_model.get_input_embeddings()(  # type: ignore[attr-defined]
            torch.tensor([t for i in sorted(raw) for t in segments[i]])
        )
    return prompt_embeddings(engine, context, task)


def answer_cell(engine: Engine, samples: list[Sample], method: Method, batch_tokens: int) -> list[dict[str, Any]]:
    """Score `method` on every sample, in batches of about `batch_tokens` prompt tokens (one sample a batch when 0),
    grouped by answer budget. `raw-only` reads what question-aware compllm reads raw and nothing else."""
    kind, rate, segment_rate, adapter = method
    got: dict[int, dict[str, Any]] = {}
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.question.max_answer_tokens, []).append(i)
    for budget, members in groups.items():
        size = max(1, batch_tokens // samples[members[0]].length) if batch_tokens else 1
        for b in range(0, len(members), size):
            part = [samples[i] for i in members[b : b + size]]
            start = time.perf_counter()
            if kind == "full":
                k = len(part)
                answers = answer_each(
                    engine, [s.document.text for s in part], [s.question for s in part], "full", [[]] * k, [Cost()] * k
                )
                texts = [a.text for a in answers]
                inputs = [a.cost.tokens_read for a in answers]
            elif kind == "gist":
                strategy = Gist(GistStrategyConfig(rate=rate))
                answers = [strategy.run(s.document, [s.question], engine, no_progress)[0] for s in part]
                texts = [a.text for a in answers]
                inputs = [a.details.get("input_vectors") or a.cost.tokens_read for a in answers]
            else:
                config = CompLLMConfig(rate=rate, segment_rate=segment_rate, adapter=adapter, cache=False)
                if kind == "raw-only":
                    prompts = [raw_only(engine, s.document.text, s.question, config) for s in part]
                else:
                    prompts = [build_prompts(engine, s.document.text, [s.question], config).embeddings[0] for s in part]
                generations = engine.chat_from_embeddings(prompts, SamplingParams(max_tokens=budget))  # type: ignore[attr-defined]
                texts = [g.text for g in generations]
                inputs = [g.prompt_tokens for g in generations]
            seconds = (time.perf_counter() - start) / len(part)
            for i, s, text, n in zip(members[b : b + size], part, texts, inputs, strict=True):
                got[i] = {"accuracy": score(s.metric, text, s.answers), "input": n, "seconds": seconds}
                print(
                    f"{s.length} {s.task} #{s.seed} {kind}@{rate}: {got[i]} {text[:60]!r}", file=sys.stderr, flush=True
                )
    return [got[i] for i in range(len(samples))]


def accuracy_part(engine: Engine, args: argparse.Namespace, write: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    deadline = time.perf_counter() + args.max_minutes * 60
    methods: list[Method] = [(args.compressor, r, r, args.adapter) for r in args.rates]
    if args.compressor == "compllm":
        for r, sr in args.question_aware:
            methods += [("compllm", r, sr, args.adapter), ("raw-only", r, sr, args.adapter)]
    methods += [(args.compressor, min(args.rates), min(args.rates), other) for other in args.also_adapter]
    for length in args.lengths:
        for task in args.tasks:
            if time.perf_counter() > deadline:
                print(f"deadline: {length} {task} not measured", file=sys.stderr, flush=True)
                continue
            seeds = range(args.first_seed, args.first_seed + args.n)
            samples = [generate(task, engine, length, seed) for seed in seeds]
            base = answer_cell(engine, samples, ("full", 1, 1, args.adapter), args.batch_tokens)
            for method in methods:
                got = answer_cell(engine, samples, method, args.batch_tokens)
                rows.append(
                    {
                        "compressor": method[0],
                        "rate": method[1],
                        "segment_rate": method[2],
                        "task": task,
                        "length": length,
                        "n": len(got),
                        "accuracy": round(mean([g["accuracy"] for g in got]), 3),
                        "baseline_accuracy": round(mean([g["accuracy"] for g in base]), 3),
                        "ttft_ms": None,  # see the ttft part: here whole answers are timed
                        "baseline_ttft_ms": None,
                        "input_tokens": round(mean([g["input"] for g in got])),
                        "baseline_input_tokens": round(mean([g["input"] for g in base])),
                        "seconds": round(mean([g["seconds"] for g in got]), 2),
                        "baseline_seconds": round(mean([g["seconds"] for g in base]), 2),
                        "adapter": file_digest(method[3])[:12] if method[0] != "gist" else None,
                        "adapter_steps": adapter_steps(method[3]) if method[0] != "gist" else None,
                    }
                )
            write(rows)
    return rows


def adapter_steps(path: Path) -> int | None:
    from compressors.soft.model import adapter_config

    return adapter_config(path).get("extra", {}).get("steps")


def document_of(engine: Engine, tokens: int) -> str:
    words = haystack_words()
    return engine.detokenize(engine.tokenize("".join(words[:tokens]))[:tokens])


def first_token_ms(engine: Engine, prompt: Any) -> tuple[float, int]:
    """(ms to the first generated token, input positions) for a text conversation or an embedding prompt."""
    one = SamplingParams(max_tokens=1)
    start = time.perf_counter()
    if isinstance(prompt, torch.Tensor):
        g = engine.chat_from_embeddings([prompt], one)[0]  # type: ignore[attr-defined]
    else:
        g = engine.chat([prompt], one)[0]
    return 1000 * (time.perf_counter() - start), g.prompt_tokens


def compllm_ttft(
    engine: Engine, text: str, rates: tuple[int, int], tasks: tuple[Task, Task], adapter: Path = EARLY
) -> tuple[float, float, int]:
    """(cold ms, warm ms, input vectors) at (rate, segment rate): the first question compresses the segments it does
    not read raw, the second reads those back (and compresses any it needs that the first read raw)."""
    shutil.rmtree(engine.config.home / "cache" / "compllm", ignore_errors=True)  # type: ignore[attr-defined]
    times, inputs = [], 0
    config = CompLLMConfig(rate=rates[0], segment_rate=rates[1], adapter=adapter)
    for phase, task in zip(("cold", "warm"), tasks, strict=True):
        start = time.perf_counter()
        built = build_prompts(engine, text, [task], config)
        if phase == "warm" and built.compressed.cached == 0:
            raise RuntimeError("the second question found none of its segments in the cache")
        _, inputs = first_token_ms(engine, built.embeddings[0])
        times.append(1000 * (time.perf_counter() - start))  # choosing, compression or cache reads included
    return times[0], times[1], inputs


def gist_ttft(
    engine: Engine, text: str, rates: tuple[int, int], tasks: tuple[Task, Task], adapter: Path = EARLY
) -> tuple[float, float, int]:
    """(cold ms, warm ms, input positions): the first question compresses, the second continues the same gist KV."""
    one = SamplingParams(max_tokens=1)
    start = time.perf_counter()
    compressed = gist_strategy.compress(engine, text, GistStrategyConfig(rate=rates[0]))
    times, inputs = [], 0
    for task in tasks:
        _, after = prompt_around(engine, task)
        g = engine.chat_from_cache(compressed.cache, after, compressed.next_position, one)  # type: ignore[attr-defined]
        times.append(1000 * (time.perf_counter() - start))
        inputs = g.prompt_tokens
        start = time.perf_counter()
    return times[0], times[1], inputs


def ttft_part(engine: Engine, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    tasks = (
        Task("Who is the narrator talking to?", max_answer_tokens=32),
        Task("What does the narrator do at the end?", max_answer_tokens=32),
    )
    measure = gist_ttft if args.compressor == "gist" else compllm_ttft
    configs = [(r, r) for r in args.rates] + (args.question_aware if args.compressor == "compllm" else [])
    warm_up = document_of(engine, 1000)  # the first calls load the adapter and, on a GPU, its kernels: not timed
    first_token_ms(engine, answer_messages(warm_up, tasks[0]))
    for pair in configs:
        measure(engine, warm_up, pair, tasks, args.adapter)
    for length in args.ttft_lengths:
        text = document_of(engine, length - 120)
        base_ms, base_in = [], 0
        for _ in range(args.repeats):
            ms, base_in = first_token_ms(engine, answer_messages(text, tasks[0]))
            base_ms.append(ms)
        for r, sr in configs:
            cold, warm, inputs = [], [], 0
            for _ in range(args.repeats):
                c, w, inputs = measure(engine, text, (r, sr), tasks, args.adapter)
                cold.append(c)
                warm.append(w)
            for phase, values in (("cold", cold), ("warm", warm)):
                rows.append(
                    {
                        "compressor": args.compressor,
                        "rate": r,
                        "segment_rate": sr,
                        "cache": phase,
                        "length": base_in,
                        "n": len(values),
                        "accuracy": None,  # see the accuracy part
                        "baseline_accuracy": None,
                        "ttft_ms": round(mean(values)),
                        "baseline_ttft_ms": round(mean(base_ms)),
                        "speedup": round(mean(base_ms) / mean(values), 2),
                        "input_tokens": inputs,
                        "baseline_input_tokens": base_in,
                        "kv_mb": kv_mb(engine, inputs),
                        "baseline_kv_mb": kv_mb(engine, base_in),
                    }
                )
                print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compressor", choices=("compllm", "gist"), default="compllm")
    parser.add_argument("--part", default="accuracy,ttft")
    parser.add_argument("--tasks", default="niah_single,qa,babilong")
    parser.add_argument("--lengths", default="2048,4096", help="accuracy part")
    parser.add_argument("--ttft-lengths", default="4096,8192")
    parser.add_argument("--n", type=int, default=3, help="questions per task and length (evaluation seeds from 0)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first evaluation seed (more questions later)")
    parser.add_argument("--repeats", type=int, default=1, help="ttft measurements per cell")
    parser.add_argument("--rates", default="2,4", help="every segment compressed at the rate")
    parser.add_argument(
        "--question-aware",
        default="2/4",
        help="compllm RATE/SEGMENT_RATE pairs: the question's nearest segments raw, the rest at SEGMENT_RATE, in the "
        "vectors of RATE; each with its raw-only control (the same raw segments, the rest dropped). '' for none",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default=EngineConfig.dtype, help="float32 where the CPU has no fast bf16")
    parser.add_argument("--name", default=None, help="default: compress-soft (compllm), compress-soft-gist (gist)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--model-dir", type=Path, default=None, help="an HF model folder (default: the TOME model)")
    parser.add_argument("--adapter", type=Path, default=EARLY, help="the compllm adapter to measure")
    parser.add_argument(
        "--also-adapter", type=Path, action="append", default=[], help="another compllm adapter, at the lower rate"
    )
    parser.add_argument("--batch-tokens", type=int, default=0, help="prompt tokens per batched call (0: one a call)")
    parser.add_argument("--max-minutes", type=float, default=1e9, help="accuracy part: cells started before this")
    parser.add_argument("--folder", type=Path, default=RESULTS, help="where the results files go")
    args = parser.parse_args(argv)
    args.tasks = args.tasks.split(",")
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.ttft_lengths = [int(x) for x in args.ttft_lengths.split(",")]
    args.rates = [int(x) for x in args.rates.split(",") if x]
    args.question_aware = [tuple(int(v) for v in x.split("/")) for x in args.question_aware.split(",") if x]
    args.name = args.name or ("compress-soft" if args.compressor == "compllm" else f"compress-soft-{args.compressor}")
    home = Path(tempfile.mkdtemp(prefix="tome-soft-bench-"))  # a private segment cache, models linked in
    (home / "models").symlink_to(EngineConfig().home / "models")
    model = {"model": str(args.model_dir)} if args.model_dir else {}
    config = EngineConfig(kind="native", threads=args.threads, home=home, dtype=args.dtype, device=args.device, **model)
    engine = create_engine(config)
    where = machine()
    if str(getattr(engine, "device", "")).startswith("cuda"):
        where += f", {torch.cuda.get_device_name()}"
    else:
        where += f", {args.threads} torch thread(s)"
    where += f", {next(engine.hf_model.parameters()).dtype}".replace("torch.", "")  # type: ignore[attr-defined]
    if args.batch_tokens:
        where += f", batches of about {args.batch_tokens} prompt tokens"
    parts = args.part.split(",")
    if "accuracy" in parts:
        what = f"{args.compressor} vs full: harness tasks within 8K"

        def write(rows: list[dict[str, Any]]) -> None:
            write_results(f"{args.name}-accuracy", what, MODEL, rows, folder=args.folder, machine=where)

        write(accuracy_part(engine, args, write))
    if "ttft" in parts:
        rows = ttft_part(engine, args)
        what = f"{args.compressor} vs full: time to first token, input and KV size"
        write_results(f"{args.name}-ttft", what, MODEL, rows, folder=args.folder, machine=where)
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
