"""vLLM on the GPU with Tome's sparse-prefill backend against FlashAttention, in one run.

One vLLM engine per (model shape, chunk budget), in-process (engine core in this process) with random weights
(`load_format="dummy"`) of a Llama-3.2-1B or Llama-3.1-8B shape; the config is written here with its context extended
to 256K (max_position_embeddings; plain RoPE at theta 500000: with random weights the rope variant changes no timing).
The engine runs our CUSTOM backend throughout, and each prompt is served four ways by switching its config:
`flash_attn` (sparse off: FlashAttention's own forward, the baseline), `vertical_slash`, `vertical_slash_smooth` and
`a_shape` (fresh prefills on our Triton kernel). Per length and backend: time to first token (wall time of a request's
prefill and first token, minus its decode), decode tokens/s over the next DECODE tokens (vLLM's per-request
timestamps) and the process's peak GPU memory in that request (weights and the preallocated KV cache included). Eager
mode (no CUDA graphs) for all backends: an engine start then costs seconds instead of a compile.

Each engine runs in a child process, so one that fails (out of memory at 256K, say) costs only its own rows.
Results: bench/results/vllm-prefill.json and .md.
Run (GPU): python -m bench.vllm_prefill [--engines llama-1b:0 llama-8b:0 llama-1b:32768 ...] [--lengths ...]
Merge rows of several runs: python -m bench.vllm_prefill --merge a.jsonl b.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "llama-1b": {  # Llama-3.2-1B
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "tie_word_embeddings": True,
    },
    "llama-8b": {  # Llama-3.1-8B
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": False,
    },
}
CONTEXT = 262144 + 4096  # 256K prompt plus room for the decoded tokens
# vertical_slash_smooth: slashes ranked by their score smoothed over 1024 neighbouring offsets (kernels.patterns). With
# random weights the plain top-k lines are scattered, each costing the kernel a whole key chunk; smoothed, they lie in
# a few runs (the ranking the kernel benches measured fastest at equal recall).
BACKENDS = ("flash_attn", "vertical_slash", "vertical_slash_smooth", "a_shape")
DECODE = 64
WARMUP_TOKENS = 4096
RESULTS = Path(__file__).parent / "results"
# Cheapest first, so a run cut short still has the 1B rows; the 8B at 256K apart, as its KV cache and activations
# may not fit an 80 GB card next to the weights (that engine then fails alone).
ENGINES = [
    "llama-1b:0",
    "llama-8b:0:32768,65536,131072",
    "llama-1b:32768:131072,262144",
    "llama-1b:16384:131072,262144",
    "llama-8b:32768:131072",
    "llama-8b:0:262144",
]


def write_model(shape: str, folder: Path) -> Path:
    """config.json of a Llama shape with a 256K context; no tokenizer (the bench sends token ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 128256,
        "max_position_embeddings": CONTEXT,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "torch_dtype": "bfloat16",
        **SHAPES[shape],
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


def run_engine(shape: str, chunk: int, lengths: list[int], rows_path: Path) -> None:
    """Child: one engine, every length and backend; a row per (length, sparse backend) appended to `rows_path`."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core here: the backend switch reaches it
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from engines.sparse_prefill import SparseConfig
    from engines.vllm_flash_sparse import STATS, SparsePrefillFlashImpl
    from engines.vllm_sparse import register
    from kernels.patterns import AShape, VerticalSlash

    register()  # the entry point is not installed on the bench host: fill the CUSTOM slot by hand
    # With a chunk budget, every full chunk over cached tokens goes sparse too (engines.sparse_prefill.sparse_chunk):
    # its queries from their own offset in the kernel (Layout.q_offset). Runs before that option (2026-12-07 08:38)
    # served only a prompt's first chunk sparse.
    configs = {
        "flash_attn": SparseConfig(),
        "vertical_slash": SparseConfig(VerticalSlash(), chunk_min_tokens=chunk),
        "vertical_slash_smooth": SparseConfig(VerticalSlash(smooth=1024), chunk_min_tokens=chunk),
        "a_shape": SparseConfig(AShape(), chunk_min_tokens=chunk),
    }
    longest = max(lengths)
    llm = LLM(
        model=str(write_model(shape, Path("/tmp/tome-vllm-bench") / shape)),
        load_format="dummy",
        skip_tokenizer_init=True,
        dtype="bfloat16",
        max_model_len=longest + DECODE + 16,
        max_num_batched_tokens=chunk or longest + DECODE + 16,
        max_num_seqs=4,
        enable_prefix_caching=False,  # every request is a fresh prefill
        enforce_eager=True,
        gpu_memory_utilization=0.92,
        attention_backend="CUSTOM",
        disable_log_stats=False,  # per-request timestamps for the decode rate
    )
    layers = SHAPES[shape]["num_hidden_layers"]
    rng = random.Random(0)

    def request(length: int, backend: str, max_tokens: int) -> dict[str, Any]:
        SparsePrefillFlashImpl.config = configs[backend]
        prompt = TokensPrompt(prompt_token_ids=[rng.randrange(1000, 120000) for _ in range(length)])
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0, detokenize=False)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before, chunks_before = STATS["sparse_prefills"], STATS["sparse_chunks"]
        start = time.perf_counter()
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        wall = time.perf_counter() - start
        m = out.metrics
        decode_s = (m.last_token_ts - m.first_token_ts) if m is not None and m.last_token_ts > 0 else None
        ttft = wall - decode_s if decode_s is not None else None
        if ttft is None or max_tokens == 1:  # no timestamps: time a one-token request instead
            start = time.perf_counter()
            llm.generate([prompt], SamplingParams(max_tokens=1, detokenize=False), use_tqdm=False)
            ttft = time.perf_counter() - start
        return {
            "ttft_ms": 1000 * ttft,
            "decode_tok_s": (max_tokens - 1) / decode_s if decode_s else None,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30,
            "sparse_layers": STATS["sparse_prefills"] - before,
            "sparse_chunks": STATS["sparse_chunks"] - chunks_before,
            "tokens": len(out.outputs[0].token_ids),
        }

    for backend in BACKENDS:  # Triton compiles and FlashAttention plans before anything is timed
        request(WARMUP_TOKENS, backend, 2)
    for length in lengths:
        got = {b: request(length, b, 1 + DECODE) for b in BACKENDS}
        base = got["flash_attn"]
        for backend in BACKENDS[1:]:
            r = got[backend]
            row = {
                "model_shape": shape,
                "length": length,
                "backend": backend,
                "baseline_backend": "flash_attn",
                "ttft_ms": round(r["ttft_ms"], 1),
                "baseline_ttft_ms": round(base["ttft_ms"], 1),
                "speedup": round(base["ttft_ms"] / r["ttft_ms"], 2),
                "chunk_tokens": chunk or None,
                "decode_tok_s": r["decode_tok_s"] and round(r["decode_tok_s"], 1),
                "baseline_decode_tok_s": base["decode_tok_s"] and round(base["decode_tok_s"], 1),
                "peak_mem_gb": round(r["peak_mem_gb"], 2),
                "baseline_peak_mem_gb": round(base["peak_mem_gb"], 2),
                # how many layer calls took the sparse path in this request (layers x fresh-prefill steps)
                "sparse_layer_calls": r["sparse_layers"],
                # layer calls that ran a chunk over cached tokens sparse (layers x such chunks)
                "sparse_chunk_calls": r["sparse_chunks"],
                "layers": layers,
            }
            print(json.dumps(row), flush=True)
            with rows_path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def machine() -> str:
    import torch

    return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, vllm {__import__('vllm').__version__}"


def write(
    rows: list[dict[str, Any]], errors: list[str], meta: dict[str, Any], folder: Path, name: str = "vllm-prefill"
) -> Path:
    # `benchmark` names the script (bench/index.py links it); the title says what was measured
    title = "vLLM prefill: sparse backend vs FlashAttention"
    doc = {"benchmark": "vllm_prefill", "title": title, **meta, "errors": errors, "rows": rows}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    cols = list(rows[0]) if rows else []
    lines = [
        f"# {title}",
        "",
        f"{doc['date']} · commit {doc['commit']} · {doc['machine']} · {doc['model']}",
        "",
    ]
    if cols:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c)) for c in cols) + " |" for r in rows]
    lines += [f"- error: {e}" for e in errors]
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    return path


def run_child(cmd: list[str], timeout: float, label: str) -> int | str:
    """One engine's measurements in a child process: a crashed or hung engine costs its own rows, not the run."""
    t0 = time.time()
    try:
        rc: int | str = subprocess.run(cmd, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    print(f"engine {label}: rc {rc} in {time.time() - t0:.0f} s", flush=True)
    return rc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", nargs="+", default=ENGINES, help="SHAPE:CHUNK[:LENGTH,...] (CHUNK 0: one chunk)")
    ap.add_argument("--lengths", nargs="+", type=int, default=[32768, 65536, 131072, 262144])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="vllm-prefill", help="results file stem (a run of some engines only)")
    ap.add_argument("--rows", type=Path, default=Path("/tmp/vllm-prefill-rows.jsonl"))
    ap.add_argument("--engine-timeout", type=int, default=400)
    ap.add_argument("--budget-s", type=int, default=3600, help="stop starting engines after this many seconds")
    ap.add_argument("--child", nargs=2, metavar=("SHAPE", "CHUNK"))
    ap.add_argument("--merge", nargs="+", type=Path, help="rows files (with a .meta.json beside each) to write up")
    args = ap.parse_args()
    if args.child:
        run_engine(args.child[0], int(args.child[1]), args.lengths, args.rows)
        return
    if args.merge:
        rows = [json.loads(line) for p in args.merge for line in p.read_text().splitlines() if line.strip()]
        metas = [json.loads(p.with_suffix(".meta.json").read_text()) for p in args.merge]
        meta = {**metas[0], "runs": metas}
        print(write(rows, [e for m in metas for e in m.get("errors", [])], meta, args.out, args.name))
        return
    errors: list[str] = []
    args.rows.unlink(missing_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": os.environ.get("TOME_COMMIT") or "unknown",
        "machine": machine(),
        "model": "random-weight Llama shapes (load_format=dummy), bf16, eager, prefix caching off",
        "command": "python -m bench.vllm_prefill " + " ".join(sys.argv[1:]),
    }
    meta_path = args.rows.with_suffix(".meta.json")
    meta_path.write_text(json.dumps(meta))  # a run cut off by its time limit still merges
    began = time.time()
    for spec in args.engines:
        left = args.budget_s - (time.time() - began)
        if left < 60:
            errors.append(f"{spec}: not run (out of time)")
            continue
        shape, chunk, *only = spec.split(":")
        lengths = [int(x) for x in only[0].split(",")] if only else args.lengths
        cmd = [sys.executable, "-m", "bench.vllm_prefill", "--child", shape, chunk, "--rows", str(args.rows)]
        cmd += ["--lengths", *map(str, lengths)]
        rc = run_child(cmd, min(args.engine_timeout, left), spec)
        if rc != 0:
            errors.append(f"{spec}: exit {rc} (rows it finished are kept)")
    rows = [json.loads(line) for line in args.rows.read_text().splitlines()] if args.rows.exists() else []
    meta_path.write_text(json.dumps({**meta, "errors": errors}))
    try:
        print(write(rows, errors, meta, args.out, args.name))
    except Exception:  # the rows file is still there to merge
        traceback.print_exc()


if __name__ == "__main__":
    main()
