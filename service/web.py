"""The page for people (`/`, static files in service/static) and the one route it needs beyond the job API:
`GET /v1/documents/{id}/text`, a document's text with its pages and outline, for showing evidence in place.
Also what a front end elsewhere needs: CORS (off unless `TOME_CORS_ORIGINS` names origins) and the OpenAPI
document's API-key security schemes (`Authorization: Bearer <key>` or `X-API-Key`), so generated clients send it.

The page is plain HTML, CSS and JavaScript (no build step); it talks to the same API as every client, with the
API key the person enters (kept in the browser's sessionStorage, or localStorage when asked to remember it).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from engines.settings import Settings
from service.deps import Owner, ServicesDep, current_owner
from service.errors import ProblemError
from service.store import aware

STATIC = Path(__file__).with_name("static")
router = APIRouter()


class DocumentText(BaseModel):
    id: str
    filename: str
    media_type: str
    text: str
    pages: int | None = Field(default=None, description="a PDF's page count")
    page_spans: list[list[int]] = Field(default=[], description="`[page, start, end]` character spans of each page")
    image_only_pages: list[int] = Field(default=[], description="pages without a text layer (not read)")
    outline: list[dict[str, Any]] = Field(default=[], description="headings: `title`, `level`, `start`, `page`")
    created_at: Any = None


@router.get("/v1/documents/{document_id}/text", response_model=DocumentText, tags=["documents"])
def document_text(document_id: str, svc: ServicesDep, owner: Owner) -> DocumentText:
    """The document's text as the strategies read it (evidence offsets point into it), with pages and outline."""
    stored = svc.store.get_document(owner, document_id)
    if stored is None:
        raise ProblemError(404, "Document not found", f"no document {document_id!r} for this API key")
    meta = stored.meta or {}
    return DocumentText(
        id=stored.id,
        filename=stored.filename,
        media_type=stored.media_type,
        text=stored.text,
        pages=meta.get("pages"),
        page_spans=meta.get("page_spans") or [],
        image_only_pages=meta.get("image_only_pages") or [],
        outline=meta.get("outline") or [],
        created_at=aware(stored.created_at),
    )


def index_html(strategies: Iterable[str]) -> str:
    options = "".join(
        f'<option value="{html.escape(name)}">{html.escape(name)}</option>' for name in sorted(strategies)
    )
    return (STATIC / "index.html").read_text(encoding="utf-8").replace("<!--STRATEGIES-->", options)


def requires_key(dependant: Dependant) -> bool:
    return any(d.call is current_owner or requires_key(d) for d in dependant.dependencies)


def secure_openapi(app: FastAPI) -> None:
    """Declare the API-key schemes, and on every operation that takes a key, that it needs one (and may be 401)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <API key>`"},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        for route in app.routes:
            if not (isinstance(route, APIRoute) and route.include_in_schema and requires_key(route.dependant)):
                continue
            for method in route.methods:
                operation = schema["paths"][route.path_format][method.lower()]
                operation["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
                operation["responses"].setdefault(
                    "401", {"description": "no API key, or not a valid one (application/problem+json)"}
                )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def mount(app: FastAPI, settings: Settings, strategies: Iterable[str]) -> None:
    """The extra route, CORS where origins are set, the OpenAPI security schemes, and (with `web_page` on) the
    page at / with its files under /static."""
    app.include_router(router)
    secure_openapi(app)
    origins = settings.cors_origin_list()
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed", "WWW-Authenticate"],
            max_age=settings.cors_max_age,
        )
    if not settings.web_page:
        return

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(index_html(strategies), headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
