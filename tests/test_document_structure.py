"""Pages, outlines and image-only pages kept through loading (PDF with both parsers, .docx, Markdown), and
evidence spans placed on their page and section."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bench.pdfgen import Heading, Page, book, make_pdf
from engines.types import Answer, Document, Evidence
from service import documents
from service.documents import DocumentError, parse_document, structure
from workflows.graph import _with_places

PAGES = [
    Page(["The Keeper of Saint Brell", "A short account."]),
    Page([]),  # a picture, no text layer
    Page(["The Keeper", "Her only companion was a grey cat called Pilot (a tabby)."]),
    Page(["Notes", "The tower was painted white and red."]),
]
OUTLINE = [Heading("Title page", 1), Heading("The Keeper", 3, [Heading("Notes", 4)])]


@pytest.fixture(params=["pypdfium2", "pypdf"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(documents, "PDF_PARSER", request.param)
    return request.param


@pytest.mark.parametrize("typeset", [False, True])
def test_pdf_pages_outline_and_image_only_pages(parser: str, typeset: bool) -> None:
    doc = parse_document(make_pdf(PAGES, OUTLINE, typeset=typeset), "keeper.pdf")
    meta = doc.metadata
    assert meta["pages"] == 4 and meta["image_only_pages"] == [2] and meta["parser"] == parser
    assert [p for p, _, _ in meta["page_spans"]] == [1, 3, 4]
    by_page = {p: doc.text[start:end] for p, start, end in meta["page_spans"]}
    assert by_page[1].startswith("The Keeper of Saint Brell") and "Pilot (a tabby)" in by_page[3]
    assert by_page[4] == "Notes\nThe tower was painted white and red."
    assert doc.text == "\n\n".join(by_page.values())
    assert [(h["title"], h["level"], h["page"]) for h in meta["outline"]] == [
        ("Title page", 0, 1),
        ("The Keeper", 0, 3),
        ("Notes", 1, 4),
    ]
    keeper = meta["outline"][1]
    assert doc.text[keeper["start"] :].startswith("The Keeper\nHer only")  # the title as the page shows it
    assert structure(doc) == {"pages": 4, "image_only_pages": [2]}

    pilot = doc.text.index("Pilot")
    assert doc.locate(pilot) == (3, "The Keeper")
    assert doc.locate(doc.text.index("painted")) == (4, "Notes")
    assert doc.locate(0) == (1, "Title page")


def test_both_parsers_read_a_long_book_alike() -> None:
    data, _ = book(45, seed=3, image_every=10, typeset=True)
    pdfium = documents._pdf_text(data, "book.pdf", "pypdfium2")
    pypdf = documents._pdf_text(data, "book.pdf", "pypdf")
    assert pdfium[0].split() == pypdf[0].split()
    for key in ("pages", "page_spans", "image_only_pages", "outline"):
        assert pdfium[1][key] == pypdf[1][key], key
    assert pdfium[1]["image_only_pages"] == [10, 20, 30, 40] and len(pdfium[1]["outline"]) == 9


def test_all_pages_image_only_is_refused(parser: str) -> None:
    with pytest.raises(DocumentError, match=r"the PDF's 2 page\(s\) have no text layer"):
        parse_document(make_pdf([Page([]), Page([])]), "scan.pdf")


def test_encrypted_and_broken_pdfs_are_named(parser: str) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(make_pdf(PAGES))))
    writer.encrypt("secret-password")
    locked = io.BytesIO()
    writer.write(locked)
    with pytest.raises(DocumentError, match="encrypted; decrypt it first"):
        parse_document(locked.getvalue(), "locked.pdf")
    with pytest.raises(DocumentError, match="not a readable PDF"):
        parse_document(b"%PDF-1.4\nthis is not a pdf at all", "broken.pdf")


def test_evidence_gets_page_and_section() -> None:
    doc = parse_document(make_pdf(PAGES, OUTLINE), "keeper.pdf")
    start = doc.text.index("Her only")
    answer = Answer("Pilot", "rag", [Evidence(start, start + 20, doc.text[start : start + 20])])
    placed = _with_places(answer, doc)
    assert (placed.evidence[0].page, placed.evidence[0].section) == (3, "The Keeper")
    plain = Document("no pages here")
    assert _with_places(Answer("x", "full", [Evidence(0, 5, "no pa")]), plain).evidence[0].page is None


def docx_bytes() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Saint Brell", level=0)
    document.add_heading("The keeper", level=1)
    document.add_paragraph("The lighthouse keeper was a woman named Orla Venn.")
    document.add_paragraph("")
    document.add_heading("Supplies", level=2)
    table = document.add_table(rows=2, cols=2)
    for r, row in enumerate([("Item", "Amount"), ("Oil", "12 barrels")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_paragraph("Boats came from Keswith.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_docx_text_tables_and_headings() -> None:
    doc = parse_document(docx_bytes(), "keeper.docx")
    assert doc.media_type == documents.DOCX
    assert doc.text.split("\n") == [
        "Saint Brell",
        "The keeper",
        "The lighthouse keeper was a woman named Orla Venn.",
        "Supplies",
        "Item | Amount",
        "Oil | 12 barrels",
        "Boats came from Keswith.",
    ]
    outline = doc.metadata["outline"]
    assert [(h["title"], h["level"]) for h in outline] == [("Saint Brell", 0), ("The keeper", 0), ("Supplies", 1)]
    for heading in outline:
        assert doc.text[heading["start"] :].startswith(heading["title"])
    assert doc.locate(doc.text.index("12 barrels")) == (None, "Supplies")
    assert structure(doc) == {}
    with pytest.raises(DocumentError, match="not a readable Word document"):
        parse_document(b"PK\x03\x04 not really a zip", "broken.docx")


def test_markdown_headings_make_an_outline() -> None:
    text = "# Title\n\nIntro.\n\n## Part one\n\nThe key is blue.\n\n```\n# not a heading\n```\n\n## Part two\n\nEnd."
    doc = parse_document(text.encode(), "notes.md")
    assert [(h["title"], h["level"]) for h in doc.metadata["outline"]] == [
        ("Title", 0),
        ("Part one", 1),
        ("Part two", 1),
    ]
    assert doc.locate(doc.text.index("blue")) == (None, "Part one")
    assert parse_document(b"plain words", "a.txt").metadata == {"filename": "a.txt"}


def test_tome_ask_json_gives_pages(tmp_path: Path) -> None:
    """`tome ask --json` on a PDF, as a user runs it (the real model): evidence with its page, image-only pages."""
    from tests.test_ask import tome

    path = tmp_path / "keeper.pdf"
    path.write_bytes(make_pdf(PAGES, OUTLINE))
    out = tome("ask", str(path), "What was the cat called?", "--strategy", "full", "--max-tokens", "8", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["document"]["pages"] == 4 and result["document"]["image_only_pages"] == [2]
    evidence = result["evidence"]  # `full` read it all, from the first page on
    assert len(evidence) == 1 and (evidence[0]["start"], evidence[0]["page"], evidence[0]["section"]) == (
        0,
        1,
        "Title page",
    )
    plain = tome("ask", str(path), "What was the cat called?", "--strategy", "full", "--max-tokens", "8")
    assert "not read (image-only pages, no text layer): 2" in plain.stderr
