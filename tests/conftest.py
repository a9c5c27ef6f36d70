"""Shared fixtures: the real default model through both engines, loaded once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.text import paragraphs_of, plant

# vLLM's engine core stays in this process: tests need no spawn guard and load the model once.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def native_engine():
    from engines import create_engine
    from engines.settings import Settings

    return create_engine(Settings().engine_config(kind="native"))


@pytest.fixture(scope="session")
def strategies():
    """Every strategy, built from the settings as the entry points build them."""
    from engines.settings import Settings
    from workflows.registry import build_strategies

    return build_strategies(Settings())


@pytest.fixture(scope="session")
def single_thread_engine():
    """The native engine with torch on one thread (for the harness's generators; one thread is the faster choice
    on a busy CPU, and torch's thread count is per process, so every test after it runs on one thread too)."""
    from engines import create_engine
    from engines.settings import Settings

    return create_engine(Settings().engine_config(kind="native", threads=1))


@pytest.fixture(scope="session")
def float32_engine():
    """The native engine on CPU in float32: for checks that compare scores or logits exactly."""
    from engines import EngineConfig, create_engine

    return create_engine(EngineConfig(kind="native", device="cpu", dtype="float32"))


@pytest.fixture(scope="session")
def vllm_engine():
    from engines import create_engine
    from engines.settings import Settings

    return create_engine(Settings().engine_config(kind="vllm", max_context=4096))


@pytest.fixture(scope="module")
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated PostgreSQL database of the test file's own (tome_<file>_<pid>), dropped after the file."""
    from tests.helpers import fresh_database

    with fresh_database(f"tome_{request.module.__name__.rsplit('.', 1)[-1]}_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="module")
def workers(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list]:
    """One Celery worker on the test file's `env`; a test may append more, and all are killed after the file."""
    from bench.stack import Worker

    logs = tmp_path_factory.mktemp("workers")
    started = [Worker(env, "w1", logs / "w1.log")]
    yield started
    for w in started:
        w.kill()


def planted_document(
    engine, fact: str, tokens: int = 2000, depth: float = 0.5, source: str = "heart_of_darkness_opening.txt"
) -> str:
    """About `tokens` tokens of an example text with `fact` planted as a paragraph of its own after the first
    `depth` of its paragraphs (at least one)."""
    units = paragraphs_of(engine.detokenize(engine.tokenize((EXAMPLES / source).read_text())[:tokens]))
    return plant(units, [(max(1, int(len(units) * depth)) / len(units), fact)], paragraphs=True)
