"""What chosen query positions attend to, read from the native model's own layers.

Attention weights are never materialised by the model: a pre-hook on each probed layer's attention
module takes its input, recomputes q (for the query rows only) and k (for every position) with the
layer's own projections and rotary embedding, and keeps softmax(q k^T / sqrt(d)) summed over heads.
That costs one small matrix product per probed layer, works with any attention implementation
(sdpa, kernels/ patterns), and lets a probe stop the forward pass after its last layer, which is
how GemFilter runs "only the first r layers".
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class _StopForward(Exception):
    """Raised by the last probed layer's hook: nothing after it is needed."""


def decoder_layers(model: Any) -> nn.ModuleList:
    """The decoder blocks of a transformers causal LM (Llama, Mistral, Qwen, Phi-3 and similar layouts)."""
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no `base_model.layers`: attention probing needs a decoder stack")
    return layers


def num_layers(model: Any) -> int:
    return len(decoder_layers(model))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [heads, rows, d]; cos/sin: [rows, d]
    return x * cos + _rotate_half(x) * sin


def attention_from(
    attn: nn.Module, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor
) -> torch.Tensor:
    """Softmax attention of the query `rows` over all positions, summed over heads and averaged over rows: [T]."""
    h = hidden[0]  # batch of one
    head_dim = attn.head_dim
    q = attn.q_proj(h[rows]).view(len(rows), -1, head_dim).transpose(0, 1).float()
    k = attn.k_proj(h).view(h.shape[0], -1, head_dim).transpose(0, 1).float()
    if hasattr(attn, "q_norm"):  # Qwen3/Gemma3-style per-head norms sit before the rotary embedding
        q, k = attn.q_norm(q.to(h.dtype)).float(), attn.k_norm(k.to(h.dtype)).float()
    cos, sin = (t[0].float() for t in position_embeddings)
    q, k = _rope(q, cos[rows], sin[rows]), _rope(k, cos, sin)
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)  # grouped-query attention: share each KV head
    logits = torch.einsum("hrd,htd->hrt", q, k) * attn.scaling
    causal = torch.arange(h.shape[0], device=h.device)[None, :] > rows[:, None]
    logits = logits.masked_fill(causal[None], float("-inf"))
    return logits.softmax(dim=-1).sum(dim=0).mean(dim=0)


@contextmanager
def probe_attention(
    model: Any, layers: Sequence[int], rows: torch.Tensor, stop: bool = False
) -> Iterator[dict[int, torch.Tensor]]:
    """Collect, for each 0-based layer index, what `rows` attend to during the next forward pass.

    With stop=True the pass ends right after the last probed layer's scores are taken (its attention
    and everything later are skipped); the probe swallows that early exit.
    """
    blocks = decoder_layers(model)
    wanted = sorted(set(layers))
    if not wanted or wanted[0] < 0 or wanted[-1] >= len(blocks):
        raise ValueError(f"layers {list(layers)} are outside 0..{len(blocks) - 1}")
    scores: dict[int, torch.Tensor] = {}
    handles = []

    def hook_for(index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            scores[index] = attention_from(module, hidden, kwargs["position_embeddings"], rows.to(hidden.device))
            if stop and index == wanted[-1]:
                raise _StopForward

        return hook

    for index in wanted:
        handles.append(blocks[index].self_attn.register_forward_pre_hook(hook_for(index), with_kwargs=True))
    try:
        yield scores
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def suffix_attention(
    model: Any, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], layers: Sequence[int]
) -> list[dict[int, torch.Tensor]]:
    """For each suffix after one shared prefix: what its positions attend to over prefix + suffix, per layer.

    The prefix runs once (to the last probed layer, keeping the earlier layers' KV cache and the probed layers'
    inputs); each suffix then runs on a copy of that cache, so scoring one context for several endings (a question
    and a neutral one) costs one pass over the context. Layers are 0-based; each result maps a layer to [T] scores
    (summed over heads, averaged over the suffix's positions), as `probe_attention` gives for those rows.
    """
    from transformers import DynamicCache

    blocks = decoder_layers(model)
    wanted = sorted(set(layers))
    if not wanted or wanted[0] < 0 or wanted[-1] >= len(blocks):
        raise ValueError(f"layers {list(layers)} are outside 0..{len(blocks) - 1}")
    seen: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # layer: hidden [T, d], cos, sin
    handles = []

    def hook_for(index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])[0]
            cos, sin = (t[0] for t in kwargs["position_embeddings"])
            seen[index] = (hidden, cos, sin)
            if index == wanted[-1]:
                raise _StopForward

        return hook

    device = model.device
    cache = DynamicCache()
    for index in wanted:
        handles.append(blocks[index].self_attn.register_forward_pre_hook(hook_for(index), with_kwargs=True))
    try:
        try:
            model.base_model(
                input_ids=torch.tensor([list(prefix)], device=device), past_key_values=cache, use_cache=True
            )
        except _StopForward:
            pass
        kept = dict(seen)
        results = []
        for suffix in suffixes:
            seen.clear()
            try:
                model.base_model(
                    input_ids=torch.tensor([list(suffix)], device=device),
                    past_key_values=copy.deepcopy(cache),
                    use_cache=True,
                )
            except _StopForward:
                pass
            scores = {}
            for index in wanted:
                (h0, c0, s0), (h1, c1, s1) = kept[index], seen[index]
                hidden = torch.cat([h0, h1])[None]
                pe = (torch.cat([c0, c1])[None], torch.cat([s0, s1])[None])
                rows = torch.arange(len(h0), len(h0) + len(h1), device=h0.device)
                scores[index] = attention_from(blocks[index].self_attn, hidden, pe, rows)
            results.append(scores)
    finally:
        for handle in handles:
            handle.remove()
    return results
