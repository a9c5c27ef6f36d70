"""Job progress as Server-Sent Events: `GET /v1/jobs/{id}/events`.

The worker records progress in the job row (`Store.set_progress`); this route reads the row every
`events_poll_interval` seconds (default 0.25 s, so an update reaches the client well within a second) and sends
what changed:

- `event: progress` with `{status, strategy, reason, document_tokens, runs, resumed_from, progress}` whenever one
  of those changes (the first one at once, so a client sees where the job stands);
- `event: end` with the whole job (as `GET /v1/jobs/{id}` returns it) once it is completed, failed or cancelled;
  then the stream closes;
- a `: keep-alive` comment every `events_keepalive` seconds, so proxies keep the connection open.

Each event has an `id` (a counter) and the stream begins with `retry: 2000`. Owner rules are those of every
route: another key's job (or none) is a 404 problem before the stream starts. A stream ends after
`events_max_seconds`; a client reconnects and gets the current state first.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from service.deps import Owner, Services, ServicesDep
from service.errors import ProblemError
from service.inputs import valid_id
from service.models import Job
from service.routes.jobs import job_out
from service.store import TERMINAL

router = APIRouter()


def sse(event: str, data: Any, event_id: int) -> bytes:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"id: {event_id}\nevent: {event}\ndata: {body}\n\n".encode()


def progress_state(job: Job) -> dict[str, Any]:
    return {
        "status": job.status,
        "strategy": job.strategy,
        "reason": job.reason,
        "document_tokens": job.document_tokens,
        "runs": job.runs,
        "resumed_from": job.resumed_from,
        "progress": {"done": job.progress_done, "total": job.progress_total, "message": job.progress_message},
    }


async def job_stream(request: Request, svc: Services, job_id: str, owner: str) -> AsyncIterator[bytes]:
    settings = svc.settings
    yield f"retry: {settings.events_retry_ms}\n\n".encode()
    started = last_sent = time.monotonic()
    last: dict[str, Any] | None = None
    count = 0
    while True:
        job = await run_in_threadpool(svc.store.get_job, job_id, owner)
        if job is None:  # gone (it cannot be, jobs are not deleted): end the stream
            return
        state = progress_state(job)
        if state != last:
            count += 1
            last = state
            last_sent = time.monotonic()
            yield sse("progress", state, count)
        if job.status in TERMINAL:
            count += 1
            out = await run_in_threadpool(job_out, svc, job)
            yield sse("end", out.model_dump(mode="json"), count)
            return
        now = time.monotonic()
        if now - started > settings.events_max_seconds:
            return
        if now - last_sent > settings.events_keepalive:
            last_sent = now
            yield b": keep-alive\n\n"
        if await request.is_disconnected():
            return
        await asyncio.sleep(settings.events_poll_interval)


@router.get(
    "/v1/jobs/{job_id}/events",
    tags=["jobs"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "progress events, then `end`"}},
)
def job_events(job_id: str, request: Request, svc: ServicesDep, owner: Owner) -> StreamingResponse:
    """The job's progress as Server-Sent Events (`progress` on every change, `end` with the job when it ends)."""
    if not valid_id(job_id) or svc.store.get_job(job_id, owner) is None:
        raise ProblemError(404, "Job not found", f"no job {job_id!r} for this API key")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(job_stream(request, svc, job_id, owner), media_type="text/event-stream", headers=headers)
