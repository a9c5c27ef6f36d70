"""Prompts that several strategies share: answering tasks from a piece of context."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from engines.adapters import ADAPTER_HOME, use_adapter
from engines.base import Engine, Message, SamplingParams, SupportsCopying
from engines.config import EngineConfig
from engines.grounding import NOT_STATED, is_abstention
from engines.types import Answer, Cost, Evidence, Task, TaskKind

SYSTEM = "You are a careful reader. Answer only from the given text. Be brief."
# Reader adapters by model alias (`tome train reader`; engines/adapters/smollm2-reader/MODEL_CARD.md): the answer
# call over retrieved text, trained on written questions about real prose to copy the answer or say it is not there.
READERS: dict[str, Path] = {"smollm2": ADAPTER_HOME / "smollm2-reader"}
READER = "reader"  # answer_each's default `adapter`: the engine's reader adapter, where one applies


def reader_adapter(engine: Engine, tasks: Sequence[Task]) -> str | None:
    """The reader adapter for questions (its training); summaries and extractions are read by the base model. The
    engine's config names the setting (`reader_adapter`: auto, none or a folder)."""
    if not all(t.kind == TaskKind.QA for t in tasks):
        return None
    setting = getattr(getattr(engine, "config", None), "reader_adapter", EngineConfig.reader_adapter)
    return use_adapter(engine, READER, setting, READERS)


def task_instruction(task: Task) -> str:
    if task.kind == TaskKind.SUMMARY:
        return task.question or "Summarize the text in a few sentences."
    if task.kind == TaskKind.EXTRACT:
        schema = json.dumps(task.json_schema or {}, separators=(",", ":"))
        return f"{task.question}\nReply with JSON only, matching this JSON schema: {schema}"
    return f"Question: {task.question}\nAnswer:"


def answer_messages(context: str, task: Task) -> list[Message]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Text:\n{context}\n\n{task_instruction(task)}"},
    ]


CONTEXT_SLOT = "\u2063CONTEXT\u2063"  # stands for the context when the chat template is rendered around it


def prompt_around(engine: Engine, task: Task) -> tuple[list[int], list[int]]:
    """Token ids of the answer prompt before and after the context, exactly as the engine builds it.

    For strategies that put something other than text in the context's place (scores, soft embeddings);
    needs an engine with a tokenizer (SupportsLayers).
    """
    tokenizer = engine.hf_tokenizer  # type: ignore[attr-defined]
    rendered = tokenizer.apply_chat_template(
        answer_messages(CONTEXT_SLOT, task), add_generation_prompt=True, tokenize=False
    )
    before, after = (
        list(tokenizer(part, add_special_tokens=False)["input_ids"]) for part in rendered.split(CONTEXT_SLOT)
    )
    return before, after


def answer_overhead(engine: Engine, task: Task) -> int:
    """Tokens a prompt needs besides the context itself (template, question, answer budget).

    Measured around a one-word stand-in: with an empty context the newlines on both sides would merge into
    one token, and the estimate would come out one short of the real prompt.
    """
    stand_in = "text"
    template = engine.count_chat_tokens(answer_messages(stand_in, task)) - engine.count_tokens(stand_in)
    return template + task.max_answer_tokens


def answer_from_context(
    engine: Engine,
    context: str,
    tasks: Sequence[Task],
    strategy: str,
    evidence: list[Evidence],
    extra_cost: Cost | None = None,
) -> list[Answer]:
    """Ask every task over the same context in one batched engine call."""
    n = len(tasks)
    return answer_each(engine, [context] * n, tasks, strategy, [evidence] * n, [extra_cost or Cost()] * n)


def answer_each(
    engine: Engine,
    contexts: Sequence[str],
    tasks: Sequence[Task],
    strategy: str,
    evidences: Sequence[list[Evidence]],
    extra_costs: Sequence[Cost],
    adapter: str | None = READER,
) -> list[Answer]:
    """Ask each task over its own context (what it retrieved or remembered), all in one batched engine call.
    adapter: a loaded adapter's name, None for the base model, or READER for the engine's reader adapter.

    The reader adapter's refusal is kept only if it gives it at least the engine config's `reader_abstain_at`
    probability; below, the answer is what it would most likely copy from its context (copied_answer)."""
    max_tokens = max(t.max_answer_tokens for t in tasks)
    reading = adapter == READER
    adapter = reader_adapter(engine, tasks) if reading else adapter
    params = SamplingParams(max_tokens=max_tokens, adapter=adapter)
    conversations = [answer_messages(c, t) for c, t in zip(contexts, tasks, strict=True)]
    generations = engine.chat(conversations, params)
    answers = []
    for g, context, conversation, evidence, extra in zip(
        generations, contexts, conversations, evidences, extra_costs, strict=True
    ):
        cost = Cost(calls=1, tokens_read=g.prompt_tokens, tokens_generated=g.completion_tokens, seconds=g.seconds)
        answer = Answer(g.text, strategy, list(evidence), cost.add(extra))
        if reading and adapter is not None and is_abstention(g.text):
            answer = copied_answer(engine, answer, conversation, context, params)
        answers.append(answer)
    return answers


def copied_answer(
    engine: Engine, answer: Answer, conversation: list[Message], context: str, params: SamplingParams
) -> Answer:
    """The reader's refusal, or, where it gave it less than `reader_abstain_at` of its probability, the span of the
    context it would most likely copy instead (engines/copying.py; engines that expose the model's probabilities).
    The details say which, with the refusal's probability."""
    threshold = getattr(getattr(engine, "config", None), "reader_abstain_at", EngineConfig.reader_abstain_at)
    if threshold <= 0 or not isinstance(engine, SupportsCopying):
        return answer
    start = time.perf_counter()
    copied = engine.copy_answer(conversation, params, context, NOT_STATED, threshold)
    spent = Cost(calls=1, tokens_read=engine.count_chat_tokens(conversation), seconds=time.perf_counter() - start)
    details = {**answer.details, "refusal_probability": round(copied.refusal_probability, 4)}
    if copied.text:
        details["refused"] = answer.text
        return replace(answer, text=copied.text, cost=answer.cost.add(spent), details=details)
    return replace(answer, cost=answer.cost.add(spent), details=details)
