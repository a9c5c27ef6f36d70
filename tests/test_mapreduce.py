"""mapreduce over a document longer than the (deliberately small) context, with the real model."""

from __future__ import annotations

import pytest

from engines.types import Document, Task, TaskKind
from service.settings import Settings
from tests.conftest import planted_document
from workflows.graph import run_job


@pytest.fixture(scope="module")
def small_context_engine():
    from engines import create_engine

    return create_engine(Settings().engine_config(kind="native", max_context=1024))


def test_long_document_is_read_in_segments_and_answered(small_context_engine) -> None:
    text = planted_document(small_context_engine, "The ferryman's boat was painted bright orange.", 2400, 0.7)
    seen: list[tuple[int, int]] = []
    result = run_job(
        Document(text),
        [Task("What colour was the ferryman's boat painted?")],
        small_context_engine,
        strategy="mapreduce",
        progress=lambda done, total, message: seen.append((done, total)),
    )
    answer = result.answers[0]
    assert result.strategy == "mapreduce" and "1024" in result.reason
    assert "orange" in answer.text.lower()
    assert answer.details["segments"] >= 3 and seen[-1][0] == seen[-1][1] == answer.details["segments"]
    assert answer.cost.calls == answer.details["segments"] + 1
    assert any("orange" in e.text.lower() for e in answer.evidence)  # the note that carried the fact
    assert all(0 <= e.start < e.end <= len(text) for e in answer.evidence)


def test_summary_of_long_document(small_context_engine) -> None:
    text = planted_document(small_context_engine, "", 2400, 0.5)
    result = run_job(Document(text), [Task("", kind=TaskKind.SUMMARY, max_answer_tokens=80)], small_context_engine)
    assert result.strategy == "mapreduce" and result.kind == "summary"  # the router's choice for whole-document work
    assert len(result.answers[0].text.split()) > 10
