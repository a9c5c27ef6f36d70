"""Every TOME_* setting, typed (pydantic-settings: environment variables and a .env file).

The one place that reads the environment. Entry points (the CLI, the API's app factory, the Celery worker, vLLM's
plugin process) build a `Settings` once and pass it, or the plain config objects made from it, down. It lives at
engines/ level so that every layer above may import it; nothing here imports a strategy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engines.config import DEFAULT_EMBEDDER, DEFAULT_HOME, DEFAULT_SELECTOR, EngineConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOME_", env_file=".env", extra="ignore")

    home: Path = Field(default=DEFAULT_HOME, description="data directory: converted models, indexes, caches")
    engine: Literal["native", "vllm"] = Field(
        default="native", description="`native` (transformers in-process) or `vllm`"
    )
    model: str = Field(default="smollm2", description="a model alias or a local HF folder")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="`auto`: bfloat16 on a GPU or a CPU with bf16 instructions (AVX512-BF16, AMX), else float32",
    )
    max_context: int = Field(default=8192, gt=0, description="context the engine may use (capped by the model's)")
    device: str = Field(default="auto", description="native engine: `cpu`, `cuda` or `auto`")
    attention: str = Field(
        default="sdpa",
        description="native prefill attention: `sdpa`, or a sparse pattern (`vertical_slash`, `a_shape`, "
        "`block_sparse`, `per_head`); decode stays dense",
    )
    threads: int | None = Field(default=None, description="torch threads; unset: torch's default")
    vllm_url: str | None = Field(default=None, description="a `vllm serve` URL; unset runs vLLM in-process")
    vllm_memory_fraction: float = Field(default=0.3, gt=0, le=1, description="in-process vLLM's memory share")
    vllm_enforce_eager: bool = Field(default=True, description="in-process vLLM: skip its ~100 s compile at start")
    vllm_sparse: str = Field(
        default="vertical_slash",
        description="the vLLM CUSTOM attention backend's sparse prefill: `vertical_slash`, `a_shape`, "
        "`block_sparse`, a per-head JSON (kernels/search.py), or `off` (FlashAttention for everything)",
    )
    vllm_sparse_min_tokens: int = Field(
        default=0, ge=0, description="fresh prefills shorter than this stay dense in the vLLM backend"
    )
    vllm_sparse_chunk_min_tokens: int = Field(
        default=0,
        ge=0,
        description="chunks over cached tokens (chunked prefill, prefix-cache hits) with at least this many new "
        "tokens run sparse too in the vLLM backend; 0: they stay dense",
    )
    selector_model: str = Field(
        default="auto",
        description=f"the model gemfilter and hard score with (in-process transformers; the reader answers): `auto` "
        f"(the reader's own weights where they load here, else `{DEFAULT_SELECTOR}`), or an alias or folder",
    )
    embedder: str = Field(default=DEFAULT_EMBEDDER, description="sentence-transformers model alias or folder")
    qdrant_url: str | None = Field(default=None, description="rag's Qdrant server; unset: local mode in home/qdrant")
    rag_read_tokens: int | None = Field(
        default=None,
        ge=256,
        description="retrieved tokens rag gives the reader per question; unset: a quarter of `max_context`, up to 8K, "
        "where that exceeds ~2K tokens (eight windows), what the default 135M reader copies from best",
    )
    compllm_cache_url: str | None = Field(
        default=None, description="a Redis for compllm's compressed segments; unset: files under home/cache/compllm"
    )
    reader_adapter: str = Field(
        default=EngineConfig.reader_adapter,
        description="the answer call's LoRA adapter: `auto` (the one listed for the model, trained to copy the answer "
        "or say the text does not hold it; none listed: the base model), `none` (the base model), or a folder",
    )
    reader_abstain_at: float = Field(
        default=EngineConfig.reader_abstain_at,
        ge=0,
        le=1,
        description='the reader adapter\'s "The document does not say." stands where it gives it at least this '
        "probability; below, the answer is the span of the text read it would most likely copy (native engine). "
        "0: every refusal stands",
    )
    memagent_adapter: str = Field(
        default="auto",
        description="memagent's LoRA adapter: `auto` (the one listed for the model), `none` (the base model), "
        "or a folder",
    )
    memagent_mode: Literal["auto", "extractive", "prompted"] = Field(
        default="auto",
        description="memagent's memory: `extractive` (sentences copied from the text, for a small model), `prompted` "
        "(MemAgent's own prompts: a free-form memory rewritten per segment), or `auto` (extractive where the model "
        "has a memagent adapter or is the small default, else prompted)",
    )

    # The service (API, workers, job store). Embedded default: SQLite under `home`; the stack sets PostgreSQL.
    database_url: str = Field(default="", description="SQLAlchemy URL; empty: sqlite:///<home>/tome.db")
    checkpoint_url: str = Field(default="", description="LangGraph checkpoints; empty: beside database_url")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery's broker, leases, throttling")
    api_keys: str = Field(default="", description="bootstrap keys, `name:key,name:key`; stored hashed")
    key_secret: str = Field(default="", description="HMAC secret for key hashes; empty: generated in home/key_secret")
    auth_failure_limit: int = Field(default=20, gt=0, description="failed key checks per client per window")
    auth_failure_window: float = Field(default=60, gt=0, description="seconds; then 429 with Retry-After")
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, gt=0, description="uploads and inline text (UTF-8)")
    max_body_bytes: int = Field(default=0, ge=0, description="non-upload request bodies; 0: max_upload_bytes + 1 MiB")
    allow_private_callbacks: bool = Field(default=False, description="development only: loopback/private callbacks")
    public_url: str = Field(default="http://localhost:8000", description="the API's base URL, for links in webhooks")
    # The web page and the event stream (service/web.py, service/routes/events.py).
    events_poll_interval: float = Field(default=0.25, gt=0, le=5, description="seconds between job-row reads")
    events_keepalive: float = Field(default=15, gt=0, description="seconds of silence before a keep-alive comment")
    events_max_seconds: float = Field(default=3600, gt=0, description="a stream closes after this; clients reconnect")
    events_retry_ms: int = Field(default=2000, ge=0, description="the `retry:` the stream tells clients")
    web_page: bool = Field(default=True, description="serve the page at / (static files in service/static)")
    cors_origins: str = Field(default="", description="comma-separated origins allowed by CORS (`*`: any); empty: off")
    cors_allow_credentials: bool = Field(default=False, description="CORS: allow cookies (not with `*`)")
    cors_max_age: int = Field(default=600, ge=0, description="seconds a browser may cache a CORS preflight")
    job_queue: str = Field(default="cpu", description="Celery queue of new jobs; `gpu` sends them to the GPU workers")
    webhook_queue: str = Field(default="webhooks", description="Celery queue of webhook deliveries")
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
    webhook_retry_delays: list[float] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400],
        description="Standard Webhooks schedule: seconds after the previous attempt (a JSON list)",
    )
    webhook_jitter: float = Field(default=0.2, ge=0, le=1, description="share of each retry delay drawn at random")
    webhook_timeout: float = Field(default=15, gt=0, description="seconds a receiver has to answer")
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
            "reader_adapter": self.reader_adapter,
            "reader_abstain_at": self.reader_abstain_at,
            "threads": self.threads,
            "selector_model": self.selector_model,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return EngineConfig(**values)  # type: ignore[arg-type]


def _shown(value: object) -> str:
    """A default as a person sets it: the home as ~, None as unset, lists as JSON."""
    if value is None:
        return "unset"
    if isinstance(value, Path):
        value = str(value).replace(str(Path.home()), "~", 1)
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{json.dumps(value) if isinstance(value, list) else value}`" if value != "" else "empty"


def settings_table() -> str:
    """Every TOME_* variable as a markdown table (name, default, meaning), in declaration order (`tome settings`)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `TOME_{name.upper()}` | {_shown(field.default)} | {meaning} |")
    return "\n".join(rows) + "\n"
