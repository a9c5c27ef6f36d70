"""Celery tasks: run a job through the workflow graph, and deliver its webhook.

Both run at least once and are idempotent: the job store's conditional transitions decide what a delivery of
the task still has to do. The engine, the store and the checkpointer are opened once per worker process.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from functools import lru_cache
from typing import Any

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from langgraph.checkpoint.base import BaseCheckpointSaver

from engines.base import Engine
from engines.types import Document
from service import webhooks
from service.celery_app import DELIVER_EVENT, RUN_JOB, app
from service.checkpoints import open_checkpointer
from service.documents import structure
from service.models import Event, Job, utcnow
from service.schemas import JobCreate
from service.settings import get_settings
from service.store import Store, aware
from workflows.graph import JobResult, build_graph, run_job

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    pass


@lru_cache(maxsize=1)
def worker_store() -> Store:
    return Store(get_settings().database())


@lru_cache(maxsize=1)
def worker_engine() -> Engine:
    from engines import create_engine

    return create_engine(get_settings().engine_config())


@lru_cache(maxsize=1)
def worker_checkpointer() -> BaseCheckpointSaver:
    return open_checkpointer(get_settings().checkpoints())


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the engine's server was unreachable or overloaded, not a bad request."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in (429, 502, 503, 504)
    return isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError)


class JobProgress:
    """The strategy's progress callback: writes "segment 12 of 40" into the job row; stops a cancelled job."""

    def __init__(self, store: Store, job_id: str, checkpointer: BaseCheckpointSaver) -> None:
        self.store, self.job_id, self.checkpointer = store, job_id, checkpointer
        self.routed = False
        self.total = 1

    def record_route(self) -> None:
        values = build_graph(self.checkpointer).get_state({"configurable": {"thread_id": self.job_id}}).values
        if "strategy" in values:
            self.store.set_route(self.job_id, values["strategy"], values["reason"], values["document_tokens"])
            self.routed = True

    def __call__(self, done: int, total: int, message: str) -> None:
        if not self.routed or done == 0:  # every strategy starts at 0: a fallback's strategy and reason show at once
            self.record_route()
        self.total = max(total, 1)
        if not self.store.set_progress(self.job_id, done, total, message):
            raise JobCancelled(self.job_id)


def result_dict(result: JobResult, tasks: list[Any], document: Document | None = None) -> dict[str, Any]:
    answers = []
    for task, answer, supported in zip(tasks, result.answers, result.supported, strict=True):
        item = {
            "kind": task.kind.value,
            "question": task.question,
            "text": answer.text,
            "supported": supported,  # found in its evidence (see JobResult.supported)
            "evidence": [vars(e) for e in answer.evidence],
            "cost": vars(answer.cost),
        }
        if task.json_schema is not None:
            item.update(parse_extraction(answer.text, task.json_schema))
        answers.append(item)
    return {
        "answers": answers,
        "strategy": result.strategy,
        "reason": result.reason,
        "kind": result.kind,
        "attempts": result.attempts,  # what ran and fell back, in order
        "cost": vars(result.cost),
        "document_tokens": result.document_tokens,
        **({"document": structure(document)} if document is not None and structure(document) else {}),
    }


def parse_extraction(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON, if it gave any, and whether it matches the schema."""
    from jsonschema import Draft202012Validator

    body = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        data = json.loads(body)
    except ValueError:
        return {"data": None, "valid": False}
    return {"data": data, "valid": Draft202012Validator(schema).is_valid(data)}


def send_delivery(event: Event | None, attempt: int = 1, countdown: float = 0) -> None:
    webhooks.send_delivery(app, get_settings().webhook_queue, event, attempt, countdown)


def event_body(job: Job) -> str:
    return webhooks.event_body(job, get_settings().public_url)


# max_retries=None: the task bounds its own retries (settings.engine_retries, and the wait for the job's commit).
@app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_job_task(self: Any, job_id: str) -> None:
    settings, store = get_settings(), worker_store()
    job = store.start_run(job_id)
    if job == "missing":
        # The API sends the message just before it commits the job; wait for the commit, or for a rollback.
        if self.request.retries < 10:
            raise self.retry(countdown=0.5 * (self.request.retries + 1))
        log.warning("job %s was never stored (its request failed); dropping the message", job_id)
        return
    if job == "ended":  # a redelivery, or cancelled while queued: make sure its event went out
        send_delivery(store.deliveries(job_id)[0])
        return
    request = JobCreate.model_validate(job.request)
    tasks = request.tasks()
    stored = store.document_text(job.document_id)
    document = Document(stored.text, source=stored.filename, media_type=stored.media_type, metadata=stored.meta)
    checkpointer = worker_checkpointer()
    progress = JobProgress(store, job_id, checkpointer)
    state = build_graph(checkpointer).get_state({"configurable": {"thread_id": job_id}})
    if state.next:  # a previous run of this job stopped mid-graph (its worker died): resume there
        store.set_resumed_from(job_id, state.next[0])
        progress.record_route()

    def fail(message: str) -> None:
        send_delivery(store.finish(job_id, "failed", event_body, error=message)[0])
        checkpointer.delete_thread(job_id)

    try:
        result = run_job(
            document,
            tasks,
            worker_engine(),
            strategy=request.strategy,
            progress=progress,
            checkpointer=checkpointer,
            thread_id=job_id,
        )
    except JobCancelled:
        checkpointer.delete_thread(job_id)
        return
    except SoftTimeLimitExceeded:
        fail(f"the job ran past the {settings.job_time_limit:.0f} s time limit")
        return
    except Exception as exc:
        if is_transient(exc) and self.request.retries < settings.engine_retries:
            delay = settings.engine_retry_backoff * 2**self.request.retries
            log.warning("job %s: transient engine error (%s); retrying in %.0f s", job_id, exc, delay)
            raise self.retry(exc=exc, countdown=delay) from None
        log.exception("job %s failed", job_id)
        fail(str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}")
        return
    cost = vars(result.cost)
    event, _ = store.finish(
        job_id,
        "completed",
        event_body,
        result=result_dict(result, tasks, document),
        cost=cost,
        strategy=result.strategy,
        reason=result.reason,
        document_tokens=result.document_tokens,
        progress_done=progress.total,
        progress_total=progress.total,
    )
    checkpointer.delete_thread(job_id)
    send_delivery(event)


@app.task(name=DELIVER_EVENT, bind=True, acks_late=True, reject_on_worker_lost=True)
def deliver_event_task(self: Any, event_id: str, attempt: int = 1) -> None:
    settings, store = get_settings(), worker_store()
    event, endpoint = store.delivery_target(event_id)
    if endpoint is None or event.delivered_at or event.gave_up_at:
        return
    held = store.claim_attempt(event_id, attempt, stale_after=settings.webhook_timeout + 30)
    if held is not None:  # this attempt ran already; make sure its successor was scheduled
        if held.next_retry_at is not None and not store.has_attempt(event_id, attempt + 1):
            wait = (aware(held.next_retry_at) - utcnow()).total_seconds()
            send_delivery(event, attempt + 1, countdown=max(0.0, wait))
        return
    if endpoint.disabled_at is not None:
        store.record_attempt(event_id, attempt, None, f"endpoint disabled: {endpoint.disabled_reason}", 0.0, None)
        return
    outcome = webhooks.deliver(
        endpoint.url,
        endpoint.secret,
        event.id,
        event.body.encode("utf-8"),
        settings.webhook_timeout,
        settings.allow_private_callbacks,
    )
    delay = None
    if outcome.gone:
        store.disable_endpoint(endpoint.id, f"the receiver answered 410 Gone to {event.id}")
    elif not outcome.delivered:
        delay = webhooks.retry_delay(
            attempt,
            settings.webhook_retry_delays,
            settings.webhook_jitter,
            outcome.retry_after,
            settings.webhook_max_retry_after,
        )
    next_at = utcnow() + timedelta(seconds=delay) if delay is not None else None
    store.record_attempt(event_id, attempt, outcome.status_code, outcome.error, outcome.duration_ms, next_at)
    if delay is not None:
        send_delivery(event, attempt + 1, countdown=delay)
