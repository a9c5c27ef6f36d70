"""Job submissions at sustained load: latency of POST /v1/jobs, and that every job is stored and queued once.

The API runs as its own process (`tome serve`, uvicorn) over real PostgreSQL and Redis (a dedicated database and
Redis DB 15, created and emptied here); this process sends requests open-loop at a fixed rate. No worker runs, so
every broker message stays in the queue to be counted afterwards. A share of requests is sent twice with the same
Idempotency-Key (a client retrying), which must not make a second job.

Baselines, same run and rate: GET /healthz (the HTTP stack with no database or broker work), and a bare
INSERT + COMMIT into PostgreSQL from this process (the durable write every submission waits for; on a host whose
disk is busy with other work, its fsync sets the tail).

    python -m bench.service_load                # baseline, 60 s of inline submissions at 50 rps, 20 s by id
    python -m bench.service_load --rps 100 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from psycopg_pool import ConnectionPool

from bench.common import write_results

ROOT = Path(__file__).resolve().parents[1]
PG = "postgresql://postgres@127.0.0.1:5432"
DB_NAME = "tome_bench_service"
REDIS_URL = "redis://127.0.0.1:6379/15"
KEY = "bench-key-0123456789abcdef"
QUEUE = "bench-jobs"
TEXT = (ROOT / "examples" / "heart_of_darkness_opening.txt").read_text()[:4000]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.accepted: dict[str, set[str]] = collections.defaultdict(set)  # idempotency key -> job ids answered
        self.lag: list[float] = []

    def add(self, ms: float, outcome: str, key: str | None = None, job_id: str | None = None) -> None:
        with self.lock:
            self.latencies.append(ms)
            if outcome != "ok":
                self.errors[outcome] += 1
            if key is not None and job_id is not None:
                self.accepted[key].add(job_id)


async def run_load(client: httpx.AsyncClient, rps: float, seconds: float, send: Any, recorder: Recorder) -> float:
    """Open loop: request i is due at start + i/rps whether or not earlier ones have returned."""
    total = int(rps * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(total):
        due = start + i / rps
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            recorder.lag.append((now - due) * 1000)
        tasks.append(asyncio.create_task(send(client, i, recorder)))
    await asyncio.gather(*tasks)
    return loop.time() - start


def make_commit(pool: ConnectionPool) -> Any:
    def commit_once() -> None:
        with pool.connection() as conn:
            conn.execute("INSERT INTO bench_commits (at) VALUES (now())")

    async def commit(client: httpx.AsyncClient, i: int, recorder: Recorder) -> None:
        t = time.perf_counter()
        try:
            await asyncio.to_thread(commit_once)
            outcome = "ok"
        except psycopg.Error as exc:
            outcome = type(exc).__name__
        recorder.add((time.perf_counter() - t) * 1000, outcome)

    return commit


async def healthz(client: httpx.AsyncClient, i: int, recorder: Recorder) -> None:
    t = time.perf_counter()
    try:
        r = await client.get("/healthz")
        outcome = "ok" if r.status_code == 200 else f"http {r.status_code}"
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    recorder.add((time.perf_counter() - t) * 1000, outcome)


def make_submit(body_for: Any, count: int, retry_every: int) -> Any:
    """Request i sends body_for(i); bodies are encoded before the clock starts, so the sender does little work."""
    bodies = [json.dumps(body_for(i)).encode() for i in range(count)]

    async def submit(client: httpx.AsyncClient, i: int, recorder: Recorder) -> None:
        key = str(uuid.uuid4())
        headers = {"Idempotency-Key": key, "content-type": "application/json"}
        for attempt in range(2 if i % retry_every == 0 else 1):  # every retry_every-th client sends its request twice
            t = time.perf_counter()
            try:
                r = await client.post("/v1/jobs", content=bodies[i], headers=headers)
                # A retry meets its job still queued: 409 names it (no worker runs here).
                ok = r.status_code == 202 if attempt == 0 else r.status_code == 409
                outcome = "ok" if ok else f"http {r.status_code}"
                job_id = r.json()["id"] if r.status_code == 202 else None
            except httpx.HTTPError as exc:
                outcome, job_id = type(exc).__name__, None
            recorder.add((time.perf_counter() - t) * 1000, outcome, key, job_id)

    return submit


def summarise(scenario: str, recorder: Recorder, elapsed: float, target: float) -> dict[str, Any]:
    lat = recorder.latencies
    return {
        "scenario": scenario,
        "requests": len(lat),
        "target_rps": target,
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(percentile(lat, 50), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(max(lat), 2) if lat else None,
        "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
        "errors": sum(recorder.errors.values()),
        "error_kinds": dict(recorder.errors),
        "send_lag_p99_ms": round(percentile(recorder.lag, 99), 2) if recorder.lag else 0.0,
    }


def audit(recorder: Recorder, database: str, broker: redis.Redis) -> dict[str, int]:
    """Every acknowledged key has exactly one job row and exactly one broker message."""
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT idempotency_key, id, enqueued_at IS NOT NULL FROM jobs").fetchall()
    by_key: dict[str, list[str]] = collections.defaultdict(list)
    enqueued_flag = {}
    for key, job_id, enqueued in rows:
        by_key[key].append(job_id)
        enqueued_flag[job_id] = enqueued
    messages = collections.Counter(json.loads(m)["headers"]["id"] for m in broker.lrange(QUEUE, 0, -1))
    lost = duplicated = answered_twice_differently = 0
    for key, answered in recorder.accepted.items():
        stored = by_key.get(key, [])
        if len(answered) > 1:
            answered_twice_differently += 1
        if not stored:
            lost += 1
            continue
        if len(stored) > 1:
            duplicated += len(stored) - 1
        for job_id in stored:
            count = messages.get(job_id, 0)
            lost += count == 0
            duplicated += max(0, count - 1)
    return {
        "jobs_stored": len(rows),
        "messages_queued": sum(messages.values()),
        "lost": lost,
        "duplicated": duplicated + answered_twice_differently,
    }


async def run_scenarios(
    args: argparse.Namespace, port: int, api: subprocess.Popen[str], database: str, broker: redis.Redis
) -> list[dict[str, Any]]:
    rows = []
    # Idle connections are dropped before the server's 5 s keep-alive ends, so none is reused as it closes.
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=2)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30, limits=limits
    ) as client:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or api.poll() is not None:
                raise SystemExit("the API did not start (its log path is printed below)")
            await asyncio.sleep(0.5)
        upload = await client.post("/v1/documents", files={"file": ("opening.txt", TEXT.encode(), "text/plain")})
        document_id = upload.json()["id"]
        warm_up = make_submit(lambda i: {"text": f"warm up {i}", "task": {"kind": "summary"}}, int(args.rps * 3), 10**9)
        await run_load(client, args.rps, 3, warm_up, Recorder())  # connections, caches, the server's thread pool
        clear(database, broker)
        questions = ["Where does the story begin?", "Who narrates?"]
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_commits (at timestamptz)")
        commits = ConnectionPool(database, min_size=4, max_size=16, open=True)  # autocommit off: commit on exit
        scenarios = [
            ("healthz (baseline)", args.baseline_seconds, healthz),
            ("postgres insert+commit (baseline)", args.baseline_seconds, make_commit(commits)),
            (
                "submit inline text",
                args.seconds,
                make_submit(
                    lambda i: {"text": f"{TEXT}\n[{i}]", "task": {"kind": "qa", "questions": questions}},
                    int(args.rps * args.seconds),
                    args.retry_every,
                ),
            ),
            (
                "submit document id",
                args.baseline_seconds,
                make_submit(
                    lambda i: {"document_id": document_id, "task": {"kind": "summary"}},
                    int(args.rps * args.baseline_seconds),
                    args.retry_every,
                ),
            ),
        ]
        for scenario, seconds, send in scenarios:
            recorder = Recorder()
            elapsed = await run_load(client, args.rps, seconds, send, recorder)
            row = summarise(scenario, recorder, elapsed, args.rps)
            if scenario.endswith("(baseline)"):
                row.update({"lost": 0, "duplicated": 0})
            else:
                row.update(audit(recorder, database, broker))
                clear(database, broker)
            print(json.dumps(row), flush=True)
            rows.append(row)
        commits.close()
    return rows


def clear(database: str, broker: redis.Redis) -> None:
    broker.delete(QUEUE)
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("DELETE FROM jobs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rps", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--baseline-seconds", type=float, default=20)
    parser.add_argument("--retry-every", type=int, default=10, help="every Nth client retries its request")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn processes (the stack's default is 2)")
    parser.add_argument("--name", default="service-load")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    database = f"{PG}/{DB_NAME}"
    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TOME_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}",
        "TOME_REDIS_URL": REDIS_URL,
        "TOME_API_KEYS": f"bench:{KEY}",
        "TOME_JOB_QUEUE": QUEUE,
    }
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", str(args.api_workers)]
    log = tempfile.NamedTemporaryFile("w+", prefix="tome-bench-api-", suffix=".log", delete=False)
    api = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True)
    rows = []
    try:
        rows = asyncio.run(run_scenarios(args, port, api, database, broker))
    finally:
        api.terminate()
        try:
            api.wait(60)  # uvicorn stops its worker processes one by one: slow on a busy host
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait(10)
        broker.flushdb()
        print(f"API log: {log.name}")
    load_after = os.getloadavg()
    path = write_results(
        args.name,
        "service load: POST /v1/jobs at a fixed rate against uvicorn + PostgreSQL + Redis",
        "none (submission path; no worker runs)",
        rows,
        target={"p99_ms": 50, "lost": 0, "duplicated": 0},
        api_workers=args.api_workers,
        load_average_before=[round(x, 2) for x in load_before],  # 1/5/15-minute: how busy the host was
        load_average_after=[round(x, 2) for x in load_after],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
