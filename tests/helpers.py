"""What the service tests share: keys, an API in a thread, a private TOME_HOME. The webhook receiver and the worker
processes come from bench/stack.py (shared with the fault benchmark). The `database` fixture (conftest.py) gives
each file a PostgreSQL database."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import uvicorn

from bench.stack import free_port, wait_for

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
