"""Sparse prefill patterns: one flat config each, as MInference assigns them per head."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AShape:
    """Attention sinks plus a local window (StreamingLLM's static pattern)."""

    sink: int = 64
    window: int = 4096


@dataclass(frozen=True)
class VerticalSlash:
    """Top key columns and top diagonals, estimated online from the last queries (MInference's defaults)."""

    vertical: int = 1000
    slash: int = 6096
    last_q: int = 64
    sink: int = 30  # first columns always kept as verticals
    window: int = 100  # nearest diagonals always kept as slashes
    # With `mass`, the budgets are caps: keep only the top columns (and diagonals) that together hold this share of
    # the estimated attention mass (FlexPrefill's cumulative threshold). Scattered low-score picks cost whole key
    # chunks in the kernel while adding almost no mass.
    mass: float | None = None
    # One index per KV head (scores summed over its query heads): the kernel then stacks the group's query heads into
    # one tile and reads each K/V tile once for all of them, instead of once per query head.
    shared: bool = False
    # With `smooth`, slashes are ranked by their estimated score averaged over `smooth` neighbouring offsets, except a
    # line whose own score is SLASH_PEAK times that average (a real diagonal) keeps its own. The last queries' far
    # diagonal scores are noisy, and a lone diagonal costs the kernel a whole key chunk (BLOCK_M x BLOCK_N) for one
    # key per row, while one next to the local run costs one column: the same number of slashes then lie in a few
    # contiguous runs instead of hundreds of scattered chunks.
    smooth: int = 0
    # With `smooth`, rank slashes by (1 - mix) x the smoothed score + mix x the line's own score (each as a share of its
    # head's total): mix 0 is the smoothed ranking, 1 plain top-k. The smoothed runs are cheap (a few contiguous key
    # chunks) but drop the far lines the last queries single out; a share of own score lets the strongest of those
    # back in, each at a key chunk or two, and so spends kernel time on recall between the two rankings.
    mix: float = 0.0
    # With `spread`, the slash scores come from `last_q` queries spread evenly over the prompt (every L // last_q-th,
    # the last query included) instead of the last ones: the last queries see the end of the prompt's own
    # neighbourhood and topics, while the index serves every query (most of them far earlier). The verticals still come
    # from the last queries (spread ones pick the columns just before each of them: gathered for every later block).
    spread: bool = False


# with VerticalSlash.smooth: a diagonal this many times its neighbourhood's mean ranks by its own score
SLASH_PEAK = 4.0


@dataclass(frozen=True)
class BlockSparse:
    """Top-k key blocks per query block, scored by mean-pooled q·k."""

    block: int = 128
    top: int = 64  # key blocks per query block, the sink block and the diagonal block included


Pattern = AShape | VerticalSlash | BlockSparse

PATTERNS: dict[str, type[AShape] | type[VerticalSlash] | type[BlockSparse]] = {
    "a_shape": AShape,
    "vertical_slash": VerticalSlash,
    "block_sparse": BlockSparse,
}


def pattern_name(pattern: Pattern) -> str:
    return next(name for name, cls in PATTERNS.items() if isinstance(pattern, cls))
