"""The service end to end: the API (uvicorn, real HTTP), a real Celery worker process over Redis, PostgreSQL,
the real SmolLM2 engine, and a local webhook receiver that verifies signatures with the `standardwebhooks` library.

Timeouts are upper bounds for a 2-core host shared with other model runs (there, at a load average of 20, the
file took 100 s). Uses its own PostgreSQL database and Redis DB 14, created and
emptied here. Tests run in file order and share one worker: the kill test ends it and starts a second one, which
the cancel test then uses.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from bench.stack import Receiver, Worker
from service.auth import hash_key
from service.schemas import JobCreate
from service.store import Store
from tests.helpers import (
    ALICE,
    BOB,
    DOC,
    QUESTIONS,
    SECRET,
    api_client,
    flushed,
    qa_job,
    serve,
    settings_from,
    wait_for,
)

REDIS_URL = "redis://127.0.0.1:6379/14"


@pytest.fixture(scope="module")
def env(database: str) -> Iterator[dict[str, str]]:
    with flushed(REDIS_URL):
        yield {
            "TOME_DATABASE_URL": database,
            "TOME_REDIS_URL": REDIS_URL,
            "TOME_API_KEYS": f"alice:{ALICE},bob:{BOB}",
            "TOME_ALLOW_PRIVATE_CALLBACKS": "true",
            "TOME_MAX_UPLOAD_BYTES": str(64 * 1024),
            # A lost worker's job comes back when its lease lapses (8 s here), re-queued by a live worker's sweeper; the
            # broker's redelivery (visibility timeout) is only a last resort, out of these tests' reach.
            "TOME_LEASE_SECONDS": "8",
            "TOME_LEASE_SWEEP_INTERVAL": "1",
            "TOME_BROKER_VISIBILITY_TIMEOUT": "3600",
            "TOME_BROKER_RESTORE_INTERVAL": "1",
            "TOME_WEBHOOK_RETRY_DELAYS": "[0.5, 1, 1, 2, 2, 3]",
            "TOME_WEBHOOK_JITTER": "0.1",
            "TOME_THREADS": "1",  # on a shared, busy host two spinning OpenMP threads run ~10x slower than one
        }


@pytest.fixture(scope="module")
def api(env: dict[str, str]) -> Iterator[httpx.Client]:
    with api_client(settings_from(env), Authorization=f"Bearer {ALICE}") as client:
        yield client


def submit(api: httpx.Client, body: dict[str, Any], key: str | None = None, **headers: str) -> httpx.Response:
    if key is not None:
        headers["Idempotency-Key"] = key
    return api.post("/v1/jobs", json=body, headers=headers)


def wait_job(api: httpx.Client, job_id: str, timeout: float, done: Any = None) -> dict[str, Any]:
    done = done or (lambda j: j["status"] in ("completed", "failed", "cancelled"))

    def check() -> dict[str, Any] | None:
        job = api.get(f"/v1/jobs/{job_id}").json()
        return job if done(job) else None

    return wait_for(check, timeout, f"job {job_id}", every=0.3)


def too_long_job(**extra: Any) -> dict[str, Any]:
    """Fails in the router at once (strategy `full`, a document over the context): no model time spent. About 20K
    tokens in 40 KB: inline text is held to the upload limit (64 KiB here)."""
    text = " ".join(str(i % 10) for i in range(20_000))
    return {"text": text, "task": {"kind": "summary"}, "strategy": "full", **extra}


def test_documents_upload_dedup_and_bad_inputs(api: httpx.Client, env: dict[str, str]) -> None:
    files = {"file": ("keeper.md", DOC.encode(), "text/markdown")}
    first = api.post("/v1/documents", files=files)
    again = api.post("/v1/documents", files=files)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"] and first.json()["media_type"] == "text/markdown"
    assert api.get(first.headers["location"]).json()["characters"] == len(DOC)

    def problem(response: httpx.Response, status: int, words: str) -> None:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert words in response.json()["detail"], response.json()

    problem(api.post("/v1/documents", files={"file": ("empty.txt", b"  \n", "text/plain")}), 422, "empty")
    problem(api.post("/v1/documents", files={"file": ("a.odt", b"PK\x03\x04", "application/zip")}), 415, "unsupported")
    big = {"file": ("big.txt", b"x" * (65 * 1024), "text/plain")}
    problem(api.post("/v1/documents", files=big), 413, "limit")
    problem(api.post("/v1/jobs", content=b'{"text": "x", ', headers={"content-type": "application/json"}), 400, "JSON")
    problem(submit(api, {"document_id": "doc_nope", "task": {"kind": "summary"}}), 404, "doc_nope")
    problem(submit(api, {"text": "x", "task": {"kind": "qa", "questions": []}}), 422, "questions")
    bad_schema = {"kind": "extract", "json_schema": {"type": "nonsense"}}
    problem(submit(api, {"text": "x", "task": bad_schema}), 422, "JSON Schema")
    problem(submit(api, {"text": "x", "task": {"kind": "summary"}, "strategy": "psychic"}), 422, "psychic")
    problem(api.get("/v1/jobs", headers={"Authorization": ""}), 401, "API key is required")
    problem(api.get("/v1/jobs", headers={"Authorization": "Bearer not-a-key"}), 401, "not valid")
    as_bob = {"Authorization": f"Bearer {BOB}"}
    problem(
        api.post("/v1/jobs", json={"document_id": first.json()["id"], "task": {"kind": "summary"}}, headers=as_bob),
        404,
        first.json()["id"],
    )

    strict, server = serve(settings_from(env, allow_private_callbacks=False))
    try:
        for url in ("http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://169.254.169.254/latest"):
            response = httpx.post(f"{strict}/v1/jobs", json=qa_job(callback_url=url), headers={"X-API-Key": ALICE})
            problem(response, 422, "private, loopback or link-local")
    finally:
        server.should_exit = True


def test_job_result_and_signed_webhook(api: httpx.Client, workers: list[Worker]) -> None:
    receiver = Receiver(SECRET).start()
    try:
        doc_id = api.post("/v1/documents", files={"file": ("keeper.txt", DOC.encode(), "text/plain")}).json()["id"]
        body = {"document_id": doc_id, "task": {"kind": "qa", "questions": QUESTIONS}, "max_answer_tokens": 12}
        response = submit(api, {**body, "callback_url": receiver.url, "callback_secret": SECRET})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert response.headers["location"] == f"/v1/jobs/{job_id}"
        job = wait_job(api, job_id, 600)
        assert job["status"] == "completed", job
        # The router picks full (it fits); where full's answer is not backed by the text, rag answers instead
        assert "fits" in job["reason"] and job["document_tokens"] > 100
        assert job["result"]["attempts"][0]["strategy"] == "full" and job["strategy"] in ("full", "rag")
        answers = job["result"]["answers"]
        assert [a["question"] for a in answers] == QUESTIONS
        said = " ".join(a["text"] for a in answers).lower()
        only_in_document = ("pilot", "orla", "venn", "brell", "warm stones", "keswith")
        assert any(w in said for w in only_in_document), answers  # the model read the document
        chosen = next(a for a in job["result"]["attempts"] if a["strategy"] == job["result"]["strategy"])
        assert [a["supported"] for a in answers] == chosen["supported"]  # each answer says if its evidence backs it
        assert job["cost"]["calls"] >= 2 and job["cost"]["tokens_read"] > 200
        assert job["progress"]["done"] == job["progress"]["total"] == len(job["result"]["attempts"])

        events = wait_for(receiver.events, 30, "the webhook")
        assert len(events) == 1 and events[0]["type"] == "job.completed"
        assert events[0]["data"]["id"] == job_id and events[0]["data"]["result"]["answers"][0]["text"]
        hook = wait_for(lambda: (h := api.get(f"/v1/jobs/{job_id}").json()["webhook"])["delivered_at"] and h, 30, "it")
        assert hook["event_id"] == events[0]["id"]
        assert [(a["attempt"], a["status_code"]) for a in hook["attempts"]] == [(1, 204)]

        headers, raw = receiver.deliveries[0]
        forged = {**headers, "webhook-signature": headers["webhook-signature"][:-6] + "AAAAA="}
        with pytest.raises(Exception, match="signature"):
            Webhook(SECRET).verify(raw, forged)

        as_bob = {"Authorization": f"Bearer {BOB}"}
        assert api.get(f"/v1/jobs/{job_id}", headers=as_bob).status_code == 404  # another key's job
        assert api.delete(f"/v1/jobs/{job_id}", headers=as_bob).status_code == 404
        assert api.get("/v1/jobs", headers=as_bob).json()["jobs"] == []
        assert api.delete(f"/v1/jobs/{job_id}").status_code == 409  # it ended already
        listed = api.get("/v1/jobs", params={"status": "completed"}).json()["jobs"]
        assert job_id in [j["id"] for j in listed]
        metrics = api.get("/metrics").text
        assert 'tome_jobs{status="completed"}' in metrics and "tome_http_request_seconds_bucket" in metrics
    finally:
        receiver.stop()


def test_idempotency_key(api: httpx.Client, env: dict[str, str]) -> None:
    body = too_long_job()
    first = submit(api, body, key="idem-1")
    assert first.status_code == 202
    other = submit(api, {**body, "max_answer_tokens": 7}, key="idem-1")
    assert other.status_code == 422 and "different request" in other.json()["detail"]
    failed = wait_job(api, first.json()["id"], 60)
    assert failed["status"] == "failed" and "cannot run this request" in failed["error"]
    replay = submit(api, body, key="idem-1")
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
    assert replay.headers["idempotent-replayed"] == "true" and replay.json()["status"] == "failed"
    assert submit(api, body, key="idem-2").json()["id"] != first.json()["id"]  # a new key is a new job

    # An API whose queue no worker reads: its jobs stay queued, so a retry meets a job still in progress.
    parked, server = serve(settings_from(env, job_queue="parked"))
    try:
        with httpx.Client(base_url=parked, headers={"X-API-Key": ALICE}, timeout=30) as client:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(lambda _: submit(client, qa_job(), key="idem-race"), range(8)))
            created = [r for r in responses if r.status_code == 202]
            conflicts = [r for r in responses if r.status_code == 409]
            assert len(created) == 1 and len(conflicts) == 7, [r.status_code for r in responses]
            job_id = created[0].json()["id"]
            assert all(r.headers["location"] == f"/v1/jobs/{job_id}" for r in conflicts)
            assert "still queued" in conflicts[0].json()["detail"]
            assert client.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
            assert submit(client, qa_job(), key="idem-race").json()["id"] == job_id  # ended: the first job again
    finally:
        server.should_exit = True


def attempts(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return api.get(f"/v1/jobs/{job_id}").json()["webhook"]["attempts"]


def test_webhook_retries_until_the_receiver_is_up(api: httpx.Client, workers: list[Worker]) -> None:
    receiver = Receiver(SECRET)  # not listening yet: deliveries are refused
    job_id = submit(api, too_long_job(callback_url=receiver.url, callback_secret=SECRET)).json()["id"]
    assert wait_job(api, job_id, 60)["status"] == "failed"
    wait_for(lambda: len(attempts(api, job_id)) >= 2, 30, "two failed attempts")
    receiver.start()
    try:
        events = wait_for(receiver.events, 30, "the delivery after the receiver came up")
        hook = wait_for(lambda: (h := api.get(f"/v1/jobs/{job_id}").json()["webhook"])["delivered_at"] and h, 30, "it")
        tried = hook["attempts"]
        assert all(a["status_code"] is None and "Connect" in a["error"] for a in tried[:-1])
        assert tried[-1]["status_code"] == 204 and hook["delivered_at"]
        assert [e["id"] for e in events] == [hook["event_id"]] and events[0]["type"] == "job.failed"
    finally:
        receiver.stop()

    # Retry-After is honoured; a 410 disables the endpoint and ends the retries.
    slow = Receiver(SECRET, [(503, {"Retry-After": "3"})]).start()
    gone = Receiver(SECRET, [(410, {})]).start()
    try:
        slow_id = submit(api, too_long_job(callback_url=slow.url, callback_secret=SECRET)).json()["id"]
        gone_id = submit(api, too_long_job(callback_url=gone.url, callback_secret=SECRET)).json()["id"]

        def two_finished() -> list[dict[str, Any]] | None:
            tried = attempts(api, slow_id)
            return tried if len(tried) == 2 and tried[1]["status_code"] else None

        first, second = wait_for(two_finished, 60, "the retry after the 503")
        assert first["status_code"] == 503 and second["status_code"] == 204 and len(slow.deliveries) == 2
        waited = time.mktime(time.strptime(second["at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(
            time.strptime(first["at"][:19], "%Y-%m-%dT%H:%M:%S")
        )
        assert waited >= 2, (first, second)  # the schedule says 0.5 s; the receiver asked for 3
        wait_for(lambda: api.get(f"/v1/jobs/{gone_id}").json()["webhook"]["disabled"], 60, "the 410")
        time.sleep(2)
        hook = api.get(f"/v1/jobs/{gone_id}").json()["webhook"]
        assert [a["status_code"] for a in hook["attempts"]] == [410] and hook["gave_up_at"]
        assert "410" in hook["disabled_reason"] and len(gone.deliveries) == 1
    finally:
        slow.stop()
        gone.stop()


def summary_job(tokens: int, **extra: Any) -> dict[str, Any]:
    return {"text": DOC, "task": {"kind": "summary"}, "max_answer_tokens": tokens, **extra}


def test_killed_worker_job_resumes_on_a_new_worker(
    api: httpx.Client, env: dict[str, str], workers: list[Worker], tmp_path: Path
) -> None:
    receiver = Receiver(SECRET).start()
    try:
        job_id = submit(api, summary_job(24, callback_url=receiver.url, callback_secret=SECRET)).json()["id"]
        wait_job(api, job_id, 600, done=lambda j: j["progress"]["message"] == "reading the whole document")
        time.sleep(0.3)  # inside the model call; the checkpoint after `route` is written
        workers[0].kill()
        assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        workers.append(Worker(env, "w2", tmp_path / "w2.log"))
        job = wait_job(api, job_id, 600)
        assert job["status"] == "completed" and job["result"]["answers"][0]["text"], job
        assert job["runs"] == 2 and job["resumed_from"] == "run", job
        wait_for(lambda: receiver.deliveries, 30, "the webhook")
        time.sleep(2)  # any duplicate delivery would arrive now
        completed = {e["id"] for e in receiver.events() if e["type"] == "job.completed"}
        assert completed == {api.get(f"/v1/jobs/{job_id}").json()["webhook"]["event_id"]}
    finally:
        receiver.stop()


def test_cancel_queued_and_running(api: httpx.Client, workers: list[Worker]) -> None:
    receiver = Receiver(SECRET).start()
    try:
        running = submit(api, summary_job(200)).json()["id"]
        queued = submit(api, qa_job(callback_url=receiver.url, callback_secret=SECRET)).json()["id"]
        cancelled = api.delete(f"/v1/jobs/{queued}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        wait_job(api, running, 600, done=lambda j: j["status"] == "running" and j["progress"]["message"])
        assert api.delete(f"/v1/jobs/{running}").json()["status"] == "cancelled"  # revoked: its process is ended
        # The one worker process was busy with `running`; freed by the cancel, it delivers the queued job's event.
        events = wait_for(receiver.events, 60, "job.cancelled")
        assert [(e["type"], e["data"]["id"]) for e in events] == [("job.cancelled", queued)]
        time.sleep(3)  # the revoked worker must not write a result over the cancel, nor run the queued job
        for job_id in (running, queued):
            job = api.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "cancelled" and job["result"] is None, job
        assert api.get(f"/v1/jobs/{queued}").json()["runs"] == 0
    finally:
        receiver.stop()


def test_embedded_store_on_sqlite(tmp_path: Path) -> None:
    """Embedded mode: the same migrations and transitions on SQLite; one event per job however often it ends."""
    from service.checkpoints import open_checkpointer
    from service.store import migrate

    url = f"sqlite:///{tmp_path / 'tome.db'}"
    migrate(url)
    migrate(url)  # idempotent
    store = Store(url)
    owner = store.add_key("solo", hash_key(ALICE, b"a server secret"))
    body = JobCreate.model_validate(qa_job())
    request = body.model_dump(mode="json", exclude={"text"})
    inline = ("a" * 64, DOC, len(DOC), "inline.txt")
    queued: list[str] = []
    callback = ("http://example.com/h", None)
    first = store.submit_job(owner, request, body.fingerprint(), "k", None, inline, callback, queued.append)
    again = store.submit_job(owner, request, body.fingerprint(), "k", None, inline, None, queued.append)
    assert first.created and not again.created and again.job.id == first.job.id and queued == [first.job.id]

    def broker_down(job_id: str) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        store.submit_job(owner, request, body.fingerprint(), "k2", None, inline, None, broker_down)
    assert [j.id for j in store.list_jobs(owner, None, 10, None)] == [first.job.id]  # nothing half-stored
    assert store.endpoint_secret(owner, "http://example.com/h").startswith("whsec_")
    assert store.start_run("no-such-job") == "missing"
    assert not isinstance(store.start_run(first.job.id), str)
    event, moved = store.finish(first.job.id, "completed", lambda j: json.dumps({"id": j.id}))
    assert moved and event is not None and event.type == "job.completed"
    later, moved_again = store.finish(first.job.id, "cancelled", lambda j: "{}")
    assert not moved_again and later is not None and later.id == event.id
    assert store.start_run(first.job.id) == "ended"  # a redelivered task finds the job ended
    assert (
        open_checkpointer(f"sqlite:///{tmp_path / 'checkpoints.db'}").get_tuple(
            {"configurable": {"thread_id": first.job.id, "checkpoint_ns": ""}}
        )
        is None
    )
