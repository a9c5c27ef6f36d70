"""Tuning sweep for the Triton vertical-slash kernel (GPU): per-tile speed on a full layout, chunk counts of the two
chunk covers, and kernel time per config on `topical` inputs, all in one run. Prints a table; not a results file.

Run: python -m bench.kernel_tune [--lengths 131072 262144] [--dims 128 64]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
import torch.nn.functional as F

from bench.kernel_bench import HKV, HQ, VS, gpu_ms, structured_qkv
from kernels.index import vertical_slash_index
from kernels.patterns import VerticalSlash
from kernels.reference import attention_recall
from kernels.triton_vertical_slash import layout_mask, vertical_slash_attention, vertical_slash_layout

CONFIGS = {  # (BLOCK_M, BLOCK_N, num_warps, num_stages, pipe, warp_specialize)
    128: [
        (64, 64, 4, 3, False, False),
        (64, 64, 4, 3, True, False),
        (64, 32, 4, 3, False, False),
        (64, 32, 4, 3, True, False),
        (64, 32, 4, 2, False, False),
        (128, 64, 8, 2, False, False),
        (128, 64, 8, 2, True, False),
        (128, 32, 8, 3, False, False),
    ],
    64: [
        (64, 64, 4, 3, False, False),
        (64, 64, 4, 3, True, False),
        (64, 32, 4, 3, False, False),
        (64, 64, 4, 2, False, False),
        (64, 128, 4, 2, False, False),
        (64, 128, 4, 2, True, False),
        (128, 64, 4, 3, False, False),
    ],
}
# --configs ws: the unmasked chunk loop warp-specialized, against the best plain config (on the H100 with Triton
# 3.6 the 4-warp ones fail to compile and the 8-warp ones are no faster: bench/results/kernel-tune-tiles-h100.log)
WS_CONFIGS = [
    (64, 64, 4, 3, False, False),
    (64, 64, 4, 3, False, True),
    (64, 64, 4, 2, False, True),
    (128, 64, 4, 3, False, True),
    (128, 64, 8, 2, False, True),
    (128, 128, 4, 2, False, True),
    (128, 128, 8, 2, False, True),
    (64, 128, 4, 2, False, True),
]
# --configs tall: 128x128 tiles cover each slash with longer key chunks, so the same index holds more of the mass
TALL_CONFIGS = [
    (64, 64, 4, 3, False, False),
    (128, 128, 8, 2, False, False),
    (128, 128, 8, 3, False, False),
    (128, 64, 8, 3, False, False),
    (128, 128, 8, 3, False, True),
]
# --configs square: the two square tiles alone
SQUARE_CONFIGS = [TALL_CONFIGS[0], TALL_CONFIGS[2]]
CONFIG_SETS = {"ws": WS_CONFIGS, "tall": TALL_CONFIGS, "square": SQUARE_CONFIGS}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[131072, 262144])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--full", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--configs", choices=sorted(CONFIG_SETS), help="these configs instead of CONFIGS")
    ap.add_argument(
        "--mix", type=float, nargs="*", help="indexes VerticalSlash(smooth=SMOOTH, spread=True, mix=MIX), not top-k"
    )
    ap.add_argument("--smooth", type=int, nargs="+", default=[1024], help="with --mix: these smoothing widths")
    ap.add_argument("--profile-index", action="store_true", help="also print the index's CUDA kernels, by time")
    args = ap.parse_args()
    indexes = [VerticalSlash(smooth=w, spread=True, mix=m) for w in args.smooth for m in args.mix or []] or [VS]
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
        configs = CONFIG_SETS[args.configs] if args.configs else CONFIGS[d]
        dense = vertical_slash_attention(q, k, v, vertical_slash_layout(slash[..., :1], slash, length))
        for bm, bn, w, s, pipe, ws in configs:
            lay = vertical_slash_layout(slash[..., :1], slash, length, bm, bn)
            run = partial(
                vertical_slash_attention, q, k, v, lay, num_warps=w, num_stages=s, pipe=pipe, warp_specialize=ws
            )
            try:
                t = gpu_ms(run, args.reps)
            except Exception as exc:  # noqa: BLE001
                say(f"  {(bm, bn, w, s, pipe, ws)} failed {exc!r}"[:300])
                continue
            err = (run() - dense).abs().max().item()  # every layout here is the whole causal triangle
            say(f"  {(bm, bn, w, s, pipe, ws)}: {t:.2f} ms  sdpa/triton {sdpa / t:.3f}  max diff {err:.2e}")
        del q, k, v, slash, dense
        torch.cuda.empty_cache()

        for length in args.lengths:
            q, k, v = structured_qkv(length, "cuda", family="topical", d=d)
            kv = (k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1))
            sdpa = gpu_ms(partial(F.scaled_dot_product_attention, q, *kv, is_causal=True), 2)
            del kv
            for index in indexes:
                est = gpu_ms(partial(vertical_slash_index, q, k, index), args.reps)
                vertical, slash = vertical_slash_index(q, k, index)
                if args.profile_index:
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                        vertical_slash_index(q, k, index)
                        torch.cuda.synchronize()
                    say(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
                rows_at = torch.linspace(length // 4, length - 1, 48, device="cuda").long()
                say(f"topical d={d} L={length}: sdpa {sdpa:.1f} ms, estimate {est:.2f} ms, {index}")
                done_recall = set()
                for bm, bn, w, s, pipe, ws in configs:
                    for greedy in (True, False):
                        if not greedy and (pipe or ws or (bn != 32 and (bm, bn) != (64, 64))):
                            continue
                        lay = vertical_slash_layout(vertical, slash, length, bm, bn, greedy=greedy)
                        lt = gpu_ms(partial(vertical_slash_layout, vertical, slash, length, bm, bn, greedy=greedy), 3)
                        run = partial(
                            vertical_slash_attention,
                            q,
                            k,
                            v,
                            lay,
                            num_warps=w,
                            num_stages=s,
                            pipe=pipe,
                            warp_specialize=ws,
                        )
                        try:
                            t = gpu_ms(run, args.reps)
                        except Exception as exc:  # noqa: BLE001
                            say(f"  {(bm, bn, w, s, pipe, ws)} failed {exc!r}"[:300])
                            continue
                        rec = ""
                        if (bm, bn, greedy) not in done_recall:
                            done_recall.add((bm, bn, greedy))
                            r = attention_recall(q, k, layout_mask(lay, 1, HQ, length), rows_at, chunk=16)
                            rec = f" recall {r:.4f}"
                        say(
                            f"  {(bm, bn, w, s, pipe, ws)} greedy={greedy}: kernel {t:.2f} layout {lt:.2f}"
                            f" chunks {lay.chunk_count.float().mean():.1f} speedup {sdpa / (t + lt + est):.2f}{rec}"
                        )
            del q, k, v
            torch.cuda.empty_cache()
    say(f"total {time.time() - t0:.0f}s")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
