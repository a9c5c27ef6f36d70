"""FlexAttention block masks for the three patterns (the GPU path for a_shape and block_sparse, and the yardstick
for the vertical-slash kernel).

Block masks are built from block-level predicates in a few tensor ops rather than by `create_block_mask`, which would
evaluate the token mask at every position (L² per head). Blocks that are entirely inside the pattern are marked full,
so FlexAttention skips the token mask there.
"""

from __future__ import annotations

import inspect

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from kernels.index import block_sparse_index, vertical_slash_index
from kernels.patterns import AShape, BlockSparse, Pattern, VerticalSlash

BLOCK = 128
# Forward only: skip building the transposed (query-block) lists that the backward pass needs, where torch has the flag.
FLAGS = inspect.signature(BlockMask.from_kv_blocks).parameters
NO_Q = {"compute_q_blocks": False} if "compute_q_blocks" in FLAGS else {}


def from_block_predicates(partial: torch.Tensor, full: torch.Tensor, length: int, mask_mod, block: int) -> BlockMask:
    """BlockMask from bool [B, H, nQ, nK] maps: `partial` blocks need the token mask, `full` blocks need none."""
    partial = partial & ~full

    def lists(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = m.sum(-1, dtype=torch.int32)
        order = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return counts, order

    kv_num, kv_idx = lists(partial)
    full_num, full_idx = lists(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(length, length), **NO_Q
    )


def block_grid(length: int, block: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    n = -(-length // block)
    ids = torch.arange(n, device=device)
    return ids[:, None], ids[None, :]


def a_shape_block_mask(length: int, cfg: AShape, device: torch.device) -> BlockMask:
    m, n = block_grid(length, BLOCK, device)
    q_lo, q_hi, k_lo, k_hi = m * BLOCK, m * BLOCK + BLOCK - 1, n * BLOCK, n * BLOCK + BLOCK - 1
    partial = (n <= m) & ((k_lo < cfg.sink) | (q_lo - k_hi < cfg.window))
    full = (n < m) & ((k_hi < cfg.sink) | (q_hi - k_lo < cfg.window))

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & ((kv_idx < cfg.sink) | (q_idx - kv_idx < cfg.window))

    return from_block_predicates(partial[None, None], full[None, None], length, mask_mod, BLOCK)


def vertical_slash_block_mask(vertical: torch.Tensor, slash: torch.Tensor, length: int) -> BlockMask:
    """The exact vertical-slash token pattern; a block is read if it holds any vertical column or slash line."""
    b, h = vertical.shape[:2]
    dev = vertical.device
    n_blocks = -(-length // BLOCK)
    pad = n_blocks * BLOCK - length
    is_vert = torch.zeros(b, h, length + 1, dtype=torch.bool, device=dev).scatter_(-1, vertical, True)
    is_vert = is_vert[..., :length].contiguous()  # padding (L) landed in the spare column
    is_slash = torch.zeros(b, h, length, dtype=torch.bool, device=dev).scatter_(-1, slash, True)
    vb = torch.nn.functional.pad(is_vert, (0, pad)).reshape(b, h, n_blocks, BLOCK)
    vert_any, vert_all = vb.any(-1), vb.all(-1)
    # Query block m against key block n = m - d spans offsets (d·B - B, d·B + B); count slashes in that window.
    c = torch.nn.functional.pad(torch.cumsum(torch.nn.functional.pad(is_slash, (0, pad + BLOCK)).int(), -1), (1, 0))
    d = torch.arange(n_blocks, device=dev)
    lo = (d * BLOCK - BLOCK + 1).clamp(min=0)
    hi = d * BLOCK + BLOCK  # exclusive
    in_band = c[..., hi] - c[..., lo]
    slash_any, slash_all = in_band > 0, in_band == hi - lo
    m, n = block_grid(length, BLOCK, dev)
    diag = (m - n).clamp(min=0)
    causal = n <= m
    partial = causal & (vert_any[:, :, None, :] | slash_any[:, :, diag])
    full = (n < m) & (vert_all[:, :, None, :] | slash_all[:, :, diag])

    def mask_mod(bi, hi_, q_idx, kv_idx):
        off = q_idx - kv_idx
        return (off >= 0) & (is_vert[bi, hi_, kv_idx] | is_slash[bi, hi_, torch.where(off < 0, 0, off)])

    return from_block_predicates(partial, full, length, mask_mod, BLOCK)


def block_sparse_block_mask(blocks: torch.Tensor, length: int) -> BlockMask:
    """Selected key blocks [B, H, nQB, nKB] (block size BLOCK): off-diagonal ones are full, diagonal ones causal."""
    m, n = block_grid(length, BLOCK, blocks.device)

    def mask_mod(b, h, q_idx, kv_idx):  # the whole token mask: eager FlexAttention reads only this, not the blocks
        return (q_idx >= kv_idx) & blocks[b, h, q_idx // BLOCK, kv_idx // BLOCK]

    return from_block_predicates(blocks & (n == m), blocks & (n < m), length, mask_mod, BLOCK)


def pattern_block_mask(q: torch.Tensor, k: torch.Tensor, pattern: Pattern, scale: float | None = None) -> BlockMask:
    """Build the pattern's index online and return it as a BlockMask."""
    b, h, length = q.shape[:3]
    if isinstance(pattern, AShape):
        return a_shape_block_mask(length, pattern, q.device)
    if isinstance(pattern, VerticalSlash):
        return vertical_slash_block_mask(*vertical_slash_index(q, k, pattern, scale), length)
    if isinstance(pattern, BlockSparse):
        if pattern.block != BLOCK:
            raise ValueError(f"FlexAttention block_sparse needs block={BLOCK}, got {pattern.block}")
        return block_sparse_block_mask(block_sparse_index(q, k, pattern, scale), length)
    raise TypeError(f"unknown pattern {pattern!r}")


compiled_flex_attention = torch.compile(flex_attention, dynamic=False)


def flex_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask, scale: float | None = None
) -> torch.Tensor:
    """FlexAttention over the block mask; compiled on GPU (eager FlexAttention is a slow debugging path)."""
    fn = compiled_flex_attention if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
