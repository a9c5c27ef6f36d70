"""`mapreduce`: every segment read independently, the partial results combined.

The strategy for summaries, extraction and aggregation over documents longer than the context: each map call sees
one segment and the task; the reduce step answers from the collected notes, collapsing them in rounds while they
do not fit. In the job graph the map runs as a loop of nodes (`add_mapreduce_loop`), one batched call per
node run, so a persistent checkpointer keeps the notes after every step and a resumed job reads on from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph

from engines.base import Engine, Message, SamplingParams
from engines.grounding import content_words, is_abstention, support
from engines.prompting import SYSTEM, answer_from_context, answer_overhead
from engines.segmenting import split_segments
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, TaskKind
from workflows.loop import add_segment_loop

NONE = "NONE"
MAP_BATCH = 4  # segments per map call (and per checkpoint): local engines batch them, remote ones run them concurrently
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


Reading = dict[str, Any]  # plain data, so that the job graph checkpoints it after every step


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

    def start(self, document: Document, tasks: Sequence[Task], engine: Engine) -> Reading:
        """A reading of the document: its segments (character spans), the notes so far, how many were read."""
        if not document.text.strip():
            raise ValueError("mapreduce: the document is empty")
        segments = split_segments(document.text, engine, self.segment_tokens(tasks, engine))
        return {"segments": [[s.start, s.end] for s in segments], "notes": [], "done": 0}

    def step(self, reading: Reading, document: Document, tasks: Sequence[Task], engine: Engine) -> Reading:
        """Read the next MAP_BATCH segments in one (batched) engine call; a checkpoint after each step means a
        restarted job redoes at most the call in flight: one segment per reader (batch row)."""
        first = reading["done"]
        spans = reading["segments"][first : first + MAP_BATCH]
        batch = [(first + k, a, b) for k, (a, b) in enumerate(spans)]
        convs = [map_messages(document.text[a:b], t) for _, a, b in batch for t in tasks]
        gens = engine.chat(convs, SamplingParams(max_tokens=NOTE_TOKENS))
        notes = []
        for k, g in enumerate(gens):
            (index, start, end), task_i = batch[k // len(tasks)], k % len(tasks)
            notes.append(
                {
                    "segment": index,
                    "task": task_i,
                    "text": g.text,
                    "start": start,
                    "end": end,
                    "tokens_read": g.prompt_tokens,
                    "tokens_generated": g.completion_tokens,
                    "seconds": g.seconds,
                }
            )
        return {**reading, "notes": [*reading["notes"], *notes], "done": first + len(batch)}

    def finish(self, reading: Reading, document: Document, tasks: Sequence[Task], engine: Engine) -> list[Answer]:
        return [self._reduce(document, i, t, reading["notes"], engine) for i, t in enumerate(tasks)]

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        reading = self.start(document, tasks, engine)
        total = len(reading["segments"])
        progress(0, total, f"segment 0 of {total}")
        while reading["done"] < total:
            reading = self.step(reading, document, tasks, engine)
            progress(reading["done"], total, f"segment {reading['done']} of {total}")
        return self.finish(reading, document, tasks, engine)

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


def add_mapreduce_loop(
    graph: StateGraph,
    engine_of: Callable[[RunnableConfig], Engine],
    progress_of: Callable[[RunnableConfig], Progress],
    tasks_of: Callable[[Any], list[Task]],
    then: str,
) -> str:
    """Add the map loop's nodes to the job graph (the reduce goes on to `then`); returns the entry node's name.

    The notes live in the job state's `reading` (as memagent's memories do), written at every step.
    """
    strategy = MapReduce()

    def plan(state: Any, config: RunnableConfig) -> dict[str, Any]:
        reading = strategy.start(Document(**state["document"]), tasks_of(state), engine_of(config))
        total = len(reading["segments"])
        progress_of(config)(0, total, f"segment 0 of {total}")
        return {"reading": reading}

    def read(state: Any, config: RunnableConfig) -> dict[str, Any]:
        reading = strategy.step(state["reading"], Document(**state["document"]), tasks_of(state), engine_of(config))
        total = len(reading["segments"])
        progress_of(config)(reading["done"], total, f"segment {reading['done']} of {total}")
        return {"reading": reading}

    def reduce(state: Any, config: RunnableConfig) -> dict[str, Any]:
        document = Document(**state["document"])
        answers = strategy.finish(state["reading"], document, tasks_of(state), engine_of(config))
        return {"answers": [a.to_dict() for a in answers]}

    return add_segment_loop(graph, "mapreduce", plan, read, ("reduce", reduce), then)
