"""docqa: the hand-written questions are checkable against their texts, cuts keep the evidence, and the
evidence-recall and abstention scores mean what they say."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest

from engines.base import Engine
from engines.types import Answer, Evidence
from evals.corpus import HELD_OUT_DOCS, read_text
from evals.metrics import abstains, span_recall
from evals.tasks import generate
from evals.tasks.docqa import KINDS, WHOLE, asked, docqa_items


@pytest.fixture(scope="module")
def engine(single_thread_engine: Engine) -> Engine:
    return single_thread_engine


def test_every_item_is_checked_against_its_text() -> None:
    items = docqa_items()
    assert len(items) >= 200 and len({i.id for i in items}) == len(items)
    for item in items:
        text = read_text(item.doc)
        assert item.kind in KINDS
        assert len(item.spans) == len(item.quotes)
        for quote, (start, end) in zip(item.quotes, item.spans, strict=True):
            assert text[start:end] == quote and text.count(quote) == 1, item.id
        evidence = " ".join(item.quotes).lower()
        if item.kind == "unanswerable":
            assert not item.answers and not item.quotes, item.id
        elif item.kind in ("lookup", "multihop"):
            assert any(a.lower() in evidence for a in item.answers), item.id
        elif item.match == "all":
            assert all(a.lower() in evidence for a in item.answers), item.id
        if item.kind == "multihop":
            spans = sorted(item.spans)
            assert min(b[0] - a[1] for a, b in pairwise(spans)) >= 2000, item.id


def test_documents_kinds_and_splits() -> None:
    items = docqa_items()
    docs = {i.doc: i.split for i in items}
    assert len(docs) >= 8
    for doc in docs:  # split by document: no document has questions in both splits
        assert {i.split for i in items if i.doc == doc} == {docs[doc]}
    assert {d for d, s in docs.items() if s == "test"} <= set(HELD_OUT_DOCS)  # never in any training data
    kinds = Counter(i.kind for i in items)
    assert set(kinds) == set(KINDS)
    assert 0.08 <= kinds["unanswerable"] / len(items) <= 0.15
    assert sum(i.split == "test" for i in items) >= 100


def test_documents_are_long(engine: Engine) -> None:
    for doc in {i.doc for i in docqa_items()}:
        assert 20_000 <= engine.count_tokens(read_text(doc)) <= 250_000, doc


@pytest.mark.parametrize("length", [8192, 32768])
def test_cuts_keep_the_evidence_at_its_offsets(engine: Engine, length: int) -> None:
    for seed in range(6):
        sample = generate("docqa", engine, length, seed)
        assert 0.98 * length <= sample.prompt_tokens <= length
        item = asked("dev", length)[seed]
        assert sample.question.question == item.question
        for quote, (start, end) in zip(item.quotes, sample.info["gold_spans"], strict=True):
            assert sample.document.text[start:end] == quote


def test_whole_documents_are_asked_whole(engine: Engine) -> None:
    sample = generate("docqa", engine, WHOLE, 0, split="test")
    item = asked("test", WHOLE)[0]
    assert sample.document.text == read_text(item.doc) and sample.info["split"] == "test"
    assert [list(s) for s in item.spans] == sample.info["gold_spans"]


def test_evidence_recall_is_the_share_of_gold_spans_read() -> None:
    assert span_recall([[100, 200]], [(0, 150)]) == 1.0  # half the span or more
    assert span_recall([[100, 200]], [(0, 140)]) == 0.0
    assert span_recall([[100, 200], [1000, 1100]], [(90, 210)]) == 0.5
    assert span_recall([[100, 200]], [(100, 130), (130, 160)]) == 1.0  # adjacent pieces add up


def test_abstentions_score_only_where_the_document_does_not_say(engine: Engine) -> None:
    assert abstains("The document does not say.") and abstains("It is not mentioned in the text.")
    assert not abstains("Charlotte Lucas") and not abstains("He said nothing.")
    unanswerable = next(s for s, item in enumerate(asked("dev", 8192)) if item.kind == "unanswerable")
    sample = generate("docqa", engine, 8192, unanswerable)
    assert sample.scored(Answer("The document does not say.", "s"))["accuracy"] == 1.0
    assert sample.scored(Answer("Mr. Smith", "s"))["accuracy"] == 0.0
    lookup = generate("docqa", engine, 8192, next(s for s, i in enumerate(asked("dev", 8192)) if i.kind == "lookup"))
    start, end = lookup.info["gold_spans"][0]
    right = lookup.answers[0]
    read = Answer(right, "s", [Evidence(start, end, lookup.document.text[start:end])])
    scored = lookup.scored(read)
    assert (scored["accuracy"], scored["evidence_recall"]) == (1.0, 1.0)
    # an abstention that happens to name the answer is still no answer
    assert lookup.scored(Answer(f"The document does not say {right}.", "s"))["accuracy"] == 0.0
