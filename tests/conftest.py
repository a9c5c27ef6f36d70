"""Shared fixtures: the real default model through both engines, loaded once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
def vllm_engine():
    from engines import create_engine
    from engines.settings import Settings

    return create_engine(Settings().engine_config(kind="vllm", max_context=4096))


def planted_document(engine, fact: str, tokens: int = 2000, depth: float = 0.5) -> str:
    """Real text of about `tokens` tokens with `fact` inserted at a paragraph boundary near `depth`."""
    text = (EXAMPLES / "heart_of_darkness_opening.txt").read_text()
    ids = engine.tokenize(text)[:tokens]
    body = engine.detokenize(ids)
    paragraphs = body.split("\n\n")
    at = max(1, int(len(paragraphs) * depth))
    return "\n\n".join(paragraphs[:at] + [fact] + paragraphs[at:])
