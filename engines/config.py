"""One flat config for building an engine (nano-vllm style); service settings fill it from TOME_* vars."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

EngineKind = Literal["native", "vllm"]


@dataclass(frozen=True)
class EngineConfig:
    kind: EngineKind = "native"
    model: str = "smollm2"  # an alias from engines.models, a local HF folder, or a served model's name
    dtype: str = "bfloat16"
    max_context: int = 8192
    device: str = "auto"  # native engine: "cpu", "cuda" or "auto"
    home: Path = Path.home() / ".cache" / "tome"
    vllm_url: str | None = None  # remote vLLM (`vllm serve`); None runs vllm.LLM in-process
    vllm_memory_fraction: float = 0.3
    vllm_enforce_eager: bool = True  # skips ~100 s of compile at start on CPU
    vllm_max_lora_rank: int = 16  # LoRA adapters up to this rank can be loaded (vLLM sizes for it at start); 0: none
    attention: str = "sdpa"  # native engine prefill attention: "sdpa" or a kernels/ pattern name
    threads: int | None = None
