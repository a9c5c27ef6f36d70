"""The evaluation harness: generators, metrics, and a smoke run of `full` with the real SmolLM2."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from engines.base import Engine
from engines.prompting import answer_overhead
from engines.types import Answer, Evidence
from evals.corpus import EVAL_DOCS, read_doc
from evals.metrics import string_match_all, string_match_part
from evals.runner import strategy_names
from evals.tasks import EVAL_SEEDS, TASKS, generate
from evals.tasks.aggregation import DOTS
from evals.tasks.qa import qa_items
from workflows.registry import Strategies

NEEDLE_TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "babilong")


@pytest.fixture(scope="module")
def engine(single_thread_engine: Engine) -> Engine:
    return single_thread_engine


@pytest.mark.parametrize("task", TASKS)
def test_generators_are_deterministic(engine: Engine, task: str) -> None:
    a, b = generate(task, engine, 2048, 3), generate(task, engine, 2048, 3)
    assert a.document.text == b.document.text
    assert (a.question, a.answers, a.depth) == (b.question, b.answers, b.depth)
    other = generate(task, engine, 2048, 4)
    assert other.document.text != a.document.text


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [2048, 4096, 16384])
def test_lengths_within_two_percent(engine: Engine, task: str, length: int) -> None:
    sample = generate(task, engine, length, 1)
    needed = engine.count_tokens(sample.document.text) + answer_overhead(engine, sample.question)
    assert needed == sample.prompt_tokens
    assert 0.98 * length <= needed <= length


def test_longest_length_within_two_percent(engine: Engine) -> None:
    sample = generate("niah_single", engine, 131072, 1)
    assert 0.98 * 131072 <= sample.prompt_tokens <= 131072


@pytest.mark.parametrize("task", NEEDLE_TASKS)
def test_answers_occur_exactly_once(engine: Engine, task: str) -> None:
    for seed in range(5):  # every depth of the grid
        sample = generate(task, engine, 2048, seed)
        text = sample.document.text
        assert sample.unique, "needle tasks declare what they place once"
        for value in sample.unique:
            assert text.count(value) == 1, (task, seed, value)
        if task.startswith("niah"):
            assert set(sample.answers) <= set(sample.unique)


def test_needles_sit_at_their_depth(engine: Engine) -> None:
    for seed, depth in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):
        sample = generate("niah_single", engine, 4096, seed)
        at = sample.document.text.index(sample.answers[0]) / len(sample.document.text)
        assert sample.depth == depth
        assert abs(at - depth) < 0.05, (seed, at)


def test_babilong_facts_at_sentence_boundaries(engine: Engine) -> None:
    for seed in range(3):  # one, two and three supporting facts
        sample = generate("babilong", engine, 2048, seed)
        assert sample.info["supporting_facts"] == seed + 1
        text = sample.document.text
        for fact in sample.info["facts"]:
            assert text.count(fact) == 1
            start = text.index(fact)
            assert start == 0 or re.search(r"[.!?][\"')\]”’]*\s+$", text[max(0, start - 5) : start]), fact


def test_vt_chain_leads_to_every_answer(engine: Engine) -> None:
    sample = generate("vt", engine, 4096, 2)
    text = sample.document.text
    first, *rest = sample.answers
    assert f"VAR {first} = " in text
    for previous, name in zip(sample.answers, rest, strict=False):
        assert f"VAR {name} = VAR {previous}." in text


def test_cwe_and_fwe_answers_are_the_most_frequent(engine: Engine) -> None:
    cwe = generate("cwe", engine, 4096, 0)
    counts = Counter(re.findall(r"\d+\. (\S+)", cwe.document.text))
    top = {w for w, _ in counts.most_common(len(cwe.answers))}
    assert top == set(cwe.answers)
    assert min(counts[w] for w in cwe.answers) > max(c for w, c in counts.items() if w not in cwe.answers)

    fwe = generate("fwe", engine, 4096, 0)
    counts = Counter(w for w in fwe.document.text.split(" ") if w != DOTS)
    ranked = counts.most_common(4)
    assert {w for w, _ in ranked[:3]} == set(fwe.answers)
    assert ranked[2][1] > ranked[3][1]


def test_qa_items_are_checkable() -> None:
    items = qa_items()
    assert len({i.doc for i in items}) >= 3
    for item in items:
        assert item.doc in EVAL_DOCS
        doc = read_doc(item.doc)
        assert doc.count(item.evidence) == 1, item.evidence
        assert any(a.lower() in item.evidence.lower() for a in item.answers), item.question


def test_qa_windows_hold_the_passage(engine: Engine) -> None:
    for seed in range(len(qa_items())):
        sample = generate("qa", engine, 2048, seed)
        assert sample.info["evidence"] in sample.document.text


def test_held_out_sets_are_exposed() -> None:
    assert len(EVAL_SEEDS) >= 100 and 0 in EVAL_SEEDS
    assert all(read_doc(name) for name in EVAL_DOCS)
    with pytest.raises(ValueError):
        read_doc("austen_pride_and_prejudice.txt")  # training material, not an eval document


def test_metrics_score_known_strings() -> None:
    assert string_match_all("The numbers are 123 and 456.", ["123", "456"]) == 1.0
    assert string_match_all("Only 123 here", ["123", "456"]) == 0.5
    assert string_match_all("nothing", ["123"]) == 0.0
    assert string_match_all("KITCHEN", ["kitchen"]) == 1.0
    assert string_match_part("It was the Nellie.", ["nellie", "yawl"]) == 1.0
    assert string_match_part("a boat", ["Nellie", "yawl"]) == 0.0


def test_scored_answers_say_whether_the_reference_reached_the_model(engine: Engine) -> None:
    sample = generate("niah_single", engine, 2048, 0)
    value = sample.answers[0]
    cut = Evidence(0, 9, f"is: {value[:3]}\n{value[3:]}")  # the value split over two kept spans did not arrive
    whole = Evidence(0, 9, f"is: {value}.")
    assert sample.scored(Answer("I do not know.", "s", [cut]))["evidence_recall"] == 0.0
    assert sample.scored(Answer("I do not know.", "s", [cut, whole]))["evidence_recall"] == 1.0
    assert sample.scored(Answer(value, "s"))["evidence_recall"] is None
    # Evidence named by its place only (full, compllm and gist read the whole document) is that text of the document.
    everything = Evidence(0, len(sample.document.text), "")
    assert sample.scored(Answer("I do not know.", "s", [everything]))["evidence_recall"] == 1.0
    assert sample.scored(Answer("I do not know.", "s", [Evidence(0, 9, "")]))["evidence_recall"] == 0.0


def test_runner_uses_the_registry(strategies: Strategies) -> None:
    assert strategy_names("all", strategies) == list(strategies)
    with pytest.raises(ValueError, match="unknown strategy"):
        strategy_names("no-such-strategy", strategies)


def test_smoke_run_of_full_writes_results(tmp_path: Path) -> None:
    from service.cli import main

    argv = ["eval", "--strategy", "full", "--preset", "smoke", "--tasks", "niah_single", "--lengths", "2K,16K"]
    assert main([*argv, "--name", "smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    doc = json.loads((tmp_path / "eval-smoke.json").read_text())
    assert {"benchmark", "date", "commit", "machine", "model", "rows"} <= set(doc)
    rows = {r["length"]: r for r in doc["rows"]}
    assert rows[2048]["status"] == "ok" and rows[2048]["n"] == 1
    assert 0.0 <= rows[2048]["accuracy"] <= 1.0
    assert rows[2048]["calls"] == 1 and rows[2048]["tokens_read"] > 1900
    assert rows[16384]["status"] == "does_not_fit" and rows[16384]["accuracy"] is None
    for suffix in (".md", "-accuracy.png", "-depth-full.png", ".questions.jsonl"):
        assert (tmp_path / f"eval-smoke{suffix}").stat().st_size > 0
    assert "does_not_fit" in (tmp_path / "eval-smoke.md").read_text()


def test_length_is_what_full_really_needs(engine: Engine) -> None:
    """The estimate `full` fits by (document + answer_overhead) equals the engine's count of the real prompt."""
    from engines.prompting import answer_messages

    for task in ("niah_single", "qa", "cwe"):
        sample = generate(task, engine, 2048, 0)
        real = engine.count_chat_tokens(answer_messages(sample.document.text, sample.question))
        assert real + sample.question.max_answer_tokens == sample.prompt_tokens


def test_eval_pair_compares_the_questions_both_runs_answered() -> None:
    from bench.eval_pair import pair

    def answer(task: str, seed: int, accuracy: float, prediction: str) -> dict:
        return {
            "task": task,
            "length": 4096,
            "seed": seed,
            "accuracy": accuracy,
            "prediction": prediction,
            "tokens_read": 100,
            "seconds": 1.0,
        }

    base = {("qa", 4096, s): answer("qa", s, a, p) for s, a, p in [(0, 1.0, "x"), (1, 0.0, "y"), (2, 1.0, "z")]}
    new = {("qa", 4096, s): answer("qa", s, a, p) for s, a, p in [(0, 1.0, "x"), (1, 1.0, "w")]}  # seed 2 missing
    [qa, total] = pair(base, new)
    assert (qa["task"], qa["n"], qa["accuracy"], qa["baseline_accuracy"]) == ("qa", 2, 1.0, 0.5)
    assert qa["difference"] == 0.5 and qa["same_answer"] == 0.5
    assert total["task"] == "all" and total["n"] == 2


def test_eval_pair_by_strategy_compares_each_strategy_on_the_questions_both_engines_answered() -> None:
    from bench.eval_pair import by_strategy

    def answer(strategy: str, length: int, seed: int, accuracy: float, seconds: float) -> dict:
        return {
            "strategy": strategy,
            "task": "qa",
            "length": length,
            "seed": seed,
            "accuracy": accuracy,
            "prediction": str(accuracy),
            "seconds": seconds,
        }

    native = [answer("full", 2048, 0, 1.0, 2.0), answer("full", 4096, 0, 1.0, 2.0), answer("rag", 2048, 0, 0.0, 1.0)]
    vllm = [answer("full", 2048, 0, 1.0, 1.0), answer("full", 4096, 0, 0.0, 1.0), answer("rag", 2048, 0, 0.0, 3.0)]
    vllm.append(answer("gist", 2048, 0, 1.0, 1.0))  # the baseline never asked it: no row
    full, rag = by_strategy(native, vllm)
    assert (full["strategy"], full["n"], full["length"]) == ("full", 2, "2K-4K")
    assert (full["baseline_accuracy"], full["accuracy"], full["difference_points"]) == (1.0, 0.5, -50.0)
    assert not full["within_5_points"] and full["not_slower"]
    assert (rag["length"], rag["difference_points"]) == ("2K", 0.0)
    assert rag["within_5_points"] and not rag["not_slower"]
