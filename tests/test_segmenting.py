from __future__ import annotations

import pytest

from engines.segmenting import split_segments
from tests.conftest import EXAMPLES


def test_segments_cover_the_text_in_order_within_budget(native_engine) -> None:
    text = (EXAMPLES / "federalist_10.md").read_text()
    segments = split_segments(text, native_engine, 500)
    assert len(segments) >= native_engine.count_tokens(text) // 500
    assert [s.index for s in segments] == list(range(len(segments)))
    for a, b in zip(segments, segments[1:], strict=False):
        assert a.end <= b.start and text[a.end : b.start].strip() == ""  # only whitespace between segments
    for s in segments:
        assert text[s.start : s.end] == s.text
        assert native_engine.count_tokens(s.text) <= 500 + 4  # joins may merge a token or two


def test_long_paragraphs_split_at_sentences(native_engine) -> None:
    text = " ".join(f"Sentence number {i} says nothing at all." for i in range(300))  # one paragraph
    segments = split_segments(text, native_engine, 100)
    assert len(segments) > 5
    assert all(s.text.endswith(".") for s in segments)


def test_bad_budget_is_an_error(native_engine) -> None:
    with pytest.raises(ValueError, match="positive"):
        split_segments("text", native_engine, 0)


def test_sentences_start_after_closing_quotes_and_brackets() -> None:
    from engines.text import sentence_starts

    text = 'He said "Stop!" Then he left. (Quietly.) Version 2.5 stays whole.'
    assert [text[i : i + 4] for i in sentence_starts(text)] == ["He s", "Then", "(Qui", "Vers"]
