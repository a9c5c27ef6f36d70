"""Every TOME_* setting, typed (pydantic-settings: environment variables and a .env file).

The one place that reads the environment. Entry points (the CLI, the API's app factory, the Celery worker, vLLM's
plugin process) build a `Settings` once and pass it, or the plain config objects made from it, down. It lives at
engines/ level so that every layer above may import it; nothing here imports a strategy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engines.config import DEFAULT_EMBEDDER, DEFAULT_HOME, EngineConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOME_", env_file=".env", extra="ignore")

    home: Path = Field(default=DEFAULT_HOME, description="data directory: models, indexes, caches")
    engine: Literal["native", "vllm"] = "native"
    model: str = "smollm2"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_context: int = Field(default=8192, gt=0)
    device: str = "auto"
    attention: str = "sdpa"
    threads: int | None = None
    vllm_url: str | None = None
    vllm_memory_fraction: float = Field(default=0.3, gt=0, le=1)
    vllm_enforce_eager: bool = True
    embedder: str = Field(default=DEFAULT_EMBEDDER, description="sentence-transformers model alias or folder")
    qdrant_url: str | None = Field(default=None, description="rag's Qdrant server; unset: local mode in home/qdrant")
    compllm_cache_url: str | None = Field(
        default=None, description="a Redis for compllm's compressed segments; unset: files under home/cache/compllm"
    )
    memagent_adapter: str = Field(
        default="auto", description="memagent's LoRA adapter: `auto` (the model's listed one), `none`, or a folder"
    )
    vllm_sparse: str = Field(
        default="vertical_slash", description="kernels/ pattern of the vLLM CUSTOM attention backend's sparse prefill"
    )

    # The service (API, workers, job store). Embedded default: SQLite under `home`; the stack sets PostgreSQL.
    database_url: str = Field(default="", description="SQLAlchemy URL; empty: sqlite:///<home>/tome.db")
    checkpoint_url: str = Field(default="", description="LangGraph checkpoints; empty: beside database_url")
    redis_url: str = "redis://127.0.0.1:6379/0"
    api_keys: str = Field(default="", description="bootstrap keys, `name:key,name:key`; stored hashed")
    key_secret: str = Field(default="", description="HMAC secret for key hashes; empty: generated in home/key_secret")
    auth_failure_limit: int = Field(default=20, gt=0, description="failed key checks per client per window")
    auth_failure_window: float = Field(default=60, gt=0, description="seconds; then 429 with Retry-After")
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, gt=0, description="uploads and inline text (UTF-8)")
    max_body_bytes: int = Field(default=0, ge=0, description="non-upload request bodies; 0: max_upload_bytes + 1 MiB")
    allow_private_callbacks: bool = Field(default=False, description="development only: loopback/private callbacks")
    public_url: str = Field(default="http://localhost:8000", description="the API's base URL, for links in webhooks")
    # The web page and the event stream (service/web.py, service/events.py).
    events_poll_interval: float = Field(default=0.25, gt=0, le=5, description="seconds between job-row reads")
    events_keepalive: float = Field(default=15, gt=0, description="seconds of silence before a keep-alive comment")
    events_max_seconds: float = Field(default=3600, gt=0, description="a stream closes after this; clients reconnect")
    events_retry_ms: int = Field(default=2000, ge=0, description="the `retry:` the stream tells clients")
    web_page: bool = Field(default=True, description="serve the page at / (static files in service/static)")
    cors_origins: str = Field(default="", description="comma-separated origins allowed by CORS (`*`: any); empty: off")
    cors_allow_credentials: bool = Field(default=False, description="CORS: allow cookies (not with `*`)")
    cors_max_age: int = Field(default=600, ge=0, description="seconds a browser may cache a CORS preflight")
    job_queue: str = "cpu"  # `gpu` sends jobs to the GPU workers
    webhook_queue: str = "webhooks"
    job_time_limit: float = Field(default=6 * 3600, gt=0, description="seconds before a running job is killed")
    broker_visibility_timeout: float = Field(default=7 * 3600, gt=0, description="above the longest job")
    broker_restore_interval: float = Field(default=10, gt=0, description="seconds between unacked-message sweeps")
    # Leases: a running job is held by one worker, renewed every lease_seconds/3 (heartbeat); a lease not renewed
    # for lease_seconds is swept back to the queue by any worker. The broker's visibility timeout stays a last resort.
    lease_seconds: float = Field(default=60, gt=0, description="seconds a worker holds a job without renewing")
    lease_sweep_interval: float = Field(default=10, gt=0, description="seconds between sweeps for expired leases")
    delivery_grace: float = Field(default=60, gt=0, description="seconds past due before a delivery is resent")
    preload_engine: bool = Field(default=False, description="load the model when a worker process starts")
    engine_retries: int = Field(default=3, ge=0, description="retries of a job after a transient engine error")
    engine_retry_backoff: float = Field(default=30, ge=0, description="first retry delay, doubled each time")
    # Standard Webhooks schedule (seconds after the previous attempt), jittered by webhook_jitter.
    webhook_retry_delays: list[float] = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
    webhook_jitter: float = Field(default=0.2, ge=0, le=1)
    webhook_timeout: float = Field(default=15, gt=0)
    webhook_max_retry_after: float = Field(default=86400, gt=0, description="cap on a receiver's Retry-After")

    def cors_origin_list(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]

    def body_limit(self) -> int:
        return self.max_body_bytes or self.max_upload_bytes + 1024 * 1024

    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'tome.db'}"

    def checkpoints(self) -> str:
        if self.checkpoint_url:
            return self.checkpoint_url
        url = self.database()
        return f"sqlite:///{self.home / 'checkpoints.db'}" if url.startswith("sqlite") else url

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
