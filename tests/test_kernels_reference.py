"""Index builders on planted patterns; the plain-torch reference against dense SDPA."""

import torch
import torch.nn.functional as F

from kernels.index import (
    block_sparse_index,
    diagonal_sums,
    estimate_rows,
    mixed_slash_score,
    smoothed_slash_score,
    vertical_slash_index,
)
from kernels.patterns import AShape, BlockSparse, VerticalSlash
from kernels.reference import (
    a_shape_mask,
    attention_recall,
    block_sparse_mask,
    causal_mask,
    masked_attention,
    pattern_mask,
    vertical_slash_mask,
)

HQ, HKV, D = 4, 2, 32


def planted(length: int, columns: list[int], offset: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """q/k where every query attends to `columns` (verticals) and to the key `offset` positions back (a slash)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, HQ, length, D, generator=g)
    k = torch.randn(1, HKV, length, D, generator=g) * 0.3
    q[..., 16:] = 0
    # key j copies the query of j + offset (for the first query head of its group) in dims 0..15
    k[..., : length - offset, :16] = 2 * q[:, :: HQ // HKV, offset:, :16]
    q[..., 16] = 1.0
    k[..., 16] = 0.0
    k[..., columns, 16] = 40.0
    return q, k


def test_vertical_slash_index_finds_planted_columns_and_diagonal() -> None:
    q, k = planted(512, columns=[300, 401], offset=50)
    cfg = VerticalSlash(vertical=8, slash=12, last_q=64, sink=4, window=8)
    vertical, slash = vertical_slash_index(q, k, cfg)
    assert vertical.shape == (1, HQ, 8) and slash.shape == (1, HQ, 12)
    for h in range(HQ):
        v, s = set(vertical[0, h].tolist()), set(slash[0, h].tolist())
        assert {0, 1, 2, 3, 300, 401} <= v
        assert set(range(8)) <= s
    # the diagonal was planted for the first query head of each KV group
    assert 50 in set(slash[0, 0].tolist()) and 50 in set(slash[0, 2].tolist())
    assert torch.equal(vertical, vertical.sort(dim=-1).values)


def test_smoothed_slash_ranking_keeps_planted_diagonal_and_runs_the_rest() -> None:
    q, k = planted(512, columns=[300, 401], offset=50)
    cfg = VerticalSlash(vertical=8, slash=24, last_q=64, sink=4, window=8, smooth=9)
    vertical, slash = vertical_slash_index(q, k, cfg)
    assert slash.shape == (1, HQ, 24) and torch.equal(slash, slash.sort(dim=-1).values)
    assert 50 in set(slash[0, 0].tolist())  # a real diagonal is a peak over its neighbourhood: kept
    for h in range(HQ):
        assert set(range(8)) <= set(slash[0, h].tolist())
    # the mean over the window (fewer offsets at the ends), or the own score over the peak factor where larger
    score = torch.rand(2, 3, 40)
    got = smoothed_slash_score(score, 5, peak=4.0)
    i = 20
    assert torch.allclose(got[..., i], torch.maximum(score[..., i - 2 : i + 3].mean(-1), score[..., i] / 4))
    assert torch.allclose(got[..., 0], torch.maximum(score[..., :3].mean(-1), score[..., 0] / 4))
    flat = torch.ones(1, 1, 40)
    assert torch.allclose(smoothed_slash_score(flat, 7), flat)


def test_mixed_slash_ranking_brings_back_far_lines_that_smoothing_drops() -> None:
    # a local run (offsets 0..39, decaying) and three lone far lines: each a peak over its own neighbourhood, but its
    # score over SLASH_PEAK is below the smoothed scores just past the run, so the smoothed ranking spends the last
    # slots extending the run; a share of own score ranks the lines first
    score = torch.full((1, 1, 400), 1e-4)
    score[..., :40] = torch.linspace(1.0, 0.1, 40)
    for line in (150, 250, 350):
        score[..., line] = 0.04
    cfg = dict(forced=8, budget=44, mass=None, pad=0)
    from kernels.index import top_indices

    smoothed = smoothed_slash_score(score, 9)
    plain = set(top_indices(smoothed, **cfg)[0, 0].tolist())
    assert not {150, 250, 350} & plain and set(range(44)) == plain
    mixed = mixed_slash_score(score, smoothed, 0.5)
    assert {150, 250, 350} <= set(top_indices(mixed, **cfg)[0, 0].tolist())
    assert mixed_slash_score(score, smoothed, 0.0) is smoothed  # mix 0: today's smoothed ranking
    own = mixed_slash_score(score, smoothed, 1.0)
    assert torch.allclose(own, score / score.sum(), atol=1e-7)  # mix 1: plain top-k's order
    q, k = planted(512, columns=[300, 401], offset=50)
    for mix in (0.0, 0.3):
        cfg_vs = VerticalSlash(vertical=8, slash=24, last_q=64, sink=4, window=8, smooth=9, mix=mix)
        assert 50 in set(vertical_slash_index(q, k, cfg_vs)[1][0, 0].tolist())


def test_spread_estimate_finds_a_diagonal_the_last_queries_miss() -> None:
    # the diagonal at offset 50 only among the first half of the queries: the last 64 cannot see it
    length = 1024
    q, k = planted(length, columns=[300, 401], offset=50)
    k[..., length // 2 - 50 :, :16] = 0
    assert estimate_rows(length, 64, False, q.device) is None
    rows = estimate_rows(length, 64, True, q.device)  # every 16th, ending at the last query
    assert rows.tolist() == list(range(15, length, 16))
    last = VerticalSlash(vertical=8, slash=12, last_q=64, sink=4, window=8)
    spread = VerticalSlash(vertical=8, slash=12, last_q=64, sink=4, window=8, spread=True)
    assert 50 not in set(vertical_slash_index(q, k, last)[1][0, 0].tolist())
    vertical, slash = vertical_slash_index(q, k, spread)
    assert 50 in set(slash[0, 0].tolist()) and 50 in set(slash[0, 2].tolist())
    for h in range(HQ):
        assert {0, 1, 2, 3, 300, 401} <= set(vertical[0, h].tolist()) and set(range(8)) <= set(slash[0, h].tolist())
    # the spread rows' diagonal sums against a loop
    p = torch.rand(2, 3, 4, 20)
    positions = torch.tensor([3, 9, 10, 19])
    want = torch.zeros(2, 3, 20)
    for i, pos in enumerate(positions.tolist()):
        for j in range(pos + 1):
            want[..., pos - j] += p[..., i, j]
    assert torch.allclose(diagonal_sums(p, positions), want, atol=1e-6)
    assert torch.allclose(diagonal_sums(p, torch.arange(16, 20)), diagonal_sums(p), atol=1e-6)


def test_mass_cut_keeps_planted_pattern_and_drops_noise() -> None:
    q, k = planted(512, columns=[300, 401], offset=50)
    cfg = VerticalSlash(vertical=64, slash=64, last_q=64, sink=4, window=8, mass=0.5)
    vertical, slash = vertical_slash_index(q, k, cfg)
    for h in range(HQ):
        v = vertical[0, h][vertical[0, h] < 512].tolist()
        assert {0, 1, 2, 3, 300, 401} <= set(v) and len(v) < 64
        assert set(range(8)) <= set(slash[0, h].tolist())
    assert 50 in set(slash[0, 0].tolist())
    assert (slash[0, 0] == 0).sum() > 1  # unused slots repeat offset 0


def test_block_sparse_index_finds_planted_block() -> None:
    q, k = planted(512, columns=list(range(192, 256)), offset=50)
    mask = block_sparse_index(q, k, BlockSparse(block=64, top=3))
    assert mask.shape == (1, HQ, 8, 8)
    for m in range(8):
        assert mask[0, :, m, 0].all() and mask[0, :, m, m].all()  # sink and diagonal blocks
        assert not mask[0, :, m, m + 1 :].any()  # causal
        if m >= 3:
            assert mask[0, :, m, 3].all()
        assert (mask[0, :, m].sum(-1) <= 3).all()


def rows_of(text: str) -> torch.Tensor:
    return torch.tensor([[int(c) for c in row] for row in text.split()])


def test_masks_by_hand() -> None:
    rows = torch.arange(6)
    a = a_shape_mask(6, AShape(sink=1, window=2))(rows)[0, 0].int()
    expected = rows_of("100000 110000 111000 101100 100110 100011")
    assert torch.equal(a, expected)
    vs = vertical_slash_mask(6, torch.tensor([[[2]]]), torch.tensor([[[0, 3]]]))(rows)[0, 0].int()
    expected = rows_of("100000 010000 001000 101100 011010 001001")
    assert torch.equal(vs, expected)
    blocks = torch.tensor([[[[1, 0, 0], [1, 1, 0], [0, 1, 1]]]], dtype=torch.bool)
    bs = block_sparse_mask(6, blocks, 2)(rows)[0, 0].int()
    assert bs[5].tolist() == [0, 0, 1, 1, 1, 1] and bs[3].tolist() == [1, 1, 1, 1, 0, 0]


def test_reference_equals_sdpa_where_the_mask_is_full() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, h, 300, D, generator=g) for h in (HQ, HKV, HKV))
    dense = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(masked_attention(q, k, v, causal_mask(300), chunk=128), dense, atol=1e-5)
    full_a = pattern_mask(q, k, AShape(sink=1, window=300))
    full_vs = pattern_mask(q, k, VerticalSlash(vertical=1, slash=300, sink=1, window=1))
    full_bs = pattern_mask(q, k, BlockSparse(block=64, top=5))
    for mask in (full_a, full_vs, full_bs):
        assert torch.allclose(masked_attention(q, k, v, mask, chunk=128), dense, atol=1e-5)
        assert abs(attention_recall(q, k, mask, torch.arange(0, 300, 7)) - 1.0) < 1e-5
    sparse = a_shape_mask(300, AShape(sink=4, window=16))
    assert attention_recall(q, k, sparse, torch.arange(200, 300)) < 0.5
    assert not torch.allclose(masked_attention(q, k, v, sparse), dense, atol=1e-3)


def test_diagonal_sums_match_a_loop() -> None:
    from kernels.index import diagonal_sums

    for r, length in ((4, 11), (5, 5), (1, 7)):
        p = torch.rand(2, 3, r, length)
        want = torch.zeros(2, 3, length)
        for i in range(r):
            for j in range(length):
                offset = length - r + i - j
                if offset >= 0:
                    want[..., offset] += p[..., i, j]
        assert torch.allclose(diagonal_sums(p), want, atol=1e-6)
