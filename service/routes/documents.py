"""Documents: upload (parsed once, stored by content hash per owner) and read back."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.deps import Owner, ServicesDep
from service.documents import DocumentError, parse_document
from service.errors import ProblemError
from service.inputs import clean_filename, valid_id
from service.routes.rows import from_row
from service.schemas import DocumentOut

router = APIRouter(tags=["documents"])


@router.post("/v1/documents", status_code=201, response_model=DocumentOut)
async def upload_document(request: Request, svc: ServicesDep, owner: Owner, response: Response) -> DocumentOut:
    """Upload a .txt, .md, .html, .pdf or .docx as multipart field `file`; the same bytes again return the same id."""
    limit = svc.settings.max_upload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:  # refuse before reading the body
        raise ProblemError(413, "Upload too large", f"the upload is {length} bytes; the limit is {limit} bytes")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ProblemError(415, "Unsupported upload", "send the document as multipart/form-data in the field `file`")
    async with request.form(max_files=1, max_fields=4) as form:  # closes the spooled temporary file
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ProblemError(400, "Missing file", "the multipart body has no file in the field `file`")
        data = await upload.read(limit + 1)
        filename = clean_filename(upload.filename or "upload")
    if len(data) > limit:
        raise ProblemError(413, "Upload too large", f"the file is larger than the {limit}-byte limit")
    try:
        document = await run_in_threadpool(parse_document, data, filename)
    except DocumentError as exc:
        status = 415 if "unsupported file type" in exc.reason else 422
        raise ProblemError(status, "Unusable document", str(exc)) from None
    stored, created = await run_in_threadpool(
        svc.store.put_document,
        owner,
        hashlib.sha256(data).hexdigest(),
        filename,
        document.media_type,
        len(data),
        document.text,
        document.metadata,
    )
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/documents/{stored.id}"
    return document_out(stored)


def document_out(stored: Any) -> DocumentOut:
    return from_row(DocumentOut, stored, characters=len(stored.text))


@router.get("/v1/documents/{document_id}", response_model=DocumentOut)
def get_document(document_id: str, svc: ServicesDep, owner: Owner) -> DocumentOut:
    stored = svc.store.get_document(owner, document_id) if valid_id(document_id) else None
    if stored is None:
        raise ProblemError(404, "Document not found", f"no document {document_id!r} for this API key")
    return document_out(stored)
