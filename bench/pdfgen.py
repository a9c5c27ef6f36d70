"""Write real multi-page PDFs without a PDF library: text pages (Helvetica, a real text layer), image-only pages
(a drawn picture, no text), and an outline (bookmarks) with nested entries.

Used by bench/doc_loading.py (a 600-page PDF) and by the tests (page numbers, outline, image-only pages).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

WORDS = (
    "harbour lamp keeper ledger storm boat captain letter river tower winter oil flour brass telescope "
    "morning evening weather island channel signal rope anchor tide cliff gull lantern chart compass "
    "voyage cargo merchant customs quay pier beacon fog current reef"
).split()


@dataclass
class Page:
    lines: list[str] = field(default_factory=list)  # empty: an image-only page (a drawn picture, no text)


@dataclass
class Heading:
    title: str
    page: int  # 1-based
    children: list[Heading] = field(default_factory=list)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _kerned(line: str, rng: random.Random) -> str:
    """A line as a typesetter writes it: a TJ array with small kerning adjustments inside words."""
    parts = []
    for word in line.split(" "):
        if len(word) > 3:
            cut = rng.randint(1, len(word) - 2)
            parts.append(f"({_escape(word[:cut])}) {rng.choice((-20, -15, 10, 25))} ({_escape(word[cut:])} )")
        else:
            parts.append(f"({_escape(word)} )")
    return "[" + " ".join(parts) + "] TJ T*"


def _page_stream(page: Page, typeset: bool = False, seed: int = 0) -> str:
    if not page.lines:  # a picture: filled rectangles, no text operators
        return "0.2 0.4 0.6 rg 72 300 468 400 re f 0.9 0.8 0.1 rg 150 400 200 150 re f"
    if typeset:
        rng = random.Random(seed)
        shown = "\n".join(_kerned(line, rng) for line in page.lines)
        return f"BT /F1 10 Tf 56 760 Td 13 TL\n{shown}\nET"
    shown = " ".join(f"({_escape(line)}) '" for line in page.lines)
    return f"BT /F1 10 Tf 56 760 Td 13 TL {shown} ET"


def make_pdf(pages: Sequence[Page], outline: Sequence[Heading] = (), typeset: bool = False) -> bytes:
    """A PDF with these pages and bookmarks; offsets and the xref table computed so every reader accepts it.

    `typeset`: content streams as typesetters write them (Flate-compressed, lines as TJ arrays with kerning
    inside words) instead of plain uncompressed `'` operators."""
    objects: dict[int, str | bytes] = {}
    n_pages = len(pages)
    font = 3
    first_page = 4  # page i (0-based) is object first_page + 2i, its content stream the next one
    kids = " ".join(f"{first_page + 2 * i} 0 R" for i in range(n_pages))
    objects[2] = f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>"
    objects[font] = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    for i, page in enumerate(pages):
        stream = _page_stream(page, typeset, seed=i).encode("latin-1")
        objects[first_page + 2 * i] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {first_page + 2 * i + 1} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>"
        )
        flate = ""
        if typeset:
            stream, flate = zlib.compress(stream, 6), " /Filter /FlateDecode"
        objects[first_page + 2 * i + 1] = (
            f"<< /Length {len(stream)}{flate} >>\nstream\n".encode() + stream + b"\nendstream"
        )
    next_id = first_page + 2 * n_pages
    catalog = "<< /Type /Catalog /Pages 2 0 R >>"
    if outline:
        root = next_id
        next_id += 1

        def add(items: Sequence[Heading], parent: int) -> tuple[int, int, int]:
            nonlocal next_id
            ids = list(range(next_id, next_id + len(items)))
            next_id += len(items)
            total = len(items)
            for k, (item, oid) in enumerate(zip(items, ids, strict=True)):
                parts = [
                    f"/Title ({_escape(item.title)})",
                    f"/Parent {parent} 0 R",
                    f"/Dest [{first_page + 2 * (item.page - 1)} 0 R /XYZ 0 792 0]",
                ]
                if k > 0:
                    parts.append(f"/Prev {ids[k - 1]} 0 R")
                if k + 1 < len(ids):
                    parts.append(f"/Next {ids[k + 1]} 0 R")
                if item.children:
                    first, last, count = add(item.children, oid)
                    parts.append(f"/First {first} 0 R /Last {last} 0 R /Count {count}")
                    total += count
                objects[oid] = "<< " + " ".join(parts) + " >>"
            return ids[0], ids[-1], total

        first, last, count = add(outline, root)
        objects[root] = f"<< /Type /Outlines /First {first} 0 R /Last {last} 0 R /Count {count} >>"
        catalog = f"<< /Type /Catalog /Pages 2 0 R /Outlines {root} 0 R /PageMode /UseOutlines >>"
    objects[1] = catalog
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for oid in sorted(objects):
        offsets[oid] = len(out)
        body = objects[oid]
        out += f"{oid} 0 obj\n".encode() + (body if isinstance(body, bytes) else body.encode("latin-1"))
        out += b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += f"xref\n0 {size}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offsets[i]:010d} 00000 n \n" for i in range(1, size)).encode()
    out += f"trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def book(
    n_pages: int, seed: int = 0, image_every: int = 0, lines_per_page: int = 50, typeset: bool = False
) -> tuple[bytes, list[Page]]:
    """A long book: chapters of 20 pages with sections of 5 in the outline, prose-like lines of random words,
    a chapter title as each chapter's first line, every `image_every`-th page image-only (0: none)."""
    rng = random.Random(seed)
    pages: list[Page] = []
    chapters: list[Heading] = []
    for p in range(1, n_pages + 1):
        if image_every and p % image_every == 0:
            pages.append(Page([]))
            continue
        lines = []
        if (p - 1) % 20 == 0:
            chapters.append(Heading(f"Chapter {len(chapters) + 1}", p))
            lines.append(f"Chapter {len(chapters)}")
        elif (p - 1) % 5 == 0 and chapters:
            chapters[-1].children.append(Heading(f"Section {len(chapters)}.{len(chapters[-1].children) + 1}", p))
        while len(lines) < lines_per_page:
            words = [rng.choice(WORDS) for _ in range(rng.randint(9, 14))]
            lines.append(" ".join(words).capitalize() + ".")
        pages.append(Page(lines))
    return make_pdf(pages, chapters, typeset), pages
