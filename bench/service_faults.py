"""Faults on the real stack: a worker host killed mid-job, workers racing for one job, a Redis restart, a webhook
receiver down for an hour (of compressed time). Each scenario counts jobs lost, jobs run twice, and events
delivered; the kill scenario also times the recovery against a clean run of the same job.

Everything is real: PostgreSQL (a database created here), Redis (DB 13 of 127.0.0.1:6379, or a private
redis-server for the restart), the API (`tome serve` as its own process), Celery workers (`celery worker`
processes, killed with SIGKILL as a lost host is), a webhook receiver on localhost, and SmolLM2 on the CPU.
`tests/test_faults.py` runs the same scenarios with fewer trials (`make test-faults`).

    python -m bench.service_faults                          # all scenarios, the default lease (60 s)
    python -m bench.service_faults --scenarios race_two_workers --race-trials 100
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from bench.stack import Receiver, Worker, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
PG = "postgresql://postgres@127.0.0.1:5432"
KEY = "faults-key-0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(b"f" * 32).decode()
QUESTION = "What did the author pay for the boards of his house?"
TERMINAL = ("completed", "failed", "cancelled")
STACKS = itertools.count()


def long_text(tokens: int = 6000) -> str:
    """Real prose of about `tokens` SmolLM2 tokens (about 4 characters a token)."""
    return (ROOT / "examples" / "walden_long.txt").read_text()[: tokens * 4]


@dataclass
class Stack:
    """PostgreSQL database, Redis, the API process, workers; `env` is what every process gets."""

    logs: Path
    lease_seconds: float = 10.0
    redis_url: str = "redis://127.0.0.1:6379/13"
    extra_env: dict[str, str] = field(default_factory=dict)
    pg: str = PG  # a PostgreSQL server, as postgresql://user@host:port
    db_name: str = field(default_factory=lambda: f"tome_faults_{os.getpid()}_{next(STACKS)}")  # one per stack
    workers: list[Worker] = field(default_factory=list)
    api: subprocess.Popen[bytes] | None = None
    base_url: str = ""

    @property
    def database(self) -> str:
        return f"{self.pg.replace('postgresql://', 'postgresql+psycopg://', 1)}/{self.db_name}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "TOME_DATABASE_URL": self.database,
            "TOME_REDIS_URL": self.redis_url,
            "TOME_API_KEYS": f"faults:{KEY}",
            "TOME_ALLOW_PRIVATE_CALLBACKS": "true",
            "TOME_MAX_CONTEXT": "1024",  # a 6K-token document is read in 9 segments
            "TOME_THREADS": "1",
            "TOME_PRELOAD_ENGINE": "true",  # a replacement worker is ready before it takes a job
            "TOME_LEASE_SECONDS": str(self.lease_seconds),
            "TOME_LEASE_SWEEP_INTERVAL": "1",
            "TOME_DELIVERY_GRACE": "3",  # a delivery lost with the broker is sent again 3 s after it was due
            "TOME_BROKER_VISIBILITY_TIMEOUT": "3600",  # recovery must come from the leases, not from redelivery
            "TOME_WEBHOOK_RETRY_DELAYS": "[0.5, 1, 1, 2, 2, 3]",
            "TOME_WEBHOOK_JITTER": "0.1",
            **self.extra_env,
        }

    def start(self) -> Stack:
        from service.store import migrate

        with psycopg.connect(f"{self.pg}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {self.db_name}")
        migrate(self.database)
        redis.Redis.from_url(self.redis_url).flushdb()
        self.start_api()
        return self

    def start_api(self) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "service.cli", "serve", "--no-migrate", "--port", str(port)]
        log = (self.logs / "api.log").open("a")
        self.api = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "the API")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": KEY}, timeout=30)

    def add_worker(self, name: str) -> Worker:
        worker = Worker(self.env, name, self.logs / f"{name}.log")
        self.workers.append(worker)
        return worker

    def warm(self, client: httpx.Client, count: int) -> None:
        """Until `count` workers have each run a job (the model loaded): one job per worker, at once."""
        ids = [
            submit(client, {"text": "A short note.", "task": {"kind": "summary"}, "max_answer_tokens": 1})
            for _ in range(count)
        ]
        for job_id in ids:
            wait_job(client, job_id, 900)

    def stop(self) -> None:
        for w in self.workers:
            w.kill()
        if self.api is not None:
            self.api.terminate()
            self.api.wait(20)
        redis.Redis.from_url(self.redis_url).flushdb()
        with psycopg.connect(f"{self.pg}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=body)
    response.raise_for_status()
    return response.json()["id"]


def wait_job(client: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        try:
            response = client.get(f"/v1/jobs/{job_id}")
        except httpx.HTTPError:
            return None
        job = response.json() if response.status_code == 200 else {}  # a 5xx while the database restarts
        return job if job.get("status") in TERMINAL else None

    return wait_for(ended, timeout, f"job {job_id}", every=0.3)


def audit(stack: Stack, job_ids: list[str], receiver: Receiver | None) -> dict[str, Any]:
    """lost: jobs not ended (or failed); duplicated: jobs taken more than once to a completion, or with more than
    one event at the receiver; events_delivered: distinct events received."""
    with psycopg.connect(stack.database.replace("+psycopg", ""), autocommit=True) as conn:
        rows = conn.execute("SELECT id, status, runs FROM jobs WHERE id = ANY(%s)", (job_ids,)).fetchall()
        events = dict(
            conn.execute(
                "SELECT job_id, count(*) FROM events WHERE job_id = ANY(%s) GROUP BY job_id", (job_ids,)
            ).fetchall()
        )
    status = {r[0]: r[1] for r in rows}
    received: dict[str, set[str]] = {}
    if receiver is not None:
        for e in receiver.events():
            received.setdefault(e["data"]["id"], set()).add(e["id"])
    return {
        "lost": sum(1 for j in job_ids if status.get(j) not in TERMINAL),
        "duplicated": sum(1 for j in job_ids if events.get(j, 0) > 1 or len(received.get(j, ())) > 1),
        "events_delivered": sum(len(v) for v in received.values()),
        "runs": {r[0]: r[2] for r in rows},
        "status": status,
    }


def kill_worker_host(stack: Stack, trials: int, tokens: int = 6000) -> dict[str, Any]:
    """A clean run of a mapreduce job, then `trials` runs of the same job whose worker is SIGKILLed after its
    first step: seconds from the kill until another worker holds the lease, and the total against the clean run."""
    body = {"text": long_text(tokens), "task": {"kind": "qa", "questions": [QUESTION]}, "strategy": "mapreduce"}
    body["max_answer_tokens"] = 16
    receiver = Receiver(SECRET).start()
    job_ids, to_resume, totals, at_kill, after = [], [], [], [], []
    try:
        with stack.client() as client:
            start = time.monotonic()
            clean = submit(client, {**body, "callback_url": receiver.url, "callback_secret": SECRET})
            assert wait_job(client, clean, 1800)["status"] == "completed"
            baseline = time.monotonic() - start
            job_ids.append(clean)
            for trial in range(trials):
                # A different text each time, so no cache of another job helps: the same length.
                text = body["text"][trial + 1 :] + body["text"][: trial + 1]
                start = time.monotonic()
                job_id = submit(client, {**body, "text": text, "callback_url": receiver.url, "callback_secret": SECRET})
                job_ids.append(job_id)

                def stepped(job_id: str = job_id) -> dict[str, Any] | None:
                    job = client.get(f"/v1/jobs/{job_id}").json()
                    return job if job["status"] == "running" and job["progress"]["done"] >= 1 else None

                job = wait_for(stepped, 900, "the job's first step", every=0.1)
                holder = next(w for w in stack.workers if w.holds(job["worker"]))
                holder.kill()
                killed = time.monotonic()
                at_kill.append(job["progress"]["done"])
                stack.workers.remove(holder)
                stack.add_worker(f"{holder.name}x")  # the lost host's replacement (it loads the model first)

                def taken(job_id: str = job_id) -> dict[str, Any] | None:
                    job = client.get(f"/v1/jobs/{job_id}").json()
                    return job if job["runs"] >= 2 and job["status"] == "running" else None

                taken_job = wait_for(taken, 900, "another worker to take the job", every=0.1)
                to_resume.append(time.monotonic() - killed)

                def progressed(job_id: str = job_id, was: str | None = taken_job["progress"]["message"]) -> Any:
                    job = client.get(f"/v1/jobs/{job_id}").json()
                    moved = job["status"] in TERMINAL or job["progress"]["message"] != was
                    return job if moved else None

                after.append(wait_for(progressed, 900, "progress after the resume", every=0.1)["progress"]["done"])
                assert wait_job(client, job_id, 1800)["status"] == "completed"
                totals.append(time.monotonic() - start)
        wait_for(lambda: len({e["data"]["id"] for e in receiver.events()}) >= len(job_ids), 120, "the events")
        time.sleep(3)  # a duplicate event would arrive now
        result = audit(stack, job_ids, receiver)
    finally:
        receiver.stop()
    return {
        "scenario": "kill_worker_host",
        "trials": trials,
        "seconds_to_resume": round(sum(to_resume) / len(to_resume), 2) if to_resume else None,
        "seconds_total": round(sum(totals) / len(totals), 2) if totals else None,
        "baseline_seconds": round(baseline, 2),
        "lost": result["lost"],
        "duplicated": result["duplicated"],
        "events_delivered": result["events_delivered"],
        "lease_seconds": stack.lease_seconds,
        "max_seconds_to_resume": round(max(to_resume), 2) if to_resume else None,
        "segments_done_at_kill": at_kill,
        "segments_done_at_first_progress_after_resume": after,
        "runs": [result["runs"][j] for j in job_ids],
    }


def race_two_workers(stack: Stack, trials: int) -> dict[str, Any]:
    """Every job's message is sent twice (a duplicate delivery), to two idle workers at once: each job must be
    taken by one of them, run once, and send one event. The jobs end in the router (a document over `full`'s
    context), so a trial costs no model time."""
    from celery import Celery

    from service.celery_app import RUN_JOB

    celery = Celery(broker=stack.redis_url)
    receiver = Receiver(SECRET).start()
    text = long_text(1500)
    job_ids: list[str] = []
    try:
        start = time.monotonic()
        with stack.client() as client:
            for trial in range(trials):
                body = {"text": f"{trial}. {text}", "task": {"kind": "summary"}, "strategy": "full"}
                job_id = submit(client, {**body, "callback_url": receiver.url, "callback_secret": SECRET})
                celery.send_task(RUN_JOB, args=[job_id], task_id=job_id, queue="cpu")
                job_ids.append(job_id)
            for job_id in job_ids:
                wait_job(client, job_id, 600)
        seconds = time.monotonic() - start
        wait_for(lambda: len(receiver.deliveries) >= trials, 120, "the events")
        time.sleep(3)
        result = audit(stack, job_ids, receiver)
    finally:
        receiver.stop()
    twice = sum(1 for r in result["runs"].values() if r != 1)
    return {
        "scenario": "race_two_workers",
        "trials": trials,
        "seconds_to_resume": None,
        "seconds_total": round(seconds, 2),
        "baseline_seconds": None,
        "lost": result["lost"],
        "duplicated": result["duplicated"] + twice,
        "events_delivered": result["events_delivered"],
        "runs_other_than_one": twice,
        "messages_per_job": 2,
        "workers": len(stack.workers),
    }


def receiver_down_an_hour(stack: Stack, trials: int, scale: float) -> dict[str, Any]:
    """The receiver refuses connections for an hour (of the default retry schedule compressed `scale` times) after
    the jobs end, then comes up: each job's one event must arrive once."""
    receiver = Receiver(SECRET)  # not listening yet
    job_ids: list[str] = []
    down = 3600 / scale
    start = time.monotonic()
    try:
        with stack.client() as client:
            for trial in range(trials):
                body = {"text": f"{trial}. {long_text(1500)}", "task": {"kind": "summary"}, "strategy": "full"}
                job_ids.append(submit(client, {**body, "callback_url": receiver.url, "callback_secret": SECRET}))
            for job_id in job_ids:
                wait_job(client, job_id, 600)
            time.sleep(down)  # the events exist now, and their deliveries fail for the hour
            receiver.start()
            up = time.monotonic()
            wait_for(lambda: len(receiver.deliveries) >= trials, 600 / scale * 60, "the deliveries")
            delivered = time.monotonic() - up
            time.sleep(3)
            attempts = [len(client.get(f"/v1/jobs/{j}").json()["webhook"]["attempts"]) for j in job_ids]
        result = audit(stack, job_ids, receiver)
    finally:
        receiver.stop()
    return {
        "scenario": "receiver_down_an_hour",
        "trials": trials,
        "seconds_to_resume": round(delivered, 2),
        "seconds_total": round(time.monotonic() - start, 2),
        "baseline_seconds": None,
        "lost": result["lost"],
        "duplicated": result["duplicated"],
        "events_delivered": result["events_delivered"],
        "time_scale": scale,
        "attempts_per_event": attempts,
    }


def restart_under_jobs(
    stack: Stack, scenario: str, trials: int, restart: Callable[[], None], wait_running: bool = False
) -> dict[str, Any]:
    """Jobs in flight while the broker or the database restarts: none lost, none run twice, one event each."""
    receiver = Receiver(SECRET).start()
    job_ids: list[str] = []
    try:
        start = time.monotonic()
        with stack.client() as client:
            for trial in range(trials):
                body = {"text": f"{trial}. A short note about lamps.", "task": {"kind": "summary"}}
                job_ids.append(
                    submit(
                        client,
                        {**body, "max_answer_tokens": 4, "callback_url": receiver.url, "callback_secret": SECRET},
                    )
                )
            if wait_running:  # restart while a job is being run, not only while they wait in the queue
                wait_for(lambda: client.get(f"/v1/jobs/{job_ids[0]}").json()["status"] != "queued", 600, "a start")
            restart()
            for job_id in job_ids:
                wait_job(client, job_id, 900)
        seconds = time.monotonic() - start
        wait_for(lambda: len(receiver.deliveries) >= trials, 120, "the events")
        time.sleep(3)
        result = audit(stack, job_ids, receiver)
    finally:
        receiver.stop()
    return {
        "scenario": scenario,
        "trials": trials,
        "seconds_to_resume": None,
        "seconds_total": round(seconds, 2),
        "baseline_seconds": None,
        "lost": result["lost"],
        "duplicated": result["duplicated"],  # more than one event for a job, at the store or the receiver
        "events_delivered": result["events_delivered"],
        # Taken again after the outage: their first run stopped at a failed write, left its lease to lapse, and the
        # job resumed on the next take (one completion, one event: not duplicates).
        "rerun_after_outage": sum(1 for r in result["runs"].values() if r > 1),
    }


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb in a temporary folder, run as the `postgres` user), which a scenario
    may restart without touching the shared server."""

    def __init__(self) -> None:
        # Under /tmp itself: the `postgres` user cannot enter a test's private temporary folders.
        self.port, self.folder = free_port(), Path(tempfile.mkdtemp(prefix="tome-faults-pg-"))
        shutil.chown(self.folder, "postgres")
        self._as_postgres(f"initdb -D {self.folder}/data -A trust -U postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def _as_postgres(self, command: str) -> None:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, capture_output=True)

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._as_postgres(f"pg_ctl -D {self.folder}/data -o '{options}' -l {self.folder}/log -w start")
        return self

    def stop(self) -> None:
        self._as_postgres(f"pg_ctl -D {self.folder}/data -m fast -w stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def restart(self, down: float = 3.0) -> None:
        self.stop()
        time.sleep(down)
        self.start()


class PrivateRedis:
    """A redis-server of our own (append-only file on), which a scenario may restart without touching others'."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder = free_port(), folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        cmd = [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._ping(), 20, "redis")
        return self

    def _ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def restart(self, down: float = 2.0) -> None:
        self.stop()
        time.sleep(down)
        self.start()


def main() -> None:
    from bench.common import write_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scenarios", default="kill_worker_host,race_two_workers,redis_restart,postgres_restart,receiver_down_an_hour"
    )
    parser.add_argument("--lease-seconds", type=float, default=60, help="TOME_LEASE_SECONDS (the default: 60)")
    parser.add_argument("--kill-trials", type=int, default=2)
    parser.add_argument("--kill-tokens", type=int, default=4500, help="the job's document (1024-token context)")
    parser.add_argument("--race-trials", type=int, default=100)
    parser.add_argument("--restart-trials", type=int, default=10)
    parser.add_argument("--receiver-trials", type=int, default=5)
    parser.add_argument("--time-scale", type=float, default=360, help="an hour of the retry schedule in 10 s")
    parser.add_argument("--name", default="service-faults")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    logs = Path(tempfile.mkdtemp(prefix="tome-faults-"))
    load_before = os.getloadavg()
    rows = []

    def two_workers(stack: Stack) -> None:
        with stack.client() as client:
            stack.add_worker("w1")
            stack.add_worker("w2")
            stack.warm(client, 2)

    if {"kill_worker_host", "race_two_workers"} & set(scenarios):
        stack = Stack(logs, lease_seconds=args.lease_seconds).start()
        try:
            two_workers(stack)
            if "race_two_workers" in scenarios:
                rows.append(race_two_workers(stack, args.race_trials))
                print(rows[-1], flush=True)
            if "kill_worker_host" in scenarios:
                rows.append(kill_worker_host(stack, args.kill_trials, args.kill_tokens))
                print(rows[-1], flush=True)
        finally:
            stack.stop()
    if "receiver_down_an_hour" in scenarios:
        delays = [d / args.time_scale for d in (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)]
        extra = {"TOME_WEBHOOK_RETRY_DELAYS": str(delays), "TOME_WEBHOOK_JITTER": "0.2"}
        stack = Stack(logs, args.lease_seconds, "redis://127.0.0.1:6379/10", extra).start()
        try:
            stack.add_worker("w1")
            rows.append(receiver_down_an_hour(stack, args.receiver_trials, args.time_scale))
            print(rows[-1], flush=True)
        finally:
            stack.stop()
    if "redis_restart" in scenarios:
        broker = PrivateRedis(logs).start()
        stack = Stack(logs, lease_seconds=args.lease_seconds, redis_url=broker.url).start()
        try:
            two_workers(stack)
            rows.append(restart_under_jobs(stack, "redis_restart", args.restart_trials, broker.restart))
            print(rows[-1], flush=True)
        finally:
            stack.stop()
            broker.stop()
    if "postgres_restart" in scenarios:
        server = PrivatePostgres().start()
        stack = Stack(logs, args.lease_seconds, "redis://127.0.0.1:6379/9", pg=server.url).start()
        try:
            two_workers(stack)
            rows.append(restart_under_jobs(stack, "postgres_restart", args.restart_trials, server.restart, True))
            print(rows[-1], flush=True)
        finally:
            stack.stop()
            server.remove()
    path = write_results(
        args.name,
        "service faults: worker host lost, racing workers, broker restart, receiver down (real stack, SmolLM2 CPU)",
        "smollm2 (TOME_MAX_CONTEXT=1024)",
        rows,
        lease_seconds=args.lease_seconds,
        load_average_before=[round(x, 2) for x in load_before],
        load_average_after=[round(x, 2) for x in os.getloadavg()],
        logs=str(logs),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
