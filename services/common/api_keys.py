"""API keys as the API (signed requests) and the gateways (login) both read them."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import keys
from services.common.redis_conn import AnyRedis
from services.common.secrets_box import SecretBox


@dataclass(frozen=True)
class ApiKey:
    account_id: str
    secret: str
    rate_per_s: float  # signed requests per second, sustained
    burst: int


class ApiKeyStore:
    def __init__(self, redis: AnyRedis, box: SecretBox) -> None:
        self.redis = redis
        self.box = box
        # Keys are immutable once issued, so a process may cache them.
        self._cache: dict[str, ApiKey] = {}

    async def lookup_key(self, api_key: str) -> ApiKey | None:
        """The key's account, secret (unsealed) and rate limit; None if unknown."""
        cached = self._cache.get(api_key)
        if cached is not None:
            return cached
        if not api_key or len(api_key) > 128:
            return None
        record = await self.redis.hgetall(keys.api_key(api_key))
        if not record:
            return None
        found = ApiKey(record[b"account_id"].decode(),
                       self.box.open(record[b"secret_sealed"].decode(), api_key),
                       float(record[b"rate_per_s"]), int(record[b"burst"]))
        self._cache[api_key] = found
        return found
