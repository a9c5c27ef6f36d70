"""The reader adapter's training data: written questions checked against their texts, kept apart from docqa, and
examples that are exactly rag's answer call with the answer copied where the evidence was read."""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise

import pytest

from engines.base import Engine
from engines.grounding import NOT_STATED
from engines.prompting import SYSTEM
from evals.corpus import HELD_OUT_DOCS, TRAINING_CORPUS
from evals.memagent_data import TRAIN_SEED_START, StepMaker, written_items
from evals.metrics import span_recall
from evals.reader_data import HELD_OUT_DOC, document_text, make_examples, reader_items, with_evidence
from evals.tasks.docqa import docqa_items
from memory.memagent import NONE
from memory.rag import Rag, RagConfig
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not TRAINING_CORPUS.is_dir(), reason=f"the training corpus {TRAINING_CORPUS} is absent")


def test_every_question_is_checked_against_its_text_and_kept_apart_from_docqa() -> None:
    items = reader_items()
    assert len(items) >= 200 and len({i.id for i in items}) == len(items)
    assert not {i.doc for i in items} & set(HELD_OUT_DOCS)  # docqa's test documents are never trained on
    assert any(i.doc == HELD_OUT_DOC for i in items) and len({i.doc for i in items}) >= 6
    docqa_spans = {(i.doc, s) for i in docqa_items() for s in i.spans}
    docqa_questions = {i.question.lower() for i in docqa_items()}
    for item in items:
        text = document_text(item.doc)
        assert item.question.lower() not in docqa_questions, item.id
        for quote, (start, end) in zip(item.quotes, item.spans, strict=True):
            assert text[start:end] == quote and text.count(quote) == 1, item.id
            overlaps = [s for d, s in docqa_spans if d == item.doc and s[0] < end and start < s[1]]
            assert not overlaps, item.id  # no fact docqa's dev questions ask
        if item.kind == "unanswerable":
            assert not item.answers and not item.spans, item.id
        else:
            assert item.answers[0] in " ".join(item.quotes), item.id  # copied as the text writes it
        if item.kind == "multihop":
            assert min(b[0] - a[1] for a, b in pairwise(sorted(item.spans))) >= 2000, item.id


def test_evidence_windows_take_the_place_of_retrieved_units() -> None:
    item = next(i for i in reader_items() if i.kind == "lookup")
    text = document_text(item.doc)
    (s, e), far = item.spans[0], len(text) // 2
    units = sorted([(0, 800), (far, far + 900), (far + 5000, far + 5800)])
    read = with_evidence(units, item, text)
    assert span_recall(item.spans, units) < 1.0 <= span_recall(item.spans, read)
    assert len(set(read) & set(units)) == 2 and read == sorted(read)  # one unit out, one window in
    assert any(a <= s and e <= b and b - a <= 1000 + (e - s) for a, b in read)
    assert with_evidence(units, item, text) == read  # the same choice every time


def test_examples_are_rags_answer_call_with_the_answer_copied_or_not_stated(native_engine: Engine, tmp_path) -> None:
    lookup = next(i for i in reader_items() if i.kind == "lookup" and i.doc == HELD_OUT_DOC)
    unanswerable = next(i for i in reader_items() if i.kind == "unanswerable" and i.doc == HELD_OUT_DOC)
    rag = Rag(RagConfig(qdrant_path=tmp_path))
    shipped = make_examples([lookup, unanswerable], native_engine, rag, TRAINING_CORPUS)  # the shipped recipe
    assert {e.family for e in shipped} <= {"lookup:retrieved", "lookup:evidence put in", "unanswerable:retrieved"}
    assert any(e.target == lookup.answers[0] for e in shipped) and len(shipped) <= 3
    examples = make_examples([lookup, unanswerable], native_engine, rag, TRAINING_CORPUS, contrast=True)
    families = [e.family for e in examples]
    assert families.count("unanswerable:retrieved") == 1 and not any(f.startswith("unanswerable:e") for f in families)
    by_family = {e.family: e for e in examples}
    assert by_family["unanswerable:retrieved"].target == NOT_STATED
    # the lookup is read three ways with its evidence, and (the first question of the list) once without it
    copies = [e for e in examples if e.family.startswith("lookup") and e.family != "lookup:evidence taken out"]
    assert len(copies) == 3 and len({e.messages[1]["content"] for e in copies}) == 3
    for e in copies:
        assert e.target == lookup.answers[0] and lookup.quotes[0] in e.messages[1]["content"]
    short = by_family["lookup:short"].messages[1]["content"]
    assert len(short) < min(len(e.messages[1]["content"]) for e in copies if e.family != "lookup:short")
    taken_out = by_family["lookup:evidence taken out"]
    assert taken_out.target == NOT_STATED and lookup.quotes[0] not in taken_out.messages[1]["content"]
    assert lookup.answers[0].lower() not in taken_out.messages[1]["content"].lower()
    for e in examples:
        item = unanswerable if e.family.startswith("unanswerable") else lookup
        assert e.messages[0]["content"] == SYSTEM
        assert e.messages[1]["content"].startswith("Text:\n")
        assert e.messages[1]["content"].endswith(f"Question: {item.question}\nAnswer:")


def test_memagent_learns_to_keep_the_evidence_of_written_questions(native_engine: Engine) -> None:
    maker = StepMaker(native_engine.count_tokens)
    by_question = {i.question: i for i in written_items()}
    assert HELD_OUT_DOC not in {i.doc for i in written_items()}  # its questions measure the adapters
    kept = none = 0
    for seed in range(TRAIN_SEED_START, TRAIN_SEED_START + 12):
        update = maker.update("written", seed, 256)
        prompt = update.messages[1]["content"]
        item = next(i for q, i in by_question.items() if f"Question: {q}" in prompt or q in prompt)
        if update.target == NONE:
            none += 1
            assert not any(q[:25] in prompt for q in item.quotes)  # its evidence is elsewhere, or nowhere
        else:
            kept += 1
            assert all(line in prompt for line in update.target.split("\n"))  # sentences copied word for word
            assert any(end in update.target for q in item.quotes for end in (q[:25], q[-25:]))  # holding evidence
        answer = maker.answer("written", seed)
        assert answer.target in answer.messages[1]["content"]  # the answer is copied from the memory it reads
    assert kept and none  # both decisions are taught


def test_preparing_without_the_corpus_is_a_clear_usage_error(tmp_path) -> None:
    cli = [sys.executable, "-m", "service.cli", "train", "reader", "--prepare-to", str(tmp_path / "r.npz")]
    done = subprocess.run([*cli, "--corpus", str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "no training corpus at" in done.stderr
    assert not (tmp_path / "r.npz").exists()
