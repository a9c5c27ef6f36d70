"""`tome ask` end to end, as a user runs it: a subprocess, real files, the real model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT, planted_document

FACT = "The lighthouse keeper's dog was called Biscuit."


def tome(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def planted_file(tmp_path_factory: pytest.TempPathFactory, native_engine) -> Path:
    path = tmp_path_factory.mktemp("docs") / "planted.txt"
    path.write_text(planted_document(native_engine, FACT, tokens=2000, depth=0.6))
    return path


@pytest.fixture(scope="module")
def short_planted_file(tmp_path_factory: pytest.TempPathFactory, native_engine) -> Path:
    """The same fact in 600 tokens: for claims about the output, not about reading length (each strategy that runs
    reads the whole of it, and the unanswerable question runs every fallback)."""
    path = tmp_path_factory.mktemp("docs") / "short.txt"
    path.write_text(planted_document(native_engine, FACT, tokens=600, depth=0.6))
    return path


@pytest.mark.parametrize("engine", ["native", "vllm"])
def test_planted_fact_is_answered(planted_file: Path, engine: str) -> None:
    out = tome("ask", str(planted_file), "What was the lighthouse keeper's dog called?", "--engine", engine, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert "biscuit" in result["answer"].lower()
    assert result["strategy"] == "full"
    assert 1900 < result["document"]["tokens"] < 2100
    assert result["engine"]["kind"] == engine
    assert result["cost"]["calls"] == 1 and result["cost"]["tokens_read"] > result["document"]["tokens"]
    assert result["kind"] == "lookup" and result["attempts"] == [{"strategy": "full", "supported": [True]}]
    assert result["supported"] is True  # the answer given was found in its evidence
    keys = {"question", "answer", "supported", "strategy", "reason", "kind", "attempts", "document", "engine", "cost"}
    keys |= {"evidence", "unsupported_reply"}
    assert set(result) == keys and result["unsupported_reply"] is None


def test_a_question_the_document_does_not_answer_gets_it_said(short_planted_file: Path) -> None:
    out = tome("ask", str(short_planted_file), "Which country won the 1998 football World Cup final?", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    # whatever the model replied, nothing read backs it near what was asked: the answer says so
    assert result["answer"] == "The document does not say." and result["supported"] is False


def test_plain_output_has_answer_on_stdout_and_cost_on_stderr(planted_file: Path) -> None:
    # The 2000-token file: on the 600-token one the 135M model copies the opening sentence on some CPUs (seen on
    # one machine, with the code that passed on another), and this test is about the output, not the reading.
    out = tome("ask", str(planted_file), "What was the lighthouse keeper's dog called?")
    assert out.returncode == 0, out.stderr
    assert "biscuit" in out.stdout.lower()
    assert "strategy: full" in out.stderr and "tokens read" in out.stderr
    assert "unsupported" not in out.stderr


def test_full_never_truncates() -> None:
    out = tome("ask", str(EXAMPLES / "walden_long.txt"), "What did Thoreau build?", "--strategy", "full")
    assert out.returncode == 2
    assert "tome: error:" in out.stderr and "8192" in out.stderr
    assert "39" in out.stderr  # the document's ~39K tokens are named too


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.txt", "q"], "missing.txt: file not found"),
        (["pyproject.toml", "q"], "unsupported file type '.toml'"),
        (["examples/heart_of_darkness_opening.txt", "q", "--strategy", "telepathy"], "unknown strategy 'telepathy'"),
    ],
)
def test_bad_input_exits_2_with_reason(args: list[str], message: str) -> None:
    out = tome("ask", *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
