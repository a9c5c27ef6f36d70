"""Gist tokens: learned gist embeddings after every chunk of k context tokens; later text reads a chunk only
through its gists, so at inference the raw tokens' KV is dropped and only the gists' KV is kept.

One sequence in gist form (training reads it in one pass under the gist mask, inference chunk by chunk):

    prefix | chunk 0, gists 0 | chunk 1, gists 1 | ... | tail (question and answer)

- prefix: the answer prompt before the context (system prompt, "Text:"); the frozen model, seen by everyone.
- a chunk's tokens see the prefix, earlier chunks' gists and their own chunk (causal), never earlier raw tokens;
- a chunk's gists see the same and their own chunk's earlier gists;
- the tail sees the prefix and every gist, never a raw token, and is read by the frozen model.

A chunk of n tokens gets ceil(n / rate) gists. One adapter serves every rate in `rates`: gist j of a chunk is the
same learned embedding at every rate, so the number of gists the model reads tells it the rate.

RoPE positions stay those of the uncompressed prompt: a chunk's tokens keep theirs, its gists all take the
position of the chunk's last token (after what they summarise, before the next chunk), and the tail continues
after the document's last token. So every relative distance the model sees is one it knows from plain text,
and a compressed document needs no more positions than the uncompressed one (the context limit is the same;
what shrinks is the KV kept and the attention each later token pays).

The LoRA (and so the learned compression) acts on the chunks and gists only: in training a gate zeroes its
output on prefix and tail positions, at inference the prefix and the answer run on the engine's own model.
That keeps the answering model the frozen one, as the distillation teacher is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressors.soft.model import load_lora_state, lora_copy, lora_state, save_adapter, stored_config, trained
from engines.adapters import ADAPTER_HOME, WEIGHTS
from engines.types import Progress, no_progress

SHIPPED = ADAPTER_HOME / "gist" / WEIGHTS

# What each position of a sequence in gist form is.
PREFIX, RAW, GIST, TAIL = 0, 1, 2, 3


@dataclass(frozen=True)
class GistConfig:
    chunk_tokens: int = 32  # k: the raw tokens between two groups of gists
    rates: tuple[int, ...] = (2, 4)  # k / gists per chunk
    lora_rank: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    base_model: str = ""  # the model the adapter was trained on (its folder name)
    extra: dict[str, Any] = field(default_factory=dict)  # training facts kept with the weights

    @property
    def max_gists(self) -> int:
        return math.ceil(self.chunk_tokens / min(self.rates))

    def gists(self, tokens: int, rate: int) -> int:
        return math.ceil(tokens / rate)

    def total_gists(self, document_tokens: int, rate: int) -> int:
        full, rest = divmod(document_tokens, self.chunk_tokens)
        return full * self.gists(self.chunk_tokens, rate) + self.gists(rest, rate)


@dataclass
class Layout:
    """A sequence in gist form: per position its token id (or -1 - j for gist j), kind, chunk and RoPE position."""

    ids: list[int]
    kinds: list[int]
    chunks: list[int]  # -1 outside the context
    positions: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def layout(prefix: Sequence[int], context: Sequence[int], tail: Sequence[int], config: GistConfig, rate: int) -> Layout:
    out = Layout(list(prefix), [PREFIX] * len(prefix), [-1] * len(prefix), list(range(len(prefix))))
    k = config.chunk_tokens
    for c, start in enumerate(range(0, len(context), k)):
        chunk = context[start : start + k]
        g = config.gists(len(chunk), rate)
        first = len(prefix) + start
        out.ids += [*chunk, *(-1 - j for j in range(g))]
        out.kinds += [RAW] * len(chunk) + [GIST] * g
        out.chunks += [c] * (len(chunk) + g)
        out.positions += [*range(first, first + len(chunk)), *[first + len(chunk) - 1] * g]
    after = len(prefix) + len(context)
    out.ids += list(tail)
    out.kinds += [TAIL] * len(tail)
    out.chunks += [-1] * len(tail)
    out.positions += list(range(after, after + len(tail)))
    return out


def gist_mask(kinds: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
    """[S, S] bool, True where query row may attend key column: causal, and raw keys only from their own chunk."""
    n = kinds.shape[0]
    causal = torch.ones(n, n, dtype=torch.bool, device=kinds.device).tril()
    raw_key = (kinds == RAW)[None, :]
    same_chunk = chunks[:, None] == chunks[None, :]
    return causal & (~raw_key | same_chunk)


def kv_bytes(model_config: Any, positions: int, bytes_per_value: int = 2) -> int:
    """Bytes of a KV cache over `positions` entries (every layer's keys and values; bf16 by default)."""
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    per_position = model_config.num_hidden_layers * 2 * model_config.num_key_value_heads * head_dim * bytes_per_value
    return per_position * positions


@dataclass
class GistCache:
    """A document compressed into the KV of [prefix; gists]: what the answer reads instead of the raw tokens."""

    cache: Any  # transformers DynamicCache, per layer [1, kv heads, prefix + gists, head dim]
    prefix_tokens: int
    gists: int
    document_tokens: int
    next_position: int  # RoPE position of the first token after the document (prefix + document tokens)
    chunks: int
    seconds: float

    @property
    def kept(self) -> int:
        return self.prefix_tokens + self.gists


class GistModel(nn.Module):
    def __init__(self, model: nn.Module, config: GistConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.lm = lora_copy(model, config.lora_rank, config.lora_alpha, config.target_modules)
        embed = model.get_input_embeddings().weight.detach().float()
        # The average token embedding (a neutral input) plus a little noise, so that the gists of a chunk start
        # apart from each other; the noise is a tenth of the embeddings' own spread.
        noise = torch.randn(config.max_gists, embed.shape[1], generator=torch.Generator().manual_seed(seed))
        self.gists = nn.Parameter(embed.mean(0) + 0.1 * embed.std(0) * noise)
        self.gate: torch.Tensor | None = None  # [batch, seq, 1]: where the LoRA acts; None: everywhere
        for name, module in self.lm.named_modules():
            if name.split(".")[-2:-1] == ["lora_B"]:
                module.register_forward_hook(self._gated)

    def _gated(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output if self.gate is None else output * self.gate.to(output.dtype)

    @property
    def device(self) -> torch.device:
        return self.gists.device

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """[len, hidden] input embeddings of a layout's ids (tokens and gists), in the model's dtype."""
        table = self.lm.get_input_embeddings()
        t = torch.tensor(list(ids), device=self.device)
        tokens = table(t.clamp(min=0))
        gists = self.gists[(-1 - t).clamp(min=0)].to(tokens.dtype)
        return torch.where((t < 0)[:, None], gists, tokens)

    def hidden_states(self, layouts: Sequence[Layout]) -> torch.Tensor:
        """Last hidden states of a batch of layouts read in one pass under the gist mask (right padding)."""
        width = max(len(x) for x in layouts)
        rows, masks, positions, gates = [], [], [], []
        for x in layouts:
            pad = width - len(x)
            e = self.embed(x.ids)
            rows.append(torch.cat([e, e.new_zeros(pad, e.shape[1])]))
            kinds = torch.tensor(x.kinds + [TAIL] * pad, device=self.device)
            chunks = torch.tensor(x.chunks + [-1] * pad, device=self.device)
            mask = gist_mask(kinds, chunks)
            mask[len(x) :] = False
            mask[:, len(x) :] = False
            mask[len(x) :, 0] = True  # padding rows read one real key: an all-masked row gives NaN in SDPA
            masks.append(mask)
            positions.append(torch.tensor(x.positions + [0] * pad, device=self.device))
            gates.append(((kinds == RAW) | (kinds == GIST)).float()[:, None])
        self.gate = torch.stack(gates)
        try:
            out = self.lm.model(
                inputs_embeds=torch.stack(rows),
                attention_mask=torch.stack(masks)[:, None],
                position_ids=torch.stack(positions),
            )
        finally:
            self.gate = None
        return out.last_hidden_state

    def answer_logits(self, layouts: Sequence[Layout], answer_tokens: Sequence[int]) -> torch.Tensor:
        """Next-token logits for the last `answer_tokens[i]` positions of each layout (its answer), concatenated."""
        hidden = self.hidden_states(layouts)
        pairs = enumerate(zip(layouts, answer_tokens, strict=True))
        picked = torch.cat([hidden[i, len(x) - n - 1 : len(x) - 1] for i, (x, n) in pairs])
        return self.lm.lm_head(picked).float()

    @torch.inference_mode()
    def compress(
        self,
        base: nn.Module,
        prefix: Sequence[int],
        context: Sequence[int],
        rate: int,
        progress: Progress = no_progress,
    ) -> GistCache:
        """The document read chunk by chunk; after each chunk its raw tokens' KV is dropped, its gists' kept.

        `base` is the engine's own model (the prefix runs without the LoRA, as in training).
        """
        from transformers import DynamicCache

        if rate not in self.config.rates:
            raise ValueError(f"this adapter was trained for rates {self.config.rates}, not {rate}")
        start = time.perf_counter()
        cache = DynamicCache()
        ids = torch.tensor([list(prefix)], device=self.device)
        positions = torch.arange(len(prefix), device=self.device)[None]
        base.model(input_ids=ids, position_ids=positions, past_key_values=cache)
        k, kept, chunks = self.config.chunk_tokens, len(prefix), 0
        total = math.ceil(len(context) / k)
        for begin in range(0, len(context), k):
            if chunks % 16 == 0:
                progress(chunks, total, f"gist: reading chunk {chunks + 1} of {total}")
            chunk = list(context[begin : begin + k])
            x = layout([], chunk, [], self.config, rate)
            positions = torch.tensor([p + len(prefix) + begin for p in x.positions], device=self.device)
            self.lm.model(inputs_embeds=self.embed(x.ids)[None], position_ids=positions[None], past_key_values=cache)
            for layer in cache.layers:  # the chunk's raw tokens sit between the kept entries and its gists
                layer.keys = torch.cat([layer.keys[..., :kept, :], layer.keys[..., kept + len(chunk) :, :]], dim=-2)
                layer.values = torch.cat(
                    [layer.values[..., :kept, :], layer.values[..., kept + len(chunk) :, :]], dim=-2
                )
            kept += len(x) - len(chunk)
            chunks += 1
        return GistCache(
            cache=cache,
            prefix_tokens=len(prefix),
            gists=kept - len(prefix),
            document_tokens=len(context),
            next_position=len(prefix) + len(context),
            chunks=chunks,
            seconds=time.perf_counter() - start,
        )

    # -- the shipped file: LoRA weights and gist embeddings in one safetensors, the config in its metadata --

    def save(self, path: Path) -> None:
        save_adapter(path, {**lora_state(self.lm), "gists": self.gists.data}, asdict(self.config))

    def load_trained(self, state: dict[str, torch.Tensor]) -> None:
        load_lora_state(self.lm, state)
        with torch.no_grad():
            self.gists.copy_(state["gists"].float())


def read_config(path: Path) -> GistConfig:
    return stored_config(path, GistConfig)


def load_gist(model: nn.Module, path: Path = SHIPPED) -> GistModel:
    """The trained gist model for `model` from an adapter file."""
    return trained(GistModel, model, read_config(path), path)
