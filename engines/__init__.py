"""Running a model: one Engine protocol, a native (transformers) and a vLLM implementation."""

from engines.base import Engine, Generation, Message, SamplingParams
from engines.config import EngineConfig


def create_engine(config: EngineConfig) -> Engine:
    if config.kind == "native":
        from engines.native import NativeEngine

        return NativeEngine(config)
    if config.kind == "vllm":
        from engines.vllm import RemoteVllmEngine, VllmEngine

        return RemoteVllmEngine(config) if config.vllm_url else VllmEngine(config)
    raise ValueError(f"unknown engine kind {config.kind!r}: use 'native' or 'vllm'")


__all__ = ["Engine", "EngineConfig", "Generation", "Message", "SamplingParams", "create_engine"]
