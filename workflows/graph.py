"""The job graph: analyse -> route -> run -> verify (-> run the next strategy if unsupported). Same graph in the
CLI and in a worker.

State holds plain data only, so a persistent checkpointer (thread id = job id) can resume a job from
its last finished node; the engine, the strategies and the progress callback travel in the run config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Checkpointer

from engines.base import Engine
from engines.grounding import NOT_STATED
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, TaskKind, no_progress
from workflows.mapreduce import add_mapreduce_loop
from workflows.memagent import add_memagent_loop
from workflows.policy import Policy
from workflows.registry import Strategies, get_strategy
from workflows.router import Budget, choose_strategy
from workflows.verify import answer_supported

# memagent takes one graph step per segment: a 10M-token document is well under this.
RECURSION_LIMIT = 10_000


class JobState(TypedDict, total=False):
    document: dict[str, Any]
    tasks: list[dict[str, Any]]
    requested: str
    document_tokens: int
    strategy: str
    reason: str
    kind: str
    budget: dict[str, Any]
    fallbacks: list[str]  # strategies still to try, best first
    answers: list[dict[str, Any]]
    reading: dict[str, Any]  # memagent, mapreduce: segments, memories or notes so far (checkpointed per step)
    attempts: list[dict[str, Any]]  # every strategy that ran: its answers and whether they were supported
    done: bool


@dataclass
class JobResult:
    answers: list[Answer]
    strategy: str
    reason: str
    document_tokens: int
    cost: Cost = field(default_factory=Cost)  # all attempts together, fallbacks included
    kind: str = "lookup"
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def supported(self) -> list[bool]:
        """Per task: whether the answer given was found in the text it was read from (`verify`); False means no
        strategy that ran could back its answer with its evidence, so the answer may be made up."""
        return next(a["supported"] for a in self.attempts if a["strategy"] == self.strategy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _engine(config: RunnableConfig) -> Engine:
    return config["configurable"]["engine"]


def _strategies(config: RunnableConfig) -> Strategies:
    return config["configurable"]["strategies"]


def _progress(config: RunnableConfig) -> Progress:
    return config["configurable"].get("progress") or no_progress


def _tasks(state: JobState) -> list[Task]:
    return [Task(**{**t, "kind": TaskKind(t["kind"])}) for t in state["tasks"]]


def analyse(state: JobState, config: RunnableConfig) -> JobState:
    return {"document_tokens": _engine(config).count_tokens(state["document"]["text"])}


def route(state: JobState, config: RunnableConfig) -> JobState:
    r = choose_strategy(
        state["requested"],
        state["document_tokens"],
        _tasks(state),
        _engine(config),
        policy=config["configurable"].get("policy"),
        budget=Budget(**state["budget"]),
        strategies=_strategies(config),
    )
    return {"strategy": r.strategy, "reason": r.reason, "kind": r.kind, "fallbacks": r.fallbacks, "attempts": []}


def run(state: JobState, config: RunnableConfig) -> JobState:
    strategy = get_strategy(_strategies(config), state["strategy"])
    answers = strategy.run(Document(**state["document"]), _tasks(state), _engine(config), _progress(config))
    return {"answers": [a.to_dict() for a in answers]}


def verify(state: JobState, config: RunnableConfig) -> JobState:
    """Keep the answers if the evidence supports them; otherwise try the next strategy while the budget allows."""
    text = state["document"]["text"]
    supported = [answer_supported(_answer(a), t, text) for a, t in zip(state["answers"], _tasks(state), strict=True)]
    attempts = [
        *state["attempts"],
        {"strategy": state["strategy"], "answers": state["answers"], "supported": supported},
    ]
    if all(supported) or not state["fallbacks"]:
        # Nothing better to try: keep the attempt with the most supported answers (the router's first on a tie).
        best = max(attempts, key=lambda a: sum(a["supported"]))
        answers = [
            a if ok or t.kind != TaskKind.QA else says_not_stated(a)
            for a, ok, t in zip(best["answers"], best["supported"], _tasks(state), strict=True)
        ]
        return {"attempts": attempts, "answers": answers, "strategy": best["strategy"], "done": True}
    nxt, rest = state["fallbacks"][0], state["fallbacks"][1:]
    reason = f"{state['reason']}; fell back to {nxt}: {state['strategy']}'s answer was not supported by its evidence"
    return {"attempts": attempts, "strategy": nxt, "fallbacks": rest, "reason": reason, "done": False}


def says_not_stated(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer nothing read could back says so; what the model replied stays in its details."""
    if answer["text"] == NOT_STATED:
        return answer
    return {**answer, "text": NOT_STATED, "details": {**answer.get("details", {}), "unsupported_reply": answer["text"]}}


def build_graph(checkpointer: Checkpointer = None) -> Any:
    graph = StateGraph(JobState)
    graph.add_node("analyse", analyse)
    graph.add_node("route", route)
    graph.add_node("run", run)
    graph.add_edge(START, "analyse")
    graph.add_edge("analyse", "route")
    graph.add_node("verify", verify)
    # Strategies that read segment by segment run as loops of nodes, so that every step is checkpointed.
    loops = {
        "memagent": add_memagent_loop(graph, _engine, _strategies, _progress, _tasks, then="verify"),
        "mapreduce": add_mapreduce_loop(graph, _engine, _progress, _tasks, then="verify"),
    }

    def runner(state: JobState) -> str:
        return loops.get(state["strategy"], "run")

    graph.add_conditional_edges("route", runner, [*loops.values(), "run"])
    graph.add_edge("run", "verify")
    graph.add_conditional_edges("verify", lambda s: END if s["done"] else runner(s), [END, *loops.values(), "run"])
    return graph.compile(checkpointer=checkpointer)


def _answer(d: dict[str, Any]) -> Answer:
    return Answer(
        text=d["text"],
        strategy=d["strategy"],
        evidence=[Evidence(**e) for e in d["evidence"]],
        cost=Cost(**d["cost"]),
        details=d.get("details", {}),
    )


def _with_places(answer: Answer, document: Document) -> Answer:
    """Evidence spans with the page and section they start in (PDFs, Word and Markdown documents)."""
    if not (document.metadata.get("page_spans") or document.metadata.get("outline")):
        return answer
    evidence = [replace(e, page=p, section=s) for e in answer.evidence for p, s in [document.locate(e.start)]]
    return replace(answer, evidence=evidence)


def run_job(
    document: Document,
    tasks: Sequence[Task],
    engine: Engine,
    strategy: str = "auto",
    progress: Progress | None = None,
    checkpointer: Checkpointer = None,
    thread_id: str | None = None,
    budget: Budget | None = None,
    policy: Policy | None = None,
    *,
    strategies: Strategies,
) -> JobResult:
    """Run the graph to the end. With a checkpointer and the same thread id, a rerun resumes.

    `strategies` is what the entry point built (`workflows.registry.build_strategies`); `policy` replaces the
    model's shipped routing policy (e.g. one fitted on other questions, for evaluation)."""
    if not tasks:
        raise ValueError("a job needs at least one task")
    configurable: dict[str, Any] = {
        "engine": engine,
        "strategies": strategies,
        "progress": progress,
        "policy": policy,
    }
    if checkpointer is not None:
        configurable["thread_id"] = thread_id or document.content_hash
    config: RunnableConfig = {"configurable": configurable, "recursion_limit": RECURSION_LIMIT}
    graph = build_graph(checkpointer)
    state: JobState = {
        "document": asdict(document),
        "tasks": [asdict(t) for t in tasks],
        "requested": strategy,
        "budget": asdict(budget or Budget()),
    }
    resume = checkpointer is not None and graph.get_state(config).next
    # Synchronous checkpoints: a job's route and each finished node are visible (and resumable) at once.
    kwargs: dict[str, Any] = {"durability": "sync"} if checkpointer is not None else {}
    final = graph.invoke(None if resume else state, config, **kwargs)
    answers = [_with_places(_answer(a), document) for a in final["answers"]]
    total = Cost()
    for attempt in final["attempts"]:
        for a in attempt["answers"]:
            total = total.add(Cost(**a["cost"]))
    attempts = [{"strategy": a["strategy"], "supported": a["supported"]} for a in final["attempts"]]
    return JobResult(
        answers, final["strategy"], final["reason"], final["document_tokens"], total, final["kind"], attempts
    )
