"""Per-head pattern search on planted heads, and the per-head index it drives."""

import torch

from kernels.attention import vertical_slash_from_index
from kernels.patterns import VerticalSlash
from kernels.reference import masked_attention, vertical_slash_mask
from kernels.search import HeadPatterns, per_head_index, search_heads

L, D = 512, 32


def two_heads() -> tuple[torch.Tensor, torch.Tensor]:
    """Head 0 looks at its own token; head 1 looks at two far columns."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, L, D, generator=g)
    k = torch.randn(1, 2, L, D, generator=g) * 0.1
    k[:, 0] += 3 * q[:, 0]
    k[:, 1, [300, 401]] += 3 * q[:, 1, -64:].mean(1, keepdim=True) / q[:, 1, -64:].mean(1).norm() * D**0.5
    q[:, 1] += q[:, 1, -64:].mean(1, keepdim=True)
    return q, k


def test_search_gives_each_head_the_cheapest_pattern_that_keeps_the_mass(tmp_path) -> None:
    q, k = two_heads()
    local = VerticalSlash(vertical=4, slash=8, sink=4, window=8)
    columns = VerticalSlash(vertical=16, slash=8, sink=4, window=8)
    rows = torch.arange(L // 2, L, 8)
    choice = search_heads(q, k, [local, columns], 0.8, rows, D**-0.5)
    assert choice == [0, 1]

    config = HeadPatterns([local, columns], {0: choice})
    config.save(tmp_path / "m.json", model="test")
    assert HeadPatterns.load(tmp_path / "m.json") == config

    vertical, slash = per_head_index(q, k, [local, columns], choice, D**-0.5)
    assert set(vertical[0, 0].tolist()) == {0, 1, 2, 3, L}  # 4 sinks, padded to the wider head
    assert {300, 401} <= set(vertical[0, 1].tolist())
    out = vertical_slash_from_index(q, k, k, vertical, slash)
    assert torch.allclose(out, masked_attention(q, k, k, vertical_slash_mask(L, vertical, slash)))
