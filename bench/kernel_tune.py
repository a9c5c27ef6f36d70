"""Tuning sweep for the Triton vertical-slash kernel (GPU): per-tile speed on a full layout, chunk counts of the two
chunk covers, and kernel time per config on `topical` inputs, all in one run. Prints a table; not a results file.

Run: python -m bench.kernel_tune [--lengths 131072 262144] [--dims 128 64]
"""

from __future__ import annotations

import argparse
import importlib
import time
from functools import partial

import torch
import torch.nn.functional as F

from bench.kernel_bench import HKV, HQ, VS, gpu_ms, structured_qkv
from kernels.index import vertical_slash_index
from kernels.reference import attention_recall
from kernels.triton_vertical_slash import layout_mask, vertical_slash_attention, vertical_slash_layout

CONFIGS = {  # (BLOCK_M, BLOCK_N, num_warps, num_stages, pipe)
    128: [
        (64, 64, 4, 3, False),
        (64, 64, 4, 3, True),
        (64, 32, 4, 3, False),
        (64, 32, 4, 3, True),
        (64, 32, 4, 2, False),
        (128, 64, 8, 2, False),
        (128, 64, 8, 2, True),
        (128, 32, 8, 3, False),
    ],
    64: [
        (64, 64, 4, 3, False),
        (64, 64, 4, 3, True),
        (64, 32, 4, 3, False),
        (64, 64, 4, 2, False),
        (64, 128, 4, 2, False),
        (64, 128, 4, 2, True),
        (128, 64, 4, 3, False),
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[131072, 262144])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--full", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--old", action="store_true", help="also time bench/kernel_tune_old.py (a saved earlier kernel)")
    args = ap.parse_args()
    try:
        old = importlib.import_module("bench.kernel_tune_old") if args.old else None
    except ImportError:
        old = None
    lines = []
    t0 = time.time()

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    for d in args.dims:
        # per-tile speed: every diagonal selected, against dense SDPA
        length = args.full
        q, k, v = structured_qkv(length, "cuda", seed=2, d=d)
        kv = (k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1))
        sdpa = gpu_ms(partial(F.scaled_dot_product_attention, q, *kv, is_causal=True), args.reps)
        del kv
        slash = torch.arange(length, device="cuda").expand(1, HQ, -1)
        say(f"full d={d} L={length}: sdpa {sdpa:.2f} ms")
        if old is not None:
            lay = old.vertical_slash_layout(slash[..., :1], slash, length)
            t = gpu_ms(partial(old.vertical_slash_attention, q, k, v, lay), args.reps)
            say(f"  old (64,64,4,3): {t:.2f} ms  sdpa/triton {sdpa / t:.3f}")
        for bm, bn, w, s, pipe in CONFIGS[d]:
            lay = vertical_slash_layout(slash[..., :1], slash, length, bm, bn)
            try:
                t = gpu_ms(
                    partial(vertical_slash_attention, q, k, v, lay, num_warps=w, num_stages=s, pipe=pipe), args.reps
                )
            except Exception as exc:  # noqa: BLE001
                say(f"  {(bm, bn, w, s, pipe)} failed {exc!r}"[:200])
                continue
            say(f"  {(bm, bn, w, s, pipe)}: {t:.2f} ms  sdpa/triton {sdpa / t:.3f}")
        del q, k, v, slash
        torch.cuda.empty_cache()

        for length in args.lengths:
            q, k, v = structured_qkv(length, "cuda", family="topical", d=d)
            kv = (k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1))
            sdpa = gpu_ms(partial(F.scaled_dot_product_attention, q, *kv, is_causal=True), 2)
            del kv
            est = gpu_ms(partial(vertical_slash_index, q, k, VS), args.reps)
            vertical, slash = vertical_slash_index(q, k, VS)
            rows_at = torch.linspace(length // 4, length - 1, 48, device="cuda").long()
            say(f"topical d={d} L={length}: sdpa {sdpa:.1f} ms, estimate {est:.2f} ms")
            if old is not None:
                lay = old.vertical_slash_layout(vertical, slash, length)
                t = gpu_ms(partial(old.vertical_slash_attention, q, k, v, lay), args.reps)
                lt = gpu_ms(partial(old.vertical_slash_layout, vertical, slash, length), args.reps)
                say(
                    f"  old (64,64,4,3): kernel {t:.2f} layout {lt:.2f} chunks {lay.chunk_count.float().mean():.1f}"
                    f" speedup {sdpa / (t + lt + est):.2f}"
                )
            done_recall = set()
            for bm, bn, w, s, pipe in CONFIGS[d]:
                for greedy in (True, False):
                    if not greedy and (pipe or (bn != 32 and (bm, bn) != (64, 64))):
                        continue
                    lay = vertical_slash_layout(vertical, slash, length, bm, bn, greedy=greedy)
                    lt = gpu_ms(partial(vertical_slash_layout, vertical, slash, length, bm, bn, greedy=greedy), 3)
                    run = partial(vertical_slash_attention, q, k, v, lay, num_warps=w, num_stages=s, pipe=pipe)
                    try:
                        t = gpu_ms(run, args.reps)
                    except Exception as exc:  # noqa: BLE001
                        say(f"  {(bm, bn, w, s, pipe)} failed {exc!r}"[:200])
                        continue
                    rec = ""
                    if (bm, bn, greedy) not in done_recall:
                        done_recall.add((bm, bn, greedy))
                        r = attention_recall(q, k, layout_mask(lay, 1, HQ, length), rows_at, chunk=16)
                        rec = f" recall {r:.4f}"
                    say(
                        f"  {(bm, bn, w, s, pipe)} greedy={greedy}: kernel {t:.2f} layout {lt:.2f}"
                        f" chunks {lay.chunk_count.float().mean():.1f} speedup {sdpa / (t + lt + est):.2f}{rec}"
                    )
            del q, k, v
            torch.cuda.empty_cache()
    say(f"total {time.time() - t0:.0f}s")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
