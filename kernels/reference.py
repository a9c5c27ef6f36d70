"""Plain-torch reference: token masks for each pattern, masked attention and attention-mass recall.

Runs anywhere (CI runs it on CPU); works on row chunks so memory stays O(chunk x L), never O(L²).
A mask function maps query positions `rows` [R] to a bool mask [B or 1, H or 1, R, L] (causality included).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels.index import block_sparse_index, grouped_scores, vertical_slash_index
from kernels.patterns import AShape, BlockSparse, Pattern, VerticalSlash

MaskFn = Callable[[torch.Tensor], torch.Tensor]


def causal_mask(length: int) -> MaskFn:
    def fn(rows: torch.Tensor) -> torch.Tensor:
        cols = torch.arange(length, device=rows.device)
        return (cols[None, :] <= rows[:, None])[None, None]

    return fn


def a_shape_mask(length: int, cfg: AShape) -> MaskFn:
    def fn(rows: torch.Tensor) -> torch.Tensor:
        cols = torch.arange(length, device=rows.device)[None, :]
        r = rows[:, None]
        return ((cols <= r) & ((cols < cfg.sink) | (r - cols < cfg.window)))[None, None]

    return fn


def vertical_slash_mask(length: int, vertical: torch.Tensor, slash: torch.Tensor) -> MaskFn:
    # Kept columns and kept offsets as one bool row each per head: a row chunk's mask is then one gather by offset
    # (R x L per head) instead of a scatter of every (row, slash) pair, 2.7x faster on a CPU at 8K.
    b, h = vertical.shape[:2]
    columns = torch.zeros(b, h, length + 1, dtype=torch.bool, device=vertical.device)
    columns.scatter_(-1, vertical.clamp(max=length), True)  # padding (L) lands in the spare column
    offsets = torch.zeros(b, h, length + 1, dtype=torch.bool, device=slash.device)
    offsets.scatter_(-1, slash.clamp(max=length), True)
    columns[..., length] = offsets[..., length] = False  # the spare entry now stands for "not causal"
    cols = torch.arange(length, device=vertical.device)

    def fn(rows: torch.Tensor) -> torch.Tensor:
        offset = rows[:, None] - cols[None, :]
        causal = offset >= 0
        return (columns[:, :, None, :length] | offsets[:, :, torch.where(causal, offset, length)]) & causal

    return fn


def block_sparse_mask(length: int, blocks: torch.Tensor, block: int) -> MaskFn:
    def fn(rows: torch.Tensor) -> torch.Tensor:
        cols = torch.arange(length, device=rows.device)
        m = blocks[:, :, rows // block][..., cols // block]
        return m & (cols[None, :] <= rows[:, None])

    return fn


def pattern_mask(q: torch.Tensor, k: torch.Tensor, pattern: Pattern, scale: float | None = None) -> MaskFn:
    """Build the pattern's index from q and k (online) and return its token mask. q may hold only the last positions
    of k's (a chunk over cached keys); the mask takes absolute positions."""
    length = k.shape[2]
    if isinstance(pattern, AShape):
        return a_shape_mask(length, pattern)
    if isinstance(pattern, VerticalSlash):
        return vertical_slash_mask(length, *vertical_slash_index(q, k, pattern, scale))
    if isinstance(pattern, BlockSparse):
        if q.shape[2] != length:
            raise ValueError("block_sparse pools query blocks of the whole prompt: no chunk over cached keys")
        return block_sparse_mask(length, block_sparse_index(q, k, pattern, scale), pattern.block)
    raise TypeError(f"unknown pattern {pattern!r}")


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskFn, scale: float | None = None, chunk: int = 512
) -> torch.Tensor:
    """softmax(q·kᵀ·scale, masked) · v with GQA (SDPA with a boolean mask, over row chunks); returns [B, Hq, n, D].
    q [B, Hq, n, D] holds the last n positions of k/v's L (n = L for a whole prefill); the mask takes absolute rows."""
    n, first = q.shape[2], k.shape[2] - q.shape[2]
    out = torch.empty_like(q)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        rows = torch.arange(first + start, first + end, device=q.device)
        # keys after the chunk's last row are masked for all of it (causality): left out, a quarter less work
        out[:, :, start:end] = F.scaled_dot_product_attention(
            q[:, :, start:end],
            k[:, :, : first + end],
            v[:, :, : first + end],
            attn_mask=mask(rows)[..., : first + end],
            scale=scale,
            enable_gqa=True,
        )
    return out


def attention_recall(
    q: torch.Tensor, k: torch.Tensor, mask: MaskFn, rows: torch.Tensor, scale: float | None = None, chunk: int = 64
) -> float:
    """Share of the dense causal attention mass that the mask keeps, averaged over heads and the given rows."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    length = k.shape[2]
    kept = []
    for start in range(0, rows.numel(), chunk):
        r = rows[start : start + chunk]
        s = grouped_scores(q[:, :, r], k, scale)
        s = s.masked_fill(~causal_mask(length)(r), float("-inf"))
        p = torch.softmax(s, dim=-1)
        kept.append((p * mask(r)).sum(dim=-1))
    return torch.cat(kept, dim=-1).mean().item()
