"""Errors as values at the edges: a stable upper-case code plus a human message."""

from __future__ import annotations


class ExchangeError(Exception):
    """A refusal a client can act on. `code` is stable; `message` explains it."""

    def __init__(self, code: str, message: str, http_status: int = 400,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status
        self.headers = headers or {}  # e.g. Retry-After on a 429
