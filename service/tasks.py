"""Celery tasks: run a job through the workflow graph, and deliver its webhook.

Both run at least once and are idempotent: the job store's conditional transitions decide what a delivery of
the task still has to do. The engine, the store and the checkpointer are opened once per worker process.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from functools import lru_cache
from typing import Any

import httpx
import psycopg
import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from kombu.exceptions import KombuError
from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy.exc import InterfaceError, OperationalError

from engines.base import Engine
from engines.types import Document
from service import webhooks
from service.celery_app import DELIVER_EVENT, RUN_JOB, app, worker_settings
from service.checkpoints import open_checkpointer
from service.documents import structure
from service.leases import FencedCheckpointer, Lease, LeaseLost, Sweeper, worker_name
from service.models import Event, Job, utcnow
from service.schemas import JobCreate
from service.store import Run, Store, aware
from workflows.graph import JobResult, build_graph, run_job
from workflows.registry import Strategies, build_strategies

log = logging.getLogger(__name__)
# A database that is down or restarting (the job store through SQLAlchemy, the checkpoints through psycopg).
DATABASE_ERRORS = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


class JobCancelled(Exception):
    pass


@lru_cache(maxsize=1)
def worker_store() -> Store:
    return Store(worker_settings.database())


@lru_cache(maxsize=1)
def worker_engine() -> Engine:
    from engines import create_engine

    return create_engine(worker_settings.engine_config())


@lru_cache(maxsize=1)
def worker_strategies() -> Strategies:
    return build_strategies(worker_settings)


@lru_cache(maxsize=1)
def worker_checkpointer() -> BaseCheckpointSaver:
    return open_checkpointer(worker_settings.checkpoints())


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the engine's server was unreachable or overloaded, not a bad request."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in (429, 502, 503, 504)
    return isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError)


class JobProgress:
    """The strategy's progress callback: writes "segment 12 of 40" into the job row under the job's lease; stops
    a cancelled job, and a job whose lease another worker took."""

    def __init__(self, store: Store, job_id: str, checkpointer: BaseCheckpointSaver, lease: Lease) -> None:
        self.store, self.job_id, self.checkpointer, self.lease = store, job_id, checkpointer, lease
        self.routed = False
        self.total = 1

    def record_route(self) -> None:
        values = build_graph(self.checkpointer).get_state({"configurable": {"thread_id": self.job_id}}).values
        if "strategy" in values:
            route = values["strategy"], values["reason"], values["document_tokens"]
            self.store.set_route(self.job_id, *route, token=self.lease.token)
            self.routed = True

    def __call__(self, done: int, total: int, message: str) -> None:
        self.lease.check()
        if not self.routed or done == 0:  # every strategy starts at 0: a fallback's strategy and reason show at once
            self.record_route()
        self.total = max(total, 1)
        if not self.store.set_progress(self.job_id, done, total, message, token=self.lease.token):
            job = self.store.get_job(self.job_id)
            if job is not None and job.status == "cancelled":
                raise JobCancelled(self.job_id)
            raise LeaseLost(self.job_id)


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
    """Queue a delivery attempt; with the broker away, leave it to the sweepers (they send overdue ones again)."""
    try:
        webhooks.send_delivery(app, worker_settings.webhook_queue, event, attempt, countdown)
    except (KombuError, OSError) as exc:
        log.warning("could not queue a delivery of %s (%s); a sweeper sends it later", event and event.id, exc)


def event_body(job: Job) -> str:
    return webhooks.event_body(job, worker_settings.public_url)


# max_retries=None: the task bounds its own retries (settings.engine_retries, and the wait for the job's commit).
@app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_job_task(self: Any, job_id: str) -> None:
    settings, store = worker_settings, worker_store()
    worker_engine()  # load the model before taking a lease: a first load can outlast a short lease on a busy host
    try:
        run = store.start_run(job_id, worker_name(), settings.lease_seconds)
    except DATABASE_ERRORS as exc:  # the job store is away: keep the message (a new one, later), never drop it
        log.warning("job %s: the job store is unreachable (%s); retrying in 5 s", job_id, type(exc).__name__)
        raise self.retry(countdown=5) from None
    if run == "missing":
        # The API sends the message just before it commits the job; wait for the commit, or for a rollback.
        if self.request.retries < 10:
            raise self.retry(countdown=0.5 * (self.request.retries + 1))
        log.warning("job %s was never stored (its request failed); dropping the message", job_id)
        return
    if run == "ended":  # a redelivery, or cancelled while queued: make sure its event went out
        send_delivery(store.deliveries(job_id)[0])
        return
    if run == "leased":  # a duplicate or redelivered message while a live worker runs it: that worker finishes it
        log.info("job %s is held by a live lease; dropping this message", job_id)
        return
    lease = Lease(store, job_id, run.token, settings.lease_seconds).start()
    try:
        execute(self, run, lease)
    except LeaseLost:  # another worker took the job: it owns the row and the checkpoints now
        log.warning("job %s: lease %d lost; stopped without writing", job_id, run.token)
    except DATABASE_ERRORS as exc:  # the store went away after the run: the lease lapses, a sweeper re-queues it
        log.warning("job %s: the job store is unreachable (%s); left to its lease", job_id, type(exc).__name__)
    finally:
        lease.stop()


class Ending:
    """The writes that end a job under this worker's lease: each names the lease's fencing token, and a write that
    moves nothing means the job was cancelled meanwhile (its event already went out) or the lease was taken."""

    def __init__(self, store: Store, run: Run, shared: BaseCheckpointSaver) -> None:
        self.store, self.job_id, self.token, self.shared = store, run.job.id, run.token, shared

    def not_moved(self) -> None:
        """finish() wrote nothing: cancelled meanwhile (the cancel sent its event), or the lease was taken."""
        current = self.store.get_job(self.job_id)
        if current is None or current.status != "cancelled":
            raise LeaseLost(self.job_id)
        self.shared.delete_thread(self.job_id)

    def finish(self, status: str, **fields: Any) -> None:
        """The job's last transition, then its checkpoints go (of no use now) and its event is delivered."""
        event, moved = self.store.finish(self.job_id, status, event_body, token=self.token, **fields)
        if not moved:
            return self.not_moved()
        self.shared.delete_thread(self.job_id)
        send_delivery(event)

    def fail(self, message: str) -> None:
        self.finish("failed", error=message)


def resumable_progress(store: Store, run: Run, checkpointer: FencedCheckpointer, lease: Lease) -> JobProgress:
    """The job's progress reporter; a run that resumes a graph stopped mid-way (its worker died) says where."""
    progress = JobProgress(store, run.job.id, checkpointer, lease)
    state = build_graph(checkpointer).get_state({"configurable": {"thread_id": run.job.id}})
    if state.next:
        store.set_resumed_from(run.job.id, state.next[0], token=run.token)
        progress.record_route()
    return progress


def failed_run(task: Any, run: Run, ending: Ending, exc: Exception) -> None:
    """An error from the graph: a transient engine error is retried (the job queued again) while retries last;
    anything else fails the job with its message."""
    settings, job_id = worker_settings, run.job.id
    if is_transient(exc) and task.request.retries < settings.engine_retries:
        delay = settings.engine_retry_backoff * 2**task.request.retries
        log.warning("job %s: transient engine error (%s); retrying in %.0f s", job_id, exc, delay)
        if not ending.store.release(job_id, run.token):  # queued again, so that the retry's delivery takes it
            raise LeaseLost(job_id) from None
        raise task.retry(exc=exc, countdown=delay) from None
    log.exception("job %s failed", job_id)
    ending.fail(str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}")


def execute(task: Any, run: Run, lease: Lease) -> None:
    """Run a job whose lease this worker holds; every write names the lease's fencing token."""
    store, job_id = worker_store(), run.job.id
    request = JobCreate.model_validate(run.job.request)
    tasks = request.tasks()
    stored = store.document_text(run.job.document_id)
    document = Document(stored.text, source=stored.filename, media_type=stored.media_type, metadata=stored.meta)
    shared = worker_checkpointer()
    checkpointer = FencedCheckpointer(shared, lease)
    progress = resumable_progress(store, run, checkpointer, lease)
    ending = Ending(store, run, shared)
    try:
        result = run_job(
            document,
            tasks,
            worker_engine(),
            strategy=request.strategy,
            progress=progress,
            checkpointer=checkpointer,
            thread_id=job_id,
            strategies=worker_strategies(),
        )
    except JobCancelled:
        shared.delete_thread(job_id)  # the cancel ended the lease too; the checkpoints are of no use now
        return
    except LeaseLost:
        raise
    except DATABASE_ERRORS as exc:
        # The job store or the checkpoints are unreachable: not the job's fault, so it is neither failed nor retried
        # here. Its lease lapses and a sweeper re-queues it once the database is back; it resumes from its last
        # checkpoint.
        log.warning("job %s: the database is unreachable (%s); left to its lease", job_id, type(exc).__name__)
        raise LeaseLost(job_id) from exc
    except SoftTimeLimitExceeded:
        ending.fail(f"the job ran past the {worker_settings.job_time_limit:.0f} s time limit")
        return
    except Exception as exc:
        failed_run(task, run, ending, exc)
        return
    ending.finish(
        "completed",
        result=result_dict(result, tasks, document),
        cost=vars(result.cost),
        strategy=result.strategy,
        reason=result.reason,
        document_tokens=result.document_tokens,
        progress_done=progress.total,
        progress_total=progress.total,
    )


_sweeper: Sweeper | None = None


@worker_process_init.connect
def preload_engine(**_: Any) -> None:
    """With TOME_PRELOAD_ENGINE, a pool process loads the model as it starts, not inside its first job."""
    if worker_settings.preload_engine:
        worker_engine()


@worker_ready.connect
def start_sweeper(**_: Any) -> None:
    """Each worker's main process sweeps for lapsed leases (its own store: connections are not shared over fork)."""
    global _sweeper
    settings = worker_settings
    store = Store(settings.database())
    # A pool child forked later must not touch the parent's connections (closing them would end the parent's).
    os.register_at_fork(after_in_child=lambda: store.db_engine.dispose(close=False))

    def enqueue(job_id: str) -> None:
        app.send_task(RUN_JOB, args=[job_id], task_id=job_id, queue=settings.job_queue)

    guard = redis.Redis.from_url(settings.redis_url, socket_timeout=5)

    def resend(event_id: str, attempt: int) -> None:
        # Once per grace period across all sweepers (a queue that is merely slow must not fill with copies).
        if guard.set(f"tome:resent:{event_id}:{attempt}", 1, nx=True, ex=max(1, int(settings.delivery_grace))):
            log.warning("event %s: attempt %d is overdue (message lost?); sent again", event_id, attempt)
            webhooks.send_delivery_attempt(app, settings.webhook_queue, event_id, attempt)

    stale = settings.webhook_timeout + 30  # as deliver_event_task's claim
    _sweeper = Sweeper(store, enqueue, settings.lease_sweep_interval, resend, settings.delivery_grace, stale).start()


@worker_shutdown.connect
def stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()


@app.task(name=DELIVER_EVENT, bind=True, acks_late=True, reject_on_worker_lost=True)
def deliver_event_task(self: Any, event_id: str, attempt: int = 1) -> None:
    settings, store = worker_settings, worker_store()
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
