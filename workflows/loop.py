"""A document read segment by segment as job-graph nodes: plan, read one segment per node run, finish.

Each node run is a LangGraph superstep, so a persistent checkpointer stores the job state's `reading` (the segments,
how many are read, and the strategy's notes or memories) after every segment, and a resumed job (same thread id)
continues with the next unread segment. memagent and mapreduce read this way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph

Node = Callable[[Any, RunnableConfig], dict[str, Any]]


def add_segment_loop(graph: StateGraph, name: str, plan: Node, read: Node, finish: tuple[str, Node], then: str) -> str:
    """Nodes `{name}_plan`, `{name}_read` (again while segments are left) and the finishing node `{name}_{finish[0]}`,
    which goes on to `then`; returns the entry node's name."""
    entry, reader, last = f"{name}_plan", f"{name}_read", f"{name}_{finish[0]}"

    def next_step(state: Any) -> str:
        reading = state["reading"]
        return reader if reading["done"] < len(reading["segments"]) else last

    graph.add_node(entry, plan)
    graph.add_node(reader, read)
    graph.add_node(last, finish[1])
    graph.add_conditional_edges(entry, next_step, [reader, last])
    graph.add_conditional_edges(reader, next_step, [reader, last])
    graph.add_edge(last, then)
    return entry
