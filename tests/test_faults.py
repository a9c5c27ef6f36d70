"""The fault suite (`make test-faults`): the scenarios of bench/service_faults.py with fewer trials, on the real
stack (PostgreSQL, Redis, the API process, Celery worker processes, SmolLM2 on the CPU). Each asserts no job lost,
none run twice to completion, exactly one event per job at the receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.service_faults import (
    PrivatePostgres,
    PrivateRedis,
    Stack,
    kill_worker_host,
    race_two_workers,
    receiver_down_an_hour,
    restart_under_jobs,
)

pytestmark = pytest.mark.faults
LEASE_S = 10.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two workers with the model loaded, as on two hosts. (Every stack here has its own database and Redis DB: a
    worker of one must never take another's messages.)"""
    s = Stack(tmp_path_factory.mktemp("faults"), lease_seconds=LEASE_S).start()
    try:
        with s.client() as client:
            s.add_worker("w1")
            s.add_worker("w2")
            s.warm(client, 2)
        yield s
    finally:
        s.stop()


def test_racing_workers_run_each_job_once(stack: Stack) -> None:
    row = race_two_workers(stack, 30)
    assert (row["lost"], row["duplicated"], row["runs_other_than_one"]) == (0, 0, 0), row
    assert row["events_delivered"] == 30, row


def test_a_killed_worker_hosts_job_resumes_on_another_worker(stack: Stack) -> None:
    row = kill_worker_host(stack, 1, tokens=4500)
    assert (row["lost"], row["duplicated"], row["events_delivered"]) == (0, 0, 2), row
    assert row["runs"] == [1, 2], row
    # The lease lapses after LEASE_S; a sweep (every second) re-queues it and the other worker takes it.
    assert row["seconds_to_resume"] < LEASE_S + 15, row
    # It went on from its last checkpoint: the first step after the resume is past the steps done at the kill.
    assert row["segments_done_at_first_progress_after_resume"][0] > row["segments_done_at_kill"][0], row


def test_a_receiver_down_for_an_hour_gets_each_event_once(tmp_path: Path) -> None:
    scale = 720.0  # an hour of the default schedule (5 s, 5 min, 30 min, ...) in 5 s
    delays = [d / scale for d in (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)]
    extra = {"TOME_WEBHOOK_RETRY_DELAYS": str(delays), "TOME_WEBHOOK_JITTER": "0.2"}
    s = Stack(tmp_path, lease_seconds=LEASE_S, redis_url="redis://127.0.0.1:6379/10", extra_env=extra).start()
    try:
        with s.client() as client:
            s.add_worker("w1")
            s.warm(client, 1)
        row = receiver_down_an_hour(s, 3, scale)
    finally:
        s.stop()
    assert (row["lost"], row["duplicated"], row["events_delivered"]) == (0, 0, 3), row
    assert all(a >= 4 for a in row["attempts_per_event"]), row  # 5 s, 5 min, 30 min ... failed within the hour


def test_jobs_survive_a_redis_restart(tmp_path: Path) -> None:
    broker = PrivateRedis(tmp_path).start()
    s = Stack(tmp_path, lease_seconds=LEASE_S, redis_url=broker.url).start()
    try:
        with s.client() as client:
            s.add_worker("w1")
            s.warm(client, 1)
        row = restart_under_jobs(s, "redis_restart", 6, broker.restart)
    finally:
        s.stop()
        broker.stop()
    assert (row["lost"], row["duplicated"], row["events_delivered"]) == (0, 0, 6), row


def test_jobs_survive_a_postgres_restart(tmp_path: Path) -> None:
    """The database restarts while a job runs: the worker stops at its next write, its lease lapses, a sweeper
    re-queues the job once the database is back, and it completes once."""
    server = PrivatePostgres().start()
    s = Stack(tmp_path, lease_seconds=LEASE_S, redis_url="redis://127.0.0.1:6379/9", pg=server.url).start()
    try:
        with s.client() as client:
            s.add_worker("w1")
            s.warm(client, 1)
        row = restart_under_jobs(s, "postgres_restart", 4, server.restart, wait_running=True)
    finally:
        s.stop()
        server.remove()
    assert (row["lost"], row["duplicated"], row["events_delivered"]) == (0, 0, 4), row
