"""Keys, throttling, callback checks and what health and error bodies say, over real HTTP with PostgreSQL and
Redis (no worker: accepted jobs stay queued)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from bench.stack import Receiver
from service import webhooks
from service.auth import bootstrap_keys, hash_key, key_weakness, new_key
from service.store import Store
from tests.helpers import ALICE, ROOT, SECRET, api_client, flushed, serve

REDIS_URL = "redis://127.0.0.1:6379/11"
KEY_SECRET = "a-server-secret-for-the-guard-tests-0123456789"


def settings(database: str, **overrides: Any) -> Any:
    from engines.settings import Settings

    values = {
        "database_url": database,
        "redis_url": REDIS_URL,
        "api_keys": f"alice:{ALICE}",
        "key_secret": KEY_SECRET,
        "job_queue": "parked",
        "auth_failure_limit": 5,
        "auth_failure_window": 3,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(scope="module")
def api(database: str) -> Iterator[httpx.Client]:
    with flushed(REDIS_URL), api_client(settings(database), **{"X-API-Key": ALICE}) as client:
        yield client


def problem(response: httpx.Response, status: int, words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"], response.json()
    return response.json()


def test_failed_key_checks_are_throttled_per_client(api: httpx.Client) -> None:
    assert api.get("/v1/jobs").status_code == 200  # alice's key, checked and cached
    for i in range(5):
        problem(api.get("/v1/jobs", headers={"X-API-Key": f"wrong-key-{i:02d}-0123456789"}), 401, "not valid")
    throttled = api.get("/v1/jobs", headers={"X-API-Key": "wrong-key-99-0123456789"})
    problem(throttled, 429, "too many failed")
    assert 1 <= int(throttled.headers["retry-after"]) <= 3
    assert api.get("/v1/jobs").status_code == 200  # a key this API already checked keeps working
    time.sleep(int(throttled.headers["retry-after"]) + 0.5)
    problem(api.get("/v1/jobs", headers={"X-API-Key": "wrong-key-100-0123456789"}), 401, "not valid")


def test_keys_are_hmac_hashed_and_old_hashes_upgraded(api: httpx.Client, database: str) -> None:
    secret = KEY_SECRET.encode()
    with psycopg.connect(database.replace("+psycopg", ""), autocommit=True) as conn:
        stored = conn.execute("SELECT key_hash FROM api_keys WHERE name = 'alice'").fetchone()[0]  # type: ignore[index]
        assert stored == hash_key(ALICE, secret) != hashlib.sha256(ALICE.encode()).hexdigest()
        old_key = "carol-old-style-key-0123456789"
        owner = conn.execute(
            "INSERT INTO api_keys (id, name, key_hash, created_at) VALUES ('key_carol', 'carol', %s, now()) "
            "RETURNING id",
            (hashlib.sha256(old_key.encode()).hexdigest(),),
        ).fetchone()[0]  # type: ignore[index]
        assert api.get("/v1/jobs", headers={"X-API-Key": old_key}).status_code == 200
        upgraded = conn.execute("SELECT key_hash FROM api_keys WHERE id = %s", (owner,)).fetchone()[0]  # type: ignore[index]
        assert upgraded == hash_key(old_key, secret)


def test_configured_keys_are_checked_and_generated_ones_are_strong(database: str) -> None:
    store = Store(database)
    for weak in (
        "short-key",
        "a" * 40,
        "abababababababababababab",
        "change-me-to-a-long-random-key",
        "password1234567890abc",
    ):
        with pytest.raises(ValueError, match="refused"):
            bootstrap_keys(store, f"weak:{weak}", b"secret")
    generated = new_key()
    assert key_weakness(generated) is None and len(generated.removeprefix("tome_")) >= 43  # 32 random bytes
    assert key_weakness("alice-test-key-0123456789") is None


def test_tome_keys_create_names_the_key(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOME_HOME": str(tmp_path), "TOME_KEY_SECRET": ""}
    env["TOME_DATABASE_URL"] = f"sqlite:///{tmp_path / 'tome.db'}"
    subprocess.run([sys.executable, "-m", "service.cli", "migrate"], env=env, check=True, capture_output=True)
    made = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "ops"], env=env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("tome_") and key_weakness(key) is None
    secret = (tmp_path / "key_secret").read_bytes().strip()
    assert oct((tmp_path / "key_secret").stat().st_mode & 0o777) == "0o600"
    store = Store(env["TOME_DATABASE_URL"])
    assert store.key_owner(hash_key(key, secret)) is not None
    from sqlalchemy import select

    from service.models import ApiKey

    with store.session() as s:
        assert list(s.scalars(select(ApiKey.name))) == ["ops"]


def test_health_and_error_bodies_say_what_failed_not_how(database: str) -> None:
    base, server = serve(settings(database, redis_url="redis://127.0.0.1:1/0"))  # no Redis there
    try:
        ready = httpx.get(f"{base}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"] == "unavailable" and ready.json()["checks"]["database"] == "ok"
        assert "Error" not in ready.text and "127.0.0.1" not in ready.text and ":1" not in ready.text
        body = {"text": "The lamp was lit.", "task": {"kind": "summary"}}
        refused = httpx.post(f"{base}/v1/jobs", json=body, headers={"X-API-Key": ALICE}, timeout=60)
        problem(refused, 503, "broker is unavailable")
        assert refused.headers["retry-after"] == "5" and "Error" not in refused.text and "refused" not in refused.text
    finally:
        server.should_exit = True


PRIVATE_FORMS = [
    "http://[::127.0.0.1]/h",  # IPv4-compatible
    "http://[::ffff:127.0.0.1]/h",  # IPv4-mapped
    "http://[::ffff:7f00:1]/h",
    "http://[::ffff:0:10.0.0.1]/h",  # IPv4-translated
    "http://[2002:7f00:1::]/h",  # 6to4 of 127.0.0.1
    "http://[2002:c0a8:101::1]/h",  # 6to4 of 192.168.1.1
    "http://[64:ff9b::10.1.2.3]/h",  # NAT64, well-known prefix
    "http://[64:ff9b:1::a9fe:a9fe]/h",  # NAT64, local-use prefix, 169.254.169.254
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/h",  # Teredo of 127.0.0.1
    "http://[2606:4700::5efe:a00:1]/h",  # ISATAP of 10.0.0.1
    "http://[::ffff:169.254.169.254]/h",
    "http://[fec0::1]/h",  # site-local
    "http://[fd00::1]/h",
    "http://[fe80::1]/h",
    "http://[::1]/h",
    "http://[::]/h",
    "http://0x7f.1/h",
    "http://2130706433/h",
    "http://0/h",
    "http://100.64.0.1/h",
    "http://192.0.0.8/h",
]
MALFORMED = ["http://[::1/h", "http://example.com:99999/h", "http://" + "a" * 70 + ".example/h", "ftp://example.com/"]


def test_every_ipv6_form_of_an_internal_address_is_refused(api: httpx.Client, database: str) -> None:
    base, server = serve(settings(database, allow_private_callbacks=False))
    try:
        with psycopg.connect(database.replace("+psycopg", ""), autocommit=True) as conn:
            before = conn.execute("SELECT count(*) FROM jobs").fetchone()
            for url in PRIVATE_FORMS + MALFORMED:
                body = {"text": "The lamp was lit.", "task": {"kind": "summary"}, "callback_url": url}
                response = httpx.post(f"{base}/v1/jobs", json=body, headers={"X-API-Key": ALICE}, timeout=30)
                problem(response, 422, "callback_url")
            assert conn.execute("SELECT count(*) FROM jobs").fetchone() == before
    finally:
        server.should_exit = True
    for url in ("http://8.8.8.8/h", "http://[2606:4700:4700::1111]/h", "http://[2002:808:808::1]/h"):
        assert webhooks.check_callback_url(url, allow_private=False)  # public addresses pass


def test_delivery_connects_to_the_checked_address_with_the_names_host_header() -> None:
    receiver = Receiver(SECRET).start()
    try:
        url = f"http://localhost:{receiver.port}/hook"
        checked = webhooks.check_callback_url(url, allow_private=True)
        assert "127.0.0.1" in checked
        outcome = webhooks.deliver(url, SECRET, "msg_pinned", b'{"type":"job.completed"}', 10, allow_private=True)
        assert outcome.delivered, outcome
        headers, _ = receiver.deliveries[0]
        assert headers["host"] == f"localhost:{receiver.port}"  # the URL's name, while the socket went to an IP
    finally:
        receiver.stop()
    target, host, extensions = webhooks.pinned_request("https://hooks.example.com:8443/a?b=1", "93.184.216.34")
    assert target == "https://93.184.216.34:8443/a?b=1" and host == {"host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}  # the certificate is checked against the name
    assert webhooks.pinned_request("http://[2606:4700::1]/a", "2606:4700::1")[0] == "http://[2606:4700::1]/a"
