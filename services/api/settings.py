"""API settings from the environment (12-factor), with documented defaults."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

from services.common.redis_conn import DEFAULT_REDIS_URL, REDIS_URL_ENV


@dataclass(frozen=True)
class BacklogLimits:
    """Back-pressure: how far behind a pair may fall before the API refuses new orders
    on it (503 BACKLOG) rather than queue them without bound. 0 = no limit."""

    # Commands in the pair's input stream its engine has not committed yet: a fraction
    # of a second of an engine's work (bench/engine_redis), more than a healthy one has.
    engine: int = 10_000
    # Engine output entries (one per committed batch) not yet settled.
    settlement: int = 5_000

    @classmethod
    def from_env(cls) -> BacklogLimits:
        env = os.environ
        return cls(engine=int(env.get("EXCHANGE_MAX_ENGINE_BACKLOG", cls.engine)),
                   settlement=int(env.get("EXCHANGE_MAX_SETTLEMENT_BACKLOG", cls.settlement)))


@dataclass(frozen=True)
class ApiSettings:
    redis_url: str = DEFAULT_REDIS_URL
    # Bearer token of the operator endpoints; never accepted on trading routes.
    admin_token: str = ""
    # The WebSocket URL the web page connects to (the gateways serve another port).
    public_ws_url: str = "ws://127.0.0.1:8001/ws"
    # Local demo mode: the page may fund a fresh demo account (never in production).
    demo_faucet: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    # Default per-API-key limit of signed requests (token bucket in Redis).
    rate_per_s: float = 100.0
    burst: int = 200
    # Key that seals API secrets at rest; "" = read EXCHANGE_SECRETS_KEY.
    secrets_key: str = ""
    backlog: BacklogLimits = field(default_factory=BacklogLimits)

    @classmethod
    def from_env(cls) -> ApiSettings:
        env = os.environ
        return cls(
            redis_url=env.get(REDIS_URL_ENV, DEFAULT_REDIS_URL),
            admin_token=env.get("EXCHANGE_ADMIN_TOKEN") or secrets.token_urlsafe(24),
            public_ws_url=env.get("EXCHANGE_PUBLIC_WS_URL", cls.public_ws_url),
            demo_faucet=env.get("EXCHANGE_DEMO_FAUCET", "0") == "1",
            host=env.get("EXCHANGE_API_HOST", cls.host),
            port=int(env.get("EXCHANGE_API_PORT", cls.port)),
            rate_per_s=float(env.get("EXCHANGE_RATE_LIMIT_PER_S", cls.rate_per_s)),
            burst=int(env.get("EXCHANGE_RATE_LIMIT_BURST", cls.burst)),
            backlog=BacklogLimits.from_env(),
        )
