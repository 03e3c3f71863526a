"""Who is calling: HMAC-signed API keys for trading, a bearer token for operators.

The two never mix: an API key is not looked at on an operator route and the admin
token is not accepted on a trading route.
"""

from __future__ import annotations

import hmac
import math
import time

from fastapi import Request

from services.common import keys
from services.common.errors import ExchangeError
from services.common.signing import SIGNATURE_WINDOW_MS, sign, signature_matches


def _unauthorized(code: str, message: str) -> ExchangeError:
    return ExchangeError(code, message, 401)


async def signed_account(request: Request) -> str:
    """The account id of a correctly signed, fresh, never-seen request; else 401."""
    headers = request.headers
    api_key = headers.get("x-api-key")
    timestamp = headers.get("x-api-timestamp")
    signature = headers.get("x-api-signature")
    if not (api_key and timestamp and signature):
        raise _unauthorized("UNAUTHORIZED", "signed request required (X-API-KEY, "
                            "X-API-TIMESTAMP, X-API-SIGNATURE)")
    try:
        ts = int(timestamp)
    except ValueError:
        raise _unauthorized("INVALID_TIMESTAMP", "X-API-TIMESTAMP must be Unix ms") from None
    if abs(time.time() * 1000 - ts) > SIGNATURE_WINDOW_MS:
        raise _unauthorized("TIMESTAMP_OUT_OF_WINDOW", "timestamp is more than 5 s off")
    state = request.app.state
    key = await state.accounts.lookup_key(api_key)
    if key is None:
        raise _unauthorized("INVALID_API_KEY", "unknown API key")
    path = request.scope["raw_path"].decode()
    if request.scope.get("query_string"):
        path += "?" + request.scope["query_string"].decode()
    body = await request.body()
    expected = sign(key.secret, ts, request.method, path, body)
    if not signature_matches(expected, signature):
        raise _unauthorized("INVALID_SIGNATURE", "signature does not match the request")
    # One round trip on the key's slot: the rate limit, then the signature's single use
    # (for as long as its timestamp could be accepted).
    verdict = await state.admit(
        keys=[keys.rate_bucket(api_key), keys.replay_guard(api_key, signature)],
        args=[key.rate_per_s, key.burst, 2 * SIGNATURE_WINDOW_MS])
    if verdict == -1:
        raise _unauthorized("REPLAYED_SIGNATURE", "this signature was already used")
    if verdict > 0:
        raise ExchangeError("RATE_LIMITED", f"over {key.rate_per_s:g} requests/s "
                            f"(burst {key.burst}); retry in {verdict} ms", 429,
                            headers={"Retry-After": str(math.ceil(verdict / 1000))})
    return key.account_id


async def operator(request: Request) -> None:
    """Passes only with `Authorization: Bearer <admin token>`."""
    given = request.headers.get("authorization", "")
    expected = "Bearer " + request.app.state.settings.admin_token
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise _unauthorized("UNAUTHORIZED", "operator token required")
