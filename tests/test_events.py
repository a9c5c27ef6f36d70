"""`GET /v1/jobs/{id}/events` over real HTTP (uvicorn), PostgreSQL, Redis and a real Celery worker.

Reuses test_service.py's stack with its own database and Redis DB 12 (not 14: a worker of a test_service.py run
elsewhere on the host would take this file's jobs, and this one theirs). The latency test holds a job in `running`
without a worker (its API queues to a queue nobody reads) and records progress the way a worker does
(`Store.set_progress`), timing how long each update takes to reach the client.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.stack import Worker
from service.store import Store
from tests.helpers import ALICE, BOB, flushed, private_home, qa_job, serve, settings_from, stack_env, wait_for

REDIS_URL = "redis://127.0.0.1:6379/12"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[dict[str, str]]:
    with flushed(REDIS_URL):
        yield stack_env(database, REDIS_URL, private_home(tmp_path_factory), TOME_WEBHOOK_RETRY_DELAYS="[0.5, 1, 2]")


def read_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of an SSE response, as they arrive."""
    event, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


@pytest.fixture(scope="module")
def idle_api(env: dict[str, str]) -> Iterator[tuple[str, Store]]:
    """An API whose jobs go to a queue no worker reads, and the store it writes to."""
    settings = settings_from(env, job_queue="sse-idle", events_poll_interval=0.25)
    base, server = serve(settings)
    yield base, Store(settings.database())
    server.should_exit = True


def test_events_owner_rules(idle_api: tuple[str, Store]) -> None:
    base, _ = idle_api
    with httpx.Client(base_url=base, timeout=30) as client:
        job = client.post("/v1/jobs", json=qa_job(), headers={"Authorization": f"Bearer {ALICE}"}).json()
        path = f"/v1/jobs/{job['id']}/events"
        missing = client.get(path)
        assert missing.status_code == 401 and missing.headers["content-type"].startswith("application/problem+json")
        other = client.get(path, headers={"X-API-Key": BOB})
        assert other.status_code == 404
        assert other.json()["detail"] == f"no job {job['id']!r} for this API key"
        assert client.get("/v1/jobs/nope/events", headers={"X-API-Key": ALICE}).status_code == 404
        # A queued job: the first event says so at once; cancelling it ends the stream with the job.
        cancelled: list[tuple[str, dict[str, Any]]] = []
        with client.stream("GET", path, headers={"X-API-Key": ALICE}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for name, data in read_events(response):
                cancelled.append((name, data))
                if name == "progress" and data["status"] == "queued":
                    assert client.delete(f"/v1/jobs/{job['id']}", headers={"X-API-Key": ALICE}).status_code == 200
        assert [n for n, _ in cancelled] == ["progress", "progress", "end"]
        assert cancelled[-1][1]["status"] == "cancelled" and cancelled[-1][1]["id"] == job["id"]


def test_progress_reaches_the_client_within_a_second(idle_api: tuple[str, Store]) -> None:
    base, store = idle_api
    with httpx.Client(base_url=base, timeout=30, headers={"X-API-Key": ALICE}) as client:
        job = client.post("/v1/jobs", json=qa_job()).json()
        assert store.start_run(job["id"]) not in ("missing", "ended")  # as a worker would
        received: dict[int, float] = {}
        first = threading.Event()

        def listen() -> None:
            with client.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
                for name, data in read_events(response):
                    if name == "progress":
                        received.setdefault(data["progress"]["done"], time.perf_counter())
                        first.set()
                    if name == "end":
                        return

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        assert first.wait(20), "no first event"
        sent: dict[int, float] = {}
        rounds = 20
        for done in range(1, rounds + 1):
            time.sleep(0.1 + 0.037 * (done % 7))  # not in step with the poll interval
            sent[done] = time.perf_counter()
            assert store.set_progress(job["id"], done, rounds, f"segment {done} of {rounds}")
            wait_for(lambda d=done: d in received, 5, f"progress {done} on the stream", every=0.01)
        client.delete(f"/v1/jobs/{job['id']}")
        thread.join(10)
        latencies = sorted(received[d] - sent[d] for d in sent)
        p50, worst = statistics.median(latencies), latencies[-1]
        print(f"SSE progress latency over {rounds} updates: p50 {p50 * 1000:.0f} ms, max {worst * 1000:.0f} ms")
        assert worst < 1.0, latencies


def test_events_follow_a_real_job(
    env: dict[str, str],
    workers: list[Worker],
) -> None:
    base, server = serve(settings_from(env))
    try:
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {ALICE}"}) as client:
            job = client.post("/v1/jobs", json=qa_job()).json()
            seen: list[tuple[str, dict[str, Any]]] = []
            deadline = time.monotonic() + 600
            with client.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=httpx.Timeout(30, read=600)) as r:
                for name, data in read_events(r):
                    seen.append((name, data))
                    assert time.monotonic() < deadline
            names = [n for n, _ in seen]
            assert names[-1] == "end" and set(names[:-1]) == {"progress"}
            end = seen[-1][1]
            assert end["status"] == "completed", (end["error"], end)
            assert len(end["result"]["answers"]) == 2
            statuses = [d["status"] for n, d in seen if n == "progress"]
            assert "running" in statuses
            running = [d for n, d in seen if n == "progress" and d["status"] == "running"]
            assert any(d["strategy"] for d in running) or end["strategy"]
    finally:
        server.should_exit = True


def test_openapi_declares_the_api_key_schemes(idle_api: tuple[str, Store]) -> None:
    base, _ = idle_api
    schema = httpx.get(f"{base}/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http" and schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    either = [{"bearerAuth": []}, {"apiKeyHeader": []}]
    for path, method in [
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{job_id}", "delete"),
        ("/v1/jobs/{job_id}/events", "get"),
        ("/v1/documents", "post"),
        ("/v1/documents/{document_id}/text", "get"),
    ]:
        operation = schema["paths"][path][method]
        assert operation["security"] == either and "401" in operation["responses"], (path, method)
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in schema["paths"][open_path]["get"]
    assert "/" not in schema["paths"]


def test_cors_is_off_by_default_and_on_for_named_origins(env: dict[str, str], idle_api: tuple[str, Store]) -> None:
    base, _ = idle_api
    preflight = {
        "Origin": "https://ui.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    off = httpx.options(f"{base}/v1/jobs", headers=preflight)
    assert "access-control-allow-origin" not in off.headers
    plain = httpx.get(f"{base}/v1/jobs", headers={"Origin": "https://ui.example", "X-API-Key": ALICE})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers

    on, server = serve(settings_from(env, job_queue="sse-idle", cors_origins="https://ui.example, https://b.example/"))
    try:
        allowed = httpx.options(f"{on}/v1/jobs", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = httpx.options(f"{on}/v1/jobs", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        response = httpx.get(f"{on}/v1/jobs", headers={"Origin": "https://b.example", "X-API-Key": ALICE})
        assert response.headers["access-control-allow-origin"] == "https://b.example"
        denied = httpx.get(f"{on}/v1/jobs", headers={"Origin": "https://b.example"})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://b.example"
        assert "location" in response.headers["access-control-expose-headers"].lower()
    finally:
        server.should_exit = True
