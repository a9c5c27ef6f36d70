"""What the service tests share: keys, a free port, waiting, a webhook receiver, an API in a thread, a worker
process, and a private TOME_HOME. The `database` fixture (conftest.py) gives each file a PostgreSQL database."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import uvicorn
from standardwebhooks.webhooks import Webhook

ROOT = Path(__file__).resolve().parents[1]
PG = "postgresql://postgres@127.0.0.1:5432"
ALICE, BOB = "alice-test-key-0123456789", "bob-test-key-0123456789ab"
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
# About 200 tokens: jobs over it take seconds with SmolLM2 on a CPU.
DOC = (
    "The lighthouse keeper of Saint Brell was a woman named Orla Venn. Every evening she climbed the one hundred "
    "and twelve steps of the tower to light the lamp, and every morning she wrote the weather in a green ledger. "
    "Her only companion was a grey cat called Pilot, who slept on the warm stones beside the lamp. Supply boats "
    "came from the harbour town of Keswith on the first day of each month, bringing oil, flour and letters. "
    "In the winter of the great storm the supply boat was late by nine days, and Orla lived on oatmeal and tea. "
    "When the boat finally arrived, its captain, a tall man named Edmund Harrow, brought her a new brass telescope."
)
QUESTIONS = ["What is the name of the cat?", "Who is the lighthouse keeper?"]


@contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """A new, migrated PostgreSQL database for the block (its SQLAlchemy URL), dropped after it."""
    from service.store import migrate

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def flushed(redis_url: str) -> Iterator[None]:
    """An empty Redis DB for the block, emptied again after it."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield
    finally:
        client.flushdb()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Receiver:
    """A webhook endpoint on localhost that records every delivery; can be started late (down, then up)."""

    def __init__(self, replies: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.replies = list(replies or [])  # (status, headers) for the first deliveries; then 204
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        deliveries, replies = self.deliveries, self.replies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status, headers = replies.pop(0) if replies else (204, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def events(self, secret: str) -> list[dict[str, Any]]:
        """Every delivery, verified by the reference Standard Webhooks implementation (raises if one is forged)."""
        verifier = Webhook(secret)
        return [{"id": h["webhook-id"], **verifier.verify(body, h)} for h, body in list(self.deliveries)]


def serve(settings: Any) -> tuple[str, uvicorn.Server]:
    """The API on a free port in a thread of this process; set `should_exit` on the server to stop it."""
    from service.api import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    wait_for(lambda: server.started, 20, "the API to start")
    return f"http://127.0.0.1:{port}", server


@contextmanager
def api_client(settings: Any, **headers: str) -> Iterator[httpx.Client]:
    """A client of an API served (`serve`) for the block."""
    base, server = serve(settings)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            yield client
    finally:
        server.should_exit = True


def settings_from(env: dict[str, str], **overrides: Any) -> Any:
    """The Settings a process started with `env` (TOME_* variables) would read, with `overrides`."""
    from engines.settings import Settings

    values = {k.removeprefix("TOME_").lower(): v for k, v in env.items()}
    values["webhook_retry_delays"] = json.loads(values["webhook_retry_delays"])
    return Settings(**{**values, **overrides})


class Worker:
    """A Celery worker process (one prefork child) reading the cpu and webhooks queues."""

    def __init__(self, env: dict[str, str], name: str, log: Path) -> None:
        self.log = log.open("w")
        cmd = [sys.executable, "-m", "celery", "-A", "service.celery_app", "worker", "-Q", "cpu,webhooks"]
        cmd += ["-c", "1", "--pool", "prefork", "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
        cmd += ["--loglevel", "INFO"]
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            cmd, env=full_env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as when a host dies."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


def qa_job(**extra: Any) -> dict[str, Any]:
    return {"text": DOC, "task": {"kind": "qa", "questions": QUESTIONS}, "max_answer_tokens": 8, **extra}


def private_home(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TOME_HOME of the test's own (rag's local Qdrant folder admits one process, and another run on the host
    may hold the default one) that shares the usual home's converted models."""
    from engines.settings import Settings

    home = tmp_path_factory.mktemp("tome-home")
    models = Settings().home / "models"
    if models.is_dir():
        (home / "models").symlink_to(models, target_is_directory=True)
    return str(home)


def stack_env(database: str, redis_url: str, home: str, **values: str) -> dict[str, str]:
    """TOME_* variables for an API and workers on `database` and `redis_url`, with alice's and bob's keys."""
    return {
        "TOME_HOME": home,
        "TOME_DATABASE_URL": database,
        "TOME_REDIS_URL": redis_url,
        "TOME_API_KEYS": f"alice:{ALICE},bob:{BOB}",
        "TOME_THREADS": "1",  # on a shared, busy host two spinning OpenMP threads run ~10x slower than one
        **values,
    }
