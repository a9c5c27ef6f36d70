"""Routing decisions, fallback on unsupported answers, and the policy file, with the real model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from engines.base import Engine
from engines.prompting import answer_each
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, TaskKind
from evals.tasks import TASKS, generate
from tests.conftest import ROOT, planted_document
from workflows import registry
from workflows.analysis import KIND_OF_EVAL_TASK, task_kind
from workflows.graph import run_job
from workflows.policy import PRIOR_QUESTIONS, Entry, Policy, fit
from workflows.registry import Strategies
from workflows.router import Budget, choose_strategy
from workflows.verify import answer_supported

LOOKUP = Task("What was the lighthouse keeper's dog called?")
AGGREGATION = Task("What are the most common words used throughout the text?")


def policy() -> Policy:
    rows = [
        ("full", "lookup", 4096, 0.95, 4000),
        ("rag", "lookup", 4096, 0.80, 1500),
        ("full", "lookup", 8192, 0.7, 8000),
        ("rag", "lookup", 8192, 0.9, 3000),
        ("rag", "lookup", 32768, 0.9, 3000),
        ("mapreduce", "lookup", 32768, 0.6, 33000),
        ("rag", "aggregation", 32768, 0.1, 3000),
        ("mapreduce", "aggregation", 32768, 0.5, 33000),
    ]
    return Policy("test", [Entry(s, k, n, a, t, 1.0, 10) for s, k, n, a, t in rows])


def test_task_kinds_are_read_from_the_request() -> None:
    assert task_kind(LOOKUP) == "lookup"
    assert task_kind(AGGREGATION) == "aggregation"
    assert task_kind(Task("What is the value assigned to variable X?")) == "multihop"
    assert task_kind(Task("Where is the football? Answer with one location.")) == "multihop"  # its latest place
    assert task_kind(Task("Where was the treaty signed?")) == "lookup"  # a past event: one fact says it
    assert task_kind(Task("Where was the apple before the kitchen?")) == "multihop"  # bAbI's earlier place
    assert task_kind(Task("According to the old tradition, who was Walden Pond named after?")) == "lookup"
    assert task_kind(Task("Who kept the school Franklin was sent to after the grammar school?")) == "lookup"
    assert task_kind(Task("", kind=TaskKind.SUMMARY)) == "summary"
    # People's phrasing: lists named in the plural; stems inside words are not words.
    assert task_kind(Task("Which composers does the letter mention?")) == "aggregation"
    assert task_kind(Task("Who were the four sisters living at the farm?")) == "aggregation"
    assert task_kind(Task("Which country did the traveller come from?")) == "lookup"  # "count" is not in "country"
    assert task_kind(Task("What was everything in the trunk worth?")) == "lookup"  # nor "every" in "everything"
    assert task_kind(Task("name, year", kind=TaskKind.EXTRACT, json_schema={})) == "extract"


def test_eval_rows_are_fit_under_the_kind_the_router_reads(native_engine: Engine) -> None:
    for name in (t for t in TASKS if t != "docqa"):  # docqa's rows carry each question's own kind
        question = generate(name, native_engine, 2048, 0).question
        assert task_kind(question) == KIND_OF_EVAL_TASK[name], (name, question.question)


def test_short_document_goes_to_full(native_engine: Engine, strategies: Strategies) -> None:
    route = choose_strategy("auto", 3000, [LOOKUP], native_engine, policy(), strategies=strategies)
    assert route.strategy == "full" and "accuracy 0.95" in route.reason and "3000" in route.reason
    assert f"policy test ({len(policy().entries)} measurements)" in route.reason  # which policy chose
    assert route.fallbacks == ["rag"]


def test_a_fallback_that_would_read_a_book_is_not_lined_up(native_engine: Engine, strategies: Strategies) -> None:
    # At 32K the lookup goes to rag; mapreduce, measured reading 33K tokens there, is the next best.
    route = choose_strategy(
        "auto", 32768, [LOOKUP], native_engine, policy(), Budget(max_fallback_tokens=16384), strategies=strategies
    )
    assert route.strategy == "rag" and route.fallbacks == []
    assert "no fallback reads more than 16384 tokens" in route.reason
    route = choose_strategy(
        "auto", 32768, [LOOKUP], native_engine, policy(), Budget(max_fallback_tokens=None), strategies=strategies
    )
    assert route.strategy == "rag" and route.fallbacks == ["mapreduce"]


def test_within_tolerance_the_cheaper_strategy_wins(native_engine: Engine, strategies: Strategies) -> None:
    tolerant = policy()
    tolerant.entries.append(Entry("rag", "lookup", 2048, 0.94, 1000, 1.0, 10))
    tolerant.entries.append(Entry("full", "lookup", 2048, 0.95, 2000, 1.0, 10))
    assert choose_strategy("auto", 2000, [LOOKUP], native_engine, tolerant, strategies=strategies).strategy == "rag"


def test_long_lookup_goes_to_retrieval(native_engine: Engine, strategies: Strategies) -> None:
    route = choose_strategy("auto", 30000, [LOOKUP], native_engine, policy(), strategies=strategies)
    assert route.strategy == "rag" and route.kind == "lookup"


def test_aggregation_goes_to_segment_reading(native_engine: Engine, strategies: Strategies) -> None:
    route = choose_strategy("auto", 30000, [AGGREGATION], native_engine, policy(), strategies=strategies)
    assert route.strategy == "mapreduce" and route.kind == "aggregation"


def test_budget_is_a_constraint(native_engine: Engine, strategies: Strategies) -> None:
    route = choose_strategy(
        "auto", 30000, [AGGREGATION], native_engine, policy(), Budget(max_tokens_read=5000), strategies=strategies
    )
    assert route.strategy == "rag"
    with pytest.raises(ValueError, match="budget of 10 tokens"):
        choose_strategy(
            "auto", 30000, [LOOKUP], native_engine, policy(), Budget(max_tokens_read=10), strategies=strategies
        )


def test_unmeasured_model_uses_the_default_order(native_engine: Engine, strategies: Strategies) -> None:
    empty = Policy("nothing")
    assert choose_strategy("auto", 3000, [LOOKUP], native_engine, empty, strategies=strategies).strategy == "full"
    long = choose_strategy("auto", 30000, [LOOKUP], native_engine, empty, strategies=strategies)
    assert long.strategy == registry.PREFERENCE[1] and "no measurements" in long.reason
    assert f"no measured policy for {native_engine.model_name}: the default order" in long.reason
    whole = choose_strategy(
        "auto", 30000, [Task("", kind=TaskKind.SUMMARY)], native_engine, empty, strategies=strategies
    )
    assert whole.strategy == "mapreduce"


def test_a_measurement_speaks_only_for_nearby_lengths(native_engine: Engine) -> None:
    assert policy().estimate("rag", "lookup", 16384).length == 8192
    assert policy().estimate("rag", "lookup", 2048).length == 4096  # a factor of 2 is still near
    assert policy().estimate("rag", "lookup", 1024) is None
    assert policy().estimate("full", "lookup", 128000) is None


def test_far_measurements_rank_where_nothing_near_was_measured(native_engine: Engine, strategies: Strategies) -> None:
    # Aggregation is measured only at 32K (mapreduce 0.5, rag 0.1): at 128K nothing is near, and the nearest
    # measurements, not the default order, decide. Near measurements still come first where there are some.
    p = policy()
    assert [n for n, _ in p.rank(["rag", "mapreduce", "memagent"], "aggregation", 131072)] == [
        "mapreduce",
        "rag",
        "memagent",
    ]
    route = choose_strategy("auto", 131072, [AGGREGATION], native_engine, p, strategies=strategies)
    assert route.strategy == "mapreduce" and "nothing measured within 2x" in route.reason and "32768" in route.reason
    flipped = Policy("t", [Entry("rag", "aggregation", 32768, 0.6, 3000, 1.0, 4), *p.entries[:-2]])
    assert (
        choose_strategy("auto", 131072, [AGGREGATION], native_engine, flipped, strategies=strategies).strategy == "rag"
    )
    # Shorter than anything measured: no extrapolation downward, the default order reads a short document whole.
    assert choose_strategy("auto", 1000, [LOOKUP], native_engine, p, strategies=strategies).strategy == "full"
    # rag measured at 128K, mapreduce only at 32K: the near one ranks first even though the far one scored higher.
    mixed = Policy("t", [Entry("rag", "lookup", 131072, 0.3, 3000, 1.0, 4), *p.entries])
    assert [n for n, _ in mixed.rank(["rag", "mapreduce"], "lookup", 131072)] == ["rag", "mapreduce"]


def test_requested_strategy_that_cannot_fit_names_both_sizes(native_engine: Engine, strategies: Strategies) -> None:
    with pytest.raises(ValueError, match="30000 tokens.*context 8192"):
        choose_strategy("full", 30000, [LOOKUP], native_engine, policy(), strategies=strategies)


def test_policy_round_trips_and_fits_from_eval_rows(tmp_path: Path) -> None:
    p = policy()
    assert Policy.from_json(p.to_json()) == p
    rows = [
        {
            "strategy": "rag",
            "task": "niah_single",
            "length": 8192,
            "n": 4,
            "accuracy": 1.0,
            "tokens_read": 3000,
            "seconds": 2.0,
        },
        {"strategy": "rag", "task": "qa", "length": 8192, "n": 2, "accuracy": 0.25, "tokens_read": 2400, "seconds": 1},
        {
            "strategy": "full",
            "task": "niah_single",
            "length": 131072,
            "n": 0,
            "accuracy": None,
            "tokens_read": 0,
            "seconds": 0,
        },
        {
            "strategy": "memagent",
            "task": "cwe",
            "length": 32768,
            "n": 3,
            "accuracy": 0.5,
            "tokens_read": 40000,
            "seconds": 30,
        },
    ]
    results = tmp_path / "eval-x.json"
    results.write_text(json.dumps({"model": "m", "rows": rows}))
    fitted = fit([json.loads(results.read_text())], ["eval-x.json"])
    by_key = {(e.strategy, e.kind, e.length): e for e in fitted.entries}
    assert set(by_key) == {("rag", "lookup", 8192), ("memagent", "aggregation", 32768)}  # "does not fit" skipped
    assert by_key[("rag", "lookup", 8192)].accuracy == pytest.approx(0.75) and by_key[("rag", "lookup", 8192)].n == 6
    # Every result's rows pool by questions; a cell of few questions is shrunk toward the strategy's accuracy on the
    # kind at all lengths, so one lucky (or unlucky) question does not decide a length on its own.
    more = {"model": "m", "rows": [{**rows[0], "length": 32768, "n": 1, "accuracy": 0.0}]}
    refit = {(e.strategy, e.kind, e.length): e for e in fit([json.loads(results.read_text()), more]).entries}
    prior = (4 * 1.0 + 2 * 0.25 + 1 * 0.0) / 7
    shrunk = (4.5 + PRIOR_QUESTIONS * prior) / (6 + PRIOR_QUESTIONS)
    assert refit[("rag", "lookup", 8192)].accuracy == pytest.approx(shrunk, abs=1e-4)
    assert refit[("rag", "lookup", 32768)].accuracy == pytest.approx(PRIOR_QUESTIONS * prior / 3, abs=1e-4)
    assert refit[("rag", "lookup", 32768)].n == 1 and refit[("rag", "lookup", 8192)].n == 6
    assert fit([more, json.loads(results.read_text())]).entries == list(refit.values())  # order does not matter
    out = tmp_path / "policy.json"
    cli = [sys.executable, "-m", "service.cli", "router", "fit", str(results), "--out", str(out)]
    done = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert Policy.load(out) == Policy("m", fitted.entries, ["eval-x.json"])


def test_evidence_recall_measured_on_real_questions_outranks_a_tie_on_templates() -> None:
    # At 16K a memory agent answered every templated needle and rag most; on real prose neither small reader answered
    # right, but only rag put the evidence in front of it. The policy learns from both numbers.
    # The templated rows' recall (was the needle kept) is not learned: their accuracy is the measurement.
    synthetic = {"task": "niah_single", "length": 16384, "seconds": 10, "evidence_recall": 1.0}
    docqa = {"task": "docqa", "length": 16384, "seconds": 60}
    rows = [
        {**synthetic, "strategy": "memagent", "n": 4, "accuracy": 1.0, "tokens_read": 17000},
        {**synthetic, "strategy": "rag", "n": 6, "accuracy": 0.8, "tokens_read": 1300},
        {
            **docqa,
            "strategy": "memagent",
            "kind": "lookup",
            "n": 8,
            "accuracy": 0.0,
            "evidence_recall": 0.0,
            "tokens_read": 17000,
        },
        {
            **docqa,
            "strategy": "rag",
            "kind": "lookup",
            "n": 8,
            "accuracy": 0.0,
            "evidence_recall": 0.9,
            "tokens_read": 2000,
        },
        {
            **docqa,
            "strategy": "rag",
            "kind": "unanswerable",
            "n": 2,
            "accuracy": 1.0,
            "evidence_recall": None,
            "tokens_read": 2000,
        },
    ]
    fitted = fit([{"model": "m", "rows": rows}])
    by_name = {e.strategy: e for e in fitted.entries}
    assert by_name["rag"].evidence_recall == pytest.approx(0.9) and by_name["rag"].n == 16
    assert by_name["memagent"].evidence_recall == 0.0
    # Quality pools per question: a docqa question counts (accuracy + recall) / 2, a templated one its accuracy.
    rag_quality = (6 * 0.8 + 8 * (0.0 + 0.9) / 2 + 2 * 1.0) / 16
    assert by_name["rag"].quality == pytest.approx(rag_quality, abs=1e-4)  # one cell: the shrinkage changes nothing
    assert by_name["memagent"].quality == pytest.approx((4 * 1.0) / 12, abs=1e-4)
    assert [n for n, _ in fitted.rank(["memagent", "rag"], "lookup", 16384)] == ["rag", "memagent"]
    # Templates alone (no recall measured) rank by accuracy, as before.
    templated = fit([{"model": "m", "rows": rows[:2]}])
    assert [n for n, _ in templated.rank(["memagent", "rag"], "lookup", 16384)] == ["memagent", "rag"]
    assert Policy.from_json(fitted.to_json()) == fitted


def test_router_measure_fits_the_policy_of_the_model_in_use(tmp_path: Path) -> None:
    out = tmp_path / "policy.json"
    cli = [sys.executable, "-m", "service.cli", "router", "measure", "--results", str(tmp_path), "--out", str(out)]
    cli += ["--strategy", "rag", "--tasks", "niah_single", "--lengths", "2K", "--samples", "1"]  # to eval
    done = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    measured = json.loads((tmp_path / "eval-policy-smollm2.json").read_text())
    assert measured["preset"] == "policy" and measured["model"] == "smollm2"
    fitted = Policy.load(out)
    assert fitted.model == "smollm2" and fitted.sources == ["eval-policy-smollm2.json"]
    assert [(e.strategy, e.kind, e.length, e.n) for e in fitted.entries] == [("rag", "lookup", 2048, 1)]


def test_calibrate_measures_every_per_model_artifact_in_one_command(tmp_path: Path) -> None:
    """`tome calibrate --quick`: gemfilter's layer for the scoring model, then the policy (the same measuring as
    `tome router measure`), each into its file; what the command does not know goes to `tome eval`."""
    layers, policy = tmp_path / "gemfilter.json", tmp_path / "policy.json"
    cli = [sys.executable, "-m", "service.cli", "calibrate", "--quick", "--output", str(layers)]
    cli += ["--results", str(tmp_path), "--policy-out", str(policy), "--strategy", "rag", "--tasks", "niah_single"]
    done = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    entry = json.loads(layers.read_text())["SmolLM2-135M-Instruct"]
    assert (entry["samples"], entry["length"], entry["num_layers"]) == (2, 1024, 30) and 1 <= entry["layer"] <= 30
    fitted = Policy.load(policy)
    assert fitted.model == "smollm2" and fitted.sources == ["eval-policy-smollm2.json"]
    assert [(e.strategy, e.kind, e.length, e.n) for e in fitted.entries] == [("rag", "lookup", 2048, 1)]  # --quick


@pytest.mark.parametrize(
    "argv",
    [
        ["calibrate", "--only", "layers"],
        ["calibrate", "--only", "gemfilter", "--strategy", "rag"],
        ["calibrate", "--samples", "x"],
    ],
)
def test_calibrate_refuses_bad_arguments_before_loading_anything(argv: list[str]) -> None:
    """An unknown artifact, an eval option where no eval runs, a bad number: usage errors (exit 2)."""
    from service.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2


class ClosedBook:
    """A real but weak strategy: the model answers without reading the document, so it shows no evidence."""

    def __init__(self, name: str = "closed_book") -> None:
        self.name = name

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        return True

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        n = len(tasks)
        return answer_each(engine, ["(nothing)"] * n, tasks, self.name, [[] for _ in tasks], [Cost()] * n)


def test_unsupported_answer_falls_back_to_the_next_strategy(
    native_engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, strategies: Strategies
) -> None:
    strategies = {**strategies, "closed_book": ClosedBook()}
    monkeypatch.setattr(registry, "PREFERENCE", ["closed_book", "full"])
    # An unmeasured model: the default order puts the closed book first and `full` behind it.
    monkeypatch.setattr("workflows.policy.POLICIES", tmp_path)
    # Every refusal stands: an unconvinced one would add a copy call (engines/copying.py) to the closed book's cost.
    config = replace(native_engine.config, reader_abstain_at=0.0)  # type: ignore[attr-defined]
    monkeypatch.setattr(native_engine, "config", config)
    text = planted_document(native_engine, "The lighthouse keeper's dog was called Biscuit.", 2000, 0.6)
    result = run_job(Document(text), [LOOKUP], native_engine, strategies=strategies)
    assert [a["strategy"] for a in result.attempts] == ["closed_book", "full"]
    assert result.attempts[0]["supported"] == [False] and result.attempts[1]["supported"] == [True]
    assert result.strategy == "full" and "fell back to full" in result.reason
    assert "biscuit" in result.answers[0].text.lower()
    assert result.cost.calls == 2  # both attempts are paid for


def test_a_policy_given_to_the_job_replaces_the_shipped_one(
    native_engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, strategies: Strategies
) -> None:
    strategies = {**strategies, "closed_book": ClosedBook()}
    monkeypatch.setattr(registry, "PREFERENCE", ["closed_book", "full"])
    monkeypatch.setattr("workflows.policy.POLICIES", tmp_path)  # no shipped policy: closed_book would go first
    measured = Policy(
        "m", [Entry("full", "lookup", 2048, 0.9, 2000, 1.0, 5), Entry("closed_book", "lookup", 2048, 0.1, 20, 1.0, 5)]
    )
    text = planted_document(native_engine, "The lighthouse keeper's dog was called Biscuit.", 2000, 0.6)
    result = run_job(Document(text), [LOOKUP], native_engine, policy=measured, strategies=strategies)
    assert [a["strategy"] for a in result.attempts] == ["full"]
    assert "biscuit" in result.answers[0].text.lower()


def test_replay_scores_the_policy_choice_from_single_strategy_answers() -> None:
    from bench.router_compare import compare, replay

    def record(strategy: str, task: str, length: int, accuracy: float, tokens: int) -> dict:
        return {
            "strategy": strategy,
            "task": task,
            "length": length,
            "seed": 1,
            "status": "ok",
            "seconds": 1.0,
            "accuracy": accuracy,
            "tokens_read": tokens,
        }

    records = [
        record("full", "niah_single", 4096, 0.0, 4000),
        record("rag", "niah_single", 4096, 1.0, 1500),
        record("mapreduce", "niah_single", 4096, 1.0, 4200),
        record("full", "cwe", 32768, 0.0, 0),  # does not fit: asked, scored 0
        record("rag", "cwe", 32768, 0.0, 3000),
        record("mapreduce", "cwe", 32768, 0.5, 33000),
        record("auto", "niah_single", 4096, 0.0, 4000),
        record("auto", "cwe", 32768, 0.0, 3000),
    ]
    # The policy ranks full first for 4K lookups (0.95 vs 0.80) and mapreduce for 32K aggregation.
    chosen = replay(records, policy(), "replay:test")
    assert sorted((r["task"], r["ran"], r["accuracy"]) for r in chosen) == [
        ("cwe", "mapreduce", 0.5),
        ("niah_single", "full", 0.0),
    ]
    result = compare(records + chosen)
    assert result["replayed"]["replay:test"]["accuracy"] == 0.25
    assert result["targets"]["best_single"] == "mapreduce"  # 0.75; the replayed rows are not a single strategy
    singles_only = compare([r for r in records if r["strategy"] != "auto"] + chosen)  # policies compared offline
    assert singles_only["replayed"]["replay:test"]["accuracy"] == 0.25
    assert "auto_ran" not in singles_only and singles_only["targets"] == {"best_single": "mapreduce"}
    # Two runs holding the same question count it once, the later answer (counted twice, mapreduce would score 1.0).
    again = compare([*records, record("mapreduce", "cwe", 32768, 0.5, 33000), record("auto", "cwe", 32768, 1.0, 9)])
    rows = {r["strategy"]: r["accuracy"] for r in again["rows"]}
    assert rows["mapreduce"] == 0.75 and rows["auto"] == 0.5


def test_verify_backs_an_answer_by_the_question_words_around_it() -> None:
    """A name that merely occurs in the text read is not backed; one whose sentences hold a third of what a lookup
    asks, or three of its words (a long question describing the answer's sentence by a chain of facts), is."""
    text = (
        "Elizabeth walked alone to Longbourn in the rain. The road was deep in mud. The weather grew worse by noon. "
        "Mr. Collins married Charlotte Lucas in the spring. The family came up from London by coach. "
        "Nobody spoke at dinner. The old tanner's will was read to them by the lawyer, and the lawyer's older "
        "brother was remembered. Nobody wept. His brother Harvey lived and preached in Sheffield."
    )
    evidence = [Evidence(0, len(text), text)]

    def backed(answer: str, question: str) -> bool:
        assert task_kind(Task(question)) == "lookup"
        return answer_supported(Answer(answer, "rag", evidence), Task(question), text)

    marry = "Whom does Mr. Collins marry?"
    assert backed("Charlotte Lucas", marry) and not backed("Elizabeth", marry)
    chain = (
        "In which English town did the older brother of the lawyer who read the dead tanner's will aloud to the "
        "family live and preach?"
    )
    assert backed("Sheffield", chain) and not backed("London", chain) and not backed("Longbourn", chain)
