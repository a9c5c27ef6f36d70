"""`qa`: hand-written questions with short answers over held-out real documents (evals/data/qa.json).

A sample is a window of the held-out text, `length` tokens long, with the answering passage at the depth grid
point; the rest of the window is the surrounding book (and, near a book's end, the next one) as distractors.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from engines.types import Task
from evals.corpus import EVAL_DOCS, haystack_words, read_doc
from evals.tasks.fitting import fit
from evals.tasks.sample import Sample, Tokenizer, depth_for, document_budget, finish

QA_FILE = Path(__file__).parent.parent / "data" / "qa.json"


@dataclass(frozen=True)
class QAItem:
    doc: str
    question: str
    answers: tuple[str, ...]
    evidence: str


@cache
def qa_items() -> tuple[QAItem, ...]:
    items = json.loads(QA_FILE.read_text(encoding="utf-8"))["items"]
    return tuple(QAItem(i["doc"], i["question"], tuple(i["answers"]), i["evidence"]) for i in items)


@cache
def _word_starts() -> list[int]:
    starts, at = [], 0
    for w in haystack_words():
        starts.append(at)
        at += len(w)
    return starts


def evidence_span(item: QAItem) -> tuple[int, int]:
    """[first, last) word indices of the evidence in the held-out word stream."""
    offset = sum(len(read_doc(d)) + 2 for d in EVAL_DOCS[: EVAL_DOCS.index(item.doc)])  # docs joined by "\n\n"
    start = offset + read_doc(item.doc).index(item.evidence)
    starts = _word_starts()
    first = bisect.bisect_right(starts, start) - 1
    last = bisect.bisect_left(starts, start + len(item.evidence))
    return first, last


def qa(tok: Tokenizer, length: int, seed: int) -> Sample:
    items = qa_items()
    item = items[seed % len(items)]
    depth = depth_for(seed)
    words = haystack_words()
    first, last = evidence_span(item)
    question = Task(item.question, max_answer_tokens=24)

    def window(k: int) -> str:
        start = min(max(0, first - round(depth * k)), len(words) - (last - first) - k)
        return "".join(words[start : start + (last - first) + k]).strip()

    text = fit(
        window,
        tok.count_tokens,
        document_budget(tok, length, question),
        guess=length // 2,
        most=len(words) - (last - first),
    )
    info = {"doc": item.doc, "evidence": item.evidence}
    return finish("qa", length, seed, tok, question, text, item.answers, "part", depth=depth, info=info)
