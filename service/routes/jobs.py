"""Jobs: submit, read, list, cancel. A job's event stream is service/routes/events.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from service import crud, webhooks
from service.deps import Owner, Services, ServicesDep
from service.errors import ProblemError
from service.inputs import valid_id
from service.models import Job
from service.routes.rows import from_row
from service.schemas import AttemptOut, JobCreate, JobOut, JobPage, Progress, WebhookOut
from service.store import ACTIVE, aware, decode_cursor, encode_cursor

router = APIRouter(tags=["jobs"])


def webhook_out(svc: Services, job: Job) -> WebhookOut | None:
    """The job's webhook endpoint, its event and every delivery attempt; None without a callback."""
    if job.endpoint_id is None:
        return None
    event, endpoint, attempts = svc.store.deliveries(job.id)
    assert endpoint is not None
    return from_row(
        WebhookOut,
        endpoint,
        disabled=endpoint.disabled_at is not None,
        event_id=event.id if event else None,
        event_type=event.type if event else None,
        delivered_at=aware(event.delivered_at) if event else None,
        gave_up_at=aware(event.gave_up_at) if event else None,
        attempts=[from_row(AttemptOut, a) for a in attempts],
    )


def job_out(svc: Services, job: Job, callback_secret: str | None = None) -> JobOut:
    return from_row(
        JobOut,
        job,
        task=job.request["task"],
        requested_strategy=job.request["strategy"],
        progress=Progress(done=job.progress_done, total=job.progress_total, message=job.progress_message),
        worker=job.lease_owner,
        webhook=webhook_out(svc, job),
        callback_secret=callback_secret,
    )


@router.post("/v1/jobs", status_code=202, response_model=JobOut)
def create_job(
    body: JobCreate,
    svc: ServicesDep,
    owner: Owner,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobOut:
    """Submit a job. With an Idempotency-Key: the same key and body return the first job once it has ended
    (409 while it is queued or running), the same key with another body is 422."""
    submitted = crud.submit_job(svc, owner, body, idempotency_key)
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    return job_out(svc, submitted.job, callback_secret=submitted.callback_secret)


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, svc: ServicesDep, owner: Owner) -> JobOut:
    job = svc.store.get_job(job_id, owner) if valid_id(job_id) else None
    if job is None:
        raise ProblemError(404, "Job not found", f"no job {job_id!r} for this API key")
    return job_out(svc, job)


@router.get("/v1/jobs", response_model=JobPage)
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


@router.delete("/v1/jobs/{job_id}", response_model=JobOut)
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
