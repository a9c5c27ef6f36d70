"""What the routes depend on: the per-app services (settings, job store, broker, metrics) and the caller's key."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request

from engines.settings import Settings
from service.auth import AuthError, Throttle, hash_key, key_from_headers, legacy_hash, server_secret
from service.celery_app import RUN_JOB, create_celery
from service.errors import ProblemError
from service.metrics import Metrics
from service.store import Store

KEY_CACHE_S = 10.0  # how long a checked API key is trusted without asking the database again


class Services:
    """What the routes need, built once per app."""

    def __init__(self, settings: Settings, strategies: Sequence[str]) -> None:
        self.settings = settings
        self.strategies = strategies  # the names a job may request
        self.store = Store(settings.database())
        self.celery: Celery = create_celery(settings)
        self.metrics = Metrics(self.store)
        self.owners: dict[str, tuple[str, float]] = {}  # key hash -> (owner, checked at)
        self.key_secret = server_secret(settings.key_secret, settings.home)
        self.throttle = Throttle(settings.redis_url, settings.auth_failure_limit, settings.auth_failure_window)

    def enqueue(self, job_id: str) -> None:
        self.celery.send_task(RUN_JOB, args=[job_id], task_id=job_id, queue=self.settings.job_queue)

    def owner(self, key: str, client: str) -> str:
        """The key's owner. A key checked in the last KEY_CACHE_S passes at once; otherwise a client over its
        failed-attempt budget gets 429 before the key is looked up, and a key that is not valid counts a failure."""
        digest = hash_key(key, self.key_secret)
        cached = self.owners.get(digest)
        if cached is not None and time.monotonic() - cached[1] < KEY_CACHE_S:
            return cached[0]
        wait = self.throttle.retry_after(client)
        if wait:
            detail = f"too many failed API key checks from this client; retry in {wait} s"
            raise ProblemError(429, "Too many failed attempts", detail, {"Retry-After": str(wait)})
        owner = self.store.key_owner(digest) or self.store.upgrade_key(legacy_hash(key), digest)
        if owner is None:
            self.throttle.failed(client)
            raise AuthError("the API key is not valid")
        self.owners[digest] = (owner, time.monotonic())
        return owner


def services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]


def current_owner(
    request: Request,
    svc: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> str:
    try:
        return svc.owner(key_from_headers(authorization, x_api_key), request.client.host if request.client else "-")
    except AuthError as exc:
        raise ProblemError(401, "Unauthorized", str(exc), {"WWW-Authenticate": "Bearer"}) from None


Owner = Annotated[str, Depends(current_owner)]
