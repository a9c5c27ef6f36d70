"""`mapreduce`: every segment read independently (LangGraph Send fan-out), the partial results combined.

The strategy for summaries, extraction and aggregation over documents longer than the context: each map call sees
one segment and the task; the reduce step answers from the collected notes, collapsing them in rounds while they
do not fit.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from engines.base import Engine, Message, SamplingParams
from engines.grounding import content_words, is_abstention, support
from engines.prompting import SYSTEM, answer_from_context, answer_overhead
from engines.segmenting import Segment, split_segments
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, TaskKind

NONE = "NONE"
MAP_BATCH = 4  # segments per map call: local engines batch them, remote ones also run calls concurrently
NOTE_TOKENS = 160
MAX_ROUNDS = 3
GROUNDED = 0.6  # share of a partial answer's content words that must occur in its segment


def map_instruction(task: Task) -> str:
    if task.kind == TaskKind.SUMMARY:
        return "Summarize this part of a longer document in two or three sentences."
    if task.kind == TaskKind.EXTRACT:
        return (
            f"Copy the sentences of this part that give values for: {task.question}\nIf there are none, write {NONE}."
        )
    return f"Question: {task.question}\nAnswer from this part only. If this part does not say, write {NONE}."


def map_messages(segment: str, task: Task) -> list[Message]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Part of a document:\n{segment}\n\n{map_instruction(task)}"},
    ]


class MapState(TypedDict, total=False):
    segments: list[dict[str, Any]]
    notes: Annotated[list[dict[str, Any]], operator.add]


class MapReduce:
    name = "mapreduce"
    margin = 64
    max_segment_tokens = 2048  # a small model reads a short part more faithfully, and prefill cost grows with length

    def segment_tokens(self, tasks: Sequence[Task], engine: Engine) -> int:
        overhead = max(engine.count_chat_tokens(map_messages("", t)) for t in tasks) + NOTE_TOKENS
        return min(self.max_segment_tokens, engine.max_context - overhead - self.margin)

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        # Any length: it only needs room for a useful segment and for the answer over the notes.
        return self.segment_tokens(tasks, engine) >= 512 and all(
            answer_overhead(engine, t) < engine.max_context // 2 for t in tasks
        )

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        if not document.text.strip():
            raise ValueError("mapreduce: the document is empty")
        segments = split_segments(document.text, engine, self.segment_tokens(tasks, engine))
        done = [0]

        def map_node(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
            batch = [Segment(**s) for s in state["segments"]]
            convs = [map_messages(s.text, t) for s in batch for t in tasks]
            gens = engine.chat(convs, SamplingParams(max_tokens=NOTE_TOKENS))
            notes = []
            for k, g in enumerate(gens):
                seg, task_i = batch[k // len(tasks)], k % len(tasks)
                notes.append(
                    {
                        "segment": seg.index,
                        "task": task_i,
                        "text": g.text,
                        "start": seg.start,
                        "end": seg.end,
                        "tokens_read": g.prompt_tokens,
                        "tokens_generated": g.completion_tokens,
                        "seconds": g.seconds,
                    }
                )
            done[0] += len(batch)
            progress(done[0], len(segments), f"segment {done[0]} of {len(segments)}")
            return {"notes": notes}

        def fan_out(state: MapState) -> list[Send]:
            segs = state["segments"]
            return [Send("map", {"segments": segs[i : i + MAP_BATCH]}) for i in range(0, len(segs), MAP_BATCH)]

        graph = StateGraph(MapState)
        graph.add_node("map", map_node)
        graph.add_conditional_edges(START, fan_out, ["map"])
        graph.add_edge("map", END)
        progress(0, len(segments), f"segment 0 of {len(segments)}")
        concurrency = getattr(engine, "max_parallel_requests", 1)
        final = graph.compile().invoke(
            {"segments": [s.__dict__ for s in segments], "notes": []}, {"max_concurrency": concurrency}
        )
        return [self._reduce(document, i, t, final["notes"], engine) for i, t in enumerate(tasks)]

    def _useful(self, note: dict[str, Any], task: Task, document: Document) -> bool:
        if is_abstention(note["text"]):
            return False
        asked = content_words(task.question)
        # An answer to a question names something it asks about; a small model that does not find the answer in
        # its part often copies the part's opening instead, which is grounded but answers nothing.
        if task.kind == TaskKind.QA and asked and not content_words(note["text"]) & asked:
            return False
        # A small model answers from parts that do not hold the answer; keep a partial answer only if its words
        # are in the part it came from (summaries restate the part, so they pass this check as well).
        return support(note["text"], document.text[note["start"] : note["end"]]) >= GROUNDED

    def _reduce(self, document: Document, i: int, task: Task, notes: list[dict[str, Any]], engine: Engine) -> Answer:
        mine = sorted((n for n in notes if n["task"] == i), key=lambda n: n["segment"])
        cost = Cost(
            len(mine),
            sum(n["tokens_read"] for n in mine),
            sum(n["tokens_generated"] for n in mine),
            sum(n["seconds"] for n in mine),
        )
        useful = [n for n in mine if self._useful(n, task, document)]
        evidence = [Evidence(n["start"], n["end"], n["text"]) for n in useful]
        budget = engine.max_context - answer_overhead(engine, task) - self.margin
        texts = [n["text"] for n in useful]
        # Collapse in rounds while the notes do not fit one answering prompt.
        for _ in range(MAX_ROUNDS):
            if not texts or engine.count_tokens("\n\n".join(texts)) <= budget:
                break
            merged = split_segments("\n\n".join(texts), engine, self.segment_tokens([task], engine))
            gens = engine.chat([map_messages(s.text, task) for s in merged], SamplingParams(max_tokens=NOTE_TOKENS))
            cost = cost.add(
                Cost(
                    len(gens),
                    sum(g.prompt_tokens for g in gens),
                    sum(g.completion_tokens for g in gens),
                    sum(g.seconds for g in gens),
                )
            )
            texts = [g.text for g in gens if not is_abstention(g.text)]
        kept = []
        for text in texts:  # after MAX_ROUNDS, the notes that still do not fit are dropped, and the answer says so
            if engine.count_tokens("\n\n".join([*kept, text])) > budget:
                break
            kept.append(text)
        context = "\n\n".join(kept) if kept else "(no part of the document mentions this)"
        answer = answer_from_context(engine, context, [task], self.name, evidence, extra_cost=cost)[0]
        answer.details.update(segments=len(mine), notes_dropped=len(texts) - len(kept))
        return answer
