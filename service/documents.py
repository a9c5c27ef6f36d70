"""Reading user files (.txt, .md, .html, .pdf, .docx) into Documents, with clear errors for bad input.

Where the file has them, the Document's metadata keeps its structure, with character offsets into its text:
- `pages` (PDF: the page count), `page_spans` (`[[page, start, end], ...]`, 1-based pages with text) and
  `image_only_pages` (pages without a text layer: named, not read);
- `outline`: `[{"title", "level", "start", "page"}, ...]` from a PDF's bookmarks, a Word document's heading
  styles or Markdown `#` headings.
`Document.locate(offset)` turns an evidence span's start into its page and section.

PDFs are read with pypdfium2 (PDFium), several times faster than pypdf on long and typeset files
(bench/doc_loading.py); `PDF_PARSER = "pypdf"` switches back. PDFium is not thread-safe, so a lock guards it.
"""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path
from typing import Any

from engines.types import Document
from service.inputs import blank_unstorable

MEDIA_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}
DOCX = MEDIA_TYPES[".docx"]
PDF_PARSER = "pypdfium2"  # or "pypdf"; chosen by bench/doc_loading.py's numbers
_PDFIUM_LOCK = threading.Lock()  # PDFium is not thread-safe; the API parses uploads in a thread pool


class DocumentError(ValueError):
    """Bad input: the message names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def structure(document: Document) -> dict[str, Any]:
    """What a result says about the document's pages: the count and the image-only pages that were not read."""
    meta = document.metadata
    if meta.get("pages") is None:
        return {}
    return {"pages": meta["pages"], "image_only_pages": list(meta.get("image_only_pages") or [])}


def load_document(path: str | Path) -> Document:
    path = Path(path)
    if not path.exists():
        raise DocumentError(str(path), "file not found")
    if not path.is_file():
        raise DocumentError(str(path), "not a regular file")
    return parse_document(path.read_bytes(), path.name, source=str(path))


def parse_document(data: bytes, filename: str, source: str | None = None) -> Document:
    suffix = Path(filename).suffix.lower()
    media_type = MEDIA_TYPES.get(suffix)
    if media_type is None:
        supported = ", ".join(sorted(set(MEDIA_TYPES)))
        raise DocumentError(filename, f"unsupported file type {suffix or '(none)'!r}; supported: {supported}")
    if not data.strip():
        raise DocumentError(filename, "the file is empty")
    meta: dict[str, Any] = {}
    if media_type == "application/pdf":
        text, meta = _pdf_text(data, filename)
        text = blank_unstorable(text)  # a text layer's stray NULs are not the user's to fix (service/inputs.py)
    elif media_type == DOCX:
        text, meta = _docx_text(data, filename)
    else:
        text = _decode(data, filename).strip()
        if "\x00" in text:
            raise DocumentError(filename, "the file contains NUL bytes: binary, or not UTF-8/UTF-16 text")
        if media_type == "text/html":
            text = _html_text(text)
        elif media_type == "text/markdown":
            outline = _markdown_outline(text)
            if outline:
                meta = {"outline": outline}
    text = text.strip() if not meta else text  # structured text is built stripped: its offsets stay right
    if not text:
        raise DocumentError(filename, "no text found in the file")
    return Document(
        text=text, source=source or filename, media_type=media_type, metadata={"filename": filename, **meta}
    )


def _decode(data: bytes, filename: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DocumentError(
            filename, f"cannot decode as {encoding.removesuffix('-sig')} text (byte {exc.start}); save it as UTF-8"
        ) from None


def _html_text(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return "\n".join(line for line in lines if line)


def _pdf_text(data: bytes, filename: str, parser: str | None = None) -> tuple[str, dict[str, Any]]:
    """The PDF's text, pages joined by a blank line, with page spans, image-only pages and the outline."""
    parser = parser or PDF_PARSER
    try:
        pages, toc = _pdfium_pages(data, filename) if parser == "pypdfium2" else _pypdf_pages(data, filename)
    except DocumentError:
        raise
    except Exception as exc:  # both parsers raise assorted errors on broken files; all mean the same to a user
        message = str(exc).lower()
        if "encrypt" in message or "password" in message or "decrypt" in message:
            raise DocumentError(filename, "the PDF is encrypted; decrypt it first") from None
        raise DocumentError(filename, f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    texts = [_clean_page(p) for p in pages]
    if not any(texts):
        raise DocumentError(filename, f"the PDF's {len(pages)} page(s) have no text layer (image-only?); OCR it first")
    parts: list[str] = []
    spans: list[list[int]] = []
    offset = 0
    for number, text in enumerate(texts, 1):
        if not text:
            continue
        if parts:
            offset += 2  # the blank line between pages
        spans.append([number, offset, offset + len(text)])
        parts.append(text)
        offset += len(text)
    joined = "\n\n".join(parts)
    meta: dict[str, Any] = {
        "pages": len(pages),
        "page_spans": spans,
        "image_only_pages": [n for n, t in enumerate(texts, 1) if not t],
        "parser": parser,
    }
    outline = _pdf_outline(joined, spans, toc)
    if outline:
        meta["outline"] = outline
    return joined, meta


def _clean_page(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


def _pdfium_pages(data: bytes, filename: str) -> tuple[list[str], list[tuple[str, int, int | None]]]:
    import pypdfium2 as pdfium

    with _PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            if "password" in str(exc).lower():
                raise DocumentError(filename, "the PDF is encrypted; decrypt it first") from None
            raise DocumentError(filename, f"not a readable PDF ({exc})") from None
        try:
            pages = []
            for index in range(len(pdf)):
                page = pdf[index]
                textpage = page.get_textpage()
                pages.append(textpage.get_text_range())
                textpage.close()
                page.close()
            toc = []
            for bookmark in pdf.get_toc():
                dest = bookmark.get_dest()
                index = dest.get_index() if dest is not None else None
                toc.append((bookmark.get_title() or "", bookmark.level, index))
        finally:
            pdf.close()
    return pages, toc


def _pypdf_pages(data: bytes, filename: str) -> tuple[list[str], list[tuple[str, int, int | None]]]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise DocumentError(filename, "the PDF is encrypted; decrypt it first")
    pages = [page.extract_text() or "" for page in reader.pages]
    toc: list[tuple[str, int, int | None]] = []

    def walk(items: list[Any], level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            try:
                index = reader.get_destination_page_number(item)
            except Exception:
                index = None
            toc.append((str(item.title or ""), level, index))

    try:
        walk(reader.outline, 0)
    except Exception:  # a broken outline is no reason to refuse the text
        toc = []
    return pages, toc


def _pdf_outline(text: str, spans: list[list[int]], toc: list[tuple[str, int, int | None]]) -> list[dict[str, Any]]:
    """Bookmarks with the offset of their page (of the title on it, where the page shows it)."""
    starts = {page: (start, end) for page, start, end in spans}
    outline = []
    for title, level, index in toc:
        title = " ".join(title.split())
        if not title or index is None:
            continue
        page = index + 1
        # A bookmark on an image-only page points at the next page with text.
        at = next((p for p in range(page, page + len(spans) + 1) if p in starts), None) if spans else None
        if at is None or at > spans[-1][0]:
            continue
        start, end = starts[at]
        found = text[start:end].lower().find(title.lower())
        outline.append({"title": title, "level": level, "page": page, "start": start + max(found, 0)})
    return outline


_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def _markdown_outline(text: str) -> list[dict[str, Any]]:
    fenced = [m.span() for m in re.finditer(r"^```.*?^```", text, re.MULTILINE | re.DOTALL)]
    return [
        {"title": m.group(2), "level": len(m.group(1)) - 1, "start": m.start()}
        for m in _MD_HEADING.finditer(text)
        if not any(a <= m.start() < b for a, b in fenced)
    ]


def _docx_text(data: bytes, filename: str) -> tuple[str, dict[str, Any]]:
    """Paragraphs and tables in document order (a table row as `cell | cell`); heading styles make the outline."""
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:
        raise DocumentError(filename, f"not a readable Word document ({type(exc).__name__}: {exc})") from None
    parts: list[str] = []
    outline: list[dict[str, Any]] = []
    offset = 0

    def add(line: str) -> int:
        nonlocal offset
        if parts:
            offset += 1
        start = offset
        parts.append(line)
        offset += len(line)
        return start

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells = [" ".join(cell.text.split()) for cell in row.cells]
                line = " | ".join(dict.fromkeys(c for c in cells if c))  # merged cells repeat their text
                if line:
                    add(line)
            continue
        line = block.text.strip()
        if not line:
            continue
        start = add(line)
        style = (block.style.name if block.style is not None else "") or ""
        match = re.fullmatch(r"Heading (\d)", style)
        if match or style == "Title":
            outline.append({"title": line, "level": int(match.group(1)) - 1 if match else 0, "start": start})
    text = "\n".join(parts)
    return text, ({"outline": outline} if outline else {})
