"""Sparse prefill as a vLLM attention backend in the CUSTOM slot, for vLLM's CPU build.

vLLM's CPU platform always picks its CPU_ATTN backend, so `register()` (a `vllm.general_plugins` entry point) both
fills the CUSTOM slot and routes an explicit `attention_backend="CUSTOM"` to it. The backend is CPU_ATTN with one
change: a fresh prefill (no cached prefix) is recomputed with the kernels/ sparse attention; decode and prefills over
cached tokens stay on CPU_ATTN's paged kernel. On CPU this checks correctness only (the dense result is computed
first and overwritten); speed is measured standalone on the GPU, which has no vLLM.
"""

from __future__ import annotations

import torch
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl
from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

from engines.settings import Settings
from kernels.attention import sparse_attention
from kernels.patterns import PATTERNS, Pattern

SPARSE_PREFILLS = {"count": 0}  # fresh prefills the sparse path served in this process (read by tests and logs)


def configured_pattern() -> Pattern:
    """Settings.vllm_sparse (TOME_VLLM_SPARSE) names the pattern (default vertical_slash with MInference's budget).

    Read here, not passed down: vLLM loads this backend by name in its own engine process, an entry point of its own.
    """
    return PATTERNS[Settings().vllm_sparse]()


class SparsePrefillImpl(CPUAttentionBackendImpl):
    pattern: Pattern | None = None  # None: from TOME_VLLM_SPARSE
    enabled = True  # False serves everything with CPU_ATTN unchanged (the baseline in tests)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs) -> torch.Tensor:
        output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        if not self.enabled or attn_metadata is None or not attn_metadata.causal:
            return output
        pattern = self.pattern or configured_pattern()
        starts = attn_metadata.query_start_loc.tolist()
        for i, seq_len in enumerate(attn_metadata.seq_lens.tolist()):
            s, e = starts[i], starts[i + 1]
            if e - s != seq_len or seq_len < 2:  # decode, or a prefill on top of cached tokens
                continue
            q, k, v = (x[s:e].transpose(0, 1)[None] for x in (query, key, value))
            out = sparse_attention(q, k, v, pattern, self.scale)[0].transpose(0, 1)
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


def register() -> None:
    """vLLM general plugin: fill the CUSTOM backend slot and let the CPU platform select it when asked."""
    register_backend(AttentionBackendEnum.CUSTOM, f"{__name__}.SparsePrefillBackend")
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.get_attn_backend_cls
    if getattr(original, "tome_sparse", False):
        return

    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None):
        if selected_backend == AttentionBackendEnum.CUSTOM and not attn_selector_config.use_mla:
            return AttentionBackendEnum.CUSTOM.get_path()
        return original.__func__(cls, selected_backend, attn_selector_config, num_heads)

    get_attn_backend_cls.tome_sparse = True
    CpuPlatform.get_attn_backend_cls = classmethod(get_attn_backend_cls)
