"""The memagent loop as graph nodes (workflows/loop.py): plan the segments, read one segment per node run (the
memories checkpointed after each), answer from memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph

from engines.base import Engine
from engines.types import Document, Progress, Task
from memory.memagent import MemAgent
from workflows.loop import add_segment_loop
from workflows.registry import Strategies, get_strategy


def add_memagent_loop(
    graph: StateGraph,
    engine_of: Callable[[RunnableConfig], Engine],
    strategies_of: Callable[[RunnableConfig], Strategies],
    progress_of: Callable[[RunnableConfig], Progress],
    tasks_of: Callable[[Any], list[Task]],
    then: str,
) -> str:
    """Add the loop's nodes (the last one goes on to `then`) and return the name of its entry node."""

    def agent(config: RunnableConfig) -> MemAgent:
        strategy = get_strategy(strategies_of(config), "memagent")
        assert isinstance(strategy, MemAgent)
        return strategy

    def plan(state: Any, config: RunnableConfig) -> dict[str, Any]:
        reading = agent(config).start(Document(**state["document"]), tasks_of(state), engine_of(config))
        total = len(reading["segments"])
        progress_of(config)(0, total + 1, f"reading {total} segments")
        return {"reading": reading}

    def read(state: Any, config: RunnableConfig) -> dict[str, Any]:
        reading = agent(config).step(
            state["reading"], Document(**state["document"]), tasks_of(state), engine_of(config)
        )
        total = len(reading["segments"])
        progress_of(config)(reading["done"], total + 1, f"read segment {reading['done']}/{total}")
        return {"reading": reading}

    def answer(state: Any, config: RunnableConfig) -> dict[str, Any]:
        reading = state["reading"]
        answers = agent(config).finish(reading, Document(**state["document"]), tasks_of(state), engine_of(config))
        total = len(reading["segments"])
        progress_of(config)(total + 1, total + 1, "answered from memory")
        return {"answers": [a.to_dict() for a in answers]}

    return add_segment_loop(graph, "memagent", plan, read, ("answer", answer), then)
