"""The job store: every read and write of documents, jobs, events and delivery attempts.

State transitions are conditional UPDATEs (`WHERE status IN (...)`), so a redelivered task, a cancel racing a
completion, or two API requests with one Idempotency-Key each end in exactly one outcome.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, exists, func, literal, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.inputs import valid_id
from service.models import ApiKey, DeliveryAttempt, Event, Job, StoredDocument, WebhookEndpoint, utcnow
from service.webhooks import new_secret

ACTIVE = ("queued", "running")
TERMINAL = ("completed", "failed", "cancelled")
MIGRATIONS = Path(__file__).with_name("migrations")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def aware(ts: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def migrate(url: str) -> None:
    """Bring the database to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, "head")


def make_db_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _wal(dbapi_connection: Any, _: Any) -> None:  # readers do not block the writer
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

        return engine
    # No pre-ping (a round trip per checkout on the submission path): after a database restart the first
    # request that meets a dead connection fails, and SQLAlchemy then invalidates the whole pool.
    return create_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800)


@dataclass
class Submission:
    job: Job
    created: bool


@dataclass
class Run:
    """A job taken by a worker, with the fencing token of its lease."""

    job: Job
    token: int


class Store:
    def __init__(self, url: str) -> None:
        self.db_engine = make_db_engine(url)
        self.sessions = sessionmaker(self.db_engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    def ping(self) -> None:
        with self.db_engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    # keys
    def add_key(self, name: str, key_hash: str) -> str:
        """Create (or re-point) the key `name`; returns its id."""
        with self.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.name == name))
            if row is None:
                row = ApiKey(id=new_id("key"), name=name, key_hash=key_hash)
                s.add(row)
            else:
                row.key_hash = key_hash
            s.commit()
            return row.id

    def key_owner(self, key_hash: str) -> str | None:
        with self.session() as s:
            return s.scalar(select(ApiKey.id).where(ApiKey.key_hash == key_hash))

    def upgrade_key(self, legacy_hash: str, key_hash: str) -> str | None:
        """The owner of a key stored under its old unsalted hash, which is replaced by `key_hash` (once)."""
        with self.session() as s:
            owner = s.scalar(
                update(ApiKey).where(ApiKey.key_hash == legacy_hash).values(key_hash=key_hash).returning(ApiKey.id)
            )
            s.commit()
            return owner

    # documents
    def put_document(
        self, owner: str, content_hash: str, filename: str, media_type: str, size: int, text_: str, meta: dict[str, Any]
    ) -> tuple[StoredDocument, bool]:
        with self.session() as s:
            document_id, created = self._put_document(s, owner, content_hash, filename, media_type, size, text_, meta)
            s.commit()
            return s.get_one(StoredDocument, document_id), created

    def _put_document(
        self,
        s: Session,
        owner: str,
        content_hash: str,
        filename: str,
        media_type: str,
        size: int,
        text_: str,
        meta: dict[str, Any],
    ) -> tuple[str, bool]:
        """The id of this owner's document with these bytes, inserting it if new (one round trip when new)."""
        values = {
            "id": new_id("doc"),
            "owner_id": owner,
            "content_hash": content_hash,
            "filename": filename,
            "media_type": media_type,
            "size_bytes": size,
            "text": text_,
            "meta": meta,
            "created_at": utcnow(),
        }
        insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        stmt = (
            insert(StoredDocument).values(**values).on_conflict_do_nothing(index_elements=["owner_id", "content_hash"])
        )
        if s.scalar(stmt.returning(StoredDocument.id)) is not None:
            return values["id"], True
        query = select(StoredDocument.id).where(
            StoredDocument.owner_id == owner, StoredDocument.content_hash == content_hash
        )
        return s.scalars(query).one(), False

    def get_document(self, owner: str, document_id: str) -> StoredDocument | None:
        with self.session() as s:
            return s.scalar(
                select(StoredDocument).where(StoredDocument.id == document_id, StoredDocument.owner_id == owner)
            )

    def document_text(self, document_id: str) -> StoredDocument:
        with self.session() as s:
            return s.get_one(StoredDocument, document_id)

    # jobs
    def submit_job(
        self,
        owner: str,
        request: dict[str, Any],
        fingerprint: str,
        idempotency_key: str | None,
        document_id: str | None,
        inline: tuple[str, str, int, str] | None,
        callback: tuple[str, str | None] | None,
        enqueue: Callable[[str], None],
    ) -> Submission:
        """Store a job (with its inline document and callback endpoint) and hand it to the broker, in one transaction.

        `enqueue(job_id)` runs before the commit: if it fails nothing is stored, and if the commit fails the message
        names a job that never existed (the worker drops it), so a 202 always means stored and queued, once.
        With an Idempotency-Key this owner used already, nothing is written and the first job comes back.
        """
        with self.session() as s:
            if inline is not None:
                content_hash, text_, size, filename = inline
                document_id, _ = self._put_document(s, owner, content_hash, filename, "text/plain", size, text_, {})
            assert document_id is not None
            request = {**request, "document_id": document_id}
            endpoint_id = self._endpoint(s, owner, *callback).id if callback else None
            job = Job(
                id=secrets.token_hex(16),
                owner_id=owner,
                document_id=document_id,
                endpoint_id=endpoint_id,
                status="queued",
                request=request,
                fingerprint=fingerprint,
                idempotency_key=idempotency_key,
                enqueued_at=utcnow(),
                runs=0,
                progress_done=0,
                progress_total=0,
            )
            s.add(job)
            try:
                s.flush()  # a used key fails here (a concurrent first request: once it commits)
            except IntegrityError:
                s.rollback()
                if idempotency_key is None:
                    raise
                first = self._by_key(s, owner, idempotency_key)
                assert first is not None
                return Submission(first, False)
            enqueue(job.id)
            s.commit()
            return Submission(job, True)

    def _by_key(self, s: Session, owner: str, key: str) -> Job | None:
        return s.scalar(select(Job).where(Job.owner_id == owner, Job.idempotency_key == key))

    def _endpoint(self, s: Session, owner: str, url: str, secret: str | None) -> WebhookEndpoint:
        """The owner's endpoint for `url`; a job naming it again re-enables it (and sets a secret it brings)."""
        query = select(WebhookEndpoint).where(WebhookEndpoint.owner_id == owner, WebhookEndpoint.url == url)
        endpoint = s.scalar(query)
        if endpoint is None:
            endpoint = WebhookEndpoint(id=new_id("ep"), owner_id=owner, url=url, secret=secret or new_secret())
            try:
                with s.begin_nested():
                    s.add(endpoint)
            except IntegrityError:
                return self._endpoint(s, owner, url, secret)
        else:
            endpoint.secret = secret or endpoint.secret
            endpoint.disabled_at = None
            endpoint.disabled_reason = None
        return endpoint

    def endpoint_secret(self, owner: str, url: str) -> str | None:
        with self.session() as s:
            return s.scalar(
                select(WebhookEndpoint.secret).where(WebhookEndpoint.owner_id == owner, WebhookEndpoint.url == url)
            )

    def get_job(self, job_id: str, owner: str | None = None) -> Job | None:
        with self.session() as s:
            query = select(Job).where(Job.id == job_id)
            if owner is not None:
                query = query.where(Job.owner_id == owner)
            return s.scalar(query)

    def list_jobs(self, owner: str, status: str | None, limit: int, before: tuple[datetime, str] | None) -> list[Job]:
        with self.session() as s:
            query = select(Job).where(Job.owner_id == owner)
            if status:
                query = query.where(Job.status == status)
            if before is not None:
                created, job_id = before
                query = query.where((Job.created_at < created) | ((Job.created_at == created) & (Job.id < job_id)))
            query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
            return list(s.scalars(query))

    def counts_by_status(self) -> dict[str, int]:
        with self.session() as s:
            return dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())  # type: ignore[arg-type]

    # worker transitions
    def start_run(
        self, job_id: str, worker: str = "", lease_s: float = 60.0
    ) -> Run | Literal["missing", "ended", "leased"]:
        """Take the job's lease for this delivery of its task, by compare-and-set: one taker wins.

        A queued job, or a running one whose lease lapsed (its worker died or stalled), is taken: the fencing token
        goes up by one and `runs` counts the take. "leased": another worker holds a live lease (a duplicate or
        redelivered message; the holder finishes it, or the sweeper re-queues it); "ended": it already ended
        (or was cancelled while queued); "missing": no such row yet (the API sends the message just before it
        commits) or ever (its request failed).
        """
        with self.session() as s:
            while True:
                now = utcnow()
                takeable = (Job.status == "queued") | (
                    (Job.status == "running") & ((Job.lease_expires_at.is_(None)) | (Job.lease_expires_at < now))
                )
                token = s.scalar(
                    update(Job)
                    .where(Job.id == job_id, takeable)
                    .values(
                        status="running",
                        runs=Job.runs + 1,
                        started_at=func.coalesce(Job.started_at, now),
                        lease_token=Job.lease_token + 1,
                        lease_owner=worker[:200] or None,
                        lease_expires_at=now + timedelta(seconds=lease_s),
                    )
                    .returning(Job.lease_token)
                )
                if token is not None:
                    s.commit()
                    return Run(s.get_one(Job, job_id), token)
                s.rollback()
                status = s.scalar(select(Job.status).where(Job.id == job_id))
                if status is None:
                    return "missing"
                if status in TERMINAL:
                    return "ended"
                if status == "running":
                    return "leased"
                # committed (queued) between the two statements: the update will match now

    def renew_lease(self, job_id: str, token: int, lease_s: float) -> bool:
        """Extend the lease held with `token`; False once it was taken (or the job ended): the holder must stop."""
        return self._update_running(job_id, token, lease_expires_at=utcnow() + timedelta(seconds=lease_s))

    def overdue_deliveries(self, grace_s: float, stale_s: float, limit: int = 100) -> list[tuple[str, int]]:
        """(event id, attempt) of deliveries that should have run by now and did not: an event whose first attempt
        was never claimed `grace_s` after it was made (its message was lost: the broker was down, or restarted
        without it), a retry `grace_s` past its time with no successor, or an attempt claimed `stale_s` ago and
        never finished (its worker died mid-call). Resending one is safe: attempts are claimed once each."""
        now = utcnow()
        open_events = select(Event.id).where(
            Event.endpoint_id.is_not(None), Event.delivered_at.is_(None), Event.gave_up_at.is_(None)
        )
        later = DeliveryAttempt.__table__.alias("later")
        with self.session() as s:
            never = s.execute(
                select(Event.id, literal(1))
                .where(Event.id.in_(open_events), Event.created_at < now - timedelta(seconds=grace_s))
                .where(~exists().where(DeliveryAttempt.event_id == Event.id))
                .limit(limit)
            ).all()
            retries = s.execute(
                select(DeliveryAttempt.event_id, DeliveryAttempt.attempt + 1)
                .where(
                    DeliveryAttempt.event_id.in_(open_events),
                    DeliveryAttempt.next_retry_at < now - timedelta(seconds=grace_s),
                )
                .where(
                    ~exists().where(
                        later.c.event_id == DeliveryAttempt.event_id, later.c.attempt == DeliveryAttempt.attempt + 1
                    )
                )
                .limit(limit)
            ).all()
            stuck = s.execute(
                select(DeliveryAttempt.event_id, DeliveryAttempt.attempt)
                .where(
                    DeliveryAttempt.event_id.in_(open_events),
                    DeliveryAttempt.status_code.is_(None),
                    DeliveryAttempt.error.is_(None),
                    DeliveryAttempt.at < now - timedelta(seconds=stale_s),
                )
                .limit(limit)
            ).all()
        return [(event_id, int(attempt)) for event_id, attempt in [*never, *retries, *stuck]]

    def release(self, job_id: str, token: int) -> bool:
        """Give the lease back and queue the job again (a retry is coming); False if the lease was not ours."""
        with self.session() as s:
            done = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running", Job.lease_token == token)
                .values(status="queued", lease_token=Job.lease_token + 1, lease_owner=None, lease_expires_at=None)
            )
            s.commit()
            return bool(done.rowcount)

    def requeue_expired(self, enqueue: Callable[[str], None], limit: int = 100) -> list[str]:
        """Put running jobs whose lease lapsed back in the queue; returns their ids.

        Per job a compare-and-set on the token it was seen with (so of several sweepers one re-queues it, once),
        which also bumps the token: the late holder's writes no longer match. The message goes out before the
        commit, as in submit_job: a failed send leaves the job for the next sweep, and a message that arrives
        before the commit finds a lapsed lease, which start_run takes as well.
        """
        requeued = []
        with self.session() as s:
            stale = s.execute(
                select(Job.id, Job.lease_token)
                .where(
                    Job.status == "running",
                    (Job.lease_expires_at.is_(None)) | (Job.lease_expires_at < utcnow()),
                )
                .limit(limit)
            ).all()
            for job_id, token in stale:
                done = s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == "running", Job.lease_token == token)
                    .values(
                        status="queued",
                        lease_token=Job.lease_token + 1,
                        lease_owner=None,
                        lease_expires_at=None,
                        enqueued_at=utcnow(),
                    )
                )
                if not done.rowcount:
                    s.rollback()
                    continue
                try:
                    enqueue(job_id)
                except Exception:
                    s.rollback()
                    raise
                s.commit()
                requeued.append(job_id)
        return requeued

    def set_resumed_from(self, job_id: str, node: str, token: int | None = None) -> None:
        self._update_running(job_id, token, resumed_from=node)

    def set_route(
        self, job_id: str, strategy: str, reason: str, document_tokens: int, token: int | None = None
    ) -> None:
        self._update_running(job_id, token, strategy=strategy, reason=reason, document_tokens=document_tokens)

    def set_progress(self, job_id: str, done: int, total: int, message: str, token: int | None = None) -> bool:
        """Record progress; False once the job is no longer running (cancelled) or its lease was taken: stop."""
        return self._update_running(job_id, token, progress_done=done, progress_total=total, progress_message=message)

    def _update_running(self, job_id: str, token: int | None, **values: Any) -> bool:
        """Update a running job; with a fencing token, only while that token still holds the lease."""
        with self.session() as s:
            query = update(Job).where(Job.id == job_id, Job.status == "running")
            if token is not None:
                query = query.where(Job.lease_token == token)
            done = s.execute(query.values(**values))
            s.commit()
            return bool(done.rowcount)

    def finish(
        self,
        job_id: str,
        status: str,
        event_body: Any,
        from_status: tuple[str, ...] = ACTIVE,
        token: int | None = None,
        **values: Any,
    ) -> tuple[Event | None, bool]:
        """Move a job to a terminal status and create its one event, atomically.

        `event_body(job) -> str` builds the webhook body from the updated row. Returns (the job's event, whether
        this call moved it); a job that had already ended keeps its first event (a redelivered task, a late cancel).
        A worker passes its lease's fencing token: once another worker took the lease, nothing is written.
        """
        with self.session() as s:
            query = update(Job).where(Job.id == job_id, Job.status.in_(from_status))
            if token is not None:
                query = query.where(Job.lease_token == token, Job.status == "running")
            done = s.execute(
                query.values(status=status, finished_at=utcnow(), lease_owner=None, lease_expires_at=None, **values)
            )
            if not done.rowcount:
                s.rollback()
                return s.scalar(select(Event).where(Event.job_id == job_id)), False
            job = s.get_one(Job, job_id)
            s.refresh(job)
            evt = Event(
                id=new_id("msg"),
                job_id=job_id,
                endpoint_id=job.endpoint_id,
                type=f"job.{status}",
                body=event_body(job),
            )
            s.add(evt)
            s.commit()
            return evt, True

    # webhook deliveries
    def delivery_target(self, event_id: str) -> tuple[Event, WebhookEndpoint | None]:
        with self.session() as s:
            evt = s.get_one(Event, event_id)
            endpoint = s.get(WebhookEndpoint, evt.endpoint_id) if evt.endpoint_id else None
            return evt, endpoint

    def claim_attempt(self, event_id: str, attempt: int, stale_after: float) -> DeliveryAttempt | None:
        """Claim attempt `attempt` of an event: None when claimed, else the row that holds it.

        An unfinished row older than `stale_after` seconds belonged to a worker that died mid-call: taken over.
        """
        with self.session() as s:
            s.add(DeliveryAttempt(event_id=event_id, attempt=attempt))
            try:
                s.commit()
                return None
            except IntegrityError:
                s.rollback()
            row = s.scalars(
                select(DeliveryAttempt).where(DeliveryAttempt.event_id == event_id, DeliveryAttempt.attempt == attempt)
            ).one()
            unfinished = row.status_code is None and row.error is None
            if unfinished and aware(row.at) < utcnow() - timedelta(seconds=stale_after):  # type: ignore[operator]
                row.at = utcnow()
                s.commit()
                return None
            return row

    def has_attempt(self, event_id: str, attempt: int) -> bool:
        with self.session() as s:
            return (
                s.scalar(
                    select(DeliveryAttempt.id).where(
                        DeliveryAttempt.event_id == event_id, DeliveryAttempt.attempt == attempt
                    )
                )
                is not None
            )

    def record_attempt(
        self,
        event_id: str,
        attempt: int,
        status_code: int | None,
        error: str | None,
        duration_ms: float,
        next_retry_at: datetime | None,
    ) -> None:
        with self.session() as s:
            s.execute(
                update(DeliveryAttempt)
                .where(DeliveryAttempt.event_id == event_id, DeliveryAttempt.attempt == attempt)
                .values(status_code=status_code, error=error, duration_ms=duration_ms, next_retry_at=next_retry_at)
            )
            if status_code is not None and 200 <= status_code < 300:
                s.execute(update(Event).where(Event.id == event_id).values(delivered_at=utcnow()))
            elif next_retry_at is None:
                s.execute(update(Event).where(Event.id == event_id).values(gave_up_at=utcnow()))
            s.commit()

    def disable_endpoint(self, endpoint_id: str, reason: str) -> None:
        with self.session() as s:
            s.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint_id)
                .values(disabled_at=utcnow(), disabled_reason=reason)
            )
            s.commit()

    def deliveries(self, job_id: str) -> tuple[Event | None, WebhookEndpoint | None, list[DeliveryAttempt]]:
        with self.session() as s:
            evt = s.scalar(select(Event).where(Event.job_id == job_id))
            job = s.get_one(Job, job_id)
            endpoint = s.get(WebhookEndpoint, job.endpoint_id) if job.endpoint_id else None
            attempts = (
                list(s.scalars(select(DeliveryAttempt).where(DeliveryAttempt.event_id == evt.id).order_by("attempt")))
                if evt
                else []
            )
            return evt, endpoint, attempts


def encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(f"{aware(job.created_at).isoformat()}|{job.id}".encode()).decode()  # type: ignore[union-attr]


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, job id) of a cursor this API issued; ValueError for anything else."""
    created, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
    if not valid_id(job_id):
        raise ValueError("not a job id")
    return datetime.fromisoformat(created), job_id
