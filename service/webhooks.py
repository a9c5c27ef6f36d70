"""Webhooks per the Standard Webhooks spec: secrets, signing, the callback-URL guard, one delivery attempt, backoff.

A delivery carries `webhook-id` (the event id, stable across retries: the receiver's idempotency key),
`webhook-timestamp` (unix seconds of this attempt) and `webhook-signature` = `v1,` + base64(HMAC-SHA256(key,
f"{id}.{timestamp}.{body}")), where key is the base64-decoded part of the endpoint's `whsec_` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from socket import SOCK_STREAM
from urllib.parse import urlsplit, urlunsplit

import httpx
from celery import Celery

from service.models import Event, Job, utcnow

SECRET_PREFIX = "whsec_"
MAX_INLINE_RESULT = 16_000  # bytes of result carried in an event body; larger results are fetched from its URL
DELIVER_EVENT = "tome.deliver_event"
TOLERANCE_S = 300


class WebhookError(ValueError):
    pass


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret; 24 to 64 random bytes per the spec."""
    if not secret.startswith(SECRET_PREFIX):
        raise WebhookError("callback_secret must start with 'whsec_' followed by base64 of 24 to 64 random bytes")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise WebhookError("callback_secret is not valid base64 after 'whsec_'") from None
    if not 24 <= len(key) <= 64:
        raise WebhookError(f"callback_secret decodes to {len(key)} bytes; use 24 to 64 random bytes")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> None:
    """What a receiver does (shown in the README): raises WebhookError unless a signature matches and is fresh."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, timestamp, signatures = h["webhook-id"], int(h["webhook-timestamp"]), h["webhook-signature"]
    except (KeyError, ValueError):
        raise WebhookError("missing or malformed webhook headers") from None
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_S:
        raise WebhookError("timestamp outside the tolerance")
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1]
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise WebhookError("no matching signature")


# IPv6 prefixes that carry an IPv4 address, and where it sits (the address is refused if that IPv4 is internal).
NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
COMPAT = ipaddress.IPv6Network("::/96")  # deprecated IPv4-compatible ::a.b.c.d ([::127.0.0.1])
TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT IPv4-translated ::ffff:0:a.b.c.d


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address may reach: mapped, compatible, translated, 6to4, Teredo (server and
    client), NAT64 (well-known and local-use prefixes), ISATAP interface ids."""
    found = []
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in COMPAT or address in TRANSLATED or any(address in net for net in NAT64):
        found.append(low32)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if (int(address) >> 32) & 0xFDFFFFFF == 0x00005EFE:  # ISATAP: ...:0:5efe:a.b.c.d or ...:200:5efe:a.b.c.d
        found.append(low32)
    return found


# Not globally reachable per IANA's IPv4 special-purpose registry (whatever this Python's ipaddress says).
IPV4_INTERNAL = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
]


def internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Private, loopback, link-local, reserved, multicast or unspecified, directly or through an IPv4 inside."""
    if isinstance(address, ipaddress.IPv4Address) and any(address in net for net in IPV4_INTERNAL):
        return True
    if not address.is_global or address.is_multicast or address.is_reserved or address.is_unspecified:
        return True
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local or address in COMPAT:
            return True
        return any(internal(v4) for v4 in embedded_ipv4(address))
    return False


def check_callback_url(url: str, allow_private: bool) -> list[str]:
    """Refuse URLs that resolve to private, loopback, link-local or otherwise internal addresses (SSRF guard;
    `allow_private` skips only that test).

    Returns the addresses checked, for delivery to connect to: the name is not resolved again between the check
    and the connection, so a DNS answer that changes in between cannot point the delivery inside.
    """
    # urlsplit drops tabs and line breaks silently (and keeps spaces), so a URL holding any would be checked as
    # one URL and later sent as another, or never be sendable: such URLs are refused, not repaired.
    if any(c.isspace() or not c.isprintable() for c in url):
        raise WebhookError(f"callback_url {url!r} holds white space or control characters; percent-encode them")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", a port out of range
        raise WebhookError(f"callback_url {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"callback_url {url!r} must be an absolute http(s) URL")
    if port == 0:  # urlsplit accepts it; nothing can be delivered to it
        raise WebhookError(f"callback_url {url!r} names port 0")
    try:
        infos = socket.getaddrinfo(parts.hostname, port or (443 if parts.scheme == "https" else 80), type=SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookError(f"callback_url host {parts.hostname!r} does not resolve ({exc.strerror})") from None
    except (UnicodeError, ValueError):  # a label over 63 characters, an empty label
        raise WebhookError(f"callback_url host {parts.hostname!r} is not a valid host name") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))
    for address in addresses if not allow_private else []:
        if internal(address):
            raise WebhookError(
                f"callback_url host {parts.hostname!r} resolves to {address}, a private, loopback or link-local "
                "address; such callbacks are refused (TOME_ALLOW_PRIVATE_CALLBACKS=true allows them for development)"
            )
    if not addresses:
        raise WebhookError(f"callback_url host {parts.hostname!r} does not resolve")
    return [str(a) for a in addresses]


def pinned_request(url: str, address: str) -> tuple[str, dict[str, str], dict[str, object]]:
    """The URL to connect to (the host replaced by the checked address), the Host header, and the TLS name, so
    that the certificate is still verified against the URL's host name."""
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host = parts.hostname or ""
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if parts.port is None else f"[{host}]:{parts.port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    extensions: dict[str, object] = {"sni_hostname": host} if parts.scheme == "https" else {}
    return pinned, {"host": host_header}, extensions


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    retry_after: float | None
    duration_ms: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


def deliver(url: str, secret: str, msg_id: str, body: bytes, timeout: float, allow_private: bool) -> Outcome:
    """One attempt. Only a 2xx counts; redirects are not followed; the URL is checked again (DNS may have changed
    since the job was submitted) and the connection goes to the address that was checked."""
    start = time.perf_counter()
    try:
        addresses = check_callback_url(url, allow_private)
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            for i, address in enumerate(addresses):  # each checked address in turn, as a resolver's client would
                target, host, extensions = pinned_request(url, address)
                headers = {**signed_headers(secret, msg_id, body), **host}
                request = client.build_request("POST", target, content=body, headers=headers, extensions=extensions)
                try:
                    response = client.send(request)
                    break
                except httpx.ConnectError:
                    if i == len(addresses) - 1:
                        raise
    except (httpx.HTTPError, WebhookError) as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}", None, (time.perf_counter() - start) * 1000)
    ms = (time.perf_counter() - start) * 1000
    error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    return Outcome(response.status_code, error, parse_retry_after(response.headers.get("retry-after")), ms)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def retry_delay(
    attempt: int, delays: Sequence[float], jitter: float, retry_after: float | None, max_retry_after: float
) -> float | None:
    """Seconds before attempt `attempt + 1`, or None when the schedule is spent. Retry-After wins when later."""
    if attempt > len(delays):
        return None
    base = delays[attempt - 1] * (1 + random.uniform(-jitter, jitter))
    if retry_after is not None:
        base = max(base, min(retry_after, max_retry_after))
    return base


def event_body(job: Job, public_url: str) -> str:
    """The event's JSON body, fixed once: every attempt sends (and signs) these exact bytes."""
    data: dict[str, object] = {
        "id": job.id,
        "status": job.status,
        "strategy": job.strategy,
        "error": job.error,
        "url": f"{public_url.rstrip('/')}/v1/jobs/{job.id}",
    }
    if job.result is not None and len(json.dumps(job.result)) <= MAX_INLINE_RESULT:
        data["result"] = job.result
    payload = {"type": f"job.{job.status}", "timestamp": utcnow().isoformat(), "data": data}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def send_delivery(celery: Celery, queue: str, event: Event | None, attempt: int = 1, countdown: float = 0) -> None:
    """Enqueue one delivery attempt (its own task); nothing to do for events without an endpoint or already done."""
    if event is None or event.endpoint_id is None or event.delivered_at or event.gave_up_at:
        return
    send_delivery_attempt(celery, queue, event.id, attempt, countdown)


def send_delivery_attempt(celery: Celery, queue: str, event_id: str, attempt: int, countdown: float = 0) -> None:
    celery.send_task(
        DELIVER_EVENT, args=[event_id, attempt], task_id=f"{event_id}-{attempt}", queue=queue, countdown=countdown
    )
