"""What the job store can hold, checked at the door, and the request-body limit.

The rules (README, "Input rules"):
- a string the client wrote (inline text, questions, instructions, a JSON Schema, URLs, ids) holding NUL (U+0000)
  or an unpaired surrogate is refused with 422: PostgreSQL text and JSONB cannot store NUL, and UTF-8 cannot
  encode a lone surrogate; the client can fix its own string;
- an uploaded text or HTML file holding NUL is refused with 422 (it is binary, or not UTF-8/UTF-16);
- text extracted from a PDF has NUL and unpaired surrogates removed (a PDF's text layer is not the user's to fix);
- an upload's filename keeps its last path component, loses control characters (C0, DEL, C1), and is cut to 255
  characters, its extension kept;
- ids in paths, bodies and cursors that are not ids this API issues match nothing (404, or 400 for a cursor);
- a JSON body nested more than MAX_DEPTH levels is refused with 422; an Idempotency-Key that is not 1-255
  printable ASCII characters with 400;
- a request body other than a multipart upload over `max_body_bytes` is refused with 413 before it is parsed, and
  inline text over `max_upload_bytes` (UTF-8) with 413, as an upload of that size would be.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 (a name decoded as Latin-1 can hold C1)
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_FILENAME = 255
# JSON bodies nest at most this deep. Deeper structures serve no request here, and recursive validators (the JSON
# Schema meta-schema check takes ~10 Python frames a level) would run out of stack inside the server: a 40-object
# schema made it answer 500 and then drop the connection.
MAX_DEPTH = 32
# An Idempotency-Key is printable ASCII (the IETF draft makes it a structured-field string), at most 255 long.
IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def unstorable(value: str) -> str | None:
    """Why `value` cannot be stored (None when it can)."""
    found = UNSTORABLE.search(value)
    if found is None:
        return None
    return "a NUL character (U+0000)" if found.group() == "\x00" else "an unpaired surrogate (invalid Unicode)"


def check_strings(value: Any, path: str = "body", depth: int = 0) -> None:
    """Raise ValueError naming the first string (dict keys included) in `value` that cannot be stored, or the
    first object or array inside MAX_DEPTH others."""
    if isinstance(value, str):
        reason = unstorable(value)
        if reason:
            raise ValueError(f"{path} contains {reason}, which cannot be stored; remove it")
        return
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        raise ValueError(f"{path} is nested more than {MAX_DEPTH} levels deep; flatten it")
    if isinstance(value, dict):
        for key, item in value.items():
            check_strings(key, f"{path} key", depth)
            check_strings(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_strings(item, f"{path}[{i}]", depth + 1)


def blank_unstorable(text: str) -> str:
    """Each character the store cannot hold becomes a space, so offsets into the text (PDF pages) stay right."""
    return UNSTORABLE.sub(" ", text)


def clean_filename(name: str) -> str:
    """The last path component, without control characters or unpaired surrogates, at most 255 characters with
    its extension kept; "upload" if nothing is left."""
    base = re.split(r"[/\\]", name)[-1]
    base = UNSTORABLE.sub("", CONTROL.sub("", base)).strip()
    if len(base) > MAX_FILENAME:
        stem, dot, ext = base.rpartition(".")
        ext = ext if dot and stem and len(ext) <= 16 else ""
        base = base[: MAX_FILENAME - len(ext) - 1] + "." + ext if ext else base[:MAX_FILENAME]
    return base or "upload"


def valid_id(value: str | None) -> bool:
    """Whether `value` could be an id this API issued (anything else matches nothing, without a query)."""
    return value is not None and ID.fullmatch(value) is not None


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the {limit}-byte limit")


class LimitBody:
    """Refuse request bodies over `limit` bytes (multipart uploads excepted: their route applies the upload
    limit): at once by Content-Length, else while reading, so a large body is never buffered whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if headers.get("content-type", "").startswith("multipart/form-data"):
            await self.app(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)  # FastAPI re-raises HTTPExceptions from body reading
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        import json

        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Request body too large",
                "status": 413,
                "detail": f"the request body is larger than the {self.limit}-byte limit",
                "instance": scope.get("path"),
            }
        ).encode()
        headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
