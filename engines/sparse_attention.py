"""Sparse prefill as a transformers attention implementation: `attn_implementation="vertical_slash"` (or any
kernels/ pattern name, or a name registered here with its own budgets) runs prefill through kernels/, while decode,
padded batches and prefills on top of a cache stay on dense SDPA."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kernels.attention import sparse_attention
from kernels.patterns import PATTERNS, Pattern


def sparse_prefill_attention(pattern: Pattern):
    def attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        # sdpa_mask returns None only for plain causal attention without padding; q_len == kv_len means no cache.
        if attention_mask is not None or query.shape[2] != key.shape[2] or query.shape[2] == 1:
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        out = sparse_attention(query, key, value, pattern, scaling)
        return out.transpose(1, 2).contiguous(), None

    return attention


def register_sparse_attention(name: str, pattern: Pattern) -> str:
    """Register `pattern` under `name` for transformers models (attention and mask functions); returns the name."""
    AttentionInterface.register(name, sparse_prefill_attention(pattern))
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def attention_implementation(name: str) -> str:
    """The `attn_implementation` for an engine setting: kernels/ pattern names are registered with their defaults."""
    if name in PATTERNS and name not in AttentionInterface._global_mapping:
        register_sparse_attention(name, PATTERNS[name]())
    return name
