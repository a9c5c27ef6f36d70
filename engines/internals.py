"""Model internals for engines that hide them: an in-process transformers engine over the same weights.

vLLM exposes no layers, so soft compression on a vLLM deployment compresses with a native engine of the same model
(loaded once per process) and answers on vLLM from the vectors it made (prompt embeddings). Same weights, same
tokenizer, same embedding space: what the compressor writes, the serving engine reads.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engines.base import Engine, SupportsLayers
from engines.config import EngineConfig
from engines.models import ModelNotFoundError, resolve_model

_companions: dict[EngineConfig, Engine] = {}


def _native_config(engine: Engine) -> EngineConfig | None:
    """The native engine's config over `engine`'s model, or None where that model has no local copy (a remote
    server's own model)."""
    config: EngineConfig | None = getattr(engine, "config", None)
    if config is None:
        return None
    try:
        resolve_model(config.model, config.home)
    except ModelNotFoundError:
        return None
    return replace(config, kind="native", vllm_url=None)


def has_layers(engine: Engine) -> bool:
    """Whether `layers_engine` can give layers for `engine` (nothing is loaded)."""
    return isinstance(engine, SupportsLayers) or _native_config(engine) is not None


def layers_engine(engine: Engine) -> Any:
    """`engine` itself where it has layers, else the native engine over its model (built once per process)."""
    if isinstance(engine, SupportsLayers):
        return engine
    native = _native_config(engine)
    if native is None:
        raise ModelNotFoundError(f"no local copy of {engine.config.model!r} to compress with")  # type: ignore[attr-defined]
    if native not in _companions:
        from engines.native import NativeEngine

        _companions[native] = NativeEngine(native)
    return _companions[native]
