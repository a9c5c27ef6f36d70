"""Typed settings from TOME_* environment variables (and a .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engines.config import EngineConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOME_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path.home() / ".cache" / "tome", description="data directory: models, indexes, caches")
    engine: Literal["native", "vllm"] = "native"
    model: str = "smollm2"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    max_context: int = Field(default=8192, gt=0)
    device: str = "auto"
    attention: str = "sdpa"
    threads: int | None = None
    vllm_url: str | None = None
    vllm_memory_fraction: float = Field(default=0.3, gt=0, le=1)
    vllm_enforce_eager: bool = True
    embedder: str = "all-MiniLM-L6-v2"
    qdrant_url: str | None = None  # rag's vector store; unset: Qdrant local mode under home/qdrant

    def engine_config(self, **overrides: object) -> EngineConfig:
        values = {
            "kind": self.engine,
            "model": self.model,
            "dtype": self.dtype,
            "max_context": self.max_context,
            "device": self.device,
            "home": self.home,
            "vllm_url": self.vllm_url,
            "vllm_memory_fraction": self.vllm_memory_fraction,
            "vllm_enforce_eager": self.vllm_enforce_eager,
            "attention": self.attention,
            "threads": self.threads,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return EngineConfig(**values)  # type: ignore[arg-type]


@lru_cache
def get_settings() -> Settings:
    return Settings()
