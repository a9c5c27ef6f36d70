"""Vertical-slash prefill attention in Triton: slash lines read as contiguous key chunks, vertical columns gathered.

As in MInference's mixed kernel, each query block walks (1) contiguous key chunks that cover its slash lines and
(2) the vertical columns, gathered row by row, that those chunks did not already cover. Unlike MInference, the chunk
list depends only on the head, not on the query block: a slash at offset s needs columns [m·BM - s, m·BM - s + BM)
for query block m, so in coordinates relative to the block start the union of those ranges is the same for every
block. That makes the layout per head, not per block: on CUDA one small Triton program per head
(_layout_kernel), elsewhere a few vectorised torch ops.

The chunks cover the slash ranges greedily (each starts at the first needed column the previous one left uncovered:
the fewest BLOCK_N-wide chunks: a sequential walk over each head's segments, or a parallel scan in torch), and the
vertical loop stops where the chunk run around the diagonal begins, since every column from there on is already inside
a chunk.

Chunks that lie wholly below a block's rows (all but the few at the diagonal and the one straddling column 0) run
without masks, their K/V tiles through tensor descriptors on Hopper. With a shared index (one layout row per KV
head) the query heads of a group are stacked into one tile, so each K/V tile is read once for the whole group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.patterns import AShape

SEARCH_STEPS = 20  # binary-search halvings in the layout kernel: lists of up to a million entries, one compiled variant


@dataclass(frozen=True)
class Layout:
    """What the kernel walks, per (batch, head) row `bh`, with nM query blocks."""

    chunk_start: torch.Tensor  # [BH, C] int32: chunk start relative to the query block's first row, ascending
    chunk_begin: torch.Tensor  # [BH, nM] int32: first chunk that reaches column 0 for this query block
    chunk_count: torch.Tensor  # [BH] int32
    chunk_diag: torch.Tensor  # [BH] int32: first chunk that may reach past a query row (needs the causal mask)
    vertical: torch.Tensor  # [BH, NV] int32, ascending
    vertical_count: torch.Tensor  # [BH, nM] int32: verticals before this query block's end
    covered: torch.Tensor  # [BH, L + BM + BN] int8: 1 where offset - L (relative to the block start) is in a chunk
    block_m: int
    block_n: int
    # Queries start at this absolute position (a chunk over cached keys): query block m holds rows
    # q_offset + m·BM onward, against keys [0, L). The chunk list is relative to a block's first row, so it holds for
    # any block start; only the per-block searches (chunk_begin, vertical_count) depend on where the blocks sit.
    q_offset: int = 0


def vertical_slash_layout(
    vertical: torch.Tensor,
    slash: torch.Tensor,
    length: int,
    block_m: int = 64,
    block_n: int = 64,
    greedy: bool = True,
    scan: str = "auto",
    q_offset: int = 0,
) -> Layout:
    """Turn per-head vertical columns [B, H, NV] and slash offsets [B, H, NS] (sorted ascending) into a Layout.

    `length` is the key count L; the queries are the last L - `q_offset` positions (0: a whole prefill).

    `greedy`: cover the slash ranges with the fewest BLOCK_N-wide chunks (each chunk starts at the first needed column
    the previous one left uncovered); otherwise ranges closer than BLOCK_M + BLOCK_N - 1 merge into runs of chunks.
    `scan`: "auto" (the whole layout as one Triton program per head on CUDA, torch ops elsewhere), "torch" (a few
    dozen vectorised torch ops, the greedy overhangs by a parallel scan: the reference) or "triton" (also on CPU,
    under Triton's interpreter); both give the same Layout."""
    if scan != "torch" and (slash.device.type == "cuda" or scan == "triton"):
        return _layout_triton(vertical, slash, length, block_m, block_n, greedy, q_offset)
    return _layout_torch(vertical, slash, length, block_m, block_n, greedy, q_offset)


def _layout_torch(
    vertical: torch.Tensor,
    slash: torch.Tensor,
    length: int,
    block_m: int,
    block_n: int,
    greedy: bool,
    q_offset: int = 0,
) -> Layout:
    """vertical_slash_layout as vectorised torch ops: the segments, their chunks (the greedy overhangs by a
    parallel scan), the covered columns, and the per-block searches."""
    # Two host syncs in all (the segment count and the chunk counts size the outputs): each one stalls the GPU until
    # the host has launched what follows, and at 128K the layout's few dozen small ops cost more in launches than on
    # the GPU.
    dev = slash.device
    bh, ns = slash.shape[0] * slash.shape[1], slash.shape[-1]
    n_m = -(-(length - q_offset) // block_m)
    # Column ranges of each slash relative to the block start, ascending: [a, a + BM - 1] with a = -s.
    a = -slash.reshape(bh, -1).flip(-1)
    new = torch.ones_like(a, dtype=torch.bool)
    if greedy:  # segments: the union of the ranges (touching ones join)
        new[:, 1:] = (a[:, 1:] - a[:, :-1]) > block_m
    else:  # ranges closer than BN columns merge too, so that chunks never overlap
        new[:, 1:] = (a[:, 1:] - a[:, :-1]) >= block_m + block_n - 1
    # flattened over heads, in order; a segment ends just before the next one starts (each head's first is new)
    first = new.reshape(-1).nonzero().squeeze(1)
    last = torch.cat([first[1:] - 1, first.new_full((1,), a.numel() - 1)])
    seg_start = a.reshape(-1)[first]
    seg_end = a.reshape(-1)[last] + block_m - 1
    seg_head = first // ns
    if greedy:
        seg_start = seg_start + _greedy_shift(seg_start, seg_end, seg_head, block_n, min(seg_start.numel(), ns))
    n_chunks = (seg_end - seg_start + block_n).clamp(min=0) // block_n
    per_head = torch.zeros(bh, dtype=torch.long, device=dev).index_add_(0, seg_head, n_chunks)
    total, width = torch.stack([n_chunks.sum(), per_head.max()]).tolist()
    chunk_seg = torch.repeat_interleave(torch.arange(seg_start.numel(), device=dev), n_chunks, output_size=total)
    first_chunk_of_seg = torch.cumsum(n_chunks, 0) - n_chunks
    j = torch.arange(total, device=dev) - first_chunk_of_seg[chunk_seg]
    starts = seg_start[chunk_seg] + j * block_n
    heads = seg_head[chunk_seg]
    pos = torch.arange(heads.numel(), device=dev) - (torch.cumsum(per_head, 0) - per_head)[heads]
    # Padding chunks sit past every block's end, so searchsorted and the kernel's loop bound both ignore them.
    chunk_start = torch.full((bh, width), length + block_m, dtype=torch.long, device=dev)
    chunk_start[heads, pos] = starts
    block_first_col = q_offset + torch.arange(n_m, device=dev) * block_m
    chunk_begin = torch.searchsorted(chunk_start + block_n - 1, (-block_first_col)[None, :].expand(bh, -1).contiguous())

    cw = length + block_m + block_n
    edges = torch.zeros(bh, cw + 1, dtype=torch.int32, device=dev)
    ones = torch.ones_like(heads, dtype=torch.int32)
    edges.index_put_((heads, starts + length), ones, accumulate=True)
    edges.index_put_((heads, starts + length + block_n), -ones, accumulate=True)
    covered = (torch.cumsum(edges, -1)[:, :cw] > 0).to(torch.int8)

    # Each head's last segment (it holds offset 0: the window) is one run of chunks from its start to past the
    # diagonal, so verticals at or after that start are inside a chunk: the kernel stops its vertical loop there.
    # (Only where the head has offset 0; otherwise the loop runs to the block's end.)
    band = torch.full((bh,), block_m, dtype=torch.long, device=dev)
    band = band.scatter_reduce(0, seg_head, seg_start, "amax", include_self=False)
    band = torch.where(slash.reshape(bh, -1).amin(-1) == 0, band.clamp(max=block_m), block_m)
    vert = vertical.reshape(bh, -1).contiguous()
    vertical_count = torch.searchsorted(vert, (block_first_col[None, :] + band[:, None]).contiguous())
    # a chunk ending at or before the block's first row (start <= 1 - BN) is below every row of the block
    below = torch.full((bh, 1), 1 - block_n, dtype=torch.long, device=dev)
    chunk_diag = torch.searchsorted(chunk_start, below, right=True)
    return Layout(
        chunk_start.to(torch.int32).contiguous(),
        chunk_begin.to(torch.int32).contiguous(),
        per_head.to(torch.int32),
        chunk_diag[:, 0].to(torch.int32).contiguous(),
        vert.to(torch.int32),
        vertical_count.to(torch.int32).contiguous(),
        covered.contiguous(),
        block_m,
        block_n,
        q_offset,
    )


def _greedy_shift(
    seg_start: torch.Tensor, seg_end: torch.Tensor, seg_head: torch.Tensor, block_n: int, longest: int
) -> torch.Tensor:
    """How far the previous segment's last chunk reaches into each segment (0 <= y < BLOCK_N - 1), so that chunks laid
    from `seg_start + y` in steps of BLOCK_N cover the segments greedily without overlapping.

    The overhang into segment j+1 is a function of the overhang into segment j (a table over 0..BN-1); the overhangs
    are that function's prefix compositions, found by a parallel (Hillis-Steele) scan over the segments. `longest`
    bounds how many segments one overhang can pass through (a head's segment count): it sets the scan's steps without
    a host sync."""
    n = seg_start.numel()
    y = torch.arange(block_n, device=seg_start.device)
    start = seg_start[:, None] + y  # [S, BN]: where the chunks start for each possible overhang
    count = (seg_end[:, None] - start + block_n).clamp(min=0) // block_n
    reach = torch.where(count > 0, start + count * block_n, start)  # one past the last chunk's column
    nxt = torch.empty_like(seg_start)
    nxt[:-1] = seg_start[1:]
    nxt[-1:] = seg_end[-1:] + block_n  # the last segment reaches nothing
    table = (reach - nxt[:, None]).clamp(min=0)
    head_last = torch.ones(n, dtype=torch.bool, device=seg_start.device)
    head_last[:-1] = seg_head[1:] != seg_head[:-1]
    table = torch.where(head_last[:, None], 0, table)  # each head's first segment starts from overhang 0
    step = 1
    while step < longest:  # table[j] becomes the composition of tables j, j - 1, ..., j - 2 * step + 1
        table = torch.cat([table[:step], torch.gather(table[step:], 1, table[:-step])])
        step *= 2
    shift = torch.zeros_like(seg_start)
    shift[1:] = table[:-1, 0]
    return shift


@triton.jit
def _search_left(row, n, t, STEPS: tl.constexpr, ADD: tl.constexpr):
    """For each t, the first index i < n with row[i] + ADD >= t (n where none): searchsorted(left) of an ascending
    row, as a binary search of STEPS halvings (2**STEPS > n)."""
    lo = tl.zeros_like(t)
    hi = lo + n
    for _ in tl.static_range(STEPS):
        active = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(row + mid, mask=active, other=0)
        right = active & (v + ADD < t)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    return lo


@triton.jit
def _slash_segments(
    s_row, seg_start_row, seg_end_row, ns, i,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GREEDY: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Step (1): the union of a head's slash ranges [a, a + BM - 1] (a = -slash, ascending: the row read backwards)
    as segments, written to scratch; a segment starts where a range does not touch the previous one. Returns the
    segment count and the head's smallest slash offset."""
    n_seg = tl.zeros([], dtype=tl.int32)
    s_min = tl.full([], 2147483647, dtype=tl.int32)
    for i0 in range(0, ns, BLOCK):
        j = i0 + i
        ok = j < ns
        a = -tl.load(s_row + ns - 1 - j, mask=ok, other=0).to(tl.int32)
        prev = -tl.load(s_row + ns - j, mask=ok & (j > 0), other=0).to(tl.int32)
        nxt = -tl.load(s_row + ns - 2 - j, mask=ok & (j < ns - 1), other=0).to(tl.int32)
        if GREEDY:
            new = (j == 0) | (a - prev > BLOCK_M)
            end = (j == ns - 1) | (nxt - a > BLOCK_M)
        else:  # ranges closer than BN columns merge too, so that chunks never overlap
            new = (j == 0) | (a - prev >= BLOCK_M + BLOCK_N - 1)
            end = (j == ns - 1) | (nxt - a >= BLOCK_M + BLOCK_N - 1)
        new = new & ok
        sid = n_seg + tl.cumsum(new.to(tl.int32), 0) - 1
        tl.store(seg_start_row + sid, a, mask=new)
        tl.store(seg_end_row + sid, a + BLOCK_M - 1, mask=end & ok)
        n_seg += tl.sum(new.to(tl.int32), 0)
        s_min = tl.minimum(s_min, tl.min(tl.where(ok, -a, 2147483647), 0))
    return n_seg, s_min


@triton.jit
def _lay_chunks(
    seg_start_row, seg_end_row, n_seg, c_row, cv_row, length, width, cw, i,
    BLOCK_N: tl.constexpr, GREEDY: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Step (2): a sequential walk over the segments; each segment's chunks start at its first column past the
    previous segment's last chunk (GREEDY), BLOCK_N apart, and mark `covered`. Returns the chunk count, how many
    chunks lie wholly below every row of a block, and the last segment's first chunk start."""
    pos = tl.zeros([], dtype=tl.int32)
    diag = tl.zeros([], dtype=tl.int32)
    last = tl.full([], -2147483647, dtype=tl.int32)
    y = tl.zeros([], dtype=tl.int32)
    nxt_start = tl.load(seg_start_row)
    for k in range(0, n_seg):
        start = nxt_start + y
        count = tl.maximum(tl.load(seg_end_row + k) - start + BLOCK_N, 0) // BLOCK_N
        for c0 in range(0, count, BLOCK):
            c = c0 + i
            tl.store(c_row + pos + c, start + c * BLOCK_N, mask=(c < count) & (pos + c < width))
        for x0 in range(0, count * BLOCK_N, BLOCK):
            x = start + length + x0 + i
            tl.store(cv_row + x, tl.full([BLOCK], 1, tl.int8), mask=(x0 + i < count * BLOCK_N) & (x >= 0) & (x < cw))
        # chunks wholly below every row of a block (start <= 1 - BN) need no causal mask
        below = tl.where(start <= 1 - BLOCK_N, (1 - BLOCK_N - tl.minimum(start, 1 - BLOCK_N)) // BLOCK_N + 1, 0)
        diag += tl.minimum(below, count)
        pos += count
        last = tl.maximum(last, start)
        nxt_start = tl.load(seg_start_row + k + 1, mask=k + 1 < n_seg, other=0)
        if GREEDY:
            y = tl.where(k + 1 < n_seg, tl.maximum(start + count * BLOCK_N - nxt_start, 0), 0)
    return tl.minimum(pos, width), diag, last


# Sizes that change with the prompt are not specialised on, and the binary searches take a fixed step count
# (2**SEARCH_STEPS bounds every chunk and vertical list): otherwise Triton compiles a variant per divisibility class
# and per step count, inside the first request that meets it (on the H100, 2026-12-07, the first requests at a new
# length, or a new chunk length, ran up to 1 s slower than the same pattern's later ones).
@triton.jit(do_not_specialize=["length", "q_offset", "ns", "nv", "n_m", "width", "cw"])
def _layout_kernel(
    slash, vertical, seg_start, seg_end,
    chunk_start, chunk_count, chunk_begin, chunk_diag, vertical_out, vertical_count, covered,
    length, q_offset, ns, nv, n_m, width, cw,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GREEDY: tl.constexpr, BLOCK: tl.constexpr,
    CHUNK_STEPS: tl.constexpr, VERTICAL_STEPS: tl.constexpr,
):  # fmt: skip
    """One head's whole Layout (what vertical_slash_layout's torch ops compute, in one launch):
    (1) the segments of the slash ranges, vectorised, into scratch; (2) a sequential walk over them laying the greedy
    chunks (the overhang into each segment depends on the previous one) and marking `covered`; (3) the per-block
    binary searches (chunk_begin, vertical_count), vectorised."""
    h = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK)
    s_row, c_row, v_row = slash + h * ns, chunk_start + h * width, vertical + h * nv
    seg_start_row, seg_end_row = seg_start + h * ns, seg_end + h * ns
    n_seg, s_min = _slash_segments(s_row, seg_start_row, seg_end_row, ns, i, BLOCK_M, BLOCK_N, GREEDY, BLOCK)
    tl.debug_barrier()
    pos, diag, last = _lay_chunks(
        seg_start_row, seg_end_row, n_seg, c_row, covered + h * cw, length, width, cw, i, BLOCK_N, GREEDY, BLOCK
    )
    # padding chunks sit past every block's end, so the searches and the kernel's loop bound ignore them
    for c0 in range(0, width, BLOCK):
        c = c0 + i
        tl.store(c_row + c, length + BLOCK_M, mask=(c >= pos) & (c < width))
    tl.store(chunk_count + h, pos)
    tl.store(chunk_diag + h, diag)
    tl.debug_barrier()
    # (3) per query block m (first row q_offset + m * BM): the first chunk that reaches column 0 (its end >= minus that
    # row), and the verticals before
    # where the band starts (the last segment holds offset 0 when the head has it: verticals from its start on are
    # inside a chunk)
    band = tl.where(s_min == 0, tl.minimum(last, BLOCK_M), BLOCK_M)
    for m0 in range(0, n_m, BLOCK):
        m = m0 + i
        ok = m < n_m
        first = _search_left(c_row, pos, -(q_offset + m * BLOCK_M), CHUNK_STEPS, BLOCK_N - 1)
        tl.store(chunk_begin + h * n_m + m, first, mask=ok)
        nvc = _search_left(v_row, nv, q_offset + m * BLOCK_M + band, VERTICAL_STEPS, 0)
        tl.store(vertical_count + h * n_m + m, nvc, mask=ok)
    for v0 in range(0, nv, BLOCK):
        v = v0 + i
        tl.store(vertical_out + h * nv + v, tl.load(v_row + v, mask=v < nv, other=0).to(tl.int32), mask=v < nv)


def _layout_triton(
    vertical: torch.Tensor,
    slash: torch.Tensor,
    length: int,
    block_m: int,
    block_n: int,
    greedy: bool,
    q_offset: int = 0,
) -> Layout:
    """vertical_slash_layout in one launch (one program per head) and one host sync (the widest head's chunk count
    sizes chunk_start): at 128K the torch ops' hundred launches took 1.6 ms."""
    dev = slash.device
    bh = slash.shape[0] * slash.shape[1]
    s = slash.reshape(bh, -1).contiguous()
    vert = vertical.reshape(bh, -1).contiguous()
    ns, nv = s.shape[1], vert.shape[1]
    n_m = -(-(length - q_offset) // block_m)
    cw = length + block_m + block_n
    # chunks never overlap and start in [-(L - 1), BM - 1]: at most this many per head
    width = (length + block_m) // block_n + 2
    seg = torch.empty(2, bh, ns, dtype=torch.int32, device=dev)
    chunk_start = torch.empty(bh, width, dtype=torch.int32, device=dev)
    chunk_count = torch.empty(bh, dtype=torch.int32, device=dev)
    chunk_diag = torch.empty(bh, dtype=torch.int32, device=dev)
    chunk_begin = torch.empty(bh, n_m, dtype=torch.int32, device=dev)
    vertical_out = torch.empty(bh, nv, dtype=torch.int32, device=dev)
    vertical_count = torch.empty(bh, n_m, dtype=torch.int32, device=dev)
    covered = torch.zeros(bh, cw, dtype=torch.int8, device=dev)
    _layout_kernel[(bh,)](
        s,
        vert,
        seg[0],
        seg[1],
        chunk_start,
        chunk_count,
        chunk_begin,
        chunk_diag,
        vertical_out,
        vertical_count,
        covered,
        length,
        q_offset,
        ns,
        nv,
        n_m,
        width,
        cw,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        GREEDY=greedy,
        BLOCK=1024,
        CHUNK_STEPS=max(SEARCH_STEPS, width.bit_length()),
        VERTICAL_STEPS=max(SEARCH_STEPS, nv.bit_length()),
        num_warps=4,
    )
    used = int(chunk_count.max()) if bh else 0  # the one host sync: the widest head sizes chunk_start, as in torch
    return Layout(
        chunk_start[:, :used].contiguous(),
        chunk_begin,
        chunk_count,
        chunk_diag,
        vertical_out,
        vertical_count,
        covered,
        block_m,
        block_n,
        q_offset,
    )


@triton.jit
def _online_softmax_step(q, k_ptrs, v_ptrs, valid, rows, cols, m_i, l_i, acc, qk_scale):
    k = tl.load(k_ptrs, mask=valid[:, None], other=0.0)
    v = tl.load(v_ptrs, mask=valid[:, None], other=0.0)
    qk = tl.dot(q, tl.trans(k))
    keep = valid[None, :] & (cols[None, :] <= rows[:, None])
    qk = tl.where(keep, qk * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing yet: keep everything at zero
    p = tl.math.exp2(qk - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])  # accumulated in place by the tensor cores
    return m_new, l_i, acc


@triton.jit
def _load_tile(
    desc, base, col0, b, hkv, n, d, stride, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr
):
    """K or V rows [col0, col0 + BLOCK_N), all present."""
    if TMA:  # the bulk copy engine (Hopper): one descriptor load per tile, no address arithmetic per element
        x = desc.load([b.to(tl.int32), hkv.to(tl.int32), col0, 0]).reshape(BLOCK_N, HEAD_DIM)
    else:
        x = tl.load(base + (col0 + n)[:, None] * stride + d[None, :])
    return x


@triton.jit
def _softmax_pv(qk, v, m_i, l_i, acc, qk_scale):
    """A tile whose columns all exist and lie at or before every row: no masks, no selects."""
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # the scale (log2 e folded in) rides on the max and one FMA
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])  # accumulated in place by the tensor cores
    return m_new, l_i, acc


@triton.jit
def _masked_chunks(
    q, k_base, v_base, skn, svn, chunk_row, c_from, c_to, block_start, rows, n, d, length, m_i, l_i, acc, qk_scale
):
    """Chunks c_from..c_to-1 of the layout row, their columns bounds-checked and causally masked: the chunk that
    starts before column 0, and those reaching the diagonal."""
    for c in range(c_from, c_to):
        cols = block_start + tl.load(chunk_row + c) + n
        k_ptrs = k_base + cols[:, None] * skn + d[None, :]
        v_ptrs = v_base + cols[:, None] * svn + d[None, :]
        valid = (cols >= 0) & (cols < length)
        m_i, l_i, acc = _online_softmax_step(q, k_ptrs, v_ptrs, valid, rows, cols, m_i, l_i, acc, qk_scale)
    return m_i, l_i, acc


@triton.jit
def _pipelined_chunks(
    q, K_desc, V_desc, k_base, v_base, skn, svn, chunk_row, c_from, c_to, block_start, b, hkv, n, d,
    m_i, l_i, acc, qk_scale, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """Unmasked chunks with the next tile's q·kᵀ issued before this tile's softmax, so the two can overlap (as FA3
    does)."""
    if c_from < c_to:
        col0 = block_start + tl.load(chunk_row + c_from)
        k = _load_tile(K_desc, k_base, col0, b, hkv, n, d, skn, BLOCK_N, HEAD_DIM, TMA)
        qk = tl.dot(q, tl.trans(k))
        for c in range(c_from + 1, c_to):
            col1 = block_start + tl.load(chunk_row + c)
            k = _load_tile(K_desc, k_base, col1, b, hkv, n, d, skn, BLOCK_N, HEAD_DIM, TMA)
            qk_next = tl.dot(q, tl.trans(k))
            v = _load_tile(V_desc, v_base, col0, b, hkv, n, d, svn, BLOCK_N, HEAD_DIM, TMA)
            m_i, l_i, acc = _softmax_pv(qk, v, m_i, l_i, acc, qk_scale)
            qk = qk_next
            col0 = col1
        v = _load_tile(V_desc, v_base, col0, b, hkv, n, d, svn, BLOCK_N, HEAD_DIM, TMA)
        m_i, l_i, acc = _softmax_pv(qk, v, m_i, l_i, acc, qk_scale)
    return m_i, l_i, acc


@triton.jit
def _vertical_columns(
    q, k_base, v_base, skn, svn, vertical_row, covered_row, nv, block_start, rows, n, d, length, m_i, l_i, acc,
    qk_scale, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The first nv vertical columns, gathered BLOCK_N at a time; those a chunk already covered are skipped so
    nothing is counted twice."""
    for i in range(0, nv, BLOCK_N):
        idx = i + n
        in_list = idx < nv
        cols = tl.load(vertical_row + idx, mask=in_list, other=0)
        cov = tl.load(covered_row + cols - block_start + length, mask=in_list, other=1)
        valid = in_list & (cov == 0) & (cols < length)  # padding slots hold L
        k_ptrs = k_base + cols[:, None] * skn + d[None, :]
        v_ptrs = v_base + cols[:, None] * svn + d[None, :]
        m_i, l_i, acc = _online_softmax_step(q, k_ptrs, v_ptrs, valid, rows, cols, m_i, l_i, acc, qk_scale)
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["length", "q_offset", "n_m", "n_chunk_cols", "n_vertical_cols", "n_covered_cols"])
def _vertical_slash_fwd(
    Q, K, V, K_desc, V_desc, Out,
    chunk_start, chunk_begin, chunk_count, chunk_diag, vertical, vertical_count, covered,
    qk_scale, length, q_offset, n_m, n_chunk_cols, n_vertical_cols, n_covered_cols,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    H: tl.constexpr, GROUP: tl.constexpr, PACK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, TMA: tl.constexpr, PIPE: tl.constexpr, WS: tl.constexpr,
):  # fmt: skip
    """One query block of PACK heads: its slash chunks (masked at the edges, plain in between), then its verticals.
    Rows and columns are absolute positions: Q and Out hold rows q_offset.. (a chunk's queries), K and V all L keys."""
    # heads vary fastest, so the query heads of one KV group (and their chunks) run together and share K/V in L2;
    # the heaviest (last) query blocks start first
    # With PACK > 1 one layout row serves PACK query heads of a KV group (a shared index): their BLOCK_M rows are
    # stacked into one tile, so each K/V tile is read once for all of them.
    pid_bh = tl.program_id(0)
    pid_m = n_m - 1 - tl.program_id(1)
    b = (pid_bh // (H // PACK)).to(tl.int64)
    h0 = (pid_bh % (H // PACK)).to(tl.int64) * PACK
    hkv = h0 // GROUP
    block_start = q_offset + pid_m * BLOCK_M
    r = tl.arange(0, PACK * BLOCK_M)
    heads = h0 + r // BLOCK_M
    rows = block_start + r % BLOCK_M
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, BLOCK_N)
    q_ptrs = Q + b * sqb + heads[:, None] * sqh + (rows - q_offset)[:, None] * sqn + d[None, :]
    q = tl.load(q_ptrs, mask=rows[:, None] < length, other=0.0)
    k_base = K + b * skb + hkv * skh
    v_base = V + b * svb + hkv * svh
    m_i = tl.full([PACK * BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([PACK * BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([PACK * BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Slash lines: contiguous chunks, sorted, so that the first useful one is known. Masks are needed only on the
    # chunk that starts before column 0 (at most one: chunks never overlap) and on those reaching the diagonal.
    chunk_row = chunk_start + pid_bh * n_chunk_cols
    c_lo = tl.load(chunk_begin + pid_bh * n_m + pid_m)
    c_hi = tl.load(chunk_count + pid_bh)
    c_diag = tl.load(chunk_diag + pid_bh)
    first = tl.load(chunk_row + c_lo, mask=c_lo < c_hi, other=0)
    c_full = c_lo + ((c_lo < c_hi) & (block_start + first < 0)).to(tl.int32)
    c_mid = tl.maximum(c_full, c_diag)
    m_i, l_i, acc = _masked_chunks(
        q, k_base, v_base, skn, svn, chunk_row, c_lo, c_full, block_start, rows, n, d, length, m_i, l_i, acc, qk_scale
    )
    if PIPE:
        m_i, l_i, acc = _pipelined_chunks(
            q, K_desc, V_desc, k_base, v_base, skn, svn, chunk_row, c_full, c_mid, block_start, b, hkv, n, d,
            m_i, l_i, acc, qk_scale, BLOCK_N, HEAD_DIM, TMA,
        )  # fmt: skip
    else:  # with WS, Triton splits the loop into warps that load K/V tiles and warps that compute (as FA3 does)
        for c in tl.range(c_full, c_mid, warp_specialize=WS):
            col0 = block_start + tl.load(chunk_row + c)
            k = _load_tile(K_desc, k_base, col0, b, hkv, n, d, skn, BLOCK_N, HEAD_DIM, TMA)
            v = _load_tile(V_desc, v_base, col0, b, hkv, n, d, svn, BLOCK_N, HEAD_DIM, TMA)
            m_i, l_i, acc = _softmax_pv(tl.dot(q, tl.trans(k)), v, m_i, l_i, acc, qk_scale)
    m_i, l_i, acc = _masked_chunks(
        q, k_base, v_base, skn, svn, chunk_row, c_mid, c_hi, block_start, rows, n, d, length, m_i, l_i, acc, qk_scale
    )

    # Vertical columns: gathered; those a chunk already covered are skipped so nothing is counted twice.
    nv = tl.load(vertical_count + pid_bh * n_m + pid_m)
    m_i, l_i, acc = _vertical_columns(
        q, k_base, v_base, skn, svn, vertical + pid_bh * n_vertical_cols, covered + pid_bh * n_covered_cols, nv,
        block_start, rows, n, d, length, m_i, l_i, acc, qk_scale, BLOCK_N,
    )  # fmt: skip

    acc = acc / l_i[:, None]
    o_ptrs = Out + b * sob + heads[:, None] * soh + (rows - q_offset)[:, None] * son + d[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=rows[:, None] < length)


def vertical_slash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: Layout,
    scale: float | None = None,
    num_warps: int = 4,
    num_stages: int = 3,  # best on the H100 at 32K-256K (bench/kernel_bench.py)
    tma: bool | None = None,  # K/V tiles through tensor descriptors; default: on Hopper and newer, and on CPU
    pipe: bool = False,  # issue the next tile's q·kᵀ before this tile's softmax (no faster on the H200 so far)
    warp_specialize: bool = False,  # the unmasked chunk loop warp-specialized (producer / consumer warps)
) -> torch.Tensor:
    """Sparse causal attention over the layout. q [B, Hq, n, D], k/v [B, Hkv, L, D] (last dim contiguous): the queries
    are the last n = L - layout.q_offset positions (all L for a whole prefill, fewer for a chunk over cached keys),
    causal by absolute position.

    The layout has a row per query head, or per KV head for a shared index (built from `vertical[:, ::group]`).
    Returns [B, Hq, n, D], a transposed view of a [B, n, Hq, D] tensor (what transformers wants back).
    """
    b, hq, n_q, d = q.shape
    hkv, length = k.shape[1], k.shape[2]
    assert n_q == length - layout.q_offset, "the queries are the last L - q_offset positions"
    pack = b * hq // layout.chunk_count.numel()
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1, "head dim must be contiguous"
    assert pack * layout.chunk_count.numel() == b * hq and (hq // hkv) % pack == 0, "one layout row per head or group"
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    out = torch.empty(b, n_q, hq, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    n_m = -(-n_q // layout.block_m)
    grid = (b * hq // pack, n_m)
    if tma is None:
        tma = not q.is_cuda or torch.cuda.get_device_capability(q.device)[0] >= 9
    descs = [TensorDescriptor(x, list(x.shape), list(x.stride()), [1, 1, layout.block_n, d]) for x in (k, v)]
    _vertical_slash_fwd[grid](
        q,
        k,
        v,
        *descs,
        out,
        layout.chunk_start,
        layout.chunk_begin,
        layout.chunk_count,
        layout.chunk_diag,
        layout.vertical,
        layout.vertical_count,
        layout.covered,
        scale * 1.4426950408889634,
        length,
        layout.q_offset,
        n_m,
        layout.chunk_start.shape[1],
        layout.vertical.shape[1],
        layout.covered.shape[1],
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        H=hq,
        GROUP=hq // hkv,
        PACK=pack,
        BLOCK_M=layout.block_m,
        BLOCK_N=layout.block_n,
        HEAD_DIM=d,
        TMA=tma,
        PIPE=pipe,
        WS=warp_specialize,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


@triton.jit
def _causal_logsumexp(S, positions, out, length, rows, BLOCK: tl.constexpr):
    """log-sum-exp of one row of S [BH * rows, L] over its columns at or before positions[row]."""
    pid = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions + pid % rows)
    c = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for c0 in range(0, pos + 1, BLOCK):
        x = tl.load(S + pid * length + c0 + c, mask=c0 + c <= pos, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # lanes with nothing yet stay at zero
        acc = acc * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
    top = tl.max(m, 0)  # column 0 is always there: finite
    tl.store(out + pid, top + tl.log(tl.sum(acc * tl.exp(m - top), 0)))


@triton.jit
def _vertical_slash_scores(
    S,
    LSE,
    positions,
    vertical_out,
    slash_out,
    length,
    rows,
    vertical_from,
    slash_to,
    GROUP: tl.constexpr,
    R: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Column sums (rows vertical_from..) and diagonal sums (rows ..slash_to, row i at positions[i]) of one head's
    softmax p = exp(s - lse), causal at each row's position, read from the logits s [rows, L] (p is never written),
    added into its group's row (GROUP consecutive heads share one): one BLOCK of columns read straight (verticals),
    one of offsets skewed (slashes)."""
    pid_h = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    base = S + pid_h * rows * length
    log2e = 1.4426950408889634
    # each sum reads only its own rows (R of them at most; row i sits at positions[i], L - rows + i for the last rows)
    i = vertical_from + tl.arange(0, R)
    ok = i < rows
    pos = tl.load(positions + i, mask=ok, other=0)
    lse = tl.load(LSE + pid_h * rows + i, mask=ok, other=0.0)
    keep = ok[:, None] & (c[None, :] <= pos[:, None])
    s = tl.load(base + i[:, None] * length + c[None, :], mask=keep, other=float("-inf")).to(tl.float32)
    vertical = tl.sum(tl.math.exp2((s - lse[:, None]) * log2e), 0)
    # row i's entry for offset o is column positions[i] - o
    i = tl.arange(0, R)
    ok = i < slash_to
    pos = tl.load(positions + i, mask=ok, other=0)
    lse = tl.load(LSE + pid_h * rows + i, mask=ok, other=0.0)
    skew = pos[:, None] - c[None, :]
    keep = ok[:, None] & (skew >= 0) & (c[None, :] < length)
    s = tl.load(base + i[:, None] * length + skew, mask=keep, other=float("-inf")).to(tl.float32)
    slash = tl.sum(tl.math.exp2((s - lse[:, None]) * log2e), 0)
    out = (pid_h // GROUP) * length + c
    if GROUP == 1:
        tl.store(vertical_out + out, vertical, mask=c < length)
        tl.store(slash_out + out, slash, mask=c < length)
    else:  # one program per head keeps the whole GPU busy; a loop over the group inside one was 1.5 ms slower at 128K
        tl.atomic_add(vertical_out + out, vertical, mask=c < length)
        tl.atomic_add(slash_out + out, slash, mask=c < length)


def vertical_slash_scores(
    s: torch.Tensor,
    group: int = 1,
    block: int = 128,
    num_warps: int = 4,
    positions: torch.Tensor | None = None,
    vertical_from: int = 0,
    slash_to: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical (column) and slash (diagonal, by offset q_pos - k_pos) sums of p = softmax(s), causal: s [B, H, r, L]
    holds the scaled logits of the last r queries (or of the queries at `positions` [r], ascending), and row i's
    columns past its position do not count. Two passes over s and none over p (neither a softmax's write of p nor
    its masking pass): a row log-sum-exp, then both sums in one pass. The column sums run over rows
    `vertical_from`.. only, the diagonal sums over rows ..`slash_to` only; with `group`, summed over each run of
    `group` heads (a shared index): float32 [B, H // group, L] each."""
    b, h, r, length = s.shape
    s = s.contiguous()
    if positions is None:
        positions = torch.arange(length - r, length, device=s.device)
    slash_to = r if slash_to is None else slash_to
    lse = torch.empty(b * h * r, dtype=torch.float32, device=s.device)
    _causal_logsumexp[(b * h * r,)](s, positions, lse, length, r, BLOCK=4096, num_warps=8)
    vertical = torch.zeros(b, h // group, length, dtype=torch.float32, device=s.device)
    slash = torch.zeros_like(vertical)
    grid = (b * h, triton.cdiv(length, block))
    _vertical_slash_scores[grid](
        s,
        lse,
        positions,
        vertical,
        slash,
        length,
        r,
        vertical_from,
        slash_to,
        GROUP=group,
        R=triton.next_power_of_2(max(r - vertical_from, slash_to)),
        BLOCK=block,
        num_warps=num_warps,
    )
    return vertical, slash


def layout_mask(layout: Layout, batch: int, heads: int, length: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The token mask the kernel computes (whole chunks: a superset of the slash lines), for the reference. `rows` are
    absolute positions (from layout.q_offset on), `length` the key count."""

    def fn(rows: torch.Tensor) -> torch.Tensor:
        cols = torch.arange(length, device=rows.device)
        bm, first = layout.block_m, layout.q_offset
        block_start = (rows - first) // bm * bm + first  # query blocks start at q_offset
        offset = cols[None, :] - block_start[:, None] + length  # [R, L]
        offset = offset.clamp(max=layout.covered.shape[1] - 1)  # columns past the block are causal-masked below
        bh = layout.covered.shape[0]
        m = layout.covered[:, offset.reshape(-1)].reshape(bh, rows.numel(), length).bool()
        vertical = torch.zeros(bh, length + 1, dtype=torch.bool, device=rows.device)
        vertical.scatter_(1, layout.vertical.long(), True)  # padding (L) lands in the spare column
        m |= vertical[:, None, :length]
        return m.reshape(batch, heads, rows.numel(), length) & (cols[None, :] <= rows[:, None])

    return fn


def a_shape_index(
    batch: int, heads: int, cfg: AShape, length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A-shape as a vertical-slash index: the sinks are verticals, the window is the first slashes."""
    vertical = torch.arange(min(cfg.sink, length), device=device).expand(batch, heads, -1)
    slash = torch.arange(min(cfg.window, length), device=device).expand(batch, heads, -1)
    return vertical, slash
