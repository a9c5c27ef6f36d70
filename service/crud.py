"""Creating a job: the request's checks, idempotency (Idempotency-Key), the callback endpoint, and queueing.

The store writes the job (and an inline text, and the callback endpoint) and queues it in one step
(`Store.submit_job`), so a job is never stored without being queued or queued twice for one key.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from kombu.exceptions import KombuError

from service import webhooks
from service.deps import Services
from service.errors import ProblemError
from service.inputs import IDEMPOTENCY_KEY, valid_id
from service.models import Job
from service.schemas import JobCreate
from service.store import ACTIVE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    job: Job
    replayed: bool  # the job an earlier request with the same Idempotency-Key made
    callback_secret: str | None  # generated for a callback sent without one: the client needs it to verify


def submit_job(svc: Services, owner: str, body: JobCreate, idempotency_key: str | None) -> Submitted:
    """Check, store and queue a job. The same Idempotency-Key and body return the first job once it has ended
    (409 while it is queued or running); the same key with another body is 422."""
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise ProblemError(
            400, "Bad Idempotency-Key", "the Idempotency-Key must be 1 to 255 printable ASCII characters"
        )
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
        replayed = False
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
        replayed = True
    secret = None
    if body.callback_url and not body.callback_secret:  # the client needs the generated secret to verify deliveries
        secret = svc.store.endpoint_secret(owner, body.callback_url)
    return Submitted(job, replayed, secret)
