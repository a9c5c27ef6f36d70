"""API keys: stored as HMAC-SHA256 under a server secret (so a leaked key table is not a list to test guesses
against without the secret), generated with 256 bits of entropy, configured ones checked for length and entropy;
failed attempts throttled per client in Redis (shared by every API process and host)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import tempfile
from collections import Counter
from pathlib import Path

import redis

from service.store import Store

log = logging.getLogger(__name__)
KEY_PREFIX = "tome_"
MIN_KEY_LENGTH = 20
MIN_KEY_BITS = 64.0
MIN_SECRET_LENGTH = 32


class AuthError(Exception):
    pass


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits


def hash_key(key: str, secret: bytes) -> str:
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()


def legacy_hash(key: str) -> str:
    """The unsalted SHA-256 of keys stored before the server secret; such a row is re-hashed at its first use."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def server_secret(configured: str, home: Path) -> bytes:
    """TOME_KEY_SECRET, or (embedded mode) a random secret kept in `home/key_secret`, made once, mode 0600.

    Every API process and `tome keys create` must use the same one: the stack sets it in its environment."""
    if configured:
        if len(configured) < MIN_SECRET_LENGTH:
            raise ValueError(f"TOME_KEY_SECRET must be at least {MIN_SECRET_LENGTH} characters of random text")
        return configured.encode("utf-8")
    path = home / "key_secret"
    if not path.exists():
        # Written whole under a temporary name, then linked into place: of API processes starting together one
        # link wins, and none can read a half-written secret.
        home.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".key_secret-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_text().strip().encode("utf-8")


def key_weakness(key: str) -> str | None:
    """Why a configured key is too weak to accept (None when it is not): its length, its distinct characters, and
    an entropy estimate (length x the Shannon entropy of its characters), and no placeholder text."""
    if len(key) < MIN_KEY_LENGTH:
        return f"it has {len(key)} characters; use {MIN_KEY_LENGTH} or more (`tome keys create` makes one)"
    counts = Counter(key)
    bits = -len(key) * sum(c / len(key) * math.log2(c / len(key)) for c in counts.values())
    if len(counts) < 10 or bits < MIN_KEY_BITS:
        return f"it is too predictable (about {bits:.0f} bits); use a random key (`tome keys create` makes one)"
    if any(word in key.lower() for word in ("change-me", "changeme", "password")):
        return "it is placeholder text; use a random key (`tome keys create` makes one)"
    return None


def bootstrap_keys(store: Store, spec: str, secret: bytes) -> list[str]:
    """Store the keys of TOME_API_KEYS (`name:key,name:key`), hashed; returns their names."""
    names = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, key = item.partition(":")
        if not sep or not name:
            raise ValueError(f"TOME_API_KEYS entry {item[:8]!r}... must be `name:key`")
        weakness = key_weakness(key)
        if weakness:
            raise ValueError(f"TOME_API_KEYS key {name!r} is refused: {weakness}")
        store.add_key(name, hash_key(key, secret))
        names.append(name)
    return names


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str:
    if x_api_key:
        return x_api_key
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise AuthError("the Authorization header must be `Bearer <API key>`")
    raise AuthError("an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")


class Throttle:
    """At most `limit` failed key checks per client address in a `window` of seconds (fixed window from the first
    failure), counted in Redis. Fails open: with Redis down, nothing is throttled (and a warning is logged)."""

    def __init__(self, url: str, limit: int, window: float) -> None:
        self.limit, self.window = limit, max(1, math.ceil(window))
        self.client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    def _key(self, client: str) -> str:
        return f"tome:auth-failures:{client}"

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again (0: it may now)."""
        try:
            count, ttl = self.client.pipeline().get(self._key(client)).ttl(self._key(client)).execute()
        except redis.RedisError as exc:
            log.warning("auth throttle unavailable (%s); not throttling", type(exc).__name__)
            return 0
        return max(1, int(ttl)) if count is not None and int(count) >= self.limit else 0

    def failed(self, client: str) -> None:
        try:
            self.client.pipeline().incr(self._key(client)).expire(self._key(client), self.window, nx=True).execute()
        except redis.RedisError as exc:
            log.warning("auth throttle unavailable (%s); not counting", type(exc).__name__)
