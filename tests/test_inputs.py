"""Inputs the job store cannot hold, or should not: each case gets a 4xx problem+json over real HTTP, and nothing is
stored (rows counted in PostgreSQL before and after). No worker runs; jobs that are accepted stay queued."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from bench.service_probes import UPLOAD_LIMIT, Target, catalogue, representatives, run_probes
from service.inputs import MAX_DEPTH, check_strings, clean_filename, unstorable
from tests.helpers import ALICE, BOB, api_client, flushed

REDIS_URL = "redis://127.0.0.1:6379/8"  # this file's own DB: others flush theirs while it runs
LIMIT = UPLOAD_LIMIT  # the probe catalogue's sizes are made for this limit
QUEUE = "parked"


@pytest.fixture(scope="module")
def api(database: str) -> Iterator[httpx.Client]:
    from engines.settings import Settings

    settings = Settings(
        database_url=database,
        redis_url=REDIS_URL,
        api_keys=f"alice:{ALICE},bob:{BOB}",
        max_upload_bytes=LIMIT,
        job_queue=QUEUE,  # no worker reads it
    )
    with flushed(REDIS_URL), api_client(settings, **{"X-API-Key": ALICE}) as client:
        yield client


def counts(database: str) -> tuple[int, int, int]:
    with psycopg.connect(database.replace("+psycopg", ""), autocommit=True) as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in ("documents", "jobs", "webhook_endpoints")
        )


def refused(response: httpx.Response, status: int, words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and words in body["detail"], body
    return body


def post_json(api: httpx.Client, path: str, raw: str | bytes) -> httpx.Response:
    content = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return api.post(path, content=content, headers={"content-type": "application/json"})


def job(**fields: Any) -> dict[str, Any]:
    return {"text": "The lamp was lit at dusk.", "task": {"kind": "qa", "questions": ["When?"]}, **fields}


def test_unstorable_strings_are_refused_and_nothing_is_stored(api: httpx.Client, database: str) -> None:
    before = counts(database)
    refused(api.post("/v1/jobs", json=job(text="before\x00after")), 422, "NUL")
    refused(api.post("/v1/jobs", json=job(task={"kind": "qa", "questions": ["wh\x00o?"]})), 422, "questions[0]")
    refused(api.post("/v1/jobs", json=job(task={"kind": "summary", "instruction": "\x00"})), 422, "NUL")
    schema = {"type": "object", "properties": {"na\x00me": {"type": "string"}}}
    refused(api.post("/v1/jobs", json=job(task={"kind": "extract", "json_schema": schema})), 422, "key")
    refused(api.post("/v1/jobs", json=job(callback_url="http://example.com/\x00")), 422, "NUL")
    refused(api.post("/v1/jobs", json={"document_id": "doc_\x00", "task": {"kind": "summary"}}), 422, "NUL")
    # A lone surrogate (valid JSON escape, invalid Unicode: UTF-8 cannot encode it).
    raw = json.dumps(job(text="x")).replace('"x"', '"a \\ud800 b"')
    refused(post_json(api, "/v1/jobs", raw), 422, "surrogate")
    raw = json.dumps(job()).replace('"When?"', '"\\udfff"')
    refused(post_json(api, "/v1/jobs", raw), 422, "surrogate")
    # A file with NUL bytes is binary (or UTF-16 without its mark): refused, not cleaned.
    files = {"file": ("notes.txt", b"line one\x00\x00line two", "text/plain")}
    refused(api.post("/v1/documents", files=files), 422, "NUL bytes")
    files = {"file": ("page.html", b"<p>a\x00b</p>", "text/html")}
    refused(api.post("/v1/documents", files=files), 422, "NUL bytes")
    assert counts(database) == before


def test_sizes_over_the_limits_get_413_and_nothing_is_stored(api: httpx.Client, database: str) -> None:
    before = counts(database)
    # Inline text is held to the upload limit, as an upload of the same text would be.
    refused(api.post("/v1/jobs", json=job(text="a" * (LIMIT + 1))), 413, "limit")
    refused(api.post("/v1/jobs", json=job(text="é" * (LIMIT // 2 + 1))), 413, "bytes")  # UTF-8 bytes count
    # Any JSON body over the body limit (upload limit + 1 MiB): by Content-Length, before it is read ...
    big = json.dumps(job(text="a" * (LIMIT + 1024 * 1024)))
    refused(post_json(api, "/v1/jobs", big), 413, "request body")
    # ... or while it streams in without one (chunked).
    chunks = (b" " * 65536 for _ in range(20))
    response = api.post("/v1/jobs", content=chunks, headers={"content-type": "application/json"})
    refused(response, 413, "request body")
    assert counts(database) == before
    # At the limit, it is accepted (and queued).
    assert api.post("/v1/jobs", json=job(text="a" * LIMIT)).status_code == 202


def test_filenames_are_cleaned_by_one_rule(api: httpx.Client, database: str) -> None:
    long = "n" * 600 + ".md"
    response = api.post("/v1/documents", files={"file": (long, b"# Title\n\nSome text.", "text/markdown")})
    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["filename"] == "n" * 252 + ".md" and stored["media_type"] == "text/markdown"
    # Control characters and NUL as raw bytes in the part's header (httpx would percent-encode them).
    weird = b"../../etc/pa\x01ss\x7fwd\x00.txt"
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="' + weird + b'"\r\n'
        b"Content-Type: text/plain\r\n\r\nPlain words.\r\n--XyZ--\r\n"
    )
    response = api.post("/v1/documents", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "passwd.txt"
    assert clean_filename("a/b\\c.txt") == "c.txt" and clean_filename("\x00\x01") == "upload"
    assert len(clean_filename("x" * 300)) == 255 and clean_filename("x" * 300 + ".pdf").endswith("x.pdf")


def test_ids_that_were_never_issued_match_nothing(api: httpx.Client, database: str) -> None:
    before = counts(database)
    for path in ("/v1/jobs/%00", "/v1/jobs/" + "a" * 300, "/v1/documents/%00x", "/v1/jobs/%F0%9F%98%80"):
        refused(api.get(path), 404, "no ")
    refused(api.delete("/v1/jobs/%00"), 404, "no job")
    refused(api.post("/v1/jobs", json={"document_id": "d" * 500, "task": {"kind": "summary"}}), 404, "no document")
    import base64

    cursor = base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|\x00").decode()
    refused(api.get("/v1/jobs", params={"cursor": cursor}), 400, "cursor")
    assert counts(database) == before


def test_unstorable_rule() -> None:
    assert unstorable("plain text, ünïcode, 漢字, 🙂") is None
    assert "NUL" in (unstorable("a\x00") or "") and "surrogate" in (unstorable("\ud83d") or "")
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH):
        deep = {"a": deep} if isinstance(deep, list) else [deep]
    check_strings(deep)  # MAX_DEPTH objects and arrays, one inside the other
    with pytest.raises(ValueError, match="nested more than"):
        check_strings([deep])


def test_what_the_probes_found_is_refused_and_nothing_is_stored(api: httpx.Client, database: str) -> None:
    """Each of these was a 500, a dropped connection or a stored job before (bench/service_probes.py)."""
    before = counts(database)
    # Nesting: the JSON Schema meta-schema check ran out of stack at ~40 nested objects, and the error handler too.
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        schema = {"type": "object", "properties": {"a": schema}}
    refused(api.post("/v1/jobs", json=job(task={"kind": "extract", "json_schema": schema})), 422, f"{MAX_DEPTH} levels")
    # References the worker could never resolve (a remote one is never fetched): the job would fail at its end.
    for ref in ("#/$defs/missing", "http://169.254.169.254/latest/meta-data"):
        task = {"kind": "extract", "json_schema": {"$ref": ref}}
        refused(api.post("/v1/jobs", json=job(task=task)), 422, "does not resolve")
    # The event stream looked up a NUL id in PostgreSQL (DataError, 500).
    refused(api.get("/v1/jobs/%00/events"), 404, "no job")
    # Idempotency-Keys outside printable ASCII were stored.
    for key in ("a\tb", "clé"):
        response = api.post("/v1/jobs", json=job(), headers={"Idempotency-Key": key.encode()})
        refused(response, 400, "printable ASCII")
    # Callback URLs nothing can be delivered to, or that urlsplit reads as another URL, were stored.
    for url in ("http://8.8.8.8:0/h", "http://8.8.8.8/h\r\nX-Injected: 1", "http://8.8.8.8/a b"):
        refused(api.post("/v1/jobs", json=job(callback_url=url)), 422, "callback_url")
    assert counts(database) == before
    assert clean_filename("a\x85b\x9f.txt") == "ab.txt"  # C1 controls, as a Latin-1 decoded name can hold


def test_a_probe_of_each_group_is_refused_and_stores_nothing(api: httpx.Client, database: str) -> None:
    """One probe of each group of the catalogue, through the bench's own runner (the whole catalogue:
    `python -m bench.service_probes`): a 4xx problem+json as expected, no row, key or message added."""
    target = Target(str(api.base_url), ALICE, BOB, database.replace("+psycopg", ""), REDIS_URL, QUEUE)
    probes = representatives(catalogue())
    results = run_probes(target, probes)
    assert len(results) == len({p.group for p in catalogue()}) - 1  # all groups but the throttle's
    assert [r for r in results if not (r["passed"] and r["as_expected"])] == []
