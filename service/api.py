"""The job API (FastAPI): thin routes over the store, the broker and the webhook helpers.

Errors are application/problem+json. `create_app(settings)` builds an app; `app_from_environment` is uvicorn's
factory for TOME_* settings (`tome serve`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from celery import Celery
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from kombu.exceptions import KombuError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engines.settings import Settings
from service import webhooks
from service.auth import (
    AuthError,
    Throttle,
    bootstrap_keys,
    hash_key,
    key_from_headers,
    legacy_hash,
    server_secret,
)
from service.celery_app import RUN_JOB, create_celery
from service.documents import DocumentError, parse_document
from service.inputs import LimitBody, clean_filename, valid_id
from service.metrics import Metrics
from service.models import Job
from service.schemas import (
    AttemptOut,
    DocumentOut,
    JobCreate,
    JobOut,
    JobPage,
    Problem,
    Progress,
    WebhookOut,
)
from service.store import ACTIVE, Store, aware, decode_cursor, encode_cursor
from workflows.registry import build_strategies

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"
KEY_CACHE_S = 10.0  # how long a checked API key is trusted without asking the database again


class ProblemError(Exception):
    def __init__(self, status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers


def problem_response(
    request: Request, status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, instance=request.url.path, **extra)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM, headers=headers)


class Services:
    """What the routes need, built once per app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.strategies = sorted(build_strategies(settings))  # names a job may request; they run in the workers
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
router = APIRouter()


def job_out(svc: Services, job: Job, callback_secret: str | None = None) -> JobOut:
    request = job.request
    webhook = None
    if job.endpoint_id is not None:
        event, endpoint, attempts = svc.store.deliveries(job.id)
        assert endpoint is not None
        webhook = WebhookOut(
            url=endpoint.url,
            disabled=endpoint.disabled_at is not None,
            disabled_reason=endpoint.disabled_reason,
            event_id=event.id if event else None,
            event_type=event.type if event else None,
            delivered_at=aware(event.delivered_at) if event else None,
            gave_up_at=aware(event.gave_up_at) if event else None,
            attempts=[
                AttemptOut(
                    attempt=a.attempt,
                    at=aware(a.at),  # type: ignore[arg-type]
                    status_code=a.status_code,
                    error=a.error,
                    duration_ms=a.duration_ms,
                    next_retry_at=aware(a.next_retry_at),
                )
                for a in attempts
            ],
        )
    return JobOut(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        document_id=job.document_id,
        task=request["task"],
        requested_strategy=request["strategy"],
        strategy=job.strategy,
        reason=job.reason,
        document_tokens=job.document_tokens,
        progress=Progress(done=job.progress_done, total=job.progress_total, message=job.progress_message),
        result=job.result,
        cost=job.cost,
        error=job.error,
        runs=job.runs,
        resumed_from=job.resumed_from,
        worker=job.lease_owner,
        lease_expires_at=aware(job.lease_expires_at),
        created_at=aware(job.created_at),  # type: ignore[arg-type]
        started_at=aware(job.started_at),
        finished_at=aware(job.finished_at),
        webhook=webhook,
        callback_secret=callback_secret,
    )


@router.post("/v1/documents", status_code=201, response_model=DocumentOut, tags=["documents"])
async def upload_document(request: Request, svc: ServicesDep, owner: Owner, response: Response) -> DocumentOut:
    """Upload a .txt, .md, .html, .pdf or .docx as multipart field `file`; the same bytes again return the same id."""
    limit = svc.settings.max_upload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:  # refuse before reading the body
        raise ProblemError(413, "Upload too large", f"the upload is {length} bytes; the limit is {limit} bytes")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ProblemError(415, "Unsupported upload", "send the document as multipart/form-data in the field `file`")
    async with request.form(max_files=1, max_fields=4) as form:  # closes the spooled temporary file
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ProblemError(400, "Missing file", "the multipart body has no file in the field `file`")
        data = await upload.read(limit + 1)
        filename = clean_filename(upload.filename or "upload")
    if len(data) > limit:
        raise ProblemError(413, "Upload too large", f"the file is larger than the {limit}-byte limit")
    try:
        document = await run_in_threadpool(parse_document, data, filename)
    except DocumentError as exc:
        status = 415 if "unsupported file type" in exc.reason else 422
        raise ProblemError(status, "Unusable document", str(exc)) from None
    stored, created = await run_in_threadpool(
        svc.store.put_document,
        owner,
        hashlib.sha256(data).hexdigest(),
        filename,
        document.media_type,
        len(data),
        document.text,
        document.metadata,
    )
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/documents/{stored.id}"
    return document_out(stored)


def document_out(stored: Any) -> DocumentOut:
    return DocumentOut(
        id=stored.id,
        filename=stored.filename,
        media_type=stored.media_type,
        size_bytes=stored.size_bytes,
        content_hash=stored.content_hash,
        characters=len(stored.text),
        created_at=aware(stored.created_at),
    )


@router.get("/v1/documents/{document_id}", response_model=DocumentOut, tags=["documents"])
def get_document(document_id: str, svc: ServicesDep, owner: Owner) -> DocumentOut:
    stored = svc.store.get_document(owner, document_id) if valid_id(document_id) else None
    if stored is None:
        raise ProblemError(404, "Document not found", f"no document {document_id!r} for this API key")
    return document_out(stored)


@router.post("/v1/jobs", status_code=202, response_model=JobOut, tags=["jobs"])
def create_job(
    body: JobCreate,
    svc: ServicesDep,
    owner: Owner,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobOut:
    """Submit a job. With an Idempotency-Key: the same key and body return the first job once it has ended
    (409 while it is queued or running), the same key with another body is 422."""
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise ProblemError(400, "Bad Idempotency-Key", "the Idempotency-Key must be 1 to 255 characters")
    if body.strategy != "auto" and body.strategy not in svc.strategies:
        available = ", ".join(["auto", *svc.strategies])
        raise ProblemError(422, "Unknown strategy", f"unknown strategy {body.strategy!r}; available: {available}")
    callback = None
    if body.callback_url is not None:
        try:
            webhooks.check_callback_url(body.callback_url, svc.settings.allow_private_callbacks)
            if body.callback_secret is not None:
                webhooks.secret_key(body.callback_secret)
        except webhooks.WebhookError as exc:
            raise ProblemError(422, "Unusable callback", str(exc)) from None
        callback = (body.callback_url, body.callback_secret)
    inline = None
    if body.text is not None:
        data = body.text.encode("utf-8")
        if len(data) > svc.settings.max_upload_bytes:  # the same limit as an upload of this text
            limit = svc.settings.max_upload_bytes
            raise ProblemError(413, "Text too large", f"the text is {len(data)} bytes; the limit is {limit} bytes")
        inline = (hashlib.sha256(data).hexdigest(), body.text, len(data), "inline.txt")
    elif not valid_id(body.document_id) or svc.store.get_document(owner, body.document_id or "") is None:
        raise ProblemError(404, "Document not found", f"no document {body.document_id!r} for this API key")
    fingerprint = body.fingerprint()
    try:
        submission = svc.store.submit_job(
            owner,
            body.model_dump(mode="json", exclude={"text", "callback_secret"}),  # the text is stored once, as a document
            fingerprint,
            idempotency_key,
            body.document_id,
            inline,
            callback,
            svc.enqueue,
        )
    except (OSError, KombuError) as exc:  # the broker is down: nothing was stored
        log.warning("could not queue a job: %s", exc)
        detail = "the job could not be queued: the broker is unavailable; nothing was stored, retry"
        raise ProblemError(503, "Queue unavailable", detail, {"Retry-After": "5"}) from None
    job = submission.job
    if submission.created:
        svc.metrics.jobs_submitted.inc()
    else:
        if job.fingerprint != fingerprint:
            raise ProblemError(
                422, "Idempotency-Key reused", "this Idempotency-Key was used with a different request body"
            )
        if job.status in ACTIVE:
            raise ProblemError(
                409,
                "Job still running",
                f"the job {job.id} made with this Idempotency-Key is still {job.status}; it is returned once it ends",
                {"Location": f"/v1/jobs/{job.id}"},
            )
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    secret = None
    if body.callback_url and not body.callback_secret:  # the client needs the generated secret to verify deliveries
        secret = svc.store.endpoint_secret(owner, body.callback_url)
    return job_out(svc, job, callback_secret=secret)


@router.get("/v1/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
def get_job(job_id: str, svc: ServicesDep, owner: Owner) -> JobOut:
    job = svc.store.get_job(job_id, owner) if valid_id(job_id) else None
    if job is None:
        raise ProblemError(404, "Job not found", f"no job {job_id!r} for this API key")
    return job_out(svc, job)


@router.get("/v1/jobs", response_model=JobPage, tags=["jobs"])
def list_jobs(
    svc: ServicesDep,
    owner: Owner,
    status: Annotated[str | None, Query(pattern="^(queued|running|completed|failed|cancelled)$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobPage:
    """Newest first; pass `next_cursor` back as `cursor` for the next page."""
    before: tuple[datetime, str] | None = None
    if cursor:
        try:
            before = decode_cursor(cursor)
        except ValueError:
            raise ProblemError(400, "Bad cursor", "the cursor is not one this API returned") from None
    jobs = svc.store.list_jobs(owner, status, limit + 1, before)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JobPage(jobs=[job_out(svc, j) for j in jobs], next_cursor=encode_cursor(jobs[-1]) if more else None)


@router.delete("/v1/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
def cancel_job(job_id: str, svc: ServicesDep, owner: Owner) -> JobOut:
    """Cancel a queued or running job: it ends `cancelled`, its worker is stopped, job.cancelled is sent."""
    job = svc.store.get_job(job_id, owner) if valid_id(job_id) else None
    if job is None:
        raise ProblemError(404, "Job not found", f"no job {job_id!r} for this API key")
    event, moved = svc.store.finish(
        job_id, "cancelled", lambda j: webhooks.event_body(j, svc.settings.public_url), from_status=ACTIVE
    )
    if not moved:
        raise ProblemError(409, "Job already ended", f"job {job_id} is already {svc.store.get_job(job_id).status}")  # type: ignore[union-attr]
    if job.status == "running":
        svc.celery.control.revoke(job_id, terminate=True, signal="SIGTERM")
    webhooks.send_delivery(svc.celery, svc.settings.webhook_queue, event)
    return job_out(svc, svc.store.get_job(job_id) or job)


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
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


@router.get("/metrics", tags=["health"])
def metrics(svc: ServicesDep) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


class MeasureRequests:
    """Counts and times every request by route template (plain ASGI: no per-request task overhead)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            svc: Services | None = getattr(scope["app"].state, "services", None)
            if svc is not None:
                path = getattr(scope.get("route"), "path", "unmatched")
                svc.metrics.requests.labels(scope["method"], path, str(status)).inc()
                svc.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - start)


def create_app(settings: Settings) -> FastAPI:

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = Services(settings)
        app.state.services = svc
        bootstrap_keys(svc.store, settings.api_keys, svc.key_secret)
        yield
        svc.store.engine.dispose()

    app = FastAPI(
        title="Tome",
        version="0.1.0",
        description="Questions, summaries and extraction over documents longer than a model's context.",
        lifespan=lifespan,
    )
    app.include_router(router)
    from service import events, web  # they import this module: included here, once it is loaded

    app.include_router(events.router)
    web.mount(app, settings, sorted(build_strategies(settings)))

    app.add_middleware(LimitBody, limit=settings.body_limit())
    app.add_middleware(MeasureRequests)

    @app.exception_handler(ProblemError)
    async def on_problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(request, exc.status, exc.title, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return problem_response(request, 400, "Malformed JSON", "the request body is not valid JSON", errors=errors)
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return problem_response(request, 422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(request, exc.status_code, str(exc.detail), str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(request, 500, "Internal error", "an internal error occurred; it was logged")

    return app


def app_from_environment() -> FastAPI:
    """uvicorn's app factory (`tome serve`, `uvicorn --factory service.api:app_from_environment`): each uvicorn
    worker process is an entry point and builds its settings from TOME_* once."""
    return create_app(Settings())
