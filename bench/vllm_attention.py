"""The sparse backend's attention path alone on the GPU: one layer's fresh prefill through the plugin's own function
(`engines.sparse_prefill.sparse_prefill`, what `SparsePrefillFlashImpl.forward` calls) against vLLM's FlashAttention
(FA3, `vllm.vllm_flash_attn.flash_attn_varlen_func`) over a paged KV cache, as the FlashAttention backend calls it.

Shapes of one attention layer of Llama-3.2-1B (32 query / 8 KV heads, head dim 64) and Llama-3.1-8B (head dim 128),
bf16, random q/k/v in vLLM's token-major layout. `ms` is the median of REPEAT calls (index building included).
Results: bench/results/vllm-attention.json and .md.   Run (GPU, vLLM importable): python -m bench.vllm_attention
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from engines.sparse_prefill import SparseConfig, sparse_prefill
from kernels.patterns import AShape, VerticalSlash

SHAPES = {"llama-1b": (32, 8, 64), "llama-8b": (32, 8, 128)}
BLOCK = 16  # vLLM's default KV block size
REPEAT = 5


def timed(fn: Any) -> float:
    fn()  # compile / plan
    times = []
    for _ in range(REPEAT):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def bench_shape(shape: str, length: int) -> list[dict[str, Any]]:
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    hq, hkv, d = SHAPES[shape]
    scale = d**-0.5
    torch.manual_seed(0)
    q = torch.randn(length, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(length, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(length, hkv, d, device="cuda", dtype=torch.bfloat16)
    blocks = length // BLOCK
    k_cache, v_cache = (x.view(blocks, BLOCK, hkv, d) for x in (k, v))  # the cache as vLLM pages it, in order
    block_table = torch.arange(blocks, dtype=torch.int32, device="cuda")[None]
    cu_q = torch.tensor([0, length], dtype=torch.int32, device="cuda")
    seqused = torch.tensor([length], dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)

    def flash() -> None:
        flash_attn_varlen_func(
            q=q,
            k=k_cache,
            v=v_cache,
            out=out,
            cu_seqlens_q=cu_q,
            max_seqlen_q=length,
            seqused_k=seqused,
            max_seqlen_k=length,
            softmax_scale=scale,
            causal=True,
            block_table=block_table,
            fa_version=3,
        )

    base = timed(flash)
    rows = []
    patterns = (
        ("vertical_slash", VerticalSlash()),
        ("vertical_slash_smooth", VerticalSlash(smooth=1024)),
        ("a_shape", AShape()),
    )
    for name, pattern in patterns:
        config = SparseConfig(pattern=pattern)
        ms = timed(lambda config=config: sparse_prefill(q, k, v, config, scale))
        rows.append(
            {
                "kernel": name,
                "model_shape": shape,
                "length": length,
                "ms": round(ms, 2),
                "baseline": "flash_attn_3_paged",
                "baseline_ms": round(base, 2),
                "speedup": round(base / ms, 2),
                "recall": None,  # random q/k; recall is measured by bench/kernel_bench.py on structured q/k
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def write(rows: list[dict[str, Any]], errors: list[str], folder: Path) -> None:
    import vllm

    doc = {
        "benchmark": "vllm_attention",  # the script, as bench/index.py links it
        "title": "vLLM sparse backend attention path vs FlashAttention-3 (one layer, fresh prefill)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": os.environ.get("TOME_COMMIT") or "unknown",
        "machine": f"{torch.cuda.get_device_name()}, torch {torch.__version__}, vllm {vllm.__version__}",
        "model": "one attention layer, random bf16 q/k/v",
        "command": "python -m bench.vllm_attention " + " ".join(sys.argv[1:]),
        "errors": errors,
        "rows": rows,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vllm-attention.json").write_text(json.dumps(doc, indent=2) + "\n")
    cols = list(rows[0]) if rows else []
    lines = [f"# {doc['title']}", "", f"{doc['date']} · commit {doc['commit']} · {doc['machine']}", ""]
    if cols:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += [f"- error: {e}" for e in errors]
    (folder / "vllm-attention.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--lengths", nargs="+", type=int, default=[32768, 65536, 131072, 262144])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for shape in args.shapes:
        for length in args.lengths:
            try:
                rows += bench_shape(shape, length)
            except Exception as e:  # noqa: BLE001 - a failed shape is reported, the others still run
                errors.append(f"{shape} {length}: {e!r}"[:300])
            torch.cuda.empty_cache()
            write(rows, errors, args.out)  # after each shape: a run stopped by its time limit keeps what it measured


if __name__ == "__main__":
    main()
