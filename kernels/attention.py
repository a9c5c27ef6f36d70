"""One entry point for sparse prefill: build the pattern's index from q and k, then run the fastest implementation
for the device (Triton vertical-slash kernel or FlexAttention on CUDA, the plain-torch reference elsewhere)."""

from __future__ import annotations

import torch

from kernels.index import vertical_slash_index
from kernels.patterns import AShape, BlockSparse, Pattern, VerticalSlash
from kernels.reference import masked_attention, pattern_mask, vertical_slash_mask

SHARED_BLOCK_M = 32  # query rows per head when a KV group's heads share one tile (4 heads: 128 rows)


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, scale: float | None = None
) -> torch.Tensor:
    """Causal prefill attention restricted to `pattern`. q [B, Hq, n, D], k/v [B, Hkv, L, D]; returns [B, Hq, n, D].
    The queries are the last n of the L positions: n = L for a fresh prefill, fewer for a chunk over cached keys
    (its rows attend by absolute position, the index built from its own last queries; not for block_sparse)."""
    if not q.is_cuda:
        return masked_attention(q, k, v, pattern_mask(q, k, pattern, scale), scale)
    if isinstance(pattern, VerticalSlash):
        index = vertical_slash_index(q, k, pattern, scale)
        return vertical_slash_from_index(q, k, v, *index, scale, shared=pattern.shared)
    if isinstance(pattern, AShape):
        from kernels.triton_vertical_slash import a_shape_index

        vertical, slash = a_shape_index(q.shape[0], q.shape[1], pattern, k.shape[2], q.device)
        return vertical_slash_from_index(q, k, v, vertical, slash, scale)
    if isinstance(pattern, BlockSparse):
        if q.shape[2] != k.shape[2]:
            raise ValueError("block_sparse pools query blocks of the whole prompt: no chunk over cached keys")
        from kernels.flex import flex_sparse_attention, pattern_block_mask

        return flex_sparse_attention(q, k, v, pattern_block_mask(q, k, pattern, scale), scale)
    raise TypeError(f"unknown pattern {pattern!r}")


def vertical_slash_from_index(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    vertical: torch.Tensor,
    slash: torch.Tensor,
    scale: float | None = None,
    shared: bool = False,
) -> torch.Tensor:
    """Causal attention over a given vertical-slash index (Triton on CUDA, the reference elsewhere). `shared`: the
    index is the same for the query heads of each KV group (VerticalSlash.shared), so the kernel packs them. q may
    hold only the last positions of k's (a chunk over cached keys): the kernel then starts its rows there."""
    length, first = k.shape[2], k.shape[2] - q.shape[2]
    if not q.is_cuda:
        return masked_attention(q, k, v, vertical_slash_mask(length, vertical, slash), scale)
    from kernels.triton_vertical_slash import vertical_slash_attention, vertical_slash_layout

    if shared:
        group = q.shape[1] // k.shape[1]
        v_rows, s_rows = vertical[:, ::group], slash[:, ::group]
        lay = vertical_slash_layout(v_rows, s_rows, length, block_m=SHARED_BLOCK_M, q_offset=first)
        return vertical_slash_attention(q, k, v, lay, scale)
    return vertical_slash_attention(q, k, v, vertical_slash_layout(vertical, slash, length, q_offset=first), scale)
