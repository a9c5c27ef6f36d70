"""Liveness, readiness (database, Redis, the engine the workers load) and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engines.settings import Settings
from service.deps import ServicesDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(svc: ServicesDep) -> JSONResponse:
    """Ready when the database, Redis and the engine answer."""
    checks: dict[str, str] = {}
    for name, check in (
        ("database", svc.store.ping),
        ("redis", lambda: ping_redis(svc.settings.redis_url)),
        ("engine", lambda: engine_ready(svc.settings)),
    ):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # the body says what failed; how (hosts, paths, messages) goes to the log only
            log.warning("readiness: %s failed: %s: %s", name, type(exc).__name__, exc)
            checks[name] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


def ping_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def engine_ready(settings: Settings) -> None:
    """The engine the workers will load is there: a served vLLM answers, or the local model is installed."""
    import httpx

    from engines.models import ALIASES, resolve_model

    if settings.engine == "vllm" and settings.vllm_url:
        httpx.get(settings.vllm_url.rstrip("/") + "/v1/models", timeout=2).raise_for_status()
        return
    if settings.model in ALIASES:
        import importlib.util

        spec = ALIASES[settings.model]
        converted = settings.home / "models" / spec.folder / "config.json"
        if not converted.exists() and importlib.util.find_spec(spec.module) is None:
            raise RuntimeError(f"model {settings.model!r} is neither converted nor installed ({spec.package})")
        return
    resolve_model(settings.model, settings.home)


@router.get("/metrics")
def metrics(svc: ServicesDep) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
