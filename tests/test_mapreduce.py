"""mapreduce over a document longer than the (deliberately small) context, with the real model."""

from __future__ import annotations

import pytest

from engines.settings import Settings
from engines.types import Document, Task, TaskKind
from tests.conftest import planted_document
from workflows.graph import run_job


@pytest.fixture(scope="module")
def small_context_engine():
    from engines import create_engine

    return create_engine(Settings().engine_config(kind="native", max_context=1024))


def test_long_document_is_read_in_segments_and_answered(small_context_engine, strategies) -> None:
    text = planted_document(small_context_engine, "The ferryman's boat was painted bright orange.", 2400, 0.7)
    seen: list[tuple[int, int]] = []
    result = run_job(
        Document(text),
        [Task("What colour was the ferryman's boat painted?")],
        small_context_engine,
        strategy="mapreduce",
        progress=lambda done, total, message: seen.append((done, total)),
        strategies=strategies,
    )
    answer = result.answers[0]
    assert result.strategy == "mapreduce" and "1024" in result.reason
    assert "orange" in answer.text.lower()
    assert answer.details["segments"] >= 3 and seen[-1][0] == seen[-1][1] == answer.details["segments"]
    assert answer.cost.calls == answer.details["segments"] + 1
    assert any("orange" in e.text.lower() for e in answer.evidence)  # the note that carried the fact
    assert all(0 <= e.start < e.end <= len(text) for e in answer.evidence)


def test_summary_of_long_document(small_context_engine, strategies) -> None:
    text = planted_document(small_context_engine, "", 2400, 0.5)
    result = run_job(
        Document(text),
        [Task("", kind=TaskKind.SUMMARY, max_answer_tokens=80)],
        small_context_engine,
        strategies=strategies,
    )
    assert result.strategy == "mapreduce" and result.kind == "summary"  # the router's choice for whole-document work
    assert len(result.answers[0].text.split()) > 10


def test_a_restarted_job_reads_on_from_its_last_step(small_context_engine, tmp_path, monkeypatch, strategies) -> None:
    """Stopped after two of its segments, a job run again with the same thread id reads only the rest."""
    from service.checkpoints import open_checkpointer

    monkeypatch.setattr("workflows.mapreduce.MAP_BATCH", 1)  # one segment per step (and per checkpoint)
    text = planted_document(small_context_engine, "The ferryman's boat was painted bright orange.", 2400, 0.9)
    checkpointer = open_checkpointer(f"sqlite:///{tmp_path / 'checkpoints.db'}")
    tasks = [Task("What colour was the ferryman's boat painted?")]

    class Killed(Exception):
        pass

    first: list[str] = []

    def dies_after_two(done: int, total: int, message: str) -> None:
        first.append(message)
        if done == 2:
            raise Killed(message)

    kwargs = {"strategy": "mapreduce", "checkpointer": checkpointer, "thread_id": "job-1"}
    with pytest.raises(Killed):
        run_job(Document(text), tasks, small_context_engine, progress=dies_after_two, **kwargs, strategies=strategies)
    # The node that read segment 2 raised before it returned: its step was not checkpointed, segment 1's was.
    second: list[str] = []
    result = run_job(
        Document(text),
        tasks,
        small_context_engine,
        progress=lambda d, t, m: second.append(m),
        **kwargs,
        strategies=strategies,
    )
    total = result.answers[0].details["segments"]
    assert total >= 3 and first[:3] == [f"segment 0 of {total}", f"segment 1 of {total}", f"segment 2 of {total}"]
    assert second == [f"segment {k} of {total}" for k in range(2, total + 1)]  # segment 2 again, then the rest
    assert "orange" in result.answers[0].text.lower()
    assert result.answers[0].cost.calls == total + 1  # one note per segment, kept across the restart, and the answer
