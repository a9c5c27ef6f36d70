"""Document loading: pypdf against pypdfium2 (PDFium) on generated PDFs, through the product's own loader.

    PYTHONPATH=. python -m bench.doc_loading [--pages 600] [--repeats 3]

Each scenario is a PDF written by bench/pdfgen.py (50 lines of prose a page, chapters and sections in the
outline; `_images` variants have every 25th page image-only; `_typeset` ones also write their pages as typesetters do:
Flate-compressed streams, lines as TJ arrays with kerning inside words). A row times `service.documents.parse_document`
end to end (text, page spans, image-only pages, outline) with one parser, best of `--repeats`, against pypdf as
the baseline; both parsers' texts are checked to agree page for page on the words. Writes
bench/results/doc-loading.json and .md (DESIGN.md's document-loading rows).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench.common import write_results
from bench.pdfgen import book
from service import documents


def timed(data: bytes, parser: str, repeats: int) -> tuple[float, str, dict[str, Any]]:
    best = float("inf")
    text, meta = "", {}
    for _ in range(repeats):
        documents.PDF_PARSER = parser
        start = time.perf_counter()
        doc = documents.parse_document(data, "bench.pdf")
        best = min(best, time.perf_counter() - start)
        text, meta = doc.text, doc.metadata
    return best, text, meta


def words_by_page(text: str, meta: dict[str, Any]) -> list[list[str]]:
    return [text[start:end].split() for _, start, end in meta["page_spans"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", default="100,600", help="page counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="doc-loading")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # the host is shared: say how busy it was
    rows = []
    for pages in (int(p) for p in args.pages.split(",")):
        for image_every, typeset, suffix in ((0, False, ""), (25, False, "_images"), (25, True, "_typeset")):
            data, _ = book(pages, seed=pages, image_every=image_every, typeset=typeset)
            base_s, base_text, base_meta = timed(data, "pypdf", args.repeats)
            for name in ("pypdf", "pypdfium2"):
                seconds, text, meta = (
                    timed(data, name, args.repeats) if name != "pypdf" else (base_s, base_text, base_meta)
                )
                same = words_by_page(text, meta) == words_by_page(base_text, base_meta)
                row = {
                    "scenario": f"pdf_{pages}_pages{suffix}",
                    "pages": pages,
                    "parser": name,
                    "seconds": round(seconds, 3),
                    "baseline_parser": "pypdf",
                    "baseline_seconds": round(base_s, 3),
                    "speedup": round(base_s / seconds, 2),
                    "pdf_mb": round(len(data) / 2**20, 2),
                    "characters": len(text),
                    "image_only_pages": len(meta["image_only_pages"]),
                    "outline_entries": len(meta.get("outline", [])),
                    "same_words_as_baseline": same,
                    "repeats": args.repeats,
                }
                rows.append(row)
                print(row, flush=True)
    documents.PDF_PARSER = "pypdfium2"
    load = {"load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2)}
    print(write_results(args.name, "doc_loading", "none", rows, **load))


if __name__ == "__main__":
    main()
