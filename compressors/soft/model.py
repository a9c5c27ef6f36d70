"""The CompLLM segment compressor: the frozen LLM plus LoRA reads a segment and then placeholder slots;
a linear head maps each slot's last hidden state to one vector in the LLM's input-embedding space.

A segment of n tokens gets ceil(n / rate) slots, so the answering model reads rate-times fewer vectors.
Slot j's vector is the head's output plus the mean embedding of the segment's tokens j*rate..(j+1)*rate-1:
with the head starting at zero, the untrained compressor is plain mean pooling, which the frozen model already
reads far better than a random head's output, so training refines a working compressor instead of building one.
Segments never see each other, which is what makes them cacheable by content. One adapter serves every
rate in `rates`: the number of slots the compressor reads tells it the rate.

The LoRA lives on a copy of the model's module tree that shares every base weight with the original
(no second copy of the weights in memory), so the engine's own model stays untouched for everything else.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engines.adapters import ADAPTER_HOME, WEIGHTS

SHIPPED = ADAPTER_HOME / "compllm" / WEIGHTS
EARLY = ADAPTER_HOME / "compllm-early" / WEIGHTS  # the compressor on the first 8 decoder layers
ConfigT = TypeVar("ConfigT")
AdapterT = TypeVar("AdapterT", bound=nn.Module)


@dataclass(frozen=True)
class CompressorConfig:
    rates: tuple[int, ...] = (2, 4)
    segment_tokens: int = 32  # tens of tokens: short enough to cache and reuse, long enough to compress
    lora_rank: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    base_model: str = ""  # the model the adapter was trained on (its folder name)
    # Decoder layers the compressor runs (0: all). The slots' states are read after layer `layers` (and the final
    # norm): a compressor on the first few layers costs that share of a full pass, which is most of a cold request's
    # time when the reader's prompt is short.
    layers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # training facts kept with the weights

    @property
    def max_slots(self) -> int:
        return math.ceil(self.segment_tokens / min(self.rates))

    def slots(self, tokens: int, rate: int) -> int:
        return math.ceil(tokens / rate)


def segments_of(ids: Sequence[int], size: int) -> list[list[int]]:
    """Token ids cut into the compressor's segments (the last one shorter)."""
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the original tensors (no new memory)."""
    memo: dict[int, Any] = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def lora_copy(model: nn.Module, rank: int, alpha: int, target_modules: Sequence[str], layers: int = 0) -> nn.Module:
    """A shared copy of `model` with fresh LoRA layers: the base stays frozen, only the (float32) LoRA learns.
    With `layers`, the copy keeps only its first `layers` decoder layers (the original keeps all of them)."""
    from peft import LoraConfig, inject_adapter_in_model  # heavy import: only where an adapter is built

    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules))
    base = shared_copy(model)
    if not 0 <= layers <= len(base.model.layers):
        raise ValueError(
            f"layers must be 0 (all) to {len(base.model.layers)}, the model's decoder layers; got {layers}"
        )
    if layers:
        base.model.layers = base.model.layers[:layers]
    for p in base.parameters():
        p.requires_grad_(False)
    lm = inject_adapter_in_model(lora, base)
    for name, p in lm.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:
            p.data = p.data.float()
    return lm


# -- adapter files: trainable tensors in one bf16 safetensors, the config as JSON in its metadata --


def lora_state(lm: nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {f"lora.{k}": v for k, v in get_peft_model_state_dict(lm).items()}


def load_lora_state(lm: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    lora = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
    result = set_peft_model_state_dict(lm, lora)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"adapter keys do not fit this model: {result.unexpected_keys[:3]}")


def save_adapter(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")  # a rename, so a reader never loads half a file
    tensors = {k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(tmp), metadata={"config": json.dumps(config)})
    tmp.replace(path)


def adapter_config(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["config"])


def stored_config(path: Path, config_type: type[ConfigT]) -> ConfigT:
    """An adapter file's config as `config_type` (JSON's lists back as the tuples the dataclasses hold)."""
    raw = adapter_config(path)
    raw["rates"] = tuple(raw["rates"])
    raw["target_modules"] = tuple(raw["target_modules"])
    return config_type(**raw)


class CompressorMismatchError(ValueError):
    """A soft compressor trained for another model: its vectors live in that model's embedding space."""


def trained(model_type: type[AdapterT], model: nn.Module, config: Any, path: Path) -> AdapterT:
    """`model_type` over `model` with the adapter file's trained tensors, on the model's device, in eval mode.
    Refused for a model other than the one it was trained on (its folder name, kept in the adapter's config)."""
    serving = Path(getattr(model.config, "name_or_path", "") or "").name
    if config.base_model and serving and config.base_model != serving:
        raise CompressorMismatchError(
            f"{path} was trained for {config.base_model}, not {serving}: soft compression writes into the reading "
            "model's own embedding space; train one for this model (`tome train compllm` or `tome train gist`)"
        )
    adapter = model_type(model, config)
    adapter.load_trained(load_file(str(path)))
    return adapter.to(next(model.parameters()).device).eval()


class SegmentCompressor(nn.Module):
    def __init__(self, model: nn.Module, config: CompressorConfig) -> None:
        super().__init__()
        self.config = config
        hidden = model.config.hidden_size
        self.lm = lora_copy(model, config.lora_rank, config.lora_alpha, config.target_modules, config.layers)
        embed = model.get_input_embeddings().weight
        # Slots start as the average token embedding (a neutral input), one learned vector per slot index.
        self.slots = nn.Parameter(embed.detach().float().mean(0).repeat(config.max_slots, 1))
        self.head = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.head.weight)  # starts as mean pooling (see the module docstring)
        nn.init.zeros_(self.head.bias)

    @property
    def device(self) -> torch.device:
        return self.slots.device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def forward(self, segments: Sequence[Sequence[int]], rate: int) -> list[torch.Tensor]:
        """One [ceil(len/rate), hidden] tensor per segment, in the model's dtype; segments run as one batch.

        Built as whole-batch tensor ops (a pooling matrix, one gather for the slots): a loop per segment and slot
        was thousands of tiny kernels a step, which left a GPU idle and cost the CPU path time too."""
        if rate not in self.config.rates:
            raise ValueError(f"this adapter was trained for rates {self.config.rates}, not {rate}")
        dtype = self.lm.get_input_embeddings().weight.dtype
        device = self.device
        # Sizes are counted here and the ids padded here, then sent in one copy: a copy per segment and reading
        # the counts back from the GPU were hundreds of host-device round trips a training step.
        sizes = [len(s) for s in segments]
        slot_counts = [self.config.slots(n, rate) for n in sizes]
        longest, most = max(sizes), max(slot_counts)
        width = max(n + k for n, k in zip(sizes, slot_counts, strict=True))
        ids = torch.tensor([[*s, *[0] * (longest - n)] for s, n in zip(segments, sizes, strict=True)]).to(device)
        lengths = torch.tensor(sizes).to(device)
        counts = torch.tensor(slot_counts).to(device)
        tokens = self.embed(ids)  # [B, longest, H]; padding rows are masked out below
        pos = torch.arange(width, device=device)
        slot_index = (pos[None, :] - lengths[:, None]).clamp(0, self.config.max_slots - 1)
        is_slot = (pos[None, :] >= lengths[:, None]) & (pos[None, :] < (lengths + counts)[:, None])
        rows = torch.where(
            is_slot[..., None],
            self.slots.to(dtype)[slot_index],
            torch.nn.functional.pad(tokens, (0, 0, 0, width - longest)),
        )
        mask = (pos[None, :] < (lengths + counts)[:, None]).long()  # right padding: causal attention never sees it
        hidden = self.lm.model(inputs_embeds=rows, attention_mask=mask).last_hidden_state
        slot_at = (lengths[:, None] + torch.arange(most, device=device)[None, :]).clamp(max=width - 1)
        slot_states = hidden.gather(1, slot_at[..., None].expand(-1, -1, hidden.shape[-1])).float()
        # pool[b, j, t] = 1/|group j| for the segment's tokens t in [j*rate, (j+1)*rate): mean pooling as one matmul.
        t = torch.arange(longest, device=device)
        group = (t[None, None, :] // rate == torch.arange(most, device=device)[None, :, None]) & (
            t[None, None, :] < lengths[:, None, None]
        )
        pool = group.float() / group.sum(-1, keepdim=True).clamp(min=1)
        pooled = pool @ tokens.float()
        vectors = (pooled + self.head(slot_states)).to(dtype)
        return [vectors[i, :k] for i, k in enumerate(slot_counts)]

    # -- the shipped file: LoRA weights, slots and head in one safetensors, the config in its metadata --

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            **lora_state(self.lm),
            "slots": self.slots.data,
            "head.weight": self.head.weight.data,
            "head.bias": self.head.bias.data,
        }

    def save(self, path: Path) -> None:
        save_adapter(path, self.trainable_state(), asdict(self.config))

    def load_trained(self, state: dict[str, torch.Tensor]) -> None:
        load_lora_state(self.lm, state)
        with torch.no_grad():
            self.slots.copy_(state["slots"].float())
            self.head.weight.copy_(state["head.weight"].float())
            self.head.bias.copy_(state["head.bias"].float())


def read_config(path: Path) -> CompressorConfig:
    return stored_config(path, CompressorConfig)


def load_compressor(model: nn.Module, path: Path = SHIPPED) -> SegmentCompressor:
    """The trained compressor for `model` from an adapter file."""
    return trained(SegmentCompressor, model, read_config(path), path)
