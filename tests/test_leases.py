"""Job leases in the store, on a real PostgreSQL: one taker per job however many race, fencing of a late worker,
the sweeper, the heartbeat. No model and no broker: seconds."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from service.auth import hash_key
from service.leases import FencedCheckpointer, Lease, LeaseLost, Sweeper
from service.schemas import JobCreate
from service.store import Run, Store


@pytest.fixture(scope="module")
def store(database: str) -> Iterator[Store]:
    store = Store(database)
    yield store
    store.db_engine.dispose()


@pytest.fixture(scope="module")
def owner(store: Store) -> str:
    return store.add_key("leases", hash_key("leases-test-key-0123456789", b"a server secret"))


def new_job(store: Store, owner: str, sent: list[str] | None = None) -> str:
    body = JobCreate.model_validate({"text": f"text {time.time_ns()}", "task": {"kind": "summary"}})
    request = body.model_dump(mode="json", exclude={"text"})
    content = body.text or ""
    inline = (hashlib.sha256(content.encode()).hexdigest(), content, len(content), "inline.txt")
    queued = sent if sent is not None else []
    return store.submit_job(owner, request, body.fingerprint(), None, None, inline, None, queued.append).job.id


def race(store: Store, job_id: str, takers: int) -> list[Any]:
    """`takers` threads call start_run on one job at the same instant (a barrier), each on its own connection."""
    barrier = threading.Barrier(takers)
    results: list[Any] = [None] * takers

    def take(i: int) -> None:
        barrier.wait()
        results[i] = store.start_run(job_id, f"w{i}", 60)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_one_taker_per_job_in_100_races(store: Store, owner: str) -> None:
    for trial in range(100):
        job_id = new_job(store, owner)
        results = race(store, job_id, 4)
        runs = [r for r in results if isinstance(r, Run)]
        assert len(runs) == 1 and sorted(r for r in results if isinstance(r, str)) == ["leased"] * 3, (trial, results)
        job = store.get_job(job_id)
        assert job is not None and job.runs == 1 and job.lease_token == runs[0].token == 1
        assert job.lease_owner == runs[0].job.lease_owner


def test_a_late_worker_writes_nothing(store: Store, owner: str) -> None:
    sent: list[str] = []
    job_id = new_job(store, owner, sent)
    first = store.start_run(job_id, "w1", lease_s=0.2)
    assert isinstance(first, Run)
    assert store.start_run(job_id, "w2", 60) == "leased"  # refused while the lease is live
    assert store.requeue_expired(sent.append) == []
    time.sleep(0.3)  # w1 stalls past its lease
    assert store.requeue_expired(sent.append) == [job_id] and sent == [job_id, job_id]
    assert store.requeue_expired(sent.append) == []  # re-queued once
    requeued = store.get_job(job_id)
    assert requeued is not None and requeued.status == "queued" and requeued.lease_token == first.token + 1
    second = store.start_run(job_id, "w2", 60)
    assert isinstance(second, Run) and second.token == first.token + 2 and second.job.runs == 2

    # w1 wakes up: every write under its old token is refused, and it learns it lost the lease.
    assert not store.renew_lease(job_id, first.token, 60)
    assert not store.set_progress(job_id, 5, 9, "late", token=first.token)
    event, moved = store.finish(job_id, "completed", lambda j: json.dumps({"by": "w1"}), token=first.token)
    assert not moved and event is None
    assert store.renew_lease(job_id, second.token, 60)
    assert store.set_progress(job_id, 1, 9, "segment 1 of 9", token=second.token)
    event, moved = store.finish(job_id, "completed", lambda j: json.dumps({"by": "w2"}), token=second.token)
    assert moved and event is not None and json.loads(event.body) == {"by": "w2"}
    assert store.start_run(job_id, "w3", 60) == "ended"
    job = store.get_job(job_id)
    assert job is not None and job.status == "completed" and job.progress_message == "segment 1 of 9"
    assert job.lease_owner is None and job.lease_expires_at is None


def test_cancel_beats_the_lease(store: Store, owner: str) -> None:
    job_id = new_job(store, owner)
    run = store.start_run(job_id, "w1", 60)
    assert isinstance(run, Run)
    _, moved = store.finish(job_id, "cancelled", lambda j: "{}")  # the API's cancel names no token
    assert moved
    assert not store.set_progress(job_id, 1, 2, "x", token=run.token)
    assert not store.finish(job_id, "completed", lambda j: "{}", token=run.token)[1]


def test_release_for_a_retry(store: Store, owner: str) -> None:
    job_id = new_job(store, owner)
    run = store.start_run(job_id, "w1", 60)
    assert isinstance(run, Run) and store.release(job_id, run.token)
    assert not store.release(job_id, run.token)
    again = store.start_run(job_id, "w1", 60)
    assert isinstance(again, Run) and again.token == run.token + 2


def test_heartbeat_keeps_the_lease_and_notices_its_loss(store: Store, owner: str) -> None:
    job_id = new_job(store, owner)
    run = store.start_run(job_id, "w1", lease_s=0.6)
    assert isinstance(run, Run)
    lease = Lease(store, job_id, run.token, 0.6).start()
    try:
        time.sleep(1.5)  # over twice the lease: renewed every 0.2 s
        assert lease.held() and store.requeue_expired(lambda _: None) == []
        assert store.start_run(job_id, "w2", 60) == "leased"
        # Taken behind its back (as a sweeper does after a stall): the next beat notices.
        with store.session() as s:
            s.execute(text("UPDATE jobs SET lease_token = lease_token + 1 WHERE id = :id"), {"id": job_id})
            s.commit()
        deadline = time.monotonic() + 5
        while lease.held() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lease.held()
        with pytest.raises(LeaseLost):
            lease.check()
    finally:
        lease.stop()


def test_a_stalled_heartbeat_runs_out_on_its_own(store: Store, owner: str) -> None:
    """A worker cut off from the database treats its lease as gone before the store would give it away."""
    now = [0.0]
    lease = Lease(store, "no-such-job", 1, 60, clock=lambda: now[0])
    assert lease.held()
    now[0] = 53.0
    assert lease.held()
    now[0] = 54.5  # within the last tenth of the lease
    assert not lease.held()


def test_fenced_checkpointer_refuses_writes_without_the_lease(store: Store, owner: str, tmp_path: Any) -> None:
    from service.checkpoints import open_checkpointer
    from workflows.graph import build_graph

    now = [0.0]
    lease = Lease(store, "thread-1", 1, 60, clock=lambda: now[0])
    fenced = FencedCheckpointer(open_checkpointer(f"sqlite:///{tmp_path / 'cp.db'}"), lease)
    graph = build_graph(fenced)
    config = {"configurable": {"thread_id": "thread-1"}}
    graph.update_state(config, {"requested": "auto"}, as_node="analyse")  # a write under a held lease
    assert graph.get_state(config).values["requested"] == "auto"
    now[0] = 100.0
    with pytest.raises(LeaseLost):
        graph.update_state(config, {"requested": "full"}, as_node="analyse")
    assert graph.get_state(config).values["requested"] == "auto"


def test_sweeper_thread_requeues(store: Store, owner: str) -> None:
    job_id = new_job(store, owner)
    assert isinstance(store.start_run(job_id, "w1", lease_s=0.1), Run)
    sent: list[str] = []
    sweeper = Sweeper(store, sent.append, interval=0.1).start()
    try:
        deadline = time.monotonic() + 5
        while job_id not in sent and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sweeper.stop()
    assert sent.count(job_id) == 1


def test_overdue_deliveries_are_found_for_the_sweeper(store: Store, owner: str) -> None:
    """An event whose delivery message was lost (a broker restart) is found again; once claimed it is not."""
    from datetime import timedelta

    from service.models import utcnow

    body = JobCreate.model_validate({"text": f"text {time.time_ns()}", "task": {"kind": "summary"}})
    content = body.text or ""
    inline = (hashlib.sha256(content.encode()).hexdigest(), content, len(content), "inline.txt")
    callback = (f"http://example.com/{time.time_ns()}", None)
    request = body.model_dump(mode="json", exclude={"text"})
    job_id = store.submit_job(owner, request, body.fingerprint(), None, None, inline, callback, lambda _: None).job.id
    run = store.start_run(job_id, "w1", 60)
    assert isinstance(run, Run)
    event, moved = store.finish(job_id, "completed", lambda j: "{}", token=run.token)
    assert moved and event is not None
    assert (event.id, 1) not in store.overdue_deliveries(grace_s=60, stale_s=60)  # not due yet
    assert (event.id, 1) in store.overdue_deliveries(grace_s=0, stale_s=60)  # its first attempt never ran
    assert store.claim_attempt(event.id, 1, stale_after=60) is None
    assert (event.id, 1) not in store.overdue_deliveries(grace_s=0, stale_s=60)
    assert (event.id, 1) in store.overdue_deliveries(grace_s=0, stale_s=0)  # claimed, never finished: stuck
    store.record_attempt(event.id, 1, 503, "HTTP 503", 5.0, utcnow() - timedelta(seconds=1))
    found = store.overdue_deliveries(grace_s=0, stale_s=0)
    assert (event.id, 2) in found and (event.id, 1) not in found  # the retry is due and was never sent
    store.record_attempt(event.id, 1, 204, None, 5.0, None)  # delivered: nothing more to do
    assert all(e != event.id for e, _ in store.overdue_deliveries(grace_s=0, stale_s=0))
