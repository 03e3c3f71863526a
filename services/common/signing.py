"""Request signing shared by the API (verifies) and every client we ship (signs)."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_WINDOW_MS = 5_000


def sign(secret: str, timestamp_ms: int, method: str, path_with_query: str,
         body: bytes | str = b"") -> str:
    """hex(HMAC-SHA256(secret, timestamp + METHOD + path_with_query + body)) per API.md."""
    if isinstance(body, str):
        body = body.encode()
    message = f"{timestamp_ms}{method.upper()}{path_with_query}".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(api_key: str, secret: str, method: str, path_with_query: str,
                   body: bytes | str = b"", timestamp_ms: int | None = None) -> dict[str, str]:
    """The three headers of a signed request."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return {
        "X-API-KEY": api_key,
        "X-API-TIMESTAMP": str(ts),
        "X-API-SIGNATURE": sign(secret, ts, method, path_with_query, body),
    }


def signature_matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())
