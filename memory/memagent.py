"""`memagent`: read the document segment by segment, keeping a bounded memory per question, then answer from it.

Two memory modes (`MemAgentConfig.mode`, TOME_MEMAGENT_MODE; `choose_mode` picks one for "auto"):

*prompted* is MemAgent's own recipe (BytedTsinghua-SIA/MemAgent, arXiv 2507.02259) with its prompts: after every
segment the model rewrites a free-form memory, which overwrites the old one (at most `memory_tokens`, the update's
generation limit), and the answer is read from the last memory with MemAgent's final prompt. Decoding is greedy
(MemAgent's eval samples at temperature 0.7), like every other call here. It is for models that can rewrite notes
and have no adapter of ours: "auto" picks it for any model but the small default.

*extractive* is for a 135M model, which cannot rewrite notes: its free-form notes degenerate into repeated lines
within two segments. After each segment the model copies, word for word, the sentences (from its notes and the new
segment) that help answer the question. Code then holds it to that:
- every copied line is snapped to a real sentence of the notes or the segment; anything that matches nothing
  is dropped (the model often rewords the question with an invented value), so the memory holds only document text;
- the memory is a list of character spans, so its sentences double as the answer's evidence;
- the memory budget is enforced in tokens, in code, cutting in the order the model listed the sentences;
- an update with no usable sentence (NONE, or degenerate output) keeps the previous memory.

A LoRA adapter trained for exactly these two calls (`tome train memagent`) runs them when one is listed for the
engine's model in ADAPTERS or named by TOME_MEMAGENT_ADAPTER; otherwise (none listed, a missing folder, an engine
without adapters, or TOME_MEMAGENT_ADAPTER=none) the base model reads the same way.

All state between segments is plain data (`Reading`: the memories are spans, or text in prompted mode), so the job
graph checkpoints it after every segment.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engines.adapters import ADAPTER_HOME, use_adapter
from engines.base import Engine, Message, SamplingParams
from engines.prompting import answer_each, answer_overhead, task_instruction
from engines.segmenting import split_segments
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, TaskKind
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


# MemAgent's prompts, verbatim (BytedTsinghua-SIA/MemAgent at 76b7a65, taskutils/memory_eval/utils/recurrent.py:
# TEMPLATE, TEMPLATE_FINAL and NO_MEMORY; recurrent/impls/memory.py trains with the same update template).
PROMPTED_UPDATE = """You are presented with a problem, a section of an article that may contain the answer to the problem, and a previous memory. Please read the provided section carefully and update the memory with the new information that helps to answer the problem. Be sure to retain all relevant details from the previous memory while adding any new, useful information.

<problem> 
{prompt}
</problem>

<memory>
{memory}
</memory>

<section>
{chunk}
</section>

Updated memory:
"""  # noqa: E501, W291 (its "<problem> " has a trailing space)
PROMPTED_FINAL = """You are presented with a problem and a previous memory. Please answer the problem based on the previous memory and format your response as follows "Therefore, the answer is (insert answer here)".

<problem> 
{prompt}
</problem>

<memory>
{memory}
</memory>

Your answer:
"""  # noqa: E501, W291 (its "<problem> " has a trailing space)
NO_MEMORY = "No previous memory"
ANSWER_MARK = "the answer is"

Mode = Literal["auto", "extractive", "prompted"]
# The embedded small default (engines.models.ALIASES), as an alias, a converted folder or a served name.
SMALL_MODELS = ("smollm2",)


def choose_mode(model: str, mode: Mode, adapter: str, listed: Mapping[str, Path] = ADAPTERS) -> tuple[str, str]:
    """The memory mode to read with ("extractive" or "prompted") and why, for a model name and the settings."""
    if mode != "auto":
        return mode, f"{mode}: set (TOME_MEMAGENT_MODE)"
    if adapter not in ("auto", "none"):
        return "extractive", f"auto: the adapter {adapter} is configured"
    if model in listed:
        return "extractive", f"auto: an adapter is listed for {model}"
    if any(small in Path(model).name.lower() for small in SMALL_MODELS):
        return "extractive", f"auto: {model} is the small default, which cannot rewrite free-form notes"
    return "prompted", f"auto: no memagent adapter for {model}, so MemAgent's own prompts"


def problem(task: Task) -> str:
    """What MemAgent's prompts put in <problem>: the question, or what a summary or extraction asks for."""
    return task.question if task.kind == TaskKind.QA else task_instruction(task)


def prompted_update_messages(task: Task, memory: str, segment: str) -> list[Message]:
    content = PROMPTED_UPDATE.format(prompt=problem(task), memory=memory or NO_MEMORY, chunk=segment)
    return [{"role": "user", "content": content}]


def prompted_final_messages(task: Task, memory: str) -> list[Message]:
    return [{"role": "user", "content": PROMPTED_FINAL.format(prompt=problem(task), memory=memory or NO_MEMORY)}]


def prompted_answer(reply: str) -> str:
    """The answer as MemAgent's eval reads it (taskutils/memory_eval/utils/__init__.py, extract_answer): what follows
    the last "the answer is"; here the whole reply where the model did not say that."""
    reply = reply.replace("*", "")
    if ANSWER_MARK not in reply:
        return reply.strip()
    return reply.rsplit(ANSWER_MARK, 1)[-1].strip().strip(".").strip()


@dataclass(frozen=True)
class MemAgentConfig:
    segment_tokens: int = 2048  # upper bound; shrunk to what the engine's context allows
    memory_tokens: int = 256  # the memory budget, enforced in code
    min_segment_tokens: int = 256  # below this the question leaves no room to read
    margin_tokens: int = 64  # chat-template and tokenisation slack
    update: Literal["overwrite", "append"] = "overwrite"  # append: keep old notes, add what the model copied
    # "auto": the adapter ADAPTERS lists for the engine's model, if any; "none": the base model; or an adapter folder.
    adapter: str = "auto"  # Settings.memagent_adapter (TOME_MEMAGENT_ADAPTER)
    mode: Mode = "auto"  # Settings.memagent_mode (TOME_MEMAGENT_MODE); "auto": `choose_mode`


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

    def mode(self, engine: Engine) -> tuple[str, str]:
        """The memory mode for this engine's model, and why (`choose_mode`)."""
        return choose_mode(engine.model_name, self.config.mode, self.config.adapter)

    def segment_budget(self, tasks: Sequence[Task], engine: Engine) -> int:
        """Tokens of document per segment: the context minus template, question, notes and the update's output."""
        c = self.config
        if self.mode(engine)[0] == "prompted":
            updates = [prompted_update_messages(t, "", "") for t in tasks]
            finals = [engine.count_chat_tokens(prompted_final_messages(t, "")) + t.max_answer_tokens for t in tasks]
        else:
            updates = [self.update_messages(t, "", "") for t in tasks]
            finals = [answer_overhead(engine, t) for t in tasks]
        overhead = max(engine.count_chat_tokens(m) for m in updates)
        room = engine.max_context - overhead - 2 * c.memory_tokens - c.margin_tokens
        final = max(finals) + c.memory_tokens + c.margin_tokens
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
        mode, why = self.mode(engine)
        return {
            "segments": [list(s) for s in segments],
            "done": 0,
            "mode": mode,
            "why": why,
            "memories": [[] if mode == "extractive" else "" for _ in tasks],  # spans, or prompted mode's text
            "costs": [Cost().__dict__ for _ in tasks],
            "trace": [[] for _ in tasks],
            "adapter": self.adapter(engine) if mode == "extractive" else None,  # ours is trained for extractive
        }

    def step(self, reading: Reading, document: Document, tasks: Sequence[Task], engine: Engine) -> Reading:
        """Read the next segment and update every task's memory (one batched engine call)."""
        text = document.text
        index = reading["done"]
        s, e = reading["segments"][index]
        if reading.get("mode") == "prompted":
            olds = reading["memories"]
            conversations = [prompted_update_messages(t, m, text[s:e]) for t, m in zip(tasks, olds, strict=True)]
            gens = engine.chat(conversations, SamplingParams(max_tokens=self.config.memory_tokens))
            updates = [self.rewrite(m, g.text, engine) for m, g in zip(olds, gens, strict=True)]
        else:
            notes = [[tuple(span) for span in m] for m in reading["memories"]]
            conversations = [
                self.update_messages(t, memory_text(text, n), text[s:e]) for t, n in zip(tasks, notes, strict=True)
            ]
            gens = engine.chat(conversations, self.update_params(self._adapter(reading, engine)))
            sentences = split_sentences(text, s, e)
            updates = []
            for n, g, t in zip(notes, gens, tasks, strict=True):
                new, action = self.apply_update(text, n, sentences, g.text, t.question, engine)
                updates.append(([list(span) for span in new], action, {"memory": len(new)}))
        memories, costs, trace = [], [], []
        for i, (g, (memory, action, size)) in enumerate(zip(gens, updates, strict=True)):
            memories.append(memory)
            cost = Cost(**reading["costs"][i]).add(Cost(1, g.prompt_tokens, g.completion_tokens, g.seconds))
            costs.append(cost.__dict__)
            trace.append(reading["trace"][i] + [{"segment": index, "action": action, **size, "output": g.text[:300]}])
        return {**reading, "done": index + 1, "memories": memories, "costs": costs, "trace": trace}

    def rewrite(self, memory: str, output: str, engine: Engine) -> tuple[str, str, dict[str, int]]:
        """Prompted mode's update: the reply overwrites the memory (after a reasoning model's `</think>`, as
        MemAgent's `extract_solution` reads it); an empty reply keeps the old memory rather than erase it."""
        new = output.split("</think>")[-1].strip()
        if not new:
            return memory, "kept: empty reply", {"tokens": engine.count_tokens(memory)}
        return new, "rewrite", {"tokens": engine.count_tokens(new)}

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
        if reading.get("mode") == "prompted":
            answers = self.answer_prompted(reading, document, tasks, engine)
        else:
            memories = [sorted(tuple(span) for span in m) for m in reading["memories"]]
            answers = answer_each(
                engine,
                [memory_text(text, m) for m in memories],
                tasks,
                self.name,
                [[Evidence(s, e, text[s:e]) for s, e in m] for m in memories],
                [Cost(**c) for c in reading["costs"]],
                adapter=self._adapter(reading, engine),
            )
        for a, trace in zip(answers, reading["trace"], strict=True):
            a.details = {
                **a.details,
                "segments": len(reading["segments"]),
                "mode": reading.get("mode", "extractive"),  # a reading checkpointed before modes existed
                "why": reading.get("why", "extractive: the only mode then"),
                "adapter": reading.get("adapter"),
                "trace": trace,
            }
        return answers

    def answer_prompted(
        self, reading: Reading, document: Document, tasks: Sequence[Task], engine: Engine
    ) -> list[Answer]:
        """Every task answered from its memory with MemAgent's final prompt (one batched call). A free-form memory
        holds no spans, so the evidence is the sentences of the read segments that the memory's sentences copy or
        answer from, matched as extractive updates are (`snap`); a memory that rewords its source further than
        that has no evidence, and the job graph's check then counts the answer unsupported."""
        text = document.text
        sources = [span for s, e in reading["segments"] for span in split_sentences(text, s, e)]
        memories: list[str] = reading["memories"]
        conversations = [prompted_final_messages(t, m) for t, m in zip(tasks, memories, strict=True)]
        gens = engine.chat(conversations, SamplingParams(max_tokens=max(t.max_answer_tokens for t in tasks)))
        answers = []
        for g, task, memory, cost in zip(gens, tasks, memories, reading["costs"], strict=True):
            lines = [memory[s:e] for s, e in split_sentences(memory)]
            evidence = [Evidence(s, e, text[s:e]) for s, e in sorted(snap(lines, text, sources, task.question))]
            spent = Cost(**cost).add(Cost(1, g.prompt_tokens, g.completion_tokens, g.seconds))
            details = {"memory": memory, "reply": g.text}
            answers.append(Answer(prompted_answer(g.text), self.name, evidence, spent, details))
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
