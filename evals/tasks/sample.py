"""One evaluation question, and what every generator needs: seeds, the token budget, values, the depth grid."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engines.base import Message
from engines.prompting import answer_overhead
from engines.types import Answer, Document, Task
from evals.corpus import vocabulary
from evals.metrics import abstains, score, span_recall

# Needle depths as a fraction of the document: sample `seed` sits at DEPTHS[seed % len(DEPTHS)].
DEPTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


class Tokenizer(Protocol):
    """The part of an Engine that generators need: lengths are counted in the engine's own tokens."""

    def count_tokens(self, text: str) -> int: ...

    def count_chat_tokens(self, messages: list[Message]) -> int: ...


@dataclass(frozen=True)
class Sample:
    """A document, one question about it and the reference answers.

    `length` is the size RULER counts: document + question prompt + answer budget, in the engine's tokens;
    so `full` fits every length up to its context, and `document_tokens` is slightly less than `length`.
    """

    task: str
    length: int
    seed: int
    document: Document
    question: Task
    answers: tuple[str, ...]
    metric: str  # "all" (string_match_all) or "part" (string_match_part)
    document_tokens: int
    depth: float | None = None  # where the (first) needle sits, 0..1; None for tasks without needles
    unique: tuple[str, ...] = ()  # strings the task places exactly once in the document
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        """The tokens `full` needs for this sample (what `length` targets)."""
        return self.length - self.info["budget_gap"]

    def record(self) -> dict[str, Any]:
        """What a question log records of the sample, before the strategy's answer."""
        return {
            "task": self.task,
            "length": self.length,
            "seed": self.seed,
            "depth": self.depth,
            "document_tokens": self.document_tokens,
            "metric": self.metric,
            "references": list(self.answers),
            **{k: v for k, v in self.info.items() if k not in ("budget_gap", "evidence", "gold_spans")},
        }

    def scored(self, answer: Answer) -> dict[str, Any]:
        """What a question log records of an answer to the sample: its score and its cost.

        `evidence_recall` scores the answer's evidence (the text it was read from) as if it were the answer: a
        wrong answer with recall 1 was misread, one with recall 0 never reached the model. None without evidence.
        docqa's items name their evidence as spans: there it is the share of those spans the text read covers
        (evals.metrics.span_recall), and an answer that abstains scores 0 unless the question is unanswerable.
        """
        # Evidence named by its place only (the whole document, where full or a compressor read it all) is that text.
        evidence = "\n".join(e.text or self.document.text[e.start : e.end] for e in answer.evidence)
        accuracy = score(self.metric, answer.text, self.answers)
        recall = score(self.metric, evidence, self.answers) if answer.evidence else None
        gold = self.info.get("gold_spans")
        if gold is not None:  # docqa: the gold spans' share that the text read covers; abstaining answers nothing
            recall = span_recall(gold, [(e.start, e.end) for e in answer.evidence]) if gold else None
            if self.metric != "abstain" and abstains(answer.text):
                accuracy = 0.0
        return {
            "accuracy": accuracy,
            "evidence_recall": recall,
            "prediction": answer.text,
            "evidence_spans": [[e.start, e.end] for e in answer.evidence],
            "calls": answer.cost.calls,
            "tokens_read": answer.cost.tokens_read,
            "tokens_generated": answer.cost.tokens_generated,
            "model_seconds": round(answer.cost.seconds, 3),
        }


def rng_for(task: str, length: int, seed: int) -> random.Random:
    return random.Random(f"{task}:{length}:{seed}")  # str seeds hash deterministically across runs


def depth_for(seed: int) -> float:
    return DEPTHS[seed % len(DEPTHS)]


def document_budget(tok: Tokenizer, length: int, question: Task) -> int:
    """Document tokens that leave room for the question prompt and the answer within `length`."""
    return length - answer_overhead(tok, question)  # type: ignore[arg-type]


def word_key(rng: random.Random) -> str:
    """An adjective-noun-like key such as `harbour-silence`: two held-out words that never occur together."""
    words = vocabulary()
    return f"{rng.choice(words)}-{rng.choice(words)}"


VALUE_KINDS = ("number", "word", "uuid")


def value_of(kind: str, rng: random.Random) -> str:
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "word":
        return word_key(rng)
    if kind == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown value kind {kind!r}")


def finish(
    task: str,
    length: int,
    seed: int,
    tok: Tokenizer,
    question: Task,
    text: str,
    answers: tuple[str, ...],
    metric: str,
    **extra: Any,
) -> Sample:
    """Wrap a built document into a Sample, recording its exact token counts."""
    doc_tokens = tok.count_tokens(text)
    needed = doc_tokens + answer_overhead(tok, question)  # type: ignore[arg-type]
    info = {**extra.pop("info", {}), "budget_gap": length - needed}
    document = Document(text, source=f"eval:{task}:{length}:{seed}", metadata={"task": task, "length": length})
    return Sample(task, length, seed, document, question, answers, metric, doc_tokens, info=info, **extra)


def unique_in(text: str, values: tuple[str, ...]) -> bool:
    return all(text.count(v) == 1 for v in values)


def with_unique_values(
    make: Callable[[random.Random], tuple[str, tuple[str, ...]]], rng: random.Random, what: str
) -> tuple[str, tuple[str, ...]]:
    """Build until every value occurs exactly once (a drawn word could, rarely, already be in the haystack)."""
    for _ in range(20):
        text, values = make(rng)
        if unique_in(text, values):
            return text, values
    raise RuntimeError(f"could not place unique values for {what} in 20 draws")
