"""Decode speed on the GPU with CUDA graphs: Tome's sparse-prefill backend against vLLM's FlashAttention, in one run.

Decode never runs our kernel (a decode-only batch returns to FlashAttention's forward before anything else), so what
this checks is that the plugin costs a decode step nothing once vLLM captures it as a CUDA graph. Two engines per model
shape, one after the other in child processes of one run, with random weights (`load_format="dummy"`, the shapes and
256K config of bench/vllm_prefill.py): `FLASH_ATTN` (vLLM's own backend, the baseline) and `CUSTOM` (ours). Both run
decode as full CUDA graphs (`cudagraph_mode=FULL_DECODE_ONLY`, no torch.compile: the graphs without a compile's minute
per engine) and prefill eagerly. In the CUSTOM engine each request alternates between `vertical_slash` (the prompt's
prefill on our kernel) and `flash_attn` (sparse off: FlashAttention's own forward, the same-process baseline).

Per request: one prompt of LENGTH random tokens, then DECODE tokens, one request at a time; decode tokens/s from vLLM's
per-request timestamps (first to last token). Each (engine, backend, length) runs REPEATS times, interleaved, so the
spread is known: rows give the median, min and max.
Results: bench/results/vllm-decode.json and .md.
Run (GPU): python -m bench.vllm_decode [--shapes llama-1b llama-8b:32768] [--lengths 32768 131072] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.vllm_prefill import RESULTS, machine, run_child, write_model

DECODE = 256
REPEATS = 5
CAPTURE_SIZES = [1, 2, 4, 8]  # one request at a time here; a few sizes keep the capture short


def run_engine(shape: str, backend: str, lengths: list[int], repeats: int, rows_path: Path) -> None:
    """Child: one engine (`FLASH_ATTN` or `CUSTOM`); a raw record per request appended to `rows_path`."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core here: the backend switch reaches it
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from engines.sparse_prefill import SparseConfig
    from engines.vllm_flash_sparse import STATS, SparsePrefillFlashImpl
    from engines.vllm_sparse import register
    from kernels.patterns import VerticalSlash

    register()
    configs = {"flash_attn": SparseConfig()}
    if backend == "CUSTOM":
        configs["vertical_slash"] = SparseConfig(VerticalSlash())
    longest = max(lengths) + DECODE + 16
    t0 = time.perf_counter()
    llm = LLM(
        model=str(write_model(shape, Path("/tmp/tome-vllm-bench") / shape)),
        load_format="dummy",
        skip_tokenizer_init=True,
        dtype="bfloat16",
        max_model_len=longest,
        max_num_batched_tokens=longest,  # one chunk: the prefill is not what is measured here
        max_num_seqs=4,
        enable_prefix_caching=False,
        compilation_config={"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY", "cudagraph_capture_sizes": CAPTURE_SIZES},
        gpu_memory_utilization=0.92,
        attention_backend=backend,
        disable_log_stats=False,  # per-request timestamps
    )
    start_s = time.perf_counter() - t0
    rng = random.Random(0)

    def request(length: int, max_tokens: int) -> tuple[float | None, float, int]:
        prompt = TokensPrompt(prompt_token_ids=[rng.randrange(1000, 120000) for _ in range(length)])
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0, detokenize=False)
        before = STATS["sparse_prefills"]
        t = time.perf_counter()
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        wall = time.perf_counter() - t
        m = out.metrics
        decode_s = (m.last_token_ts - m.first_token_ts) if m is not None and m.last_token_ts > 0 else None
        rate = (len(out.outputs[0].token_ids) - 1) / decode_s if decode_s else None
        return rate, wall, STATS["sparse_prefills"] - before

    for config in configs.values():  # Triton compiles, FlashAttention plans, the graphs warm up
        SparsePrefillFlashImpl.config = config
        request(4096, 32)
    for length in lengths:
        for rep in range(repeats):
            for name, config in configs.items():
                SparsePrefillFlashImpl.config = config
                rate, wall, sparse_layers = request(length, DECODE)
                record = {
                    "model_shape": shape,
                    "engine": backend,
                    "backend": name if backend == "CUSTOM" else "flash_attn_stock",
                    "length": length,
                    "repeat": rep,
                    "decode_tok_s": rate,
                    "wall_s": round(wall, 3),
                    "sparse_layer_calls": sparse_layers,
                    "engine_start_s": round(start_s, 1),
                }
                print(json.dumps(record), flush=True)
                with rows_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median, min and max decode rate per (shape, length, backend), each against the stock FlashAttention engine's."""
    groups: dict[tuple[str, int, str], list[float]] = {}
    for r in records:
        if r["decode_tok_s"]:
            groups.setdefault((r["model_shape"], r["length"], r["backend"]), []).append(r["decode_tok_s"])
    rows = []
    for (shape, length, backend), rates in sorted(groups.items()):
        base = groups.get((shape, length, "flash_attn_stock"))
        if backend == "flash_attn_stock" or not base:
            continue
        med, base_med = statistics.median(rates), statistics.median(base)
        rows.append(
            {
                "model_shape": shape,
                "length": length,
                "backend": backend,
                "baseline_backend": "flash_attn_stock",
                "decode_tok_s": round(med, 1),
                "baseline_decode_tok_s": round(base_med, 1),
                "ratio": round(med / base_med, 3),
                "decode_tok_s_min": round(min(rates), 1),
                "decode_tok_s_max": round(max(rates), 1),
                "baseline_decode_tok_s_min": round(min(base), 1),
                "baseline_decode_tok_s_max": round(max(base), 1),
                "repeats": len(rates),
                "baseline_repeats": len(base),
                "decode_tokens": DECODE,
                "cuda_graphs": "FULL_DECODE_ONLY",
            }
        )
    return rows


def write(
    rows: list[dict[str, Any]], errors: list[str], meta: dict[str, Any], folder: Path, requests: list[dict[str, Any]]
) -> Path:
    title = "vLLM decode with CUDA graphs: sparse backend vs FlashAttention"
    doc = {"benchmark": "vllm_decode", "title": title, **meta, "errors": errors, "rows": rows, "requests": requests}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vllm-decode.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    cols = list(rows[0]) if rows else []
    lines = [f"# {title}", "", f"{doc['date']} · commit {doc['commit']} · {doc['machine']} · {doc['model']}", ""]
    if cols:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c)) for c in cols) + " |" for r in rows]
    lines += [f"- error: {e}" for e in errors]
    (folder / "vllm-decode.md").write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["llama-1b", "llama-8b:32768"], help="SHAPE[:LENGTH,...]")
    ap.add_argument("--lengths", nargs="+", type=int, default=[32768, 131072], help="for shapes without their own")
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rows", type=Path, default=Path("/tmp/vllm-decode-rows.jsonl"))
    ap.add_argument("--engine-timeout", type=int, default=300)
    ap.add_argument("--budget-s", type=int, default=3600, help="stop starting engines after this many seconds")
    ap.add_argument("--child", nargs=2, metavar=("SHAPE", "BACKEND"))
    args = ap.parse_args()
    if args.child:
        run_engine(args.child[0], args.child[1], args.lengths, args.repeats, args.rows)
        return
    args.rows.unlink(missing_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": os.environ.get("TOME_COMMIT") or "unknown",
        "machine": machine(),
        "model": "random-weight Llama shapes (load_format=dummy), bf16, decode as full CUDA graphs, one request",
        "command": "python -m bench.vllm_decode " + " ".join(sys.argv[1:]),
    }
    errors: list[str] = []
    began = time.time()
    for spec in args.shapes:
        shape, *only = spec.split(":")
        lengths = [int(x) for x in only[0].split(",")] if only else args.lengths
        for backend in ("FLASH_ATTN", "CUSTOM"):
            left = args.budget_s - (time.time() - began)
            if left < 60:
                errors.append(f"{shape} {backend}: not run (out of time)")
                continue
            cmd = [sys.executable, "-m", "bench.vllm_decode", "--child", shape, backend, "--rows", str(args.rows)]
            cmd += ["--lengths", *map(str, lengths), "--repeats", str(args.repeats)]
            rc = run_child(cmd, min(args.engine_timeout, left), f"{shape} {backend}")
            if rc != 0:
                errors.append(f"{shape} {backend}: exit {rc} (requests it finished are kept)")
    records = [json.loads(line) for line in args.rows.read_text().splitlines()] if args.rows.exists() else []
    print(write(summarise(records), errors, meta, args.out, records))


if __name__ == "__main__":
    main()
