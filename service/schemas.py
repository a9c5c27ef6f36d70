"""Request and response bodies of the job API (pydantic), and their mapping to the engine's Task."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engines.types import Task, TaskKind
from service.inputs import check_strings

MAX_QUESTIONS = 64


class QuestionsTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["qa"] = "qa"
    questions: list[Annotated[str, Field(min_length=1, max_length=4000)]] = Field(
        min_length=1, max_length=MAX_QUESTIONS
    )


class SummaryTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["summary"]
    instruction: str | None = Field(default=None, max_length=4000)


class ExtractTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["extract"]
    json_schema: dict[str, Any] = Field(description="a JSON Schema the extracted object should match")
    instruction: str = Field(default="Extract the fields described by the schema from the text.", max_length=4000)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"json_schema is not a valid JSON Schema: {exc.message}") from None
        except RecursionError:  # the body's depth limit (service/inputs.py) keeps schemas well short of this
            raise ValueError("json_schema is nested too deeply to check") from None
        unresolved = unresolvable_ref(schema)
        if unresolved is not None:
            raise ValueError(
                f"json_schema's $ref {unresolved!r} does not resolve within the schema (remote references are not "
                "fetched); put what it refers to under $defs"
            )
        return schema


# Keywords whose values are data, not schemas: a "$ref" key inside them is not a reference.
DATA_KEYWORDS = ("const", "enum", "examples", "default")


def unresolvable_ref(schema: Any) -> str | None:
    """The first $ref in `schema` that does not resolve inside it, None when all do. An extraction's output is
    checked against the schema only after the whole document was read, so a reference nothing can resolve (or one
    to a remote URL, which is never fetched) would fail the job at its very end."""
    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    def walk(node: Any, resolver: Any) -> str | None:
        if isinstance(node, list):
            return next((found for item in node if (found := walk(item, resolver)) is not None), None)
        if not isinstance(node, dict):
            return None
        if isinstance(node.get("$id"), str):  # references inside resolve against this subschema's own id
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except Unresolvable:
                return ref
        children = (value for key, value in node.items() if key not in DATA_KEYWORDS)
        return next((found for child in children if (found := walk(child, resolver)) is not None), None)

    resource = DRAFT202012.create_resource(schema)
    root = resource.id() or ""
    return walk(schema, Registry().with_resource(root, resource).resolver(base_uri=root))


TaskSpec = Annotated[QuestionsTask | SummaryTask | ExtractTask, Field(discriminator="kind")]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document_id: str | None = Field(default=None, description="from POST /v1/documents")
    text: str | None = Field(default=None, min_length=1, description="inline document text, instead of document_id")
    task: TaskSpec
    strategy: str = Field(default="auto", description="`auto` lets the router choose; or a strategy name")
    max_answer_tokens: int = Field(default=64, ge=1, le=4096)
    callback_url: str | None = Field(default=None, max_length=2000)
    callback_secret: str | None = Field(
        default=None, description="`whsec_` + base64 of 24-64 random bytes; generated when omitted"
    )

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        check_strings(data)  # NUL or a lone surrogate anywhere: 422 (service/inputs.py)
        return data

    @model_validator(mode="after")
    def _one_document(self) -> JobCreate:
        if (self.document_id is None) == (self.text is None):
            raise ValueError("give exactly one of document_id or text")
        if self.text is not None and not self.text.strip():
            raise ValueError("text is empty")
        if self.callback_secret is not None and self.callback_url is None:
            raise ValueError("callback_secret needs a callback_url")
        return self

    def tasks(self) -> list[Task]:
        spec, budget = self.task, self.max_answer_tokens
        if isinstance(spec, QuestionsTask):
            return [Task(q, TaskKind.QA, max_answer_tokens=budget) for q in spec.questions]
        if isinstance(spec, SummaryTask):
            return [Task(spec.instruction or "", TaskKind.SUMMARY, max_answer_tokens=budget)]
        return [Task(spec.instruction, TaskKind.EXTRACT, json_schema=spec.json_schema, max_answer_tokens=budget)]

    def fingerprint(self) -> str:
        """The request's identity for Idempotency-Key: canonical JSON of what was asked."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class DocumentOut(BaseModel):
    id: str
    filename: str
    media_type: str
    size_bytes: int
    content_hash: str
    characters: int
    created_at: datetime


class Progress(BaseModel):
    done: int
    total: int
    message: str | None


class AttemptOut(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float | None
    next_retry_at: datetime | None


class WebhookOut(BaseModel):
    url: str
    disabled: bool
    disabled_reason: str | None
    event_id: str | None
    event_type: str | None
    delivered_at: datetime | None
    gave_up_at: datetime | None
    attempts: list[AttemptOut]


class JobOut(BaseModel):
    id: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    document_id: str
    task: dict[str, Any]
    requested_strategy: str
    strategy: str | None = Field(description="the strategy that ran (chosen by the router for `auto`)")
    reason: str | None = Field(description="why the router chose it")
    document_tokens: int | None
    progress: Progress
    result: dict[str, Any] | None
    cost: dict[str, Any] | None
    error: str | None
    runs: int = Field(description="task deliveries that ran this job (more than 1 after a worker was lost)")
    resumed_from: str | None = Field(description="the graph node a redelivered run resumed at")
    worker: str | None = Field(default=None, description="host:pid of the worker holding the job's lease")
    lease_expires_at: datetime | None = Field(default=None, description="when that lease lapses unless renewed")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    webhook: WebhookOut | None = None
    callback_secret: str | None = Field(default=None, description="only in the response that created the endpoint")


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class Problem(BaseModel):
    """RFC 9457 problem details (application/problem+json)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
