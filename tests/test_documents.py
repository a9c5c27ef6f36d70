from __future__ import annotations

from pathlib import Path

import pytest
from pypdf import PdfWriter

from service.documents import DocumentError, load_document, parse_document

ROOT = Path(__file__).resolve().parents[1]


def text_pdf(lines: list[str]) -> bytes:
    """A minimal one-page PDF with a real text layer (Helvetica), offsets computed so any reader accepts it."""
    stream = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_each_supported_type_reads_text(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("The lighthouse keeper was named Abel.\n")
    (tmp_path / "b.md").write_text("# Notes\n\nThe key is *blue*.\n")
    (tmp_path / "c.html").write_text(
        "<html><head><style>p{}</style><script>var x=1</script></head><body><p>Hello <b>there</b></p></body></html>"
    )
    (tmp_path / "d.pdf").write_bytes(text_pdf(["The harbour master counted 42 ships.", "Second line."]))
    assert "Abel" in load_document(tmp_path / "a.txt").text
    md = load_document(tmp_path / "b.md")
    assert md.media_type == "text/markdown" and "*blue*" in md.text
    html = load_document(tmp_path / "c.html")
    assert "Hello" in html.text and "there" in html.text and "var x" not in html.text
    pdf = load_document(tmp_path / "d.pdf")
    assert "42 ships" in pdf.text and pdf.metadata["pages"] == 1


def test_document_hash_is_of_content_not_name(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("same words")
    (tmp_path / "two.txt").write_text("same words")
    (tmp_path / "three.txt").write_text("other words")
    one, two, three = (load_document(tmp_path / f) for f in ("one.txt", "two.txt", "three.txt"))
    assert one.content_hash == two.content_hash != three.content_hash
    assert one.source.endswith("one.txt")


def test_utf16_with_bom_is_decoded(tmp_path: Path) -> None:
    (tmp_path / "u.txt").write_bytes("naïve café".encode("utf-16"))
    assert load_document(tmp_path / "u.txt").text == "naïve café"


def _blank_pdf(encrypt: bool) -> bytes:
    import io

    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    if encrypt:
        writer.encrypt(user_password="secret", owner_password="owner")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.txt", b"", "empty"),
        ("blank.md", b"  \n\t\n", "empty"),
        ("sheet.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'"),
        ("noext", b"hello", "unsupported file type '(none)'"),
        ("latin1.txt", "café".encode("latin-1"), "cannot decode as utf-8"),
        ("locked.pdf", _blank_pdf(encrypt=True), "encrypted"),
        ("scan.pdf", _blank_pdf(encrypt=False), "no text layer"),
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "not a readable PDF"),
        ("empty.html", b"<html><script>x()</script></html>", "no text found"),
    ],
)
def test_bad_input_names_file_and_reason(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(DocumentError) as err:
        parse_document(data, name)
    assert str(err.value).startswith(f"{name}: ")
    assert reason in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="nope.txt: file not found"):
        load_document(tmp_path / "nope.txt")
    with pytest.raises(DocumentError, match="not a regular file"):
        load_document(tmp_path)


def test_shipped_examples_load() -> None:
    for path in (ROOT / "examples").glob("*.*"):
        if path.name != "SOURCES.md":
            assert len(load_document(path).text) > 5000
