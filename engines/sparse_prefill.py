"""What a vLLM attention backend needs to run sparse prefill, as plain functions (no vLLM import): which sequences
of a batch go sparse, the token rows of the rest, the configured pattern, and the kernel call for one sequence.

The GPU backend (engines.vllm_flash_sparse, on vLLM 0.25's FlashAttention) and the CPU shim (engines.vllm_sparse) both
route through these, so CI on the CPU tests the same decisions the GPU makes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engines.settings import Settings
from kernels.attention import sparse_attention, vertical_slash_from_index
from kernels.patterns import PATTERNS, AShape, Pattern, VerticalSlash
from kernels.search import HeadPatterns, per_head_index


@dataclass(frozen=True)
class SparseConfig:
    """One pattern for every layer and head, or a per-head choice per layer; `None` pattern and heads: off."""

    pattern: Pattern | None = None
    heads: HeadPatterns | None = None
    min_tokens: int = 0
    # A chunk over cached tokens (chunked prefill, a prefix-cache hit) of at least this many new tokens runs sparse
    # too: its queries against the whole sequence's keys, read from the paged cache. 0: such chunks stay dense.
    chunk_min_tokens: int = 0

    @property
    def enabled(self) -> bool:
        return self.pattern is not None or self.heads is not None

    @property
    def chunk_threshold(self) -> int | None:
        """The fewest new tokens a chunk over cached tokens needs to go sparse; None: chunks stay dense. A
        vertical-slash chunk also needs its estimate's `last_q` queries among its own (the cached ones are not kept);
        per-head configs and `spread` estimates read queries from the whole prompt, so their chunks stay dense."""
        if not self.chunk_min_tokens or self.heads is not None or self.pattern is None:
            return None
        if isinstance(self.pattern, VerticalSlash):
            if self.pattern.spread:
                return None
            return max(2, self.chunk_min_tokens, self.pattern.last_q)
        if isinstance(self.pattern, AShape):
            return max(2, self.chunk_min_tokens)
        return None  # block_sparse pools query blocks of the whole prompt


def config_from_settings(settings: Settings | None = None) -> SparseConfig:
    """The backend's pattern from `vllm_sparse` (vertical_slash, a_shape, block_sparse, off, or a per-head JSON of
    kernels.search), `vllm_sparse_min_tokens` (shorter fresh prefills stay dense: the index costs more than it
    saves) and `vllm_sparse_chunk_min_tokens` (chunks over cached tokens of at least this many go sparse; 0: none).
    Read in vLLM's engine process, which loads the backend by name: an entry point of its own."""
    settings = settings or Settings()
    name, min_tokens = settings.vllm_sparse, settings.vllm_sparse_min_tokens
    chunks = settings.vllm_sparse_chunk_min_tokens
    if name in ("", "off", "dense"):
        return SparseConfig(min_tokens=min_tokens)
    if name in PATTERNS:
        return SparseConfig(pattern=PATTERNS[name](), min_tokens=min_tokens, chunk_min_tokens=chunks)
    return SparseConfig(heads=HeadPatterns.load(Path(name)), min_tokens=min_tokens, chunk_min_tokens=chunks)


@dataclass(frozen=True)
class Route:
    """A batch split: `sparse` as (sequence, first token row, end row) of fresh prefills, `chunks` the same for
    chunks over cached tokens that go sparse; `rest` the other sequences (decode, short chunks), which stay on the
    dense paged kernel."""

    sparse: list[tuple[int, int, int]] = field(default_factory=list)
    rest: list[int] = field(default_factory=list)
    chunks: list[tuple[int, int, int]] = field(default_factory=list)


def route_batch(
    query_start_loc: list[int], seq_lens: list[int], min_tokens: int = 0, chunk_threshold: int | None = None
) -> Route:
    """A sequence goes sparse when all its tokens are new in this step (no cached prefix: query length == sequence
    length) and it has at least `max(2, min_tokens)` of them; with a `chunk_threshold`
    (SparseConfig.chunk_threshold), a chunk over cached tokens with at least that many new tokens goes sparse too."""
    route = Route()
    for i, seq_len in enumerate(seq_lens):
        s, e = query_start_loc[i], query_start_loc[i + 1]
        if e - s == seq_len and seq_len >= max(2, min_tokens):
            route.sparse.append((i, s, e))
        elif chunk_threshold is not None and seq_len > e - s >= chunk_threshold:
            route.chunks.append((i, s, e))
        else:
            route.rest.append(i)
    return route


def rest_rows(query_start_loc: list[int], rest: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Token rows of the `rest` sequences, in batch order (for gathering their queries and scattering outputs)."""
    parts = [torch.arange(query_start_loc[i], query_start_loc[i + 1]) for i in rest]
    return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)).to(device)


def rest_query_start_loc(query_start_loc: list[int], rest: list[int]) -> list[int]:
    """Cumulative query offsets of the `rest` sequences once gathered together."""
    out = [0]
    for i in rest:
        out.append(out[-1] + query_start_loc[i + 1] - query_start_loc[i])
    return out


_LAYER = re.compile(r"layers\.(\d+)\.")


def layer_index(layer_name: str) -> int:
    """The decoder layer number in vLLM's layer name ("model.layers.12.self_attn.attn" -> 12), 0 if none."""
    m = _LAYER.search(layer_name)
    return int(m.group(1)) if m else 0


def sparse_prefill(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, config: SparseConfig, scale: float, layer: int = 0
) -> torch.Tensor:
    """Causal sparse attention of one fresh prefill over its own tokens. query [L, Hq, D], key/value [L, Hkv, D]
    (vLLM's token-major layout); returns [L, Hq, D]. CUDA runs the Triton kernel, elsewhere the torch reference."""
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (query, key, value))  # [1, H, L, D] views, head dim contiguous
    if config.heads is not None:
        choice = config.heads.layers.get(layer)
        if choice is None:  # a layer the per-head search did not cover: MInference's default budget
            out = sparse_attention(q, k, v, VerticalSlash(), scale)
        else:
            index = per_head_index(q, k, config.heads.candidates, choice, scale)
            out = vertical_slash_from_index(q, k, v, *index, scale)
    else:
        assert config.pattern is not None
        out = sparse_attention(q, k, v, config.pattern, scale)
    return out[0].transpose(0, 1)


def sparse_chunk(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, config: SparseConfig, scale: float, layer: int = 0
) -> torch.Tensor:
    """Sparse attention of a chunk's queries, the last n positions of a sequence, over the whole sequence's keys.
    query [n, Hq, D], key/value [L, Hkv, D] (the cached prefix and the chunk); returns [n, Hq, D].

    The kernel starts its query rows at L - n (Layout.q_offset) and masks causally by absolute position; the index is
    estimated from the chunk's own last `last_q` queries (SparseConfig.chunk_threshold ensures it has them) against
    all L keys. So the chunk's rows get what a one-shot sparse prefill of the sequence would give them with an index
    from these queries, at the cost of n rows x the pattern's budget (not L rows: no padding to the full length)."""
    if config.heads is not None:  # the per-head choice reads queries from the whole prompt (chunk_threshold: None)
        raise ValueError("per-head sparse configs serve fresh prefills only")
    assert config.pattern is not None
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (query, key, value))  # [1, H, n or L, D] views
    return sparse_attention(q, k, v, config.pattern, scale)[0].transpose(0, 1)
