"""The job graph: analyse -> route -> run. Same graph in the CLI and in a worker.

State holds plain data only, so a persistent checkpointer (thread id = job id) can resume a job from
its last finished node; the engine and the progress callback travel in the run config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Checkpointer

from engines.base import Engine
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, TaskKind, no_progress
from workflows.memagent import add_memagent_loop
from workflows.registry import get_strategy
from workflows.router import choose_strategy

# memagent takes one graph step per segment: a 10M-token document is well under this.
RECURSION_LIMIT = 10_000


class JobState(TypedDict, total=False):
    document: dict[str, Any]
    tasks: list[dict[str, Any]]
    requested: str
    document_tokens: int
    strategy: str
    reason: str
    answers: list[dict[str, Any]]
    reading: dict[str, Any]  # memagent: segments, memories and costs so far (checkpointed per segment)


@dataclass
class JobResult:
    answers: list[Answer]
    strategy: str
    reason: str
    document_tokens: int
    cost: Cost = field(default_factory=Cost)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _engine(config: RunnableConfig) -> Engine:
    return config["configurable"]["engine"]


def _progress(config: RunnableConfig) -> Progress:
    return config["configurable"].get("progress") or no_progress


def _tasks(state: JobState) -> list[Task]:
    return [Task(**{**t, "kind": TaskKind(t["kind"])}) for t in state["tasks"]]


def analyse(state: JobState, config: RunnableConfig) -> JobState:
    return {"document_tokens": _engine(config).count_tokens(state["document"]["text"])}


def route(state: JobState, config: RunnableConfig) -> JobState:
    name, reason = choose_strategy(state["requested"], state["document_tokens"], _tasks(state), _engine(config))
    return {"strategy": name, "reason": reason}


def run(state: JobState, config: RunnableConfig) -> JobState:
    strategy = get_strategy(state["strategy"])
    answers = strategy.run(Document(**state["document"]), _tasks(state), _engine(config), _progress(config))
    return {"answers": [a.to_dict() for a in answers]}


def build_graph(checkpointer: Checkpointer = None) -> Any:
    graph = StateGraph(JobState)
    graph.add_node("analyse", analyse)
    graph.add_node("route", route)
    graph.add_node("run", run)
    graph.add_edge(START, "analyse")
    graph.add_edge("analyse", "route")
    memagent = add_memagent_loop(graph, _engine, _progress, _tasks)
    # memagent runs as a loop of nodes so that every segment is checkpointed; the others in one node.
    graph.add_conditional_edges("route", lambda s: memagent if s["strategy"] == "memagent" else "run")
    graph.add_edge("run", END)
    return graph.compile(checkpointer=checkpointer)


def _answer(d: dict[str, Any]) -> Answer:
    return Answer(
        text=d["text"],
        strategy=d["strategy"],
        evidence=[Evidence(**e) for e in d["evidence"]],
        cost=Cost(**d["cost"]),
        details=d.get("details", {}),
    )


def run_job(
    document: Document,
    tasks: Sequence[Task],
    engine: Engine,
    strategy: str = "auto",
    progress: Progress | None = None,
    checkpointer: Checkpointer = None,
    thread_id: str | None = None,
) -> JobResult:
    """Run the graph to the end. With a checkpointer and the same thread id, a rerun resumes."""
    if not tasks:
        raise ValueError("a job needs at least one task")
    configurable: dict[str, Any] = {"engine": engine, "progress": progress}
    if checkpointer is not None:
        configurable["thread_id"] = thread_id or document.content_hash
    config: RunnableConfig = {"configurable": configurable, "recursion_limit": RECURSION_LIMIT}
    graph = build_graph(checkpointer)
    state: JobState = {
        "document": asdict(document),
        "tasks": [asdict(t) for t in tasks],
        "requested": strategy,
    }
    resume = checkpointer is not None and graph.get_state(config).next
    final = graph.invoke(None if resume else state, config)
    answers = [_answer(a) for a in final["answers"]]
    total = Cost()
    for a in answers:
        total = total.add(a.cost)
    return JobResult(answers, final["strategy"], final["reason"], final["document_tokens"], total)
