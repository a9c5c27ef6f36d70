"""Reading user files (.txt, .md, .html, .pdf) into Documents, with clear errors for bad input."""

from __future__ import annotations

import io
from pathlib import Path

from engines.types import Document
from service.inputs import strip_unstorable

MEDIA_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}


class DocumentError(ValueError):
    """Bad input: the message names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


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
    if media_type == "application/pdf":
        text, meta = _pdf_text(data, filename)
        text = strip_unstorable(text)  # a text layer's stray NULs are not the user's to fix (service/inputs.py)
    else:
        text = _decode(data, filename)
        meta = {}
        if "\x00" in text:
            raise DocumentError(filename, "the file contains NUL bytes: binary, or not UTF-8/UTF-16 text")
        if media_type == "text/html":
            text = _html_text(text)
    text = text.strip()
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


def _pdf_text(data: bytes, filename: str) -> tuple[str, dict[str, object]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(filename, "the PDF is encrypted; decrypt it first")
        pages = [page.extract_text() or "" for page in reader.pages]
    except DocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise DocumentError(filename, f"not a readable PDF ({exc})") from None
    except Exception as exc:  # pypdf raises assorted errors on broken files; all mean the same to a user
        if "encrypt" in str(exc).lower() or "decrypt" in str(exc).lower():
            raise DocumentError(filename, "the PDF is encrypted; decrypt it first") from None
        raise DocumentError(filename, f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    if not any(p.strip() for p in pages):
        raise DocumentError(filename, f"the PDF's {len(pages)} page(s) have no text layer (image-only?); OCR it first")
    return "\n\n".join(p.strip() for p in pages), {"pages": len(pages)}
