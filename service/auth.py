"""API keys: stored as sha256 hashes (keys are random, so a fast hash is enough); a request names one."""

from __future__ import annotations

import hashlib
import secrets

from service.store import Store

KEY_PREFIX = "tome_"


class AuthError(Exception):
    pass


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def bootstrap_keys(store: Store, spec: str) -> list[str]:
    """Store the keys of TOME_API_KEYS (`name:key,name:key`), hashed; returns their names."""
    names = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, key = item.partition(":")
        if not sep or not name or len(key) < 16:
            raise ValueError(f"TOME_API_KEYS entry {name or item[:8]!r}... must be `name:key` with a key of 16+ chars")
        store.add_key(name, hash_key(key))
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
