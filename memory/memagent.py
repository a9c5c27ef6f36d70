"""`memagent`: read the document segment by segment, keeping a bounded memory per question, then answer from it.

MemAgent (BytedTsinghua-SIA) lets the model rewrite free-form notes after every segment; a 135M model cannot:
its free-form notes degenerate into repeated lines within two segments. Here the memory is *extractive*:
after each segment the model copies, word for word, the sentences (from its notes and the new segment) that
help answer the question. Code then holds it to that:
- every copied line is snapped to a real sentence of the notes or the segment; anything that matches nothing
  is dropped (the model often rewords the question with an invented value), so the memory holds only document text;
- the memory is a list of character spans, so its sentences double as the answer's evidence;
- the memory budget is enforced in tokens, in code, cutting in the order the model listed the sentences;
- an update with no usable sentence (NONE, or degenerate output) keeps the previous memory.

A LoRA adapter trained for exactly these two calls (`tome train memagent`) runs them when one is listed for the
engine's model in ADAPTERS or named by TOME_MEMAGENT_ADAPTER; otherwise (none listed, a missing folder, an engine
without adapters, or TOME_MEMAGENT_ADAPTER=none) the base model reads the same way.

All state between segments is plain data (`Reading`), so the job graph checkpoints it after every segment.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engines.adapters import ADAPTER_HOME, use_adapter
from engines.base import Engine, Message, SamplingParams
from engines.prompting import answer_each, answer_overhead
from engines.segmenting import split_segments
from engines.types import Answer, Cost, Document, Evidence, Progress, Task
from memory.spans import Span, split_sentences

log = logging.getLogger(__name__)

Reading = dict[str, Any]  # plain data (JSON-able) so a LangGraph checkpointer can store it between segments

NONE = "NONE"

# A small model that has said NONE, or starts a new "Question:"/"Answer:", only rambles on: stop decoding there.
UPDATE_STOP = (NONE, "Question:", "Answer:")

# The adapter memory/training.py trained for SmolLM2 (on a GPU; engines/adapters/smollm2-memagent/MODEL_CARD.md).
SMOLLM2_ADAPTER = ADAPTER_HOME / "smollm2-memagent"
# Adapters used by default ("auto"), by model alias. SmolLM2's was trained on the harness's templates and on
# plain-prose facts (names, places, dates, quantities, relations: evals/memagent_data.py), so it also answers a
# planted prose fact (tests/test_memory.py) that the templates-only adapter missed;
# bench/results/eval-memory-memagent-lora-prose.md for the harness tasks.
ADAPTERS: dict[str, Path] = {"smollm2": SMOLLM2_ADAPTER}
ADAPTER_NAME = "memagent"

UPDATE_SYSTEM = "You copy sentences exactly as written. You never answer the question and never explain."


def update_prompt(question: str, notes: str, segment: str) -> str:
    return (
        f"Text:\n{segment}\n\n"
        f"Notes:\n{notes or NONE}\n\n"
        f"Question: {question}\n"
        "Copy word for word every sentence from the text or the notes that helps answer the question, "
        f"one per line. If none helps, write {NONE}."
    )


@dataclass(frozen=True)
class MemAgentConfig:
    segment_tokens: int = 2048  # upper bound; shrunk to what the engine's context allows
    memory_tokens: int = 256  # the memory budget, enforced in code
    min_segment_tokens: int = 256  # below this the question leaves no room to read
    margin_tokens: int = 64  # chat-template and tokenisation slack
    update: Literal["overwrite", "append"] = "overwrite"  # append: keep old notes, add what the model copied
    # "auto": the adapter ADAPTERS lists for the engine's model, if any; "none": the base model; or an adapter folder.
    adapter: str = "auto"  # Settings.memagent_adapter (TOME_MEMAGENT_ADAPTER)


class MemAgentInputError(ValueError):
    """The request cannot be read this way (empty document, question too long for the budget)."""


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _clean_line(line: str) -> str:
    line = line.strip()
    line = re.sub(r"^(?:[-*•]|\d+[.)]|notes?:|text:)\s*", "", line, flags=re.IGNORECASE)
    return line.strip().strip("\"'“”‘’").strip()


def snap(lines: Sequence[str], text: str, sources: Sequence[Span], question: str = "") -> list[Span]:
    """Source sentences the model's lines copy, in the order the lines name them; unmatched lines are dropped.

    A line matches a sentence when it holds the whole sentence, or when every word of the line is in the
    sentence and it either covers half of the sentence or adds a word that the question lacks, or when it
    answers from the sentence (`_grounded`). A line that rewords the question with an invented value, or
    pairs one needle's key with another's value, matches nothing.
    """
    normed = [_norm(text[s:e]) for s, e in sources]
    words = [set(n.split()) for n in normed]
    asked = set(_norm(question).split())
    present = set().union(*words) if words else set()
    picked: list[Span] = []
    for raw in lines:
        line = _norm(_clean_line(raw))
        if len(line) < 8:
            continue
        line_words = set(line.split())
        adds = any(len(w) >= 3 and w not in asked for w in line_words)
        hits = [i for i, src in enumerate(normed) if len(src) >= 12 and src in line]  # line holds whole sentences
        if not hits:
            hits = [
                i for i, src in enumerate(normed) if line_words <= words[i] and (len(line) >= 0.5 * len(src) or adds)
            ]
        if not hits:
            hits = _grounded(line_words, asked, words, present)
        for i in hits:
            if sources[i] not in picked:
                picked.append(sources[i])
    return picked


def _grounded(line: set[str], asked: set[str], words: list[set[str]], present: set[str]) -> list[int]:
    """Sentences an answer-like line was read from. The model often answers ("... mentioned in the text is
    1654076") instead of copying ("One of the special magic numbers for ... is: 1654076."). The line's own words
    (those the question lacks) must all be in one or two sentences, and so must the question's words that the
    line repeats and the text holds, so that one key's value is never filed under another key."""
    new = {w for w in line - asked if len(w) >= 3}
    if not new:
        return []
    required = new | {w for w in line & asked if len(w) >= 4 and w in present}
    hits = [i for i, ws in enumerate(words) if required <= ws]
    return hits if len(hits) <= 2 else []


def memory_text(text: str, memory: Sequence[Span]) -> str:
    return "\n".join(text[s:e] for s, e in sorted(memory))


class MemAgent:
    name = "memagent"

    def __init__(self, config: MemAgentConfig | None = None) -> None:
        self.config = config or MemAgentConfig()

    # -- sizing -----------------------------------------------------------------------------------------------

    def update_messages(self, task: Task, notes: str, segment: str) -> list[Message]:
        return [
            {"role": "system", "content": UPDATE_SYSTEM},
            {"role": "user", "content": update_prompt(task.question, notes, segment)},
        ]

    def update_params(self, adapter: str | None = None) -> SamplingParams:
        return SamplingParams(max_tokens=self.config.memory_tokens, stop=UPDATE_STOP, adapter=adapter)

    def adapter(self, engine: Engine) -> str | None:
        """The adapter name to read with on this engine (loaded on first use), or None for the base model."""
        return use_adapter(engine, ADAPTER_NAME, self.config.adapter, ADAPTERS)

    def segment_budget(self, tasks: Sequence[Task], engine: Engine) -> int:
        """Tokens of document per segment: the context minus template, question, notes and the update's output."""
        c = self.config
        overhead = max(engine.count_chat_tokens(self.update_messages(t, "", "")) for t in tasks)
        room = engine.max_context - overhead - 2 * c.memory_tokens - c.margin_tokens
        final = max(answer_overhead(engine, t) for t in tasks) + c.memory_tokens + c.margin_tokens
        if final > engine.max_context:
            return 0
        return min(c.segment_tokens, room)

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        return document_tokens > 0 and self.segment_budget(tasks, engine) >= self.config.min_segment_tokens

    def _check(self, document: Document, tasks: Sequence[Task], engine: Engine) -> int:
        if not tasks:
            raise MemAgentInputError("memagent needs at least one task")
        if not document.text.strip():
            raise MemAgentInputError("the document is empty: there is nothing to read")
        budget = self.segment_budget(tasks, engine)
        if budget < self.config.min_segment_tokens:
            longest = max(engine.count_tokens(t.question) for t in tasks)
            raise MemAgentInputError(
                f"the question ({longest} tokens) leaves {max(budget, 0)} tokens per segment in the engine's "
                f"{engine.max_context}-token context with a {self.config.memory_tokens}-token memory; "
                f"at least {self.config.min_segment_tokens} are needed: shorten the question"
            )
        return budget

    # -- the loop, one step at a time so the graph can checkpoint between steps ----------------------------------

    def start(
        self, document: Document, tasks: Sequence[Task], engine: Engine, segments: Sequence[Span] | None = None
    ) -> Reading:
        """A reading of the whole document cut to the segment budget, or of the given spans (each within it)."""
        budget = self._check(document, tasks, engine)
        if segments is None:
            segments = [(s.start, s.end) for s in split_segments(document.text, engine, budget)]
        return {
            "segments": [list(s) for s in segments],
            "done": 0,
            "memories": [[] for _ in tasks],
            "costs": [Cost().__dict__ for _ in tasks],
            "trace": [[] for _ in tasks],
            "adapter": self.adapter(engine),
        }

    def step(self, reading: Reading, document: Document, tasks: Sequence[Task], engine: Engine) -> Reading:
        """Read the next segment and update every task's memory (one batched engine call)."""
        text = document.text
        index = reading["done"]
        s, e = reading["segments"][index]
        segment_sentences = split_sentences(text, s, e)
        notes = [[tuple(span) for span in m] for m in reading["memories"]]
        conversations = [self.update_messages(t, memory_text(text, notes[i]), text[s:e]) for i, t in enumerate(tasks)]
        gens = engine.chat(conversations, self.update_params(self._adapter(reading, engine)))
        memories, costs, trace = [], [], []
        for i, g in enumerate(gens):
            new, action = self.apply_update(text, notes[i], segment_sentences, g.text, tasks[i].question, engine)
            memories.append([list(span) for span in new])
            cost = Cost(**reading["costs"][i]).add(Cost(1, g.prompt_tokens, g.completion_tokens, g.seconds))
            costs.append(cost.__dict__)
            step = {"segment": index, "action": action, "memory": len(new), "output": g.text[:300]}
            trace.append(reading["trace"][i] + [step])
        return {**reading, "done": index + 1, "memories": memories, "costs": costs, "trace": trace}

    def _adapter(self, reading: Reading, engine: Engine) -> str | None:
        """The adapter the reading started with (loaded again in a resumed process)."""
        return self.adapter(engine) if reading.get("adapter") else None

    def apply_update(
        self, text: str, notes: list[Span], segment: list[Span], output: str, question: str, engine: Engine
    ) -> tuple[list[Span], str]:
        lines = [line for line in output.splitlines() if line.strip()]
        picked = snap(lines, text, notes + segment, question)
        if not picked:
            return notes, "none" if not lines else "kept: nothing copied matched the text"
        if self.config.update == "append":
            picked = notes + [p for p in picked if p not in notes]
        kept: list[Span] = []
        for span in picked:  # the budget, in tokens, in the order the model listed the sentences
            if engine.count_tokens(memory_text(text, kept + [span])) <= self.config.memory_tokens:
                kept.append(span)
        action = "update" if len(kept) == len(picked) else f"update (cut {len(picked) - len(kept)} to budget)"
        return kept, action

    def finish(self, reading: Reading, document: Document, tasks: Sequence[Task], engine: Engine) -> list[Answer]:
        text = document.text
        memories = [sorted(tuple(span) for span in m) for m in reading["memories"]]
        evidences = [[Evidence(s, e, text[s:e]) for s, e in m] for m in memories]
        answers = answer_each(
            engine,
            [memory_text(text, m) for m in memories],
            tasks,
            self.name,
            evidences,
            [Cost(**c) for c in reading["costs"]],
            adapter=self._adapter(reading, engine),
        )
        for a, trace in zip(answers, reading["trace"], strict=True):
            a.details = {"segments": len(reading["segments"]), "adapter": reading.get("adapter"), "trace": trace}
        return answers

    def run(
        self,
        document: Document,
        tasks: Sequence[Task],
        engine: Engine,
        progress: Progress,
        segments: Sequence[Span] | None = None,
    ) -> list[Answer]:
        reading = self.start(document, tasks, engine, segments)
        total = len(reading["segments"])
        progress(0, total + 1, f"reading {total} segments")
        while reading["done"] < total:
            reading = self.step(reading, document, tasks, engine)
            progress(reading["done"], total + 1, f"read segment {reading['done']}/{total}")
        answers = self.finish(reading, document, tasks, engine)
        progress(total + 1, total + 1, "answered from memory")
        return answers
