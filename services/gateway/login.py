"""The `login` op: which account a WebSocket session acts for.

API.md: `{"op":"login","id":3,"api_key":"...","timestamp":ms,"signature":"..."}` with
signature = hex(HMAC-SHA256(secret, timestamp + "GET" + "/ws")). Checked like a signed
REST request, with the same key store and sealed secrets as the API
(`EXCHANGE_SECRETS_KEY`): the timestamp within ±5 s, the key known, the HMAC right, and
the signature used once (a replay guard on the key's slot for twice the window).
"""

from __future__ import annotations

import logging
import time

from services.common import keys
from services.common.api_keys import ApiKeyStore
from services.common.errors import ExchangeError
from services.common.signing import SIGNATURE_WINDOW_MS, sign, signature_matches
from services.gateway.protocol import Credentials
from services.gateway.subscriber import LINK_ERRORS

log = logging.getLogger("exchange.gateway.login")

LOGIN_METHOD, LOGIN_PATH = "GET", "/ws"
REPLAY_GUARD_MS = 2 * SIGNATURE_WINDOW_MS  # as long as its timestamp could be accepted


def now_ms() -> int:
    return int(time.time() * 1000)


class LoginVerifier:
    """Verifies login credentials; `accounts` None: no secrets key, logins unavailable."""

    def __init__(self, accounts: ApiKeyStore | None) -> None:
        self.accounts = accounts

    async def verify(self, credentials: Credentials, current: str | None) -> str:
        """The account id the credentials prove, for a session logged in as `current`
        (None: not yet). ExchangeError: TIMESTAMP_OUT_OF_WINDOW, INVALID_API_KEY,
        INVALID_SIGNATURE, ALREADY_LOGGED_IN (another account), REPLAYED_SIGNATURE,
        LOGIN_UNAVAILABLE. A refused login changes nothing."""
        accounts = self.accounts
        if accounts is None:
            raise ExchangeError("LOGIN_UNAVAILABLE",
                                "this gateway has no secrets key: private channels are off")
        if abs(now_ms() - credentials.timestamp) > SIGNATURE_WINDOW_MS:
            raise ExchangeError("TIMESTAMP_OUT_OF_WINDOW",
                                f"timestamp is more than {SIGNATURE_WINDOW_MS // 1000} s off")
        api_key = credentials.api_key
        try:
            key = await accounts.lookup_key(api_key)
        except LINK_ERRORS as exc:
            log.warning("login: looking up a key failed: %r", exc)
            raise ExchangeError("LOGIN_UNAVAILABLE", "cannot verify logins now; "
                                "try again later") from None
        except ValueError:  # sealed with another key: a misconfigured deployment
            log.error("login: the secret of a key does not open with EXCHANGE_SECRETS_KEY")
            key = None
        if key is None:
            raise ExchangeError("INVALID_API_KEY", "unknown API key")
        expected = sign(key.secret, credentials.timestamp, LOGIN_METHOD, LOGIN_PATH)
        if not signature_matches(expected, credentials.signature):
            raise ExchangeError("INVALID_SIGNATURE", 'signature is not HMAC-SHA256(secret, '
                                'timestamp + "GET" + "/ws")')
        if current is not None and current != key.account_id:
            raise ExchangeError("ALREADY_LOGGED_IN", "this connection is logged in as "
                                "another account; open another connection")
        try:
            fresh = await accounts.redis.set(keys.replay_guard(api_key, credentials.signature),
                                             1, nx=True, px=REPLAY_GUARD_MS)
        except LINK_ERRORS as exc:
            log.warning("login: recording a signature failed: %r", exc)
            raise ExchangeError("LOGIN_UNAVAILABLE", "cannot verify logins now; "
                                "try again later") from None
        if not fresh:
            raise ExchangeError("REPLAYED_SIGNATURE", "this signature was already used")
        return key.account_id
