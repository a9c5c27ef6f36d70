"""The GPU kernels against the plain-torch reference, on CPU: Triton under its interpreter, FlexAttention eager."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernel is decorated, so before the import below

import torch.nn.functional as F  # noqa: E402

from kernels.flex import (  # noqa: E402
    a_shape_block_mask,
    block_sparse_block_mask,
    flex_sparse_attention,
    vertical_slash_block_mask,
)
from kernels.index import block_sparse_index, diagonal_sums, vertical_slash_index  # noqa: E402
from kernels.patterns import AShape, BlockSparse, VerticalSlash  # noqa: E402
from kernels.reference import (  # noqa: E402
    a_shape_mask,
    block_sparse_mask,
    masked_attention,
    vertical_slash_mask,
)
from kernels.triton_vertical_slash import (  # noqa: E402
    a_shape_index,
    layout_mask,
    vertical_slash_attention,
    vertical_slash_layout,
    vertical_slash_scores,
)

HQ, HKV, D = 4, 2, 32


def qkv(length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, h, length, D, generator=g) for h in (HQ, HKV, HKV))


def test_layout_merges_slash_lines_into_chunks() -> None:
    # offsets 0..2 with 4-row query blocks need columns [-2, 3] relative to the block start: two 4-wide chunks
    lay = vertical_slash_layout(torch.tensor([[[0]]]), torch.tensor([[[0, 1, 2]]]), 16, block_m=4, block_n=4)
    assert lay.chunk_count.tolist() == [2]
    assert lay.chunk_start[0, :2].tolist() == [-2, 2]
    assert lay.chunk_begin[0].tolist() == [0, 0, 0, 0]  # every block's first chunk reaches column >= 0
    # a far slash (offset 9) is a chunk of its own; block 0 and 1 cannot reach it (columns < 0)
    lay = vertical_slash_layout(torch.tensor([[[0]]]), torch.tensor([[[0, 9]]]), 16, block_m=4, block_n=4)
    assert lay.chunk_start[0, : lay.chunk_count[0]].tolist() == [-9, 0]
    assert lay.chunk_begin[0].tolist() == [1, 1, 0, 0]


def test_triton_vertical_slash_matches_reference() -> None:
    q, k, v = qkv(200)
    vertical, slash = vertical_slash_index(q, k, VerticalSlash(vertical=10, slash=20, sink=3, window=5))
    lay = vertical_slash_layout(vertical, slash, 200, block_m=32, block_n=16)
    out = vertical_slash_attention(q, k, v, lay)
    mask = layout_mask(lay, 1, HQ, 200)
    assert torch.allclose(out, masked_attention(q, k, v, mask), atol=1e-5)
    assert torch.allclose(vertical_slash_attention(q, k, v, lay, tma=False), out, atol=1e-5)  # pointer loads
    assert torch.allclose(vertical_slash_attention(q, k, v, lay, pipe=True), out, atol=1e-5)  # q·kᵀ one tile ahead
    rows = torch.arange(200)
    pattern = vertical_slash_mask(200, vertical, slash)(rows)
    computed = mask(rows)
    assert (computed >= pattern).all() and computed.float().mean() < 0.9  # a superset, still sparse
    # where the pattern is the whole causal triangle the kernel is dense attention
    full = vertical_slash_layout(vertical, torch.arange(200).expand(1, HQ, -1), 200, block_m=32, block_n=16)
    dense = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(vertical_slash_attention(q, k, v, full), dense, atol=1e-5)


def test_triton_with_mass_cut_matches_reference() -> None:
    q, k, v = qkv(200, seed=2)
    vertical, slash = vertical_slash_index(q, k, VerticalSlash(vertical=40, slash=60, sink=3, window=5, mass=0.1))
    assert (vertical == 200).any() and (slash[..., 1:] == 0).any()  # the cut left padding slots
    lay = vertical_slash_layout(vertical, slash, 200, block_m=32, block_n=16)
    out = vertical_slash_attention(q, k, v, lay)
    assert torch.allclose(out, masked_attention(q, k, v, layout_mask(lay, 1, HQ, 200)), atol=1e-5)
    out = flex_sparse_attention(q, k, v, vertical_slash_block_mask(vertical, slash, 200))
    assert torch.allclose(out, masked_attention(q, k, v, vertical_slash_mask(200, vertical, slash)), atol=1e-5)


def test_triton_a_shape_matches_reference() -> None:
    q, k, v = qkv(150, seed=3)
    cfg = AShape(sink=5, window=20)
    lay = vertical_slash_layout(*a_shape_index(1, HQ, cfg, 150, q.device), 150, block_m=16, block_n=16)
    out = vertical_slash_attention(q, k, v, lay)
    assert torch.allclose(out, masked_attention(q, k, v, layout_mask(lay, 1, HQ, 150)), atol=1e-5)
    rows = torch.arange(150)
    assert (layout_mask(lay, 1, HQ, 150)(rows) >= a_shape_mask(150, cfg)(rows)).all()


def test_flex_block_masks_match_reference() -> None:
    q, k, v = qkv(384, seed=5)
    cfg = AShape(sink=16, window=100)
    out = flex_sparse_attention(q, k, v, a_shape_block_mask(384, cfg, q.device))
    assert torch.allclose(out, masked_attention(q, k, v, a_shape_mask(384, cfg)), atol=1e-5)

    vertical, slash = vertical_slash_index(q, k, VerticalSlash(vertical=12, slash=30, sink=4, window=8))
    out = flex_sparse_attention(q, k, v, vertical_slash_block_mask(vertical, slash, 384))
    assert torch.allclose(out, masked_attention(q, k, v, vertical_slash_mask(384, vertical, slash)), atol=1e-5)

    blocks = block_sparse_index(q, k, BlockSparse(block=128, top=2))
    out = flex_sparse_attention(q, k, v, block_sparse_block_mask(blocks, 384))
    assert torch.allclose(out, masked_attention(q, k, v, block_sparse_mask(384, blocks, 128)), atol=1e-5)


def test_triton_shared_index_packs_the_group() -> None:
    q, k, v = qkv(200, seed=7)
    vertical, slash = vertical_slash_index(q, k, VerticalSlash(vertical=10, slash=20, sink=3, window=5, shared=True))
    group = HQ // HKV
    assert torch.equal(vertical[:, ::group].repeat_interleave(group, 1), vertical)  # one index per KV group
    lay = vertical_slash_layout(vertical[:, ::group], slash[:, ::group], 200, block_m=16, block_n=16)
    out = vertical_slash_attention(q, k, v, lay)  # a layout row per KV head: the group's query heads in one tile

    def mask(rows: torch.Tensor) -> torch.Tensor:
        return layout_mask(lay, 1, HKV, 200)(rows).repeat_interleave(group, 1)

    assert torch.allclose(out, masked_attention(q, k, v, mask), atol=1e-5)


def test_triton_greedy_cover_and_vertical_band() -> None:
    # scattered slashes: the greedy cover needs fewer chunks than merging, and both compute the same attention
    q, k, v = qkv(300, seed=11)
    slash = torch.tensor([0, 1, 2, 40, 60, 90, 130, 131, 200]).expand(1, HQ, -1)
    vertical = torch.tensor([0, 150, 280, 290, 299]).expand(1, HQ, -1)  # some inside the band near the diagonal
    greedy = vertical_slash_layout(vertical, slash, 300, block_m=16, block_n=16)
    merged = vertical_slash_layout(vertical, slash, 300, block_m=16, block_n=16, greedy=False)
    assert (greedy.chunk_count < merged.chunk_count).all()
    for lay in (greedy, merged):
        out = vertical_slash_attention(q, k, v, lay)
        assert torch.allclose(out, masked_attention(q, k, v, layout_mask(lay, 1, HQ, 300)), atol=1e-5)
    # without offset 0 the band ends before the diagonal: verticals there must still be read
    lay = vertical_slash_layout(vertical, slash[..., 3:], 300, block_m=16, block_n=16)
    out = vertical_slash_attention(q, k, v, lay)
    assert torch.allclose(out, masked_attention(q, k, v, layout_mask(lay, 1, HQ, 300)), atol=1e-5)


def causal_softmax(s: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return torch.softmax(s.masked_fill(torch.arange(s.shape[-1]) > positions[:, None], float("-inf")), -1)


def test_triton_scores_match_column_and_diagonal_sums() -> None:
    # the kernel reads logits: its softmax is causal at each row's position and p is never materialised
    # 5 last rows (padded to 8 inside the kernel) over 300 columns: more than one block of columns and of offsets
    s = 3 * torch.randn(1, HQ, 5, 300, generator=torch.Generator().manual_seed(13))
    p = causal_softmax(s, torch.arange(295, 300))
    vertical, slash = vertical_slash_scores(s)
    assert torch.allclose(vertical, p.sum(2), atol=1e-5)
    assert torch.allclose(slash, diagonal_sums(p), atol=1e-5)
    group = HQ // HKV  # a shared index: sums over each KV group's query heads
    vertical, slash = vertical_slash_scores(s, group)
    assert torch.allclose(vertical, p.sum(2).reshape(1, HKV, group, 300).sum(2), atol=1e-5)
    assert torch.allclose(slash, diagonal_sums(p).reshape(1, HKV, group, 300).sum(2), atol=1e-5)
    # rows at given positions (VerticalSlash.spread): the diagonal sums follow them; each sum over its own rows
    positions = torch.tensor([40, 101, 180, 299])
    s = 3 * torch.randn(1, HQ, 4, 300, generator=torch.Generator().manual_seed(14))
    p = causal_softmax(s, positions)
    vertical, slash = vertical_slash_scores(s, positions=positions)
    assert torch.allclose(vertical, p.sum(2), atol=1e-5)
    assert torch.allclose(slash, diagonal_sums(p, positions), atol=1e-5)
    vertical, slash = vertical_slash_scores(s, positions=positions, vertical_from=2, slash_to=3)
    assert torch.allclose(vertical, p[:, :, 2:].sum(2), atol=1e-5)  # column sums over the last two rows only
    assert torch.allclose(slash, diagonal_sums(p[:, :, :3], positions[:3]), atol=1e-5)  # diagonals of the first three


def test_layout_chunks_are_the_sequential_greedy_cover() -> None:
    # random slash sets (with repeated offset-0 padding, as the mass cut leaves) against a plain loop: each chunk starts
    # at the first needed column the previous chunks left uncovered
    g = torch.Generator().manual_seed(17)
    bm, bn, length = 8, 8, 400
    slash = torch.stack([torch.randperm(length, generator=g)[:40] for _ in range(6)]).sort(-1).values
    slash[:2, :10] = 0
    lay = vertical_slash_layout(torch.zeros(1, 6, 1, dtype=torch.long), slash[None], length, bm, bn)
    for h in range(6):
        want, reach = [], -(10**9)
        for a in (-slash[h].unique()).sort().values.tolist():
            start = max(a, reach)
            while start <= a + bm - 1:
                want.append(start)
                start += bn
            reach = max(reach, start)
        assert lay.chunk_start[h, : lay.chunk_count[h]].tolist() == want
    # the Triton walk (what CUDA uses) gives the same layout as the torch scan, also with chunks wider than blocks
    for bm, bn in ((8, 8), (8, 32), (16, 8)):
        a = vertical_slash_layout(torch.zeros(1, 6, 1, dtype=torch.long), slash[None], length, bm, bn)
        b = vertical_slash_layout(torch.zeros(1, 6, 1, dtype=torch.long), slash[None], length, bm, bn, scan="triton")
        assert torch.equal(a.chunk_start, b.chunk_start) and torch.equal(a.covered, b.covered)
        assert torch.equal(a.chunk_begin, b.chunk_begin) and torch.equal(a.vertical_count, b.vertical_count)


def _same_layout(a, b) -> bool:
    fields = ("chunk_start", "chunk_begin", "chunk_count", "chunk_diag", "vertical", "vertical_count", "covered")
    return all(getattr(a, f).dtype == getattr(b, f).dtype and torch.equal(getattr(a, f), getattr(b, f)) for f in fields)


def test_fused_layout_equals_torch_layout() -> None:
    # the one-launch Triton layout (what CUDA uses) against the torch ops, every field, greedy and merged, on random
    # slash sets (some with the mass cut's repeated offset 0 and no offset 0 at all), padded verticals (L), lengths
    # that are not a multiple of the block, and real indexes (top-k and smoothed, per head and shared)
    g = torch.Generator().manual_seed(23)
    for length, ns, nv in ((400, 40, 7), (333, 120, 30), (97, 97, 5), (1000, 300, 64)):
        slash = torch.stack([torch.randperm(length, generator=g)[:ns] for _ in range(5)]).sort(-1).values
        slash[1, :10] = 0
        slash[2] = slash[2].clamp(min=1)
        vertical = torch.stack([torch.randperm(length, generator=g)[:nv] for _ in range(5)])
        vertical[3, nv // 2 :] = length
        vertical = vertical.sort(-1).values
        for bm, bn in ((8, 8), (16, 8), (8, 32), (64, 64)):
            for greedy in (True, False):
                args = (vertical[None], slash[None], length, bm, bn, greedy)
                assert _same_layout(
                    vertical_slash_layout(*args, scan="torch"), vertical_slash_layout(*args, scan="triton")
                )
    q, k, _ = qkv(300, seed=5)
    for cfg in (
        VerticalSlash(vertical=12, slash=40, sink=3, window=5),
        VerticalSlash(vertical=12, slash=60, sink=3, window=5, smooth=16),
        VerticalSlash(vertical=12, slash=40, sink=3, window=5, shared=True, mass=0.9),
    ):
        vertical, slash = vertical_slash_index(q, k, cfg)
        for bm, bn in ((16, 16), (32, 16)):
            args = (vertical, slash, 300, bm, bn)
            assert _same_layout(vertical_slash_layout(*args, scan="torch"), vertical_slash_layout(*args, scan="triton"))
    a_shape = a_shape_index(1, HQ, AShape(sink=8, window=50), 150, q.device)
    assert _same_layout(
        vertical_slash_layout(*a_shape, 150, 16, 16, scan="torch"),
        vertical_slash_layout(*a_shape, 150, 16, 16, scan="triton"),
    )


def test_triton_query_offset_serves_a_chunk_over_cached_keys() -> None:
    # a chunk's queries (the last n of L positions) against all L keys: rows start at q_offset, causal by absolute
    # position; the offset is not a multiple of the block, so query blocks straddle the full prefill's blocks
    length, n = 200, 77
    q, k, v = qkv(length, seed=19)
    chunk = q[:, :, length - n :]
    cfg = VerticalSlash(vertical=10, slash=20, sink=3, window=5)
    vertical, slash = vertical_slash_index(chunk, k, cfg)
    whole_index = vertical_slash_index(q, k, cfg)  # the same last rows estimate it: the same index
    assert torch.equal(whole_index[0], vertical) and torch.equal(whole_index[1], slash)
    for greedy in (True, False):
        args = (vertical, slash, length, 32, 16, greedy)
        lay = vertical_slash_layout(*args, scan="torch", q_offset=length - n)
        assert _same_layout(lay, vertical_slash_layout(*args, scan="triton", q_offset=length - n))
        assert lay.chunk_begin.shape[-1] == 3  # ceil(77 / 32) query blocks, not ceil(200 / 32)
        out = vertical_slash_attention(chunk, k, v, lay)
        assert out.shape == chunk.shape
        assert torch.allclose(out, masked_attention(chunk, k, v, layout_mask(lay, 1, HQ, length)), atol=1e-5)
    rows = torch.arange(length - n, length)
    assert (layout_mask(lay, 1, HQ, length)(rows) >= vertical_slash_mask(length, vertical, slash)(rows)).all()
    # with the offset on a block boundary the chunk's rows are the whole prefill's last rows, tile for tile
    lay = vertical_slash_layout(vertical, slash, length, block_m=16, block_n=16, q_offset=length - 72)
    whole = vertical_slash_attention(q, k, v, vertical_slash_layout(vertical, slash, length, block_m=16, block_n=16))
    assert torch.allclose(vertical_slash_attention(q[:, :, -72:], k, v, lay), whole[:, :, -72:], atol=1e-5)
    # A-shape, and a shared index (the group's query heads in one tile), over the same chunk
    a_shape = a_shape_index(1, HQ, AShape(sink=4, window=24), length, q.device)
    lay = vertical_slash_layout(*a_shape, length, 16, 16, q_offset=length - n)
    out = vertical_slash_attention(chunk, k, v, lay)
    assert torch.allclose(out, masked_attention(chunk, k, v, layout_mask(lay, 1, HQ, length)), atol=1e-5)
    assert (layout_mask(lay, 1, HQ, length)(rows) >= a_shape_mask(length, AShape(sink=4, window=24))(rows)).all()
    group = HQ // HKV
    lay = vertical_slash_layout(vertical[:, ::group], slash[:, ::group], length, 16, 16, q_offset=length - n)

    def shared(rows: torch.Tensor) -> torch.Tensor:
        return layout_mask(lay, 1, HKV, length)(rows).repeat_interleave(group, 1)

    assert torch.allclose(vertical_slash_attention(chunk, k, v, lay), masked_attention(chunk, k, v, shared), atol=1e-5)
