"""`docqa`: natural questions people ask about real long documents, written by reading them (evals/data/docqa).

Each item was written from the text, not from a template, and names its evidence as exact quotes; the files also
carry each quote's character offsets in the unwrapped document (`evals.corpus.read_text`), which tests check
against the text. Kinds: `lookup` (one stated fact), `multihop` (facts in two places), `aggregation` (a count or
a list), `unanswerable` (the document does not say: the right answer says so).

Documents are split whole into `dev` (for every choice) and `test` (for claims only). A question is asked of the
whole document (`length` WHOLE = 0) or of a cut of `length` tokens around its evidence, the evidence at the
depth-grid point of the seed; an item whose evidence spans more than a cut holds, or whose document is not much
longer than the cut, is not asked at that length.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from engines.types import Task
from evals.corpus import read_text
from evals.tasks.fitting import fit
from evals.tasks.sample import Sample, Tokenizer, depth_for, document_budget, finish

DOCQA_DIR = Path(__file__).parent.parent / "data" / "docqa"
WHOLE = 0  # `length` of a question asked of the whole document, at its natural length
SPLITS = ("dev", "test")
KINDS = ("lookup", "multihop", "aggregation", "unanswerable")
CHARS_PER_TOKEN = 4.0  # a cut is offered only to items whose evidence extent is well inside it (checked exactly later)


@dataclass(frozen=True)
class DocQAItem:
    id: str
    doc: str
    split: str
    kind: str
    question: str
    answers: tuple[str, ...]
    match: str  # "any": one accepted answer in the reply; "all": every listed item
    quotes: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]  # the quotes' [start, end) offsets in read_text(doc)

    @property
    def extent(self) -> tuple[int, int] | None:
        return (min(s for s, _ in self.spans), max(e for _, e in self.spans)) if self.spans else None


@cache
def docqa_items() -> tuple[DocQAItem, ...]:
    return read_items(DOCQA_DIR)


def read_items(folder: Path) -> tuple[DocQAItem, ...]:
    """Every item of the JSON files in `folder` (docqa's files, or the reader's training questions)."""
    items = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for i in data["items"]:
            items.append(
                DocQAItem(
                    i["id"],
                    i["doc"],
                    data["split"],
                    i["kind"],
                    i["question"],
                    tuple(i["answers"]),
                    i.get("match", "any"),
                    tuple(i["evidence"]),
                    tuple((s, e) for s, e in i["spans"]),
                )
            )
    return tuple(items)


@cache
def asked(split: str, length: int) -> tuple[DocQAItem, ...]:
    """The split's items askable at `length`, in seed order: round-robin over documents (each document's items in
    a fixed shuffled order), so the first n seeds cover every document and a mix of kinds."""
    if split not in SPLITS:
        raise ValueError(f"unknown docqa split {split!r}; splits: {', '.join(SPLITS)}")
    per_doc: dict[str, list[DocQAItem]] = {}
    for item in docqa_items():
        if item.split != split:
            continue
        extent = item.extent
        if length != WHOLE:
            if len(read_text(item.doc)) < 1.1 * CHARS_PER_TOKEN * length:
                continue  # a document about this short is asked whole only
            if extent and (extent[1] - extent[0]) / CHARS_PER_TOKEN > 0.7 * length:
                continue
        per_doc.setdefault(item.doc, []).append(item)
    queues = [per_doc[d] for d in sorted(per_doc)]
    for queue in queues:  # files list kinds in blocks: a fixed shuffle mixes them into the first seeds
        random.Random(queue[0].doc).shuffle(queue)
    order = []
    for k in range(max((len(q) for q in queues), default=0)):
        order += [q[k] for q in queues if k < len(q)]
    return tuple(order)


def docqa(tok: Tokenizer, length: int, seed: int, split: str = "dev") -> Sample:
    items = asked(split, length)
    if not items:
        raise ValueError(f"no docqa {split} items can be asked at length {length}")
    item = items[seed % len(items)]
    text = read_text(item.doc)
    question = Task(item.question, max_answer_tokens=32)
    depth = None
    if length == WHOLE:
        offset, cut = 0, text
    else:
        depth = depth_for(seed)
        a, b = item.extent or _anchor(text, seed)

        def window(k: int) -> tuple[int, int]:
            start = min(max(0, a - round(depth * k)), len(text) - (b - a) - k)
            start = _word_start(text, start, limit=a)
            return start, _word_end(text, max(b, start + (b - a) + k))

        cut = fit(
            lambda k: text[slice(*window(k))],
            tok.count_tokens,
            document_budget(tok, length, question),
            guess=int(length * CHARS_PER_TOKEN * 0.8),
            most=len(text) - (b - a),
        )
        offset = text.index(cut)  # a slice of the document by construction
    gold = [[s - offset, e - offset] for s, e in item.spans]
    metric = "abstain" if item.kind == "unanswerable" else ("all" if item.match == "all" else "part")
    info = {
        "id": item.id,
        "doc": item.doc,
        "kind": item.kind,
        "split": item.split,
        "gold_spans": gold,
    }
    return finish("docqa", length, seed, tok, question, cut, item.answers, metric, depth=depth, info=info)


def _anchor(text: str, seed: int) -> tuple[int, int]:
    """Where a cut of a question without evidence sits: a point of the document chosen by the seed."""
    at = (seed * 7919 * 104729) % max(1, len(text) - 1)
    return at, at


def _word_start(text: str, at: int, limit: int) -> int:
    """`at` moved forward to the start of a word (never past `limit`, the evidence's start)."""
    while 0 < at < limit and not text[at - 1].isspace():
        at += 1
    return at


def _word_end(text: str, at: int) -> int:
    at = min(at, len(text))
    while at < len(text) and not text[at].isspace():
        at += 1
    return at
