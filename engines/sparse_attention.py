"""Sparse prefill as a transformers attention implementation: `attn_implementation="vertical_slash"` (or any
kernels/ pattern name, or a name registered here with its own budgets) runs prefill through kernels/, while decode,
padded batches and prefills on top of a cache stay on dense SDPA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kernels.attention import sparse_attention, vertical_slash_from_index
from kernels.patterns import PATTERNS, Pattern
from kernels.search import HeadPatterns, per_head_index

CONFIGS = Path(__file__).resolve().parents[1] / "kernels" / "configs"
PER_HEAD = "per_head"  # the attention setting that loads kernels/configs/<model>.json


def sparse_prefill_attention(pattern: Pattern | HeadPatterns):
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
        if isinstance(pattern, HeadPatterns):
            choice = pattern.layers.get(module.layer_idx)
            if choice is None:  # a layer the search did not cover stays dense
                return sdpa_attention_forward(
                    module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
                )
            index = per_head_index(query, key, pattern.candidates, choice, scaling)
            out = vertical_slash_from_index(query, key, value, *index, scaling)
        else:
            out = sparse_attention(query, key, value, pattern, scaling)
        return out.transpose(1, 2).contiguous(), None

    return attention


def register_sparse_attention(name: str, pattern: Pattern | HeadPatterns) -> str:
    """Register `pattern` under `name` for transformers models (attention and mask functions); returns the name."""
    register_sparse_attention_function(name, sparse_prefill_attention(pattern))
    return name


def attention_implementation(name: str, model: str) -> str:
    """The `attn_implementation` for an engine setting: kernels/ pattern names are registered with their defaults;
    `per_head` loads the searched per-head config of `model` (kernels/configs/<model>.json)."""
    if name == PER_HEAD:
        path = CONFIGS / f"{Path(model).name}.json"
        if not path.exists():
            raise ValueError(f"attention 'per_head' needs {path}: run scripts/search_sparse_patterns.py first")
        return register_sparse_attention(f"{PER_HEAD}_{path.stem}", HeadPatterns.load(path))
    if name in PATTERNS and name not in AttentionInterface._global_mapping:
        register_sparse_attention(name, PATTERNS[name]())
    return name


def capture_qk(model: Any, ids: torch.Tensor, layers: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Post-RoPE q and k of the given layers from one dense prefill (float32, on the model's device)."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        if module.layer_idx in layers:
            seen[module.layer_idx] = (query.float().clone(), key.float().clone())
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    register_sparse_attention_function("capture_qk", capture)
    previous = model.config._attn_implementation
    model.set_attn_implementation("capture_qk")
    try:
        with torch.inference_mode():
            model(ids, logits_to_keep=1)
    finally:
        model.set_attn_implementation(previous)
    return seen


def register_sparse_attention_function(name: str, fn: Any) -> None:
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)
