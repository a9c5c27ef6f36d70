"""Bad and hostile requests against the real stack, one by one: each must get a 4xx problem+json and store nothing.

The API runs as its own process (`tome serve`) over a PostgreSQL database and Redis DB 7 of its own (set up and
torn down by `bench.service_faults.Stack`), with a 64 KiB upload limit so that the size probes stay cheap, private
callbacks refused, and a job queue no worker reads. Before and after every probe this process counts the rows of
every table and the messages and keys in Redis (throttle counters aside): a probe passes when its answer is a 4xx,
the body is `application/problem+json` with `type`, `title`, `status` (the answer's) and `detail`, and nothing was
stored. Filenames are the exception by rule (service/inputs.py: cleaned, not refused): those probes pass when the
upload is stored once under a clean name.

Groups: strings the store cannot hold (NUL, lone surrogates) in every field, uploads, filenames, body sizes,
malformed JSON, wrong types and missing fields, unknown names, numbers out of range, extract schemas, callbacks to
internal addresses in every form, API keys, another key's ids, ids never issued, Idempotency-Key values, methods and
routes, and last the failed-key throttle (it would answer 429 to everything after it).

`tests/test_inputs.py` replays one probe of each group (`representatives`) through `run_probes` on every CI run.

    python -m bench.service_probes                  # writes bench/results/service-probes.{json,md}
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import redis

UPLOAD_LIMIT = 64 * 1024  # TOME_MAX_UPLOAD_BYTES of the stack under test; the body limit is this + 1 MiB
JSON = "application/json"
PROBLEM_FIELDS = ("type", "title", "status", "detail")
THROTTLE_PREFIX = b"tome:auth-failures:"  # failed-key counters: changed by key probes on purpose, not "stored"
PUBLIC_CALLBACK = "http://8.8.8.8/hook"  # an address literal: passes the internal-address check without DNS
SECRET = "whsec_" + base64.b64encode(b"p" * 32).decode()


@dataclass(frozen=True)
class Probe:
    """One request. `path` and `body` may name ids the run makes first: {other_job}, {other_doc} (another key's),
    {own_doc}, {own_job} (the caller's). `key`: "own" sends the caller's key; None sends none (`headers` may)."""

    group: str
    name: str
    method: str
    path: str
    expect: int  # the status the service should answer
    body: bytes | None = None
    content_type: str | None = JSON
    headers: dict[str, str] = field(default_factory=dict)
    key: str | None = "own"
    repeat: int = 1  # sent this many times; the last answer is judged (the throttle)
    cleaned: bool = False  # a filename probe: stored once under a clean name instead of refused
    raw: bool = False  # written to the socket by hand: httpx will not send such headers (trailing white space)


@dataclass(frozen=True)
class Target:
    """A running API and the store behind it: what probes are sent to and what is counted."""

    base_url: str
    key: str  # the caller's key
    other_key: str  # a second key, whose job and document the caller must not reach
    database: str  # a psycopg URL
    redis_url: str
    queue: str  # the job queue (no worker reads it)


def js(value: Any) -> bytes:
    """JSON as ASCII: NUL and lone surrogates travel as valid \\u escapes, so the service decodes them itself."""
    return json.dumps(value).encode()


def job(**fields: Any) -> dict[str, Any]:
    return {"text": "The lamp was lit at dusk.", "task": {"kind": "qa", "questions": ["When?"]}, **fields}


def summary(**fields: Any) -> dict[str, Any]:
    return {"text": "The lamp was lit at dusk.", "task": {"kind": "summary"}, **fields}


def extract(schema: Any) -> dict[str, Any]:
    return {"text": "Orla Venn kept the light.", "task": {"kind": "extract", "json_schema": schema}}


def multipart(filename: bytes, data: bytes, part_type: bytes = b"text/plain", name: bytes = b"file") -> bytes:
    """A multipart body written by hand, so that the filename's bytes reach the server as they are."""
    return (
        b'--XyZ\r\nContent-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n'
        b"Content-Type: " + part_type + b"\r\n\r\n" + data + b"\r\n--XyZ--\r\n"
    )


MULTIPART = "multipart/form-data; boundary=XyZ"


def posts(group: str, path: str, expect: int, cases: Iterable[tuple[str, Any]]) -> list[Probe]:
    return [
        Probe(group, name, "POST", path, expect, body if isinstance(body, bytes) else js(body)) for name, body in cases
    ]


def unstorable_nul() -> list[Probe]:
    n = "a\x00b"
    return posts(
        "NUL in a string field",
        "/v1/jobs",
        422,
        [
            ("inline text", job(text=n)),
            ("question", job(task={"kind": "qa", "questions": ["wh\x00o?"]})),
            ("second question", job(task={"kind": "qa", "questions": ["ok?", n]})),
            ("summary instruction", summary(task={"kind": "summary", "instruction": n})),
            ("extract instruction", {"text": "x", "task": {"kind": "extract", "json_schema": {}, "instruction": n}}),
            ("json_schema key", extract({"type": "object", "properties": {n: {"type": "string"}}})),
            ("json_schema value", extract({"type": "object", "description": n})),
            ("callback_url", summary(callback_url="http://8.8.8.8/\x00")),
            ("callback_secret", summary(callback_url=PUBLIC_CALLBACK, callback_secret="whsec_\x00")),
            ("document_id", {"document_id": "doc_\x00", "task": {"kind": "summary"}}),
            ("strategy", summary(strategy="full\x00")),
            ("task kind", {"text": "x", "task": {"kind": "qa\x00", "questions": ["q"]}}),
            ("metadata (a field the API does not take)", summary(metadata={"k": n})),
            ("an object key", summary(**{"\x00": 1})),
        ],
    )


def unstorable_surrogates() -> list[Probe]:
    s = "a\ud800b"
    cesu = b'{"text": "a\xed\xa0\x80b", "task": {"kind": "summary"}}'  # a surrogate encoded as UTF-8 bytes
    return posts(
        "lone surrogate in a string field",
        "/v1/jobs",
        422,
        [
            ("inline text (high)", job(text=s)),
            ("question (low)", job(task={"kind": "qa", "questions": ["\udfff"]})),
            ("summary instruction", summary(task={"kind": "summary", "instruction": s})),
            ("json_schema key", extract({"type": "object", "properties": {s: {}}})),
            ("json_schema enum value", extract({"enum": [s]})),
            ("callback_url", summary(callback_url="http://8.8.8.8/\udc80")),
            ("document_id", {"document_id": s, "task": {"kind": "summary"}}),
            ("strategy", summary(strategy=s)),
            ("inline text as raw UTF-8 surrogate bytes", cesu),
        ],
    )


def uploads() -> list[Probe]:
    group = "uploads"
    big = b"a" * (UPLOAD_LIMIT + 1)
    cases: list[tuple[str, bytes, bytes, bytes, int]] = [
        ("NUL bytes in .txt", b"notes.txt", b"line one\x00\x00line two", b"text/plain", 422),
        ("NUL bytes in .html", b"page.html", b"<p>a\x00b</p>", b"text/html", 422),
        ("NUL bytes in .md", b"notes.md", b"# T\n\x00", b"text/markdown", 422),
        ("invalid UTF-8 in .txt", b"notes.txt", b"caf\xe9 \xff\xfe", b"text/plain", 422),
        ("a surrogate as UTF-8 bytes", b"notes.txt", b"a\xed\xa0\x80b", b"text/plain", 422),
        ("UTF-16 with a lone surrogate", b"notes.txt", b"\xff\xfea\x00\x00\xd8b\x00", b"text/plain", 422),
        ("UTF-16 holding U+0000", b"notes.txt", b"\xff\xfea\x00\x00\x00b\x00", b"text/plain", 422),
        ("empty file", b"empty.txt", b"", b"text/plain", 422),
        ("whitespace only", b"blank.txt", b" \n\t \r\n", b"text/plain", 422),
        ("HTML with no text", b"page.html", b"<script>var a = 1;</script><style>p{}</style>", b"text/html", 422),
        ("unsupported extension", b"tool.exe", b"MZ\x90\x00", b"application/octet-stream", 415),
        ("an image", b"pic.png", b"\x89PNG\r\n\x1a\n", b"image/png", 415),
        ("no extension", b"README", b"plain words", b"text/plain", 415),
        ("text sent as .pdf", b"paper.pdf", b"just some words", b"application/pdf", 422),
        ("PDF header then garbage", b"paper.pdf", b"%PDF-1.7\n" + b"\x00" * 64, b"application/pdf", 422),
        ("text sent as .docx", b"memo.docx", b"just some words", b"application/octet-stream", 422),
        ("zip that is not Word, as .docx", b"memo.docx", b"PK\x05\x06" + b"\x00" * 18, b"application/zip", 422),
        ("a .txt claiming to be a PDF", b"notes.txt", b"%PDF-1.7 \x00\x01", b"application/pdf", 422),
        ("over the size limit", b"big.txt", big, b"text/plain", 413),
    ]
    probes = [
        Probe(group, name, "POST", "/v1/documents", expect, multipart(fn, data, ctype), MULTIPART)
        for name, fn, data, ctype, expect in cases
    ]
    raw_form = b'--XyZ\r\nContent-Disposition: form-data; name="file"\r\n\r\nnot a file\r\n--XyZ--\r\n'
    two = multipart(b"a.txt", b"one").removesuffix(b"--XyZ--\r\n") + multipart(b"b.txt", b"two")
    probes += [
        Probe(
            group,
            "file in another field",
            "POST",
            "/v1/documents",
            400,
            multipart(b"a.txt", b"x", name=b"doc"),
            MULTIPART,
        ),
        Probe(group, "field `file` is not a file", "POST", "/v1/documents", 400, raw_form, MULTIPART),
        Probe(group, "two files", "POST", "/v1/documents", 400, two, MULTIPART),
        Probe(group, "JSON instead of multipart", "POST", "/v1/documents", 415, js({"text": "x"})),
        Probe(group, "multipart without a boundary", "POST", "/v1/documents", 400, b"--XyZ\r\n", "multipart/form-data"),
        Probe(group, "truncated multipart", "POST", "/v1/documents", 400, multipart(b"a.txt", b"x")[:60], MULTIPART),
        Probe(group, "no body", "POST", "/v1/documents", 400, b"", MULTIPART),
    ]
    return probes


def filenames() -> list[Probe]:
    group = "filenames (cleaned by rule, or refused)"
    cases: list[tuple[str, bytes, int]] = [
        ("600 characters", b"n" * 600 + b".txt", 201),
        ("path traversal", b"../../etc/passwd.txt", 201),
        ("Windows path traversal", b"..\\..\\windows\\win.ini.txt", 201),
        ("absolute path", b"/etc/hosts.txt", 201),
        ("control characters", b"a\x01b\x1fc\x7f.txt", 201),
        ("NUL inside", b"evil\x00.txt", 201),
        ("a surrogate as UTF-8 bytes", b"a\xed\xa0\x80.txt", 201),
        ("600-character extension", b"a." + b"x" * 600, 415),
        ("only dots", b"..", 415),
        ("a path ending in a folder", b"../../", 415),
    ]
    return [
        Probe(
            group,
            name,
            "POST",
            "/v1/documents",
            expect,
            multipart(fn, f"{name}: plain words.".encode()),
            MULTIPART,
            cleaned=expect == 201,
        )
        for name, fn, expect in cases
    ]


def sizes() -> list[Probe]:
    group = "body size"
    over_body = js(job(text="a" * (UPLOAD_LIMIT + 1024 * 1024)))
    return [
        Probe(
            group, "inline text over the upload limit", "POST", "/v1/jobs", 413, js(job(text="a" * (UPLOAD_LIMIT + 1)))
        ),
        Probe(
            group,
            "inline text over the limit in UTF-8 bytes",
            "POST",
            "/v1/jobs",
            413,
            js(job(text="é" * (UPLOAD_LIMIT // 2 + 1))),
        ),
        Probe(group, "JSON body over the body limit", "POST", "/v1/jobs", 413, over_body),
        Probe(
            group,
            "many long questions over the body limit",
            "POST",
            "/v1/jobs",
            413,
            js(job(task={"kind": "qa", "questions": ["q" * 4000] * 300})),
        ),
        Probe(
            group,
            "extract schema over the body limit",
            "POST",
            "/v1/jobs",
            413,
            js(extract({"type": "object", "description": "d" * (UPLOAD_LIMIT + 1024 * 1024)})),
        ),
    ]


def malformed_json() -> list[Probe]:
    deep = b"[" * 5000 + b"]" * 5000
    return posts(
        "malformed JSON",
        "/v1/jobs",
        400,
        [
            ("truncated", b'{"text": "a", "task": {"kind": "summary"'),
            ("trailing comma", b'{"text": "a", "task": {"kind": "summary"},}'),
            ("single quotes", b"{'text': 'a'}"),
            ("a bare word", b"hello"),
            ("comments", b'{"text": "a", /* c */ "task": {"kind": "summary"}}'),
            ("invalid UTF-8", b'{"text": "caf\xe9", "task": {"kind": "summary"}}'),
            ("NUL byte outside strings", b'{"text": "a",\x00 "task": {"kind": "summary"}}'),
            ("raw control character in a string", b'{"text": "a\x01b", "task": {"kind": "summary"}}'),
            ("arrays nested 5000 deep", deep),
            ("a schema nested 600 objects deep", nested(600)),
        ],
    ) + posts(
        "malformed JSON",
        "/v1/jobs",
        422,
        [
            ("empty body", b""),
            ("top-level array", b'[{"text": "a"}]'),
            ("top-level string", b'"a job"'),
            ("top-level null", b"null"),
            ("NaN for a number", b'{"text": "a", "task": {"kind": "summary"}, "max_answer_tokens": NaN}'),
            ("Infinity for a number", b'{"text": "a", "task": {"kind": "summary"}, "max_answer_tokens": Infinity}'),
        ],
    )


def nested(depth: int) -> bytes:
    """An extract job whose schema nests `depth` objects (2 JSON levels each), written as text: the encoder here
    would stop at Python's recursion limit, and the point is what the server does with it."""
    schema = '{"type": "object", "properties": {"a": ' * depth + '{"type": "string"}' + "}}" * depth
    return (
        b'{"text": "Orla Venn kept the light.", "task": {"kind": "extract", "json_schema": ' + schema.encode() + b"}}"
    )


def wrong_types() -> list[Probe]:
    return posts(
        "wrong types and missing fields",
        "/v1/jobs",
        422,
        [
            ("no task", {"text": "x"}),
            ("task null", {"text": "x", "task": None}),
            ("task a string", {"text": "x", "task": "qa"}),
            ("task a list", {"text": "x", "task": [{"kind": "qa"}]}),
            ("qa without questions", {"text": "x", "task": {"kind": "qa"}}),
            ("questions a string", job(task={"kind": "qa", "questions": "When?"})),
            ("a question a number", job(task={"kind": "qa", "questions": [1]})),
            ("a question null", job(task={"kind": "qa", "questions": [None]})),
            ("no questions", job(task={"kind": "qa", "questions": []})),
            ("65 questions", job(task={"kind": "qa", "questions": ["q"] * 65})),
            ("an empty question", job(task={"kind": "qa", "questions": [""]})),
            ("a 4001-character question", job(task={"kind": "qa", "questions": ["q" * 4001]})),
            ("text a number", job(text=123)),
            ("text empty", job(text="")),
            ("text only white space", job(text=" \n\t ")),
            ("text a list", job(text=["a", "b"])),
            ("document_id a number", {"document_id": 5, "task": {"kind": "summary"}}),
            ("text and document_id", job(document_id="{own_doc}")),
            ("neither text nor document_id", {"task": {"kind": "summary"}}),
            ("max_answer_tokens a word", job(max_answer_tokens="many")),
            ("max_answer_tokens null", job(max_answer_tokens=None)),
            ("max_answer_tokens an object", job(max_answer_tokens={})),
            ("an unknown field", job(priority=1)),
            ("an unknown field in the task", job(task={"kind": "qa", "questions": ["q"], "lang": "en"})),
            ("callback_url a number", summary(callback_url=5)),
            ("callback_secret without callback_url", summary(callback_secret=SECRET)),
            ("callback_secret not whsec_", summary(callback_url=PUBLIC_CALLBACK, callback_secret="abc")),
            (
                "callback_secret too short",
                summary(callback_url=PUBLIC_CALLBACK, callback_secret="whsec_" + base64.b64encode(b"k" * 8).decode()),
            ),
            ("callback_secret not base64", summary(callback_url=PUBLIC_CALLBACK, callback_secret="whsec_!!!!")),
            ("strategy null", summary(strategy=None)),
            ("strategy a number", summary(strategy=5)),
            (
                "extract instruction a list",
                {"text": "x", "task": {"kind": "extract", "json_schema": {}, "instruction": []}},
            ),
        ],
    ) + [
        Probe(
            "wrong types and missing fields",
            "JSON sent as text/plain",
            "POST",
            "/v1/jobs",
            422,
            js(summary()),
            "text/plain",
        ),
        Probe(
            "wrong types and missing fields",
            "JSON sent as a form",
            "POST",
            "/v1/jobs",
            422,
            b"text=a&task=summary",
            "application/x-www-form-urlencoded",
        ),
    ]


def unknown_names() -> list[Probe]:
    group = "unknown strategy or kind"
    return posts(
        group,
        "/v1/jobs",
        422,
        [
            ("strategy bogus", summary(strategy="bogus")),
            ("strategy empty", summary(strategy="")),
            ("strategy in capitals", summary(strategy="AUTO")),
            ("strategy a path", summary(strategy="../full")),
            ("strategy 100 KB long", summary(strategy="s" * 100_000)),
            ("task kind translate", {"text": "x", "task": {"kind": "translate"}}),
            ("task kind empty", {"text": "x", "task": {"kind": ""}}),
            ("task kind null", {"text": "x", "task": {"kind": None}}),
            ("task kind missing", {"text": "x", "task": {"questions": ["q"]}}),
        ],
    ) + [Probe(group, "job status filter bogus", "GET", "/v1/jobs?status=lost", 422, None, None)]


def numbers() -> list[Probe]:
    group = "numbers out of range"
    probes = posts(
        group,
        "/v1/jobs",
        422,
        [
            ("max_answer_tokens 0", job(max_answer_tokens=0)),
            ("max_answer_tokens -1", job(max_answer_tokens=-1)),
            ("max_answer_tokens 4097", job(max_answer_tokens=4097)),
            ("max_answer_tokens 10^30", job(max_answer_tokens=10**30)),
            ("max_answer_tokens 1.5", job(max_answer_tokens=1.5)),
            ("max_answer_tokens 1e400", b'{"text": "a", "task": {"kind": "summary"}, "max_answer_tokens": 1e400}'),
            (
                "max_answer_tokens 4300 digits",
                b'{"text": "a", "task": {"kind": "summary"}, "max_answer_tokens": ' + b"9" * 4300 + b"}",
            ),
        ],
    )
    for query in ("limit=0", "limit=201", "limit=-1", "limit=abc", "limit=1e9"):
        probes.append(Probe(group, f"list {query}", "GET", f"/v1/jobs?{query}", 422, None, None))
    return probes


def schemas() -> list[Probe]:
    return posts(
        "extract JSON schemas",
        "/v1/jobs",
        422,
        [
            ("json_schema missing", {"text": "x", "task": {"kind": "extract"}}),
            ("json_schema a list", extract([])),
            ("json_schema a string", extract("object")),
            ("json_schema null", extract(None)),
            ("unknown type", extract({"type": "nonsense"})),
            ("type a number", extract({"type": 5})),
            ("properties a number", extract({"type": "object", "properties": 3})),
            ("required a string", extract({"type": "object", "required": "name"})),
            ("minimum a string", extract({"type": "number", "minimum": "zero"})),
            ("an invalid pattern", extract({"type": "string", "pattern": "(unclosed"})),
            ("a $ref that resolves to nothing", extract({"$ref": "#/$defs/missing"})),
            ("a remote $ref", extract({"$ref": "http://169.254.169.254/latest/meta-data"})),
            ("nested 200 objects deep", nested(200)),
            ("nested 40 objects deep", nested(40)),
        ],
    )


PRIVATE_CALLBACKS = [
    ("loopback", "http://127.0.0.1/h"),
    ("loopback, other address", "http://127.255.255.254/h"),
    ("loopback, short form", "http://127.1/h"),
    ("loopback, decimal", "http://2130706433/h"),
    ("loopback, hex", "http://0x7f000001/h"),
    ("loopback, dotted hex", "http://0x7f.0x0.0x0.0x1/h"),
    ("loopback, octal", "http://0177.0.0.1/h"),
    ("loopback, https", "https://127.0.0.1:8443/h"),
    ("unspecified 0.0.0.0", "http://0.0.0.0/h"),
    ("unspecified 0", "http://0/h"),
    ("10/8", "http://10.0.0.1/h"),
    ("172.16/12", "http://172.16.0.1/h"),
    ("192.168/16", "http://192.168.1.1/h"),
    ("link-local metadata", "http://169.254.169.254/latest/meta-data/"),
    ("shared address space", "http://100.64.0.1/h"),
    ("IETF protocol assignments", "http://192.0.0.8/h"),
    ("benchmarking", "http://198.18.0.1/h"),
    ("multicast", "http://224.0.0.1/h"),
    ("reserved", "http://240.0.0.1/h"),
    ("broadcast", "http://255.255.255.255/h"),
    ("IPv6 loopback", "http://[::1]/h"),
    ("IPv6 loopback, long form", "http://[0:0:0:0:0:0:0:1]/h"),
    ("IPv6 unspecified", "http://[::]/h"),
    ("IPv4-compatible", "http://[::127.0.0.1]/h"),
    ("IPv4-compatible, hex", "http://[::7f00:1]/h"),
    ("IPv4-mapped", "http://[::ffff:127.0.0.1]/h"),
    ("IPv4-mapped, hex", "http://[::ffff:7f00:1]/h"),
    ("IPv4-mapped metadata", "http://[::ffff:169.254.169.254]/h"),
    ("IPv4-translated", "http://[::ffff:0:10.0.0.1]/h"),
    ("6to4 of 127.0.0.1", "http://[2002:7f00:1::]/h"),
    ("6to4 of 192.168.1.1", "http://[2002:c0a8:101::1]/h"),
    ("Teredo of 127.0.0.1", "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/h"),
    ("NAT64 of 127.0.0.1", "http://[64:ff9b::127.0.0.1]/h"),
    ("NAT64 local-use of the metadata address", "http://[64:ff9b:1::a9fe:a9fe]/h"),
    ("ISATAP of 10.0.0.1", "http://[2606:4700::5efe:a00:1]/h"),
    ("unique local", "http://[fd00::1]/h"),
    ("unique local fc00", "http://[fc00::1]/h"),
    ("site-local", "http://[fec0::1]/h"),
    ("link-local", "http://[fe80::1]/h"),
    ("link-local with a zone", "http://[fe80::1%25eth0]/h"),
    ("IPv6 multicast", "http://[ff02::1]/h"),
    ("localhost", "http://localhost/h"),
    ("LOCALHOST", "http://LOCALHOST:8000/h"),
    ("localhost with a dot", "http://localhost./h"),
    ("a name under .localhost", "http://api.localhost/h"),
    ("localhost.localdomain", "http://localhost.localdomain/h"),
    ("credentials before a private host", "http://example.com@127.0.0.1/h"),
    ("fragment hiding a private host", "http://127.0.0.1#@example.com/h"),
]
MALFORMED_CALLBACKS = [
    ("unclosed IPv6 bracket", "http://[::1/h"),
    ("port out of range", "http://8.8.8.8:99999/h"),
    ("port 0", "http://8.8.8.8:0/h"),
    ("a 70-character label", "http://" + "a" * 70 + ".example/h"),
    ("an empty label", "http://a..example/h"),
    ("ftp", "ftp://8.8.8.8/h"),
    ("file", "file:///etc/passwd"),
    ("javascript", "javascript:alert(1)"),
    ("gopher", "gopher://127.0.0.1:6379/_FLUSHALL"),
    ("no host", "http:///h"),
    ("relative", "/hook"),
    ("empty", ""),
    ("CR LF inside", "http://8.8.8.8/h\r\nX-Injected: 1"),
    ("a space inside", "http://8.8.8.8/a b"),
    ("2001 characters", "http://8.8.8.8/" + "a" * 1986),
]


def callbacks() -> list[Probe]:
    cases = [(name, summary(callback_url=url, callback_secret=SECRET)) for name, url in PRIVATE_CALLBACKS]
    return posts("callbacks to internal addresses", "/v1/jobs", 422, cases) + posts(
        "malformed callbacks",
        "/v1/jobs",
        422,
        [(name, summary(callback_url=url, callback_secret=SECRET)) for name, url in MALFORMED_CALLBACKS],
    )


def keys() -> list[Probe]:
    group = "API keys"

    def probe(name: str, headers: dict[str, str]) -> Probe:
        return Probe(group, name, "POST", "/v1/jobs", 401, js(summary()), headers=headers, key=None)

    return [
        probe("a wrong key", {"X-API-Key": "wrong-key-0123456789abcdef"}),
        probe("no key", {}),
        probe("an empty X-API-Key", {"X-API-Key": ""}),
        probe("Basic instead of Bearer", {"Authorization": "Basic YWxpY2U6c2VjcmV0"}),
        Probe(
            group,
            "Bearer with no key",
            "POST",
            "/v1/jobs",
            401,
            js(summary()),
            headers={"Authorization": "Bearer "},
            key=None,
            raw=True,
        ),
        probe("the key without a scheme", {"Authorization": "{own_key}"}),
        probe("another scheme's word", {"Authorization": "Token {own_key}"}),
        probe("a 4000-character key", {"X-API-Key": "k" * 4000}),
        probe("a key of non-ASCII bytes", {"X-API-Key": "clé-ünïcødé-0123456789"}),
        probe("the key with a character changed", {"X-API-Key": "{own_key_changed}"}),
        probe(
            "a wrong X-API-Key beside a right Bearer",
            {"X-API-Key": "wrong-key-0123456789abcdef", "Authorization": "Bearer {own_key}"},
        ),
        Probe(
            group,
            "a wrong key on a read",
            "GET",
            "/v1/jobs",
            401,
            None,
            None,
            {"X-API-Key": "wrong-key-0123456789abcdef"},
            key=None,
        ),
    ]


def other_key() -> list[Probe]:
    group = "another key's ids"
    return [
        Probe(group, "read its job", "GET", "/v1/jobs/{other_job}", 404, None, None),
        Probe(group, "cancel its job", "DELETE", "/v1/jobs/{other_job}", 404, None, None),
        Probe(group, "stream its job's events", "GET", "/v1/jobs/{other_job}/events", 404, None, None),
        Probe(group, "read its document", "GET", "/v1/documents/{other_doc}", 404, None, None),
        Probe(
            group,
            "submit a job on its document",
            "POST",
            "/v1/jobs",
            404,
            js({"document_id": "{other_doc}", "task": {"kind": "summary"}}),
        ),
    ]


def never_issued() -> list[Probe]:
    group = "ids never issued"
    gets = [
        ("job id of NUL", "/v1/jobs/%00"),
        ("job id of 300 characters", "/v1/jobs/" + "a" * 300),
        ("job id an emoji", "/v1/jobs/%F0%9F%98%80"),
        ("job id a lone surrogate as bytes", "/v1/jobs/%ED%A0%80"),
        ("job id well formed, never issued", "/v1/jobs/0123456789abcdef0123456789abcdef"),
        ("job id with a quote", "/v1/jobs/a'b"),
        ("document id of NUL", "/v1/documents/%00x"),
        ("document id never issued", "/v1/documents/doc_0123456789abcdef"),
        ("events of a NUL id", "/v1/jobs/%00/events"),
        ("events of a 300-character id", "/v1/jobs/" + "e" * 300 + "/events"),
        ("events of an id never issued", "/v1/jobs/0123456789abcdef0123456789abcdef/events"),
    ]
    probes = [Probe(group, name, "GET", path, 404, None, None) for name, path in gets]
    probes += [
        Probe(group, "cancel a NUL id", "DELETE", "/v1/jobs/%00", 404, None, None),
        Probe(
            group, "cancel an id never issued", "DELETE", "/v1/jobs/0123456789abcdef0123456789abcdef", 404, None, None
        ),
        Probe(
            group,
            "submit on a document never issued",
            "POST",
            "/v1/jobs",
            404,
            js({"document_id": "doc_0123456789abcdef", "task": {"kind": "summary"}}),
        ),
        Probe(
            group,
            "submit on a 500-character document id",
            "POST",
            "/v1/jobs",
            404,
            js({"document_id": "d" * 500, "task": {"kind": "summary"}}),
        ),
    ]
    cursors = [
        ("a cursor of garbage", "%%%"),
        ("a cursor with NUL", base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|\x00").decode()),
        ("a cursor without a separator", base64.urlsafe_b64encode(b"2026-01-01").decode()),
        ("a cursor with a bad date", base64.urlsafe_b64encode(b"yesterday|abc").decode()),
        ("a cursor of invalid UTF-8", base64.urlsafe_b64encode(b"\xff\xfe|abc").decode()),
    ]
    probes += [Probe(group, name, "GET", f"/v1/jobs?cursor={c}", 400, None, None) for name, c in cursors]
    return probes


def idempotency() -> list[Probe]:
    group = "Idempotency-Key values"

    def probe(name: str, key: str, expect: int = 400, body: dict[str, Any] | None = None) -> Probe:
        return Probe(group, name, "POST", "/v1/jobs", expect, js(body or summary()), headers={"Idempotency-Key": key})

    return [
        probe("256 characters", "k" * 256),
        probe("empty", ""),
        Probe(
            group, "only spaces", "POST", "/v1/jobs", 400, js(summary()), headers={"Idempotency-Key": "   "}, raw=True
        ),
        probe("a tab inside", "a\tb"),
        probe("non-ASCII bytes", "clé-é"),
        probe("the same key, another body", "probe-replay", 422, summary(text="Another text.")),
        probe("the same key and body while queued", "probe-replay", 409, summary(text="The replayed job.")),
    ]


def routes() -> list[Probe]:
    group = "methods and routes"
    return [
        Probe(group, "PUT a job", "PUT", "/v1/jobs", 405, js(summary())),
        Probe(group, "PATCH a job", "PATCH", "/v1/jobs/{own_job}", 405, js({"status": "completed"})),
        Probe(group, "POST onto a job", "POST", "/v1/jobs/{own_job}", 405, js(summary())),
        Probe(group, "DELETE a document", "DELETE", "/v1/documents/{own_doc}", 405, None, None),
        Probe(group, "a route that does not exist", "GET", "/v1/nothing-here", 404, None, None),
        Probe(group, "a path with traversal", "GET", "/v1/jobs/../../etc/passwd", 404, None, None),
    ]


def throttle() -> list[Probe]:
    """Last: once a client is throttled every key it has not used in the last 10 s gets 429 too."""
    return [
        Probe(
            "failed-key throttle",
            "wrong keys past the limit",
            "GET",
            "/v1/jobs",
            429,
            None,
            None,
            {"X-API-Key": "wrong-key-0123456789abcdef"},
            key=None,
            repeat=25,
        )
    ]


def catalogue() -> list[Probe]:
    """Every probe, in the order they are sent (the throttle last)."""
    return [
        *unstorable_nul(),
        *unstorable_surrogates(),
        *uploads(),
        *filenames(),
        *sizes(),
        *malformed_json(),
        *wrong_types(),
        *unknown_names(),
        *numbers(),
        *schemas(),
        *callbacks(),
        *keys(),
        *other_key(),
        *never_issued(),
        *idempotency(),
        *routes(),
        *throttle(),
    ]


def representatives(probes: Sequence[Probe]) -> list[Probe]:
    """The first probe of each group but the throttle's (it would lock the caller's client out for a minute)."""
    first: dict[str, Probe] = {}
    for p in probes:
        if p.repeat == 1:
            first.setdefault(p.group, p)
    return list(first.values())


class Store:
    """What the service has stored: rows per table, and Redis keys and queued messages (throttle counters aside)."""

    def __init__(self, target: Target) -> None:
        self.conn = psycopg.connect(target.database, autocommit=True)
        self.broker = redis.Redis.from_url(target.redis_url)
        self.queue = target.queue.encode()
        tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        self.tables = sorted(r[0] for r in self.conn.execute(tables) if r[0] != "alembic_version")

    def counts(self) -> dict[str, int]:
        counts = {t: self.conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in self.tables}  # type: ignore[index]
        keys = [k for k in self.broker.scan_iter(count=1000) if not k.startswith(THROTTLE_PREFIX)]
        counts["redis keys"] = len(keys)
        counts["queued messages"] = sum(
            self.broker.llen(k) for k in keys if k.startswith(self.queue) and self.broker.type(k) == b"list"
        )
        return counts

    def filenames(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT filename FROM documents ORDER BY created_at DESC LIMIT 1")]

    def close(self) -> None:
        self.conn.close()
        self.broker.close()


def problem_fault(response: httpx.Response) -> str | None:
    """What is wrong with the response as a problem+json body (None when nothing)."""
    media = response.headers.get("content-type", "").split(";")[0]
    if media != "application/problem+json":
        return f"content-type {media!r}"
    try:
        body = response.json()
    except ValueError:
        return "the body is not JSON"
    missing = [f for f in PROBLEM_FIELDS if f not in body]
    if missing:
        return f"missing {', '.join(missing)}"
    if body["status"] != response.status_code:
        return f"status {body['status']} in the body, {response.status_code} on the response"
    return None


def clean_name(name: str) -> bool:
    """A stored filename that names no path and holds no control character (C0, DEL, C1)."""
    return 0 < len(name) <= 255 and not any(c in "/\\" or ord(c) < 32 or 127 <= ord(c) < 160 for c in name)


@dataclass
class Fixtures:
    """Ids made before the probes: the other key's job and document, the caller's document and job."""

    values: dict[str, str]

    def fill(self, raw: str) -> str:
        for name, value in self.values.items():
            raw = raw.replace("{" + name + "}", value)
        return raw

    def fill_bytes(self, raw: bytes) -> bytes:
        for name, value in self.values.items():
            raw = raw.replace(b"{" + name.encode() + b"}", value.encode())
        return raw


def make_fixtures(client: httpx.Client, target: Target) -> Fixtures:
    """Another key's document and job, and the caller's document and a queued job with Idempotency-Key
    `probe-replay` (the replay probes meet it)."""
    own, other = {"X-API-Key": target.key}, {"X-API-Key": target.other_key}
    files = {"file": ("other.txt", b"Another key's document.", "text/plain")}
    other_doc = client.post("/v1/documents", files=files, headers=other).json()["id"]
    other_job = client.post("/v1/jobs", json={"document_id": other_doc, "task": {"kind": "summary"}}, headers=other)
    own_doc = client.post("/v1/documents", files={"file": ("own.txt", b"The caller's document.")}, headers=own)
    replay = client.post(
        "/v1/jobs", json=summary(text="The replayed job."), headers={**own, "Idempotency-Key": "probe-replay"}
    )
    changed = target.key[:-1] + ("x" if target.key[-1] != "x" else "y")
    values = {
        "other_job": other_job.json()["id"],
        "other_doc": other_doc,
        "own_doc": own_doc.json()["id"],
        "own_job": replay.json()["id"],
        "own_key_changed": changed,
        "own_key": target.key,
    }
    return Fixtures(values)


def send(client: httpx.Client, target: Target, fixtures: Fixtures, probe: Probe) -> httpx.Response:
    headers = {k: fixtures.fill(v) for k, v in probe.headers.items()}
    if probe.key == "own":
        headers.setdefault("X-API-Key", target.key)
    if probe.content_type is not None:
        headers["content-type"] = probe.content_type
    body = fixtures.fill_bytes(probe.body) if probe.body is not None else None
    # Raw header bytes: httpx would refuse non-ASCII values given as str, and a client may send any byte.
    raw = [(k.encode(), v.encode("utf-8")) for k, v in headers.items()]
    if probe.raw:
        return send_raw(target.base_url, probe.method, fixtures.fill(probe.path), raw, body or b"")
    request = client.build_request(probe.method, fixtures.fill(probe.path), content=body)
    request.headers = httpx.Headers([*request.headers.raw, *raw])
    response = client.send(request)
    for _ in range(probe.repeat - 1):
        response = client.send(request)
    return response


def send_raw(base_url: str, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> httpx.Response:
    """One HTTP/1.1 request written to a socket as given, the connection closed after the answer."""
    parts = urlsplit(base_url)
    head = [f"{method} {path} HTTP/1.1".encode(), f"Host: {parts.netloc}".encode(), b"Connection: close"]
    head += [k + b": " + v for k, v in headers] + [f"Content-Length: {len(body)}".encode()]
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=60) as conn:
        conn.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        answer = b"".join(iter(lambda: conn.recv(65536), b""))
    top, _, content = answer.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    fields = [tuple(x.strip() for x in line.split(":", 1)) for line in lines if ":" in line]
    fields = [(k, v) for k, v in fields if k.lower() not in ("content-length", "transfer-encoding")]
    if any(k.lower() == "transfer-encoding" for line in lines for k in [line.split(":", 1)[0].strip()]):
        content = dechunk(content)
    return httpx.Response(int(status_line.split()[1]), headers=fields, content=content)


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out, data = out + rest[:n], rest[n + 2 :]
    return out


def judge(
    probe: Probe, response: httpx.Response, before: dict[str, int], after: dict[str, int], name: str | None
) -> dict[str, Any]:
    changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    fault = problem_fault(response) if response.status_code >= 400 else None
    if probe.cleaned:  # stored once, under a clean name, and no job
        stored_ok = changed == {"documents": 1} and name is not None and clean_name(name)
        passed = response.status_code == 201 and stored_ok
    else:
        stored_ok = not changed
        passed = 400 <= response.status_code < 500 and fault is None and stored_ok
    return {
        "group": probe.group,
        "probe": probe.name,
        "status": response.status_code,
        "expected": probe.expect,
        "passed": passed,
        "as_expected": response.status_code == probe.expect,
        "problem_fault": fault,
        "stored": changed,
        "filename": name if probe.cleaned else None,
        "detail": (response.text[:200] if not passed or response.status_code != probe.expect else None),
    }


def run_probes(target: Target, probes: Sequence[Probe]) -> list[dict[str, Any]]:
    """Send each probe and judge it: its answer, its body, and what the store holds before and after."""
    store = Store(target)
    try:
        with httpx.Client(base_url=target.base_url, timeout=60) as client:
            fixtures = make_fixtures(client, target)
            results = []
            for probe in probes:
                before = store.counts()
                try:
                    response = send(client, target, fixtures, probe)
                except httpx.TransportError as exc:  # no answer at all: a failure of its own kind
                    response = httpx.Response(599, text=f"{type(exc).__name__}: {exc}")
                after = store.counts()
                name = store.filenames()[0] if probe.cleaned and store.filenames() else None
                results.append(judge(probe, response, before, after, name))
            return results
    finally:
        store.close()


def by_group(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per group and a total: probes, passed, answered as expected, and the statuses seen."""
    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in results:
        groups[r["group"]].append(r)
    rows = []
    for group, items in [*groups.items(), ("total", list(results))]:
        statuses = collections.Counter(str(r["status"]) for r in items)
        rows.append(
            {
                "group": group,
                "probes": len(items),
                "passed": sum(r["passed"] for r in items),
                "as_expected": sum(r["as_expected"] for r in items),
                "server_errors": sum(r["status"] >= 500 for r in items),
                "stored_something": sum(bool(r["stored"]) and not r["filename"] for r in items),
                "statuses": dict(sorted(statuses.items())),
                "failed": [r["probe"] for r in items if not r["passed"]] if group != "total" else None,
            }
        )
    return rows


KEY = "probes-key-0123456789abcdef"
OTHER_KEY = "probes-other-key-9876543210"
QUEUE = "probes-parked"


def stack_env(upload_limit: int = UPLOAD_LIMIT) -> dict[str, str]:
    """TOME_* for the API under probe: two keys, private callbacks refused, a queue no worker reads."""
    return {
        "TOME_API_KEYS": f"probes:{KEY},other:{OTHER_KEY}",
        "TOME_ALLOW_PRIVATE_CALLBACKS": "false",
        "TOME_JOB_QUEUE": QUEUE,  # accepted jobs would stay there, to be counted
        "TOME_MAX_UPLOAD_BYTES": str(upload_limit),
    }


def run_stack(redis_db: int = 7) -> tuple[list[dict[str, Any]], str]:
    """Start the stack, run every probe, stop it; returns the results and the API log's path."""
    from bench.service_faults import Stack

    logs = Path(tempfile.mkdtemp(prefix="tome-probes-"))
    redis_url = f"redis://127.0.0.1:6379/{redis_db}"
    stack = Stack(logs, redis_url=redis_url, extra_env=stack_env(), db_name="tome_bench_probes").start()
    try:
        target = Target(stack.base_url, KEY, OTHER_KEY, stack.database.replace("+psycopg", ""), redis_url, QUEUE)
        return run_probes(target, catalogue()), str(logs / "api.log")
    finally:
        stack.stop()


def main() -> None:
    from bench.common import write_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="service-probes")
    parser.add_argument("--redis-db", type=int, default=7)
    parser.add_argument("--note", default="", help="what differs from the commit (e.g. the service code of another)")
    args = parser.parse_args()
    start = time.monotonic()
    results, log = run_stack(args.redis_db)
    rows = by_group(results)
    for r in results:
        if not r["passed"] or not r["as_expected"]:
            print(json.dumps(r))
    print(json.dumps(rows[-1]))
    path = write_results(
        args.name,
        "service probes: bad and hostile requests, one by one, against tome serve + PostgreSQL + Redis"
        + (f" ({args.note})" if args.note else ""),
        "none (the API alone; no worker runs)",
        rows,
        probes=results,
        upload_limit_bytes=UPLOAD_LIMIT,
        seconds=round(time.monotonic() - start, 1),
        api_log=log,
        load_average=[round(x, 2) for x in os.getloadavg()],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
