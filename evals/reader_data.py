"""Training examples for the reader adapter: written questions about real prose, asked the way `rag` asks them.

The questions (evals/data/reader_train, docqa's schema, split "train") were written by reading the training
corpus (never `evals.corpus.HELD_OUT_DOCS`, and no fact docqa's dev questions ask). For each one the product's own
`rag` retrieves over the whole document, and every example is the answer call it then makes: the system prompt,
the text read, the question. The reply is the first accepted answer, copied as the text writes it, when the text
read holds every evidence span (half a span or more, as docqa scores it), else "The document does not say.".

The shipped adapter's data is each question as rag read it, plus, where rag missed the evidence, the same question
with windows around the evidence in place of as many retrieved units: 26% of its replies abstain, most of them on
questions whose evidence rag missed, and it abstains on some facts it has read. `--contrast` is a second recipe
aimed at that: an answerable question is read three ways, all holding its evidence (as rag read it or with the
evidence put in; the same with other units kept; the evidence beside one other unit, a short text), and abstaining
is taught by contrast (the unanswerable questions, and one answerable question in CONTRAST_EVERY with every unit
touching its evidence taken out, where no accepted answer is left). It tied the shipped adapter on docqa dev (9 of
40 each; bench/results/docqa-reading-dev-reader-v{1,2}.md) and still abstained on the tests' lighthouse keeper, so
it is not shipped. One document's questions are held out for the card's numbers.

    tome train reader --prepare-to reader.npz          # here: retrieval, prompts, token ids
    python -m memory.training --data reader.npz ...    # a GPU host (or `tome train reader --data reader.npz`)
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from engines import create_engine
from engines.base import Engine
from engines.grounding import NOT_STATED
from engines.prompting import answer_messages
from engines.settings import Settings
from engines.types import Document, Task, no_progress
from evals.corpus import HELD_OUT_DOCS, TRAINING_CORPUS, normalize
from evals.metrics import span_recall
from evals.tasks.docqa import DocQAItem, read_items
from memory import training
from memory.memagent import MemAgent
from memory.rag import Rag, RagConfig, merged
from memory.spans import Span, split_sentences

READER_TRAIN_DIR = Path(__file__).parent / "data" / "reader_train"
HELD_OUT_DOC = "dostoyevsky_notes_from_underground.txt"  # its questions measure the adapter, never train it
EVIDENCE_CHARS = 1000  # a forced evidence window: about rag's 256-token window around the quote
CONTRAST_EVERY = 3  # one answerable question in three is also read with its evidence taken out


@cache
def reader_items() -> tuple[DocQAItem, ...]:
    items = read_items(READER_TRAIN_DIR)
    held = sorted({i.doc for i in items} & set(HELD_OUT_DOCS))
    if held:
        raise ValueError(f"reader training questions about held-out documents: {', '.join(held)}")
    return items


@cache
def document_text(doc: str, corpus: Path = TRAINING_CORPUS) -> str:
    """A training document, unwrapped as the questions' offsets expect."""
    return normalize((corpus / doc).read_text(encoding="utf-8", errors="replace"))


@cache
def document_sentences(doc: str, corpus: Path = TRAINING_CORPUS) -> tuple[Span, ...]:
    """The training document's sentence spans (memagent's written examples pick segments by sentence)."""
    return tuple(split_sentences(document_text(doc, corpus)))


def with_evidence(units: Sequence[tuple[int, int]], item: DocQAItem, text: str, seed: int = 0) -> list[tuple[int, int]]:
    """The retrieved units with windows around the evidence in place of as many of them (chosen at random, seeded
    by the item and `seed`: rag's window scores are not kept per unit), in document order, overlaps merged."""
    pad = lambda s, e: max(0, (EVIDENCE_CHARS - (e - s)) // 2)  # noqa: E731
    windows = [(max(0, s - pad(s, e)), min(len(text), e + pad(s, e))) for s, e in item.spans]
    kept = list(units)
    random.Random(f"{item.id}:{seed}" if seed else item.id).shuffle(kept)
    return merged([*kept[len(windows) :], *windows])


def without_evidence(units: Sequence[tuple[int, int]], item: DocQAItem) -> list[tuple[int, int]]:
    """The retrieved units less every one that touches an evidence span."""
    return [(a, b) for a, b in units if not any(a < e and s < b for s, e in item.spans)]


def example(item: DocQAItem, text: str, units: Sequence[tuple[int, int]], family: str) -> training.Example:
    read = bool(item.spans) and span_recall(item.spans, units) == 1.0
    messages = answer_messages("\n\n".join(text[s:e] for s, e in units), Task(item.question, max_answer_tokens=32))
    return training.Example("answer", family, 0, messages, item.answers[0] if read else NOT_STATED)


def make_examples(
    items: Sequence[DocQAItem], engine: Engine, rag: Rag, corpus: Path, contrast: bool = False
) -> list[training.Example]:
    """Each question as rag reads it, and once more with its evidence put in where rag missed it (the shipped
    adapter's data). `contrast`: an answerable question rag missed is read only with its evidence put in, every
    answerable one twice more with it, and one in CONTRAST_EVERY with its evidence taken out."""
    focus = MemAgent().adapter(engine) is None  # as rag.run: whole units where its extractor reads them
    out = []
    for n, item in enumerate(items):
        text = document_text(item.doc, corpus)
        r = rag.retrieve(Document(text), [Task(item.question, max_answer_tokens=32)], engine, no_progress, focus)[0]
        read = bool(item.spans) and span_recall(item.spans, r.units) == 1.0
        if not item.spans or read or not contrast:
            out.append(example(item, text, r.units, f"{item.kind}:retrieved"))
        if item.spans and not read:
            out.append(example(item, text, with_evidence(r.units, item, text), f"{item.kind}:evidence put in"))
        if not (contrast and item.spans):
            continue
        out.append(example(item, text, with_evidence(r.units, item, text, seed=1), f"{item.kind}:evidence put in"))
        short = with_evidence(r.units, item, text, seed=2)
        others = [u for u in short if span_recall(item.spans, [u]) == 0.0]
        out.append(example(item, text, [u for u in short if u not in others[1:]], f"{item.kind}:short"))
        rest = without_evidence(r.units, item)
        left = " ".join(text[s:e] for s, e in rest).lower()
        if n % CONTRAST_EVERY == 0 and rest and not any(a.lower() in left for a in item.answers):
            out.append(example(item, text, rest, f"{item.kind}:evidence taken out"))
    return out


def stats(examples: Sequence[training.Example]) -> dict[str, object]:
    """training.data_stats, with the share of replies that say the document does not say it."""
    return {
        **training.data_stats(examples),
        "none_share": sum(e.target == NOT_STATED for e in examples) / max(1, len(examples)),
    }


def main(argv: Sequence[str], settings: Settings) -> int:
    p = argparse.ArgumentParser(prog="tome train reader", description=__doc__.split("\n\n")[0])
    p.add_argument("--prepare-to", type=Path, default=None, help="make and encode the examples into this file")
    p.add_argument("--max-tokens", type=int, default=4096, help="longest training sequence")
    p.add_argument("--corpus", type=Path, default=TRAINING_CORPUS)
    p.add_argument("--limit", type=int, default=0, help="questions per split (0: all)")
    p.add_argument("--contrast", action="store_true", help="the second recipe (module docstring); not shipped")
    args, rest = p.parse_known_args(argv)
    if args.prepare_to is None:  # training: memory/training.py on a --data file, the reader's card by its meta
        return training.main(rest, settings=settings)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if not args.corpus.is_dir():
        p.error(f"no training corpus at {args.corpus} (--corpus DIR: the folder of the questions' documents)")
    engine = create_engine(settings.engine_config())
    store = Path(tempfile.mkdtemp(prefix="reader-data-"))
    rag = Rag(RagConfig(embedder=settings.embedder, qdrant_path=store))
    items = reader_items()
    train_items = [i for i in items if i.doc != HELD_OUT_DOC][: args.limit or None]
    held_items = [i for i in items if i.doc == HELD_OUT_DOC][: args.limit or None]
    examples = make_examples(train_items, engine, rag, args.corpus, args.contrast)
    held_examples = make_examples(held_items, engine, rag, args.corpus, args.contrast)
    tokenizer = engine.hf_tokenizer  # type: ignore[attr-defined]
    encoded = [(e.family, training.encode(tokenizer, e, args.max_tokens)) for e in held_examples]
    meta = {
        "target": "reader",
        "data": {**stats(examples), "questions": len(train_items), "held_out_doc": HELD_OUT_DOC,
                 "recipe": "contrast" if args.contrast else "rag"},
        "held_families": [f for f, x in encoded if x is not None],
        "first_seed": 0,
        "max_tokens": args.max_tokens,
        "segment_tokens": [0, 0],
    }
    items_out = training.encode_all(tokenizer, examples, args.max_tokens)
    training.save_items(args.prepare_to, items_out, [x for _, x in encoded if x is not None], meta)
    print(json.dumps({"examples": len(items_out), "held_out": len(meta["held_families"]), **meta["data"]}))
    return 0
