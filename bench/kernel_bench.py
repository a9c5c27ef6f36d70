"""Sparse prefill kernels on the GPU, against dense causal SDPA and FlexAttention on the same pattern, in one run.

bf16, 32 query / 8 KV heads, head dim 128. For each length: dense SDPA (the baseline), the Triton vertical-slash kernel
and FlexAttention on the same vertical-slash pattern, A-shape (Triton and FlexAttention), block-sparse
(FlexAttention). `ms` is index building + kernel; `index_ms` and `kernel_ms` split it. `recall` is the share of the
dense attention mass inside what the kernel computes, on sampled query rows of structured synthetic q/k of two
families (`topical`, `diffuse`: see `structured_qkv`); vertical-slash runs with MInference's budget, as caps cut at
95% and 97% of the mass, with one index per KV group (`shared`), and with the slashes ranked by a smoothed score
(`smooth`); each Triton row also counts the key tiles the kernel walks and its TFLOP/s on them. Then `e2e_llama1b`: a
whole prefill of a Llama-3.2-1B-shaped model with random weights, dense SDPA against sparse prefill through the
transformers attention registration, on the model's own q/k and on topical q/k (see `bench_e2e_llama1b`).

Results: bench/results/kernel-sparse.json and .md.   Run: python -m bench.kernel_bench [--lengths 32768 65536 ...]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import traceback
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import write_results
from kernels.attention import sparse_attention
from kernels.flex import (
    a_shape_block_mask,
    block_sparse_block_mask,
    flex_sparse_attention,
    vertical_slash_block_mask,
)
from kernels.index import (
    block_sparse_index,
    diagonal_sums,
    grouped_scores,
    mixed_slash_score,
    smoothed_slash_score,
    top_indices,
    vertical_slash_index,
)
from kernels.patterns import AShape, BlockSparse, VerticalSlash
from kernels.reference import (
    a_shape_mask,
    attention_recall,
    block_sparse_mask,
    causal_mask,
    masked_attention,
    vertical_slash_mask,
)
from kernels.triton_vertical_slash import (
    a_shape_index,
    layout_mask,
    vertical_slash_attention,
    vertical_slash_layout,
    vertical_slash_scores,
)

HQ, HKV, D = 32, 8, 128
FAMILIES = ["topical", "diffuse"]  # synthetic inputs, see structured_qkv
RECALL_ROWS = [48]  # query rows (evenly over L/4..L) that recall and density are measured on; --recall-rows
TOPIC_WINDOWS = (16, 64, 256, 1024, 4096, 16384, 65536)
TOPIC_STRENGTH = 0.42
VS = VerticalSlash()  # MInference's default budget: 1000 vertical, 6096 slash
# the same budget as caps, cut where the kept columns / diagonals hold this share of the estimated mass
VS_ADAPTIVE = [VerticalSlash(mass=0.95), VerticalSlash(mass=0.97)]
# one index per KV group (scores summed over its 4 query heads): the kernel packs the group's heads into one tile
VS_SHARED = [VerticalSlash(shared=True), VerticalSlash(shared=True, mass=0.95), VerticalSlash(shared=True, mass=0.97)]
# the same budget with slashes ranked by their score smoothed over 1024 neighbouring offsets (peaks kept): the same
# number of diagonals in a few contiguous runs instead of hundreds of scattered key chunks
VS_SMOOTH = [VerticalSlash(smooth=1024)]
# --mix-rows: the same budget and smoothing with a share of each line's own score in the ranking (VerticalSlash.mix:
# the far lines the estimate singles out come back, each at a key chunk or two: recall for kernel time), and with the
# estimating queries spread over the prompt instead of the last ones (VerticalSlash.spread)
VS_MIX = [
    VerticalSlash(smooth=1024, mix=0.2),
    VerticalSlash(smooth=1024, mix=0.3),
    VerticalSlash(smooth=1024, spread=True),
    VerticalSlash(smooth=1024, spread=True, mix=0.2),
    VerticalSlash(smooth=1024, spread=True, mix=0.25),
    VerticalSlash(smooth=1024, spread=True, mix=0.3),
    VerticalSlash(smooth=128, spread=True, mix=0.2),
]
# not MInference's budget: twice the slashes, smoothed (what `topical` needs for 95% recall at 256K), best config only
VS_WIDE = VerticalSlash(slash=12192, smooth=1024)
# --sweep: Triton vertical-slash alone over mass caps and budgets (per head and shared), to pick the rows above
SWEEP = [
    VerticalSlash(vertical=nv, slash=ns, mass=mass, shared=shared)
    for shared in (False, True)
    for nv, ns, masses in ((1000, 6096, (None, 0.95, 0.96, 0.97, 0.98)), (2000, 12192, (0.95, 0.96, 0.97, 0.98)))
    for mass in masses
]
A_SHAPE = AShape(sink=64, window=4096)
# e2e with patterns per head (MInference's offline search, kernels/search.py): each head gets the cheaper of A-shape
# (as a vertical-slash index with nothing to choose) and capped vertical-slash that keeps MIX_TARGET of its mass
MIX = [VerticalSlash(vertical=64, slash=4096, sink=64, window=4096), VerticalSlash(mass=0.95)]
MIX_TARGET = 0.95
BLOCK_SPARSE = BlockSparse(block=128, top=64)
# (BLOCK_M, BLOCK_N, num_warps, num_stages, K/V through tensor descriptors, q·kᵀ one tile ahead): the best per
# length is kept (bench/kernel_tune.py sweeps more: bench/results/kernel-tune-h200.log)
TRITON_CONFIGS = [(64, 64, 4, 3, True, False), (64, 64, 4, 3, True, True), (64, 32, 4, 3, True, False)]
# contiguous runs (VS_SMOOTH) can afford taller query blocks and wider key tiles
SMOOTH_CONFIGS = [
    *TRITON_CONFIGS[:1],
    (128, 64, 8, 3, True, False),
    (128, 128, 8, 2, True, False),
    (64, 128, 4, 3, True, False),
]
# --mix-rows: each ranking in 64x64 tiles and in 128x128 ones, whose longer key chunks hold more mass around each
# slash for about the same kernel time on contiguous runs (bench/kernel_tune.py --configs tall)
MIX_CONFIGS = [TRITON_CONFIGS[0], (128, 128, 8, 3, True, False)]
SHARED_CONFIGS = [(16, 64, 4, 3, True, False), (32, 64, 8, 3, True, False), (32, 64, 8, 3, False, False)]

for name, value in (("recompile_limit", 256), ("cache_size_limit", 256), ("accumulated_cache_size_limit", 4096)):
    if hasattr(torch._dynamo.config, name):  # one compiled FlexAttention per length and pattern
        setattr(torch._dynamo.config, name, value)


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = torch.arange(x.shape[2], device=x.device, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def structured_qkv(
    length: int, device: str, seed: int = 0, family: str = "diffuse", hq: int = HQ, hkv: int = HKV, d: int = D
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic q/k with the structure real heads show: heavy key columns (sinks and 64 random 'vertical' keys per
    KV head that all queries like), echoes (keys that resemble the query a fixed distance later: slash lines at a
    few offsets) and locality, in one of two forms:
    - `diffuse`: a shared component that RoPE turns into a distance-dependent bias. Its interference pattern is
      the same for every row, so far offsets get pseudo-random bumps, and at 128K most of the attention mass is a
      diffuse background (the oracle top-4096 columns hold well under half of it): a head that vertical-slash
      fits badly, the kind an offline search would not give it.
    - `topical`: topic drift at every scale (moving sums of noise over 16 to 64K tokens), shared by q and k in
      channels that RoPE leaves unrotated (the lowest frequencies, which trained models use for content). Nearby
      tokens attend to each other with a smooth, roughly power-law decay, and far regions that share the current
      topic get attention too. Its strength is set so that the oracle top-4096 columns of a row hold about 96% of
      the mass at 128K, what MInference reports for LLaMA-3-8B (`oracle_recall_4096` in the results checks this).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    group = hq // hkv

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device)

    base = randn(hkv, d) * 0.8  # drawn for both families, so that `diffuse` keeps its earlier random draws
    u = randn(hkv, d)
    u = u / u.norm(dim=-1, keepdim=True) * math.sqrt(d)
    if family == "diffuse":
        k = randn(1, hkv, length, d) * 0.5 + base[None, :, None]
        q = randn(1, hq, length, d) * 0.5 + (base + 0.3 * u).repeat_interleave(group, 0)[None, :, None]
    elif family == "topical":
        k = randn(1, hkv, length, d) * 0.5
        q = randn(1, hq, length, d) * 0.5 + 0.3 * u.repeat_interleave(group, 0)[None, :, None]
    else:
        raise ValueError(family)
    heavy = torch.cat([torch.arange(4, device=device), torch.randint(4, length, (64,), generator=g, device=device)])
    k[:, :, heavy] += 0.8 * u[None, :, None]
    for off in (517, 2048, 9999):
        if off < length:
            echo = q[:, ::group, off:]
            k[:, :, : length - off] += 0.4 * echo
    v = randn(1, hkv, length, d)
    q, k = rope(q), rope(k)
    if family == "topical":
        topic = torch.zeros(hkv, length, d, device=device)
        for w in TOPIC_WINDOWS:  # a moving sum of w noise vectors, scaled to unit variance: correlation 1 - lag / w
            steps = torch.nn.functional.pad(randn(hkv, length + w, d).double().cumsum(1), (0, 0, 1, 0))
            topic += (TOPIC_STRENGTH * (steps[:, w : w + length] - steps[:, :length]) / math.sqrt(w)).float()
        q += topic.repeat_interleave(group, 0)[None]
        k += topic[None]
    # every q·k term grows with d and the softmax scale is 1/sqrt(d): this keeps the logits of head dim D at any d
    q = q * (D / d) ** 0.5
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def oracle_recall(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, top: int = 4096) -> float:
    """Attention mass in each row's own top `top` keys (the sparsity of the input itself, for calibration)."""
    kept = []
    scale = 1.0 / math.sqrt(q.shape[-1])
    for r in rows.split(8):
        s = grouped_scores(q[:, :, r], k, scale).masked_fill(~causal_mask(k.shape[2])(r), float("-inf"))
        kept.append(torch.softmax(s, -1).topk(min(top, k.shape[2]), -1).values.sum(-1))
    return round(torch.cat(kept, -1).mean().item(), 4)


def gpu_ms(fn: Callable[[], Any], reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def density(mask, rows: torch.Tensor, length: int) -> float:
    kept = sum(mask(r).float().sum().item() for r in rows.split(16))
    causal = sum(causal_mask(length)(r).float().sum().item() for r in rows.split(16)) * HQ
    return kept / causal


def tile_counts(lay, vertical: torch.Tensor, slash: torch.Tensor, length: int, kernel_ms: float, pack: int = 1) -> dict:
    """Where the kernel's time goes: key tiles (BLOCK_M x BLOCK_N) it walks per query block (slash chunks from the
    greedy cover, gathered vertical tiles) against dense causal, the pattern's own key count against the causal
    triangle (`ideal_density`: slashes and verticals at or before each row, overlaps counted twice), and the
    achieved TFLOP/s on the walked tiles (4 * BLOCK_M * BLOCK_N * D flops per tile per head)."""
    bm, bn = lay.block_m, lay.block_n
    n_m = -(-length // bm)
    chunks = (lay.chunk_count[:, None] - lay.chunk_begin).clamp(min=0).double()  # [BH, nM]
    vtiles = torch.div(lay.vertical_count.double() + bn - 1, bn, rounding_mode="floor")
    m = torch.arange(n_m, device=chunks.device, dtype=torch.float64)
    dense = torch.div((m + 1) * bm + bn - 1, bn, rounding_mode="floor")
    rows = chunks.shape[0]
    walked = (chunks + vtiles).sum().item()
    r = torch.arange(length, device=slash.device)
    keys = 0.0
    for h in range(slash.shape[1]):  # per query head of the (unpacked) index
        s_h, v_h = slash[0, h].contiguous(), vertical[0, h].contiguous()
        keys += torch.searchsorted(s_h, r, right=True).sum().item()
        keys += torch.searchsorted(v_h, r, right=True).sum().item()
    flops = walked * 4 * bm * pack * bn * D
    return {
        "slash_tiles_per_block": round(chunks.mean().item(), 1),
        "vertical_tiles_per_block": round(vtiles.mean().item(), 1),
        "dense_tiles_per_block": round(dense.mean().item(), 1),
        "tile_density": round(walked / (dense.sum().item() * rows), 4),
        "ideal_density": round(keys / (slash.shape[1] * length * (length + 1) / 2), 4),
        "tflops": round(flops / (kernel_ms * 1e-3) / 1e12, 1),
    }


def _row(kernel: str, impl: str, length: int, dense_ms: float, index_ms: float, kernel_ms: float, **extra: Any) -> dict:
    ms = index_ms + kernel_ms
    r = {
        "kernel": kernel,
        "impl": impl,
        "length": length,
        "ms": round(ms, 3),
        "baseline": "dense_sdpa",
        "baseline_ms": round(dense_ms, 3),
        "speedup": round(dense_ms / ms, 2),
        "index_ms": round(index_ms, 3),
        "kernel_ms": round(kernel_ms, 3),
        "index_share": round(index_ms / ms, 3),
    }
    r.update(extra)
    print(r, flush=True)
    return r


def bench_length(
    length: int,
    reps: int,
    attempt: Callable[[Callable[[], Any], Any], Any],
    sweep: bool = False,
    quick: bool = False,
    index_rows: bool = False,
    mix_rows: bool = False,
) -> list[dict]:
    out: list[dict] = []
    q, k, v = structured_qkv(length, "cuda")
    # KV heads repeated outside the timing, so SDPA takes its fastest (non-GQA) kernel
    kv = (k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1))
    dense_ms = gpu_ms(partial(F.scaled_dot_product_attention, q, *kv, is_causal=True), reps)
    del kv, q, k, v
    out.append(_row("dense_sdpa", "sdpa", length, dense_ms, 0.0, dense_ms, recall=1.0, density=1.0))
    config = TRITON_CONFIGS[0]
    for family in FAMILIES:
        config = attempt(
            partial(bench_family, length, reps, attempt, family, dense_ms, out, sweep, quick, index_rows, mix_rows),
            config,
        )
        torch.cuda.empty_cache()
    return out


def bench_family(
    length: int,
    reps: int,
    attempt: Callable[[Callable[[], Any], Any], Any],
    family: str,
    dense_ms: float,
    out: list[dict],
    sweep: bool = False,
    quick: bool = False,
    index_rows: bool = False,
    mix_rows: bool = False,
) -> tuple:
    q, k, v = structured_qkv(length, "cuda", family=family)
    rows_at = torch.linspace(length // 4, length - 1, RECALL_ROWS[0], device="cuda").long()
    recall = lambda mask: round(attention_recall(q, k, mask, rows_at, chunk=16), 4)  # noqa: E731
    oracle = oracle_recall(q, k, rows_at)
    print(f"{family} {length}: oracle top-4096 recall {oracle}", flush=True)
    row = partial(_row, inputs=family, oracle_recall_4096=oracle)  # noqa: F841 (used by the closures below)

    def vs_triton(
        pattern: VerticalSlash, configs: list[tuple], flex: bool = True, index: tuple | None = None, label: str = ""
    ) -> tuple:
        index_ms = gpu_ms(lambda: vertical_slash_index(q, k, pattern), reps)
        vertical, slash = vertical_slash_index(q, k, pattern) if index is None else index
        g = HQ // HKV if pattern.shared else 1  # a shared index: one layout row per KV head
        best = None
        for bm, bn, warps, stages, tma, pipe in configs:
            lay = vertical_slash_layout(vertical[:, ::g], slash[:, ::g], length, bm, bn)
            run = partial(
                vertical_slash_attention, q, k, v, lay, num_warps=warps, num_stages=stages, tma=tma, pipe=pipe
            )
            try:
                t = gpu_ms(run, reps)
            except Exception as exc:  # noqa: BLE001 (a config that does not compile here must not lose the others)
                print(f"  triton config {(bm, bn, warps, stages, tma, pipe)} failed: {exc!r}"[:300], flush=True)
                continue
            print(f"  triton config {(bm, bn, warps, stages, tma, pipe)}: {t:.2f} ms", flush=True)
            if best is None or t < best[0]:
                best = (t, (bm, bn, warps, stages, tma, pipe), lay)
        kernel_ms, config, lay = best
        layout_ms = gpu_ms(lambda: vertical_slash_layout(vertical[:, ::g], slash[:, ::g], length, *config[:2]), reps)
        mask = lambda rows: layout_mask(lay, 1, HQ // g, length)(rows).repeat_interleave(g, 1)  # noqa: E731
        out.append(
            row(
                "vertical_slash",
                "triton",
                length,
                dense_ms,
                index_ms + layout_ms,
                kernel_ms,
                recall=recall(mask),
                density=round(density(mask, rows_at, length), 4),
                pattern=label or str(pattern),
                config=str(config),
                estimate_ms=round(index_ms, 3),
                layout_ms=round(layout_ms, 3),
                chunks_per_head=round(lay.chunk_count.float().mean().item(), 1),
                verticals_per_head=round((vertical < length).sum(-1).float().mean().item(), 1),
                **tile_counts(lay, vertical[:, ::g], slash[:, ::g], length, kernel_ms, g),
            )
        )
        if flex:
            vs_flex(pattern, vertical, slash, index_ms, out[-1]["ms"])
        return config

    def vs_flex(
        pattern: VerticalSlash, vertical: torch.Tensor, slash: torch.Tensor, index_ms: float, triton_ms: float
    ) -> None:
        bmask_ms = gpu_ms(lambda: vertical_slash_block_mask(vertical, slash, length), reps)
        bmask = vertical_slash_block_mask(vertical, slash, length)
        flex_ms = gpu_ms(partial(flex_sparse_attention, q, k, v, bmask), reps)
        exact = vertical_slash_mask(length, vertical, slash)
        total = index_ms + bmask_ms + flex_ms
        out.append(
            row(
                "vertical_slash",
                "flex",
                length,
                dense_ms,
                index_ms + bmask_ms,
                flex_ms,
                recall=recall(exact),
                density=round(density(exact, rows_at, length), 4),
                pattern=str(pattern),
                triton_speedup_over_flex=round(total / triton_ms, 2),
            )
        )

    # a_shape: Triton (the vertical-slash kernel with sinks as verticals and the window as slashes) and FlexAttention
    def a_shape_triton(config: tuple) -> None:
        bm, bn, warps, stages, tma, pipe = config
        a_lay = vertical_slash_layout(*a_shape_index(1, HQ, A_SHAPE, length, q.device), length, bm, bn)
        run = partial(vertical_slash_attention, q, k, v, a_lay, num_warps=warps, num_stages=stages, tma=tma, pipe=pipe)
        a_ms = gpu_ms(run, reps)
        out.append(row("a_shape", "triton", length, dense_ms, 0.0, a_ms, recall=recall(a_shape_mask(length, A_SHAPE))))

    def a_shape_flex() -> None:
        a_bmask_ms = gpu_ms(lambda: a_shape_block_mask(length, A_SHAPE, q.device), reps)
        a_bmask = a_shape_block_mask(length, A_SHAPE, q.device)
        a_flex_ms = gpu_ms(partial(flex_sparse_attention, q, k, v, a_bmask), reps)
        a_rec = recall(a_shape_mask(length, A_SHAPE))
        out.append(row("a_shape", "flex", length, dense_ms, a_bmask_ms, a_flex_ms, recall=a_rec))

    def block_sparse_flex() -> None:
        bs_index_ms = gpu_ms(lambda: block_sparse_block_mask(block_sparse_index(q, k, BLOCK_SPARSE), length), reps)
        blocks = block_sparse_index(q, k, BLOCK_SPARSE)
        bs_bmask = block_sparse_block_mask(blocks, length)
        bs_ms = gpu_ms(partial(flex_sparse_attention, q, k, v, bs_bmask), reps)
        bs_mask = block_sparse_mask(length, blocks, BLOCK_SPARSE.block)
        rec, dens = recall(bs_mask), round(density(bs_mask, rows_at, length), 4)
        out.append(row("block_sparse", "flex", length, dense_ms, bs_index_ms, bs_ms, recall=rec, density=dens))

    def oracle_slash_rows() -> None:
        # not an index: the slashes ranked by the true attention mass per offset of the recall rows themselves (the
        # same 6096 picks, smoothed and mixed like VS_MIX), and the plain local band 0..8191 (8192 picks): what any
        # slash ranking could reach at that kernel cost on these inputs. Verticals and timing as VS_SMOOTH's.
        true = torch.zeros(1, HQ, length, device=q.device)
        for r in rows_at.split(16):
            s = grouped_scores(q[:, :, r], k, 1.0 / math.sqrt(D)).masked_fill(~causal_mask(length)(r), float("-inf"))
            true += diagonal_sums(torch.softmax(s, -1), r)
        del s
        vertical = vertical_slash_index(q, k, VS_SMOOTH[0])[0]
        smoothed = smoothed_slash_score(true, VS_SMOOTH[0].smooth)
        for mix in (0.0, 0.2, 0.3):
            slash = top_indices(mixed_slash_score(true, smoothed, mix), VS.window, VS.slash, None, 0)
            label = f"oracle offsets (recall rows' true mass), smooth=1024, mix={mix}, 6096 slashes"
            vs_triton(VS_SMOOTH[0], TRITON_CONFIGS[:1], False, (vertical, slash), label)
        band = torch.arange(8192, device=q.device).expand(1, HQ, -1)
        vs_triton(VS_SMOOTH[0], TRITON_CONFIGS[:1], False, (vertical, band), "local band 0..8191 (8192 slashes)")

    if mix_rows:  # top-k, smoothed and the mixed rankings (VS_MIX), Triton in each of MIX_CONFIGS, no Flex
        for pattern in (VS, *VS_SMOOTH, *VS_MIX):
            for config in MIX_CONFIGS:
                attempt(partial(vs_triton, pattern, [config], False), None)
        attempt(oracle_slash_rows, None)
        return TRITON_CONFIGS[0]

    if index_rows:  # the index's share: MInference's and the smoothed selection, Triton in its best config only
        attempt(partial(vs_triton, VS, TRITON_CONFIGS[:1], False), None)
        for pattern in VS_SMOOTH:
            attempt(partial(vs_triton, pattern, SMOOTH_CONFIGS[:1], False), None)
        return TRITON_CONFIGS[0]
    if quick:  # MInference's selection and the smoothed one, Triton (all configs) and FlexAttention, nothing else
        config = attempt(partial(vs_triton, VS, TRITON_CONFIGS), TRITON_CONFIGS[0])
        smooth_config = None
        for pattern in VS_SMOOTH:
            smooth_config = attempt(partial(vs_triton, pattern, SMOOTH_CONFIGS), None)
        attempt(partial(vs_triton, VS_WIDE, [smooth_config or SMOOTH_CONFIGS[0]]), None)
        return config
    if sweep:  # one kernel config each (the best of the full runs), no FlexAttention
        for pattern in SWEEP:
            attempt(partial(vs_triton, pattern, [SHARED_CONFIGS[0] if pattern.shared else TRITON_CONFIGS[0]]), None)
        return TRITON_CONFIGS[0]
    config = attempt(partial(vs_triton, VS, TRITON_CONFIGS), TRITON_CONFIGS[0])
    for pattern in VS_ADAPTIVE:
        attempt(partial(vs_triton, pattern, [config]), None)
    for pattern in VS_SMOOTH:
        attempt(partial(vs_triton, pattern, SMOOTH_CONFIGS), None)
    shared_config = attempt(partial(vs_triton, VS_SHARED[0], SHARED_CONFIGS), SHARED_CONFIGS[0])
    for pattern in VS_SHARED[1:]:
        attempt(partial(vs_triton, pattern, [shared_config]), None)
    attempt(partial(a_shape_triton, config), None)
    attempt(a_shape_flex, None)
    attempt(block_sparse_flex, None)
    return config


def correctness_checks(length: int = 4096) -> dict[str, float]:
    """Max abs difference of each GPU kernel from the plain-torch reference on the same mask (bf16)."""
    q, k, v = structured_qkv(length, "cuda", seed=1)
    vertical, slash = vertical_slash_index(q, k, VerticalSlash(vertical=200, slash=600))
    lay = vertical_slash_layout(vertical, slash, length)
    a_lay = vertical_slash_layout(*a_shape_index(1, HQ, AShape(64, 512), length, q.device), length)
    blocks = block_sparse_index(q, k, BlockSparse(block=128, top=8))
    pairs = {
        "vertical_slash_triton": (vertical_slash_attention(q, k, v, lay), layout_mask(lay, 1, HQ, length)),
        "vertical_slash_flex": (
            flex_sparse_attention(q, k, v, vertical_slash_block_mask(vertical, slash, length)),
            vertical_slash_mask(length, vertical, slash),
        ),
        "a_shape_triton": (vertical_slash_attention(q, k, v, a_lay), layout_mask(a_lay, 1, HQ, length)),
        "a_shape_flex": (
            flex_sparse_attention(q, k, v, a_shape_block_mask(length, AShape(64, 512), q.device)),
            a_shape_mask(length, AShape(64, 512)),
        ),
        "block_sparse_flex": (
            flex_sparse_attention(q, k, v, block_sparse_block_mask(blocks, length)),
            block_sparse_mask(length, blocks, 128),
        ),
    }
    checks = {}
    for name, (got, mask) in pairs.items():
        ref = masked_attention(q.float(), k.float(), v.float(), mask)
        checks[name] = round((got.float() - ref).abs().max().item(), 4)
    # the index's scores (from bf16 logits, two Triton passes) against float32 torch sums, relative to the largest
    r = VerticalSlash().last_q
    s = grouped_scores(q[:, :, -r:], k, 1.0 / math.sqrt(D))
    logits = s.bfloat16()
    s[..., -r:].masked_fill_(torch.ones(r, r, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    p = torch.softmax(s, -1)
    for name, got, want in zip(
        ("vertical_scores", "slash_scores"),
        vertical_slash_scores(logits),
        (p.sum(2), diagonal_sums(p)),
        strict=True,
    ):
        checks[name] = round(((got - want).abs().max() / want.max()).item(), 4)
    print("checks", checks, flush=True)
    return checks


def full_layout_efficiency(length: int = 65536, reps: int = 3) -> dict[str, float]:
    """The Triton kernel with every diagonal selected (dense causal attention through the sparse machinery) against
    dense SDPA: how fast the kernel's inner loop is per computed tile, apart from any sparsity."""
    q, k, v = structured_qkv(length, "cuda", seed=2)
    slash = torch.arange(length, device="cuda").expand(1, HQ, -1)
    lay = vertical_slash_layout(slash[..., :1], slash, length)
    kv = (k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1))
    sdpa = gpu_ms(partial(F.scaled_dot_product_attention, q, *kv, is_causal=True), reps)
    result = {"length": length, "sdpa_ms": round(sdpa, 3)}
    for tma in (True, False):
        result[f"triton_ms_tma_{tma}"] = round(
            gpu_ms(partial(vertical_slash_attention, q, k, v, lay, tma=tma), reps), 3
        )
    result["triton_ms_pipe"] = round(gpu_ms(partial(vertical_slash_attention, q, k, v, lay, pipe=True), reps), 3)
    print("full layout", result, flush=True)
    return result


def full_layout_configs(length: int = 65536, reps: int = 3) -> dict[str, float]:
    """Dense causal attention through the kernel in each of SMOOTH_CONFIGS' tiles: TFLOP/s per tile shape."""
    q, k, v = structured_qkv(length, "cuda", seed=2)
    slash = torch.arange(length, device="cuda").expand(1, HQ, -1)
    kv = (k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1))
    flops = 4 * HQ * D * length * (length + 1) / 2  # the causal triangle
    sdpa = gpu_ms(partial(F.scaled_dot_product_attention, q, *kv, is_causal=True), reps)
    result = {"length": length, "sdpa_ms": round(sdpa, 3), "sdpa_tflops": round(flops / sdpa / 1e9, 1)}
    del kv
    for bm, bn, warps, stages, tma, pipe in SMOOTH_CONFIGS:
        lay = vertical_slash_layout(slash[..., :1], slash, length, bm, bn)
        run = partial(vertical_slash_attention, q, k, v, lay, num_warps=warps, num_stages=stages, tma=tma, pipe=pipe)
        try:
            t = gpu_ms(run, reps)
        except Exception as exc:  # noqa: BLE001
            print(f"  full layout {(bm, bn, warps, stages)} failed: {exc!r}"[:300], flush=True)
            continue
        result[f"{bm}x{bn}_w{warps}_s{stages}_ms"] = round(t, 3)
        result[f"{bm}x{bn}_w{warps}_s{stages}_tflops"] = round(flops / t / 1e9, 1)
    print("full layout configs", result, flush=True)
    return result


def index_profile(lengths: list[int], reps: int = 5) -> dict[str, float]:
    """Where the index's time goes (topical q/k, VS_SMOOTH): the estimate's parts and the layout with either scan."""
    result: dict[str, float] = {}
    for length in lengths:
        result.update(_index_profile(length, reps))
        torch.cuda.empty_cache()
    print("index profile", result, flush=True)
    return result


def _index_profile(length: int, reps: int) -> dict[str, float]:
    q, k, _ = structured_qkv(length, "cuda", family="topical")
    pattern = VS_SMOOTH[0]
    r, scale = pattern.last_q, 1.0 / math.sqrt(D)
    qg = (q[:, :, -r:] * scale).reshape(1, HKV, HQ // HKV * r, D)
    s = torch.matmul(qg, k.transpose(-1, -2)).reshape(1, HQ, r, length)
    vscore, sscore = vertical_slash_scores(s)
    vertical, slash = vertical_slash_index(q, k, pattern)
    parts = {
        "index": partial(vertical_slash_index, q, k, pattern),
        "qk": partial(torch.matmul, qg, k.transpose(-1, -2)),
        "scores": partial(vertical_slash_scores, s),
        "scores_b64_w4": partial(vertical_slash_scores, s, block=64, num_warps=4),
        "scores_b256_w8": partial(vertical_slash_scores, s, block=256, num_warps=8),
        "scores_b128_w8": partial(vertical_slash_scores, s, block=128, num_warps=8),
        "top_vertical": partial(top_indices, vscore, pattern.sink, pattern.vertical, None, length),
        "smooth": partial(smoothed_slash_score, sscore, pattern.smooth),
        "top_slash": partial(top_indices, sscore, pattern.window, pattern.slash, None, 0),
        "layout_torch": partial(vertical_slash_layout, vertical, slash, length, scan="torch"),
        "layout_triton": partial(vertical_slash_layout, vertical, slash, length, scan="triton"),
    }
    out: dict[str, float] = {f"{length}_{name}_ms": round(gpu_ms(fn, reps), 3) for name, fn in parts.items()}
    a = vertical_slash_layout(vertical, slash, length, scan="torch")
    b = vertical_slash_layout(vertical, slash, length, scan="triton")
    fields = ("chunk_start", "chunk_begin", "chunk_count", "chunk_diag", "vertical", "vertical_count", "covered")
    out[f"{length}_scans_agree"] = all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields)
    return out


def bench_e2e_llama1b(lengths: list[int], reps: int, names: list[str] | None = None) -> list[dict]:
    """Whole prefill of a Llama-3.2-1B-shaped model (random weights), dense SDPA against sparse prefill.

    Random weights make every head diffuse (its q/k carry no structure), so `inputs=model` shows vertical-slash on
    heads it does not fit. `inputs=topical` assumes heads with the structure of the `topical` synthetic inputs: every
    layer's attention reads the topical q/k of the same shape (head dim 64) instead of its own, v and everything else
    stay the model's, and every head is vertical-slash; its FlexAttention row runs the same pattern as a block mask
    in the same model. `topical_per_head` gives each head the pattern the offline search (kernels/search.py) picks
    from MIX on these same topical q/k (rows L/4..L), the same choice in every layer since every layer reads them.
    `names`: only these attention implementations (besides the dense baseline).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from engines.sparse_attention import attention_implementation, register_sparse_attention_function
    from kernels.attention import vertical_slash_from_index
    from kernels.search import per_head_index, search_heads

    cfg = LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=max(lengths),
        rope_theta=500000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    out = []
    for length in lengths:
        qk = structured_qkv(length, "cuda", family="topical", d=cfg.head_dim)[:2]

        def on_topical(attend: Callable[..., torch.Tensor], qk=qk) -> Callable[..., tuple[torch.Tensor, None]]:
            def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
                return attend(*qk, value, scaling).transpose(1, 2).contiguous(), None

            return attention

        rows = torch.linspace(length // 4, length - 1, 48, device="cuda").long()
        choice = search_heads(*qk, MIX, MIX_TARGET, rows, 1.0 / math.sqrt(cfg.head_dim))
        mix = f"per head ({choice.count(0)} A-shape {MIX[0]}, {choice.count(1)} {MIX[1]}; target {MIX_TARGET})"
        print(f"  e2e {length} {mix}: {choice}", flush=True)

        def per_head(q, k, v, scale, choice=choice):
            return vertical_slash_from_index(q, k, v, *per_head_index(q, k, MIX, choice, scale), scale)

        def flex_vs(q, k, v, scale):
            return flex_sparse_attention(
                q, k, v, vertical_slash_block_mask(*vertical_slash_index(q, k, VS, scale), q.shape[2]), scale
            )

        impls = {  # name: (inputs, pattern, impl)
            attention_implementation("vertical_slash", "llama1b"): ("model", VS, "triton"),
            attention_implementation("a_shape", "llama1b"): ("model", A_SHAPE, "triton"),
        }
        for name, pattern, impl, attend in (
            ("topical_vs", VS, "triton", lambda q, k, v, s: sparse_attention(q, k, v, VS, s)),
            (
                "topical_vs_m95",
                VS_ADAPTIVE[0],
                "triton",
                lambda q, k, v, s: sparse_attention(q, k, v, VS_ADAPTIVE[0], s),
            ),
            (
                "topical_vs_shared",
                VS_SHARED[0],
                "triton",
                lambda q, k, v, s: sparse_attention(q, k, v, VS_SHARED[0], s),
            ),
            (
                "topical_vs_shared_m97",
                VS_SHARED[2],
                "triton",
                lambda q, k, v, s: sparse_attention(q, k, v, VS_SHARED[2], s),
            ),
            ("topical_vs_flex", VS, "flex", flex_vs),
            ("topical_per_head", mix, "triton", per_head),
        ):
            register_sparse_attention_function(name, on_topical(attend))
            impls[name] = ("topical", pattern, impl)
        impls = {name: x for name, x in impls.items() if names is None or name in names}
        ids = torch.randint(0, cfg.vocab_size, (1, length), device="cuda")
        ms = {}
        for name in ("sdpa", *impls):
            model.set_attn_implementation(name)
            with torch.inference_mode():
                ms[name] = gpu_ms(partial(model, ids, logits_to_keep=1), reps)
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # FlexAttention recompiles, if any
            print(f"  e2e {length} {name}: {ms[name]:.1f} ms (compiled graphs so far: {graphs})", flush=True)
        for name, (inputs, pattern, impl) in impls.items():
            out.append(
                _row(
                    "e2e_llama1b",
                    impl,
                    length,
                    ms["sdpa"],
                    0.0,
                    ms[name],
                    recall=None,
                    pattern=str(pattern),
                    inputs=inputs,
                    model="Llama-3.2-1B shape, random weights",
                )
            )
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072, 262144])
    ap.add_argument("--e2e-lengths", type=int, nargs="*", default=[65536, 131072])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    ap.add_argument("--name", default="kernel-sparse")
    ap.add_argument("--sweep", action="store_true", help="only Triton vertical-slash over SWEEP's caps and budgets")
    ap.add_argument(
        "--quick", action="store_true", help="only MInference's and the smoothed selection, Triton and Flex"
    )
    ap.add_argument(
        "--index-rows", action="store_true", help="only Triton vertical-slash, top-k and smoothed, best config, no Flex"
    )
    ap.add_argument(
        "--mix-rows", action="store_true", help="only Triton vertical-slash, top-k, smoothed, VS_MIX, MIX_CONFIGS"
    )
    ap.add_argument("--full-configs", action="store_true", help="dense through the kernel in each SMOOTH_CONFIGS tile")
    ap.add_argument("--index-profile", action="store_true", help="time the index's parts (topical, VS_SMOOTH)")
    ap.add_argument("--e2e-names", nargs="*", help="only these e2e attention implementations (default: all)")
    ap.add_argument("--recall-rows", type=int, default=48, help="query rows that recall is measured on, per length")
    args = ap.parse_args()
    FAMILIES[:] = args.families
    RECALL_ROWS[:] = [args.recall_rows]
    props = torch.cuda.get_device_properties(0)
    meta = {
        "commit": os.environ.get("KERNELS_COMMIT", "unknown"),  # the GPU gets a copy of the tree without our git
        "code_commit": os.environ.get("KERNELS_COMMIT", "unknown"),  # the GPU gets a copy of the tree without git
        "machine": f"{props.name}, torch {torch.__version__}",
        "heads": f"{HQ} query / {HKV} KV, head dim {D}, bf16",
        "recall_rows": args.recall_rows,
        "patterns": {"vertical_slash": str(VS), "a_shape": str(A_SHAPE), "block_sparse": str(BLOCK_SPARSE)},
    }
    start = time.time()
    errors: list[str] = []

    def attempt(fn: Callable[[], Any], default: Any) -> Any:
        # one failing part (a compile, an OOM) must not lose the rest of a long GPU run
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            errors.append(f"{fn}: {exc!r}"[:500])
            torch.cuda.empty_cache()
            return default

    meta["checks"] = attempt(correctness_checks, {})
    if args.index_profile:
        meta["index_profile"] = attempt(partial(index_profile, args.lengths), {})
    if args.full_configs:
        meta["triton_full_layout_configs"] = attempt(full_layout_configs, {})
    elif not (args.sweep or args.index_rows or args.mix_rows):
        meta["triton_full_layout"] = attempt(full_layout_efficiency, {})
    rows: list[dict] = []

    def save() -> None:
        write_results(args.name, "sparse prefill kernels", "synthetic structured q/k", rows, errors=errors, **meta)

    for length in args.lengths:
        run_length = partial(
            bench_length, length, args.reps, attempt, args.sweep, args.quick, args.index_rows, args.mix_rows
        )
        rows += attempt(run_length, [])
        torch.cuda.empty_cache()
        save()
        print(f"done {length} at {time.time() - start:.0f}s", flush=True)
    if args.e2e_lengths:
        rows += attempt(partial(bench_e2e_llama1b, args.e2e_lengths, max(1, args.reps - 1), args.e2e_names), [])
        save()
    print(f"total {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
