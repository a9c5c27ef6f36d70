"""How long a job's progress takes to reach a client over `GET /v1/jobs/{id}/events`, against polling.

The API runs as its own process (`tome serve`) over real PostgreSQL (its own database, created here) and Redis
(DB 13; jobs go to a queue no worker reads). This process holds a job in `running` and records progress as a
worker does (`Store.set_progress`, at irregular intervals), while N clients follow the job: over the event stream,
or (the baseline, the page's fallback) by polling `GET /v1/jobs/{id}` once a second. Latency is from the commit of
each update to its arrival at each client; `lost` counts updates a client never saw (a poller misses updates that
come faster than it asks; the stream sends the latest state, so it can too), `duplicated` updates seen twice.

    PYTHONPATH=. python -m bench.sse_latency [--updates 60] [--streams 1,20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from bench.common import write_results
from bench.service_load import free_port, percentile
from service.auth import hash_key
from service.store import Store, migrate

ROOT = Path(__file__).resolve().parents[1]
PG = "postgresql://postgres@127.0.0.1:5432"
DB_NAME = "tome_bench_sse"
REDIS_URL = "redis://127.0.0.1:6379/13"
KEY = "bench-sse-key-0123456789abcdef"


class Follower(threading.Thread):
    """One client following the job: records when it first saw each `done` value."""

    def __init__(self, base: str, job_id: str, mode: str) -> None:
        super().__init__(daemon=True)
        self.base, self.job_id, self.mode = base, job_id, mode
        self.seen: dict[int, float] = {}
        self.duplicated = 0
        self.errors = 0
        self.ready = threading.Event()
        self.stop = threading.Event()

    def note(self, done: int) -> None:
        if done in self.seen:
            return
        self.seen[done] = time.perf_counter()

    def run(self) -> None:
        headers = {"X-API-Key": KEY}
        with httpx.Client(base_url=self.base, headers=headers, timeout=httpx.Timeout(30, read=None)) as client:
            try:
                if self.mode == "sse":
                    self.stream(client)
                else:
                    self.poll(client)
            except httpx.HTTPError:
                self.errors += 1

    def stream(self, client: httpx.Client) -> None:
        last = None
        event = ""
        with client.stream("GET", f"/v1/jobs/{self.job_id}/events") as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                if not line.startswith("data:"):
                    continue
                data = json.loads(line[5:])
                if event == "end":
                    return
                state = (data["status"], data["progress"]["done"], data["progress"]["message"])
                if state == last:  # the same state sent twice
                    self.duplicated += 1
                last = state
                self.note(data["progress"]["done"])
                self.ready.set()

    def poll(self, client: httpx.Client) -> None:
        while not self.stop.is_set():
            job = client.get(f"/v1/jobs/{self.job_id}").json()
            self.note(job["progress"]["done"])
            self.ready.set()
            if job["status"] != "running":
                return
            time.sleep(1.0)


def run_scenario(base: str, store: Store, mode: str, clients: int, updates: int, seed: int) -> dict[str, Any]:
    with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=30) as api:
        job = api.post("/v1/jobs", json={"text": "bench", "task": {"kind": "qa", "questions": ["q?"]}}).json()
    assert store.start_run(job["id"]) not in ("missing", "ended")
    followers = [Follower(base, job["id"], mode) for _ in range(clients)]
    for f in followers:
        f.start()
    for f in followers:
        f.ready.wait(30)
    rng = random.Random(seed)
    sent: dict[int, float] = {}
    started = time.perf_counter()
    for done in range(1, updates + 1):
        time.sleep(rng.uniform(0.2, 1.5))  # a strategy's steps: irregular, some faster than a poller asks
        store.set_progress(job["id"], done, updates, f"segment {done} of {updates}")
        sent[done] = time.perf_counter()
    time.sleep(2.5)
    elapsed = time.perf_counter() - started
    with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=30) as api:
        api.delete(f"/v1/jobs/{job['id']}")
    for f in followers:
        f.stop.set()
        f.join(10)
    latencies = [(f.seen[d] - sent[d]) * 1000 for f in followers for d in sent if d in f.seen]
    lost = sum(1 for f in followers for d in sent if d not in f.seen)
    return {
        "scenario": f"progress_{mode}_{clients}_clients",
        "requests": updates * clients,
        "rps": round(updates / elapsed, 2),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "errors": sum(f.errors for f in followers),
        "lost": lost,
        "duplicated": sum(f.duplicated for f in followers),
        "transport": "sse" if mode == "sse" else "polling 1 s",
        "clients": clients,
        "updates": updates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--streams", default="1,20", help="numbers of clients following the job at once")
    parser.add_argument("--poll-interval", type=float, default=0.25, help="TOME_EVENTS_POLL_INTERVAL")
    parser.add_argument("--name", default="sse-latency")
    args = parser.parse_args()
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    database = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB_NAME}"
    migrate(database)
    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    store = Store(database)
    store.add_key("bench", hash_key(KEY))
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TOME_DATABASE_URL": database,
        "TOME_REDIS_URL": REDIS_URL,
        "TOME_JOB_QUEUE": "bench-sse",
        "TOME_EVENTS_POLL_INTERVAL": str(args.poll_interval),
    }
    api = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--no-migrate", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        load_before = os.getloadavg()[0]
        for clients in (int(c) for c in args.streams.split(",")):
            for mode in ("sse", "poll"):
                row = run_scenario(base, store, mode, clients, args.updates, seed=clients)
                row["poll_interval_s"] = args.poll_interval if mode == "sse" else 1.0
                rows.append(row)
                print(row, flush=True)
    finally:
        api.terminate()
        api.wait(20)
        store.db_engine.dispose()
        broker.flushdb()
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    load = {"load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2)}
    print(write_results(args.name, "sse_latency", "none", rows, **load))


if __name__ == "__main__":
    main()
