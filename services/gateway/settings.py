"""The gateway's settings, from environment variables with documented defaults.

| variable                | default                  | meaning                               |
|-------------------------|--------------------------|---------------------------------------|
| EXCHANGE_WS_HOST        | 127.0.0.1                | address to listen on                  |
| EXCHANGE_WS_PORT        | 8001                     | port to listen on                     |
| EXCHANGE_WS_REUSE_PORT  | 0                        | 1: SO_REUSEPORT, replicas share a port|
| REDIS_URL               | redis://127.0.0.1:7000   | any node of the cluster, or one Redis |
| EXCHANGE_PAIRS_FILE     | (packaged default pairs) | the pairs served                      |
| EXCHANGE_WS_MAX_CONNECTIONS | 10000                | connections per gateway process; more |
|                         |                          | are refused with HTTP 503             |
| EXCHANGE_SECRETS_KEY    | (none)                   | opens the API secrets (as the API     |
|                         |                          | does) to verify `login`; without it,  |
|                         |                          | logins get LOGIN_UNAVAILABLE          |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.pairs import PAIRS_FILE_ENV
from services.common.redis_conn import DEFAULT_REDIS_URL, REDIS_URL_ENV

HOST_ENV = "EXCHANGE_WS_HOST"
PORT_ENV = "EXCHANGE_WS_PORT"
REUSE_PORT_ENV = "EXCHANGE_WS_REUSE_PORT"
MAX_CONNECTIONS_ENV = "EXCHANGE_WS_MAX_CONNECTIONS"


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8001  # 0: any free port (see Gateway.port)
    redis_url: str = DEFAULT_REDIS_URL
    reuse_port: bool = False  # several gateway processes on one port (SO_REUSEPORT)
    pairs_file: str | None = None  # None: $EXCHANGE_PAIRS_FILE, else the packaged pairs
    max_connections: int = 10_000  # per process (a capacity setting); more get HTTP 503
    # Key that seals API secrets at rest (secrets_box); "" = read EXCHANGE_SECRETS_KEY.
    secrets_key: str = ""
    # Limits (API.md), not from the environment: they are part of the public contract.
    max_frame_bytes: int = 64 * 1024  # bigger client frames close the connection (1009)
    conflate_bytes: int = 256 * 1024  # send queue past which book deltas are conflated
    max_pending_bytes: int = 1 << 20  # send queue per connection, then 4008
    max_subscriptions: int = 200  # per connection
    frames_per_s: float = 10.0  # client frames: a token bucket; over it, RATE_LIMITED
    frames_burst: int = 20
    max_excess_frames: int = 50  # refused frames (one forgiven per second), then 4029
    # A connection holding no subscription this long after it opened is closed (4001).
    subscribe_timeout_s: float = 5.0
    heartbeat_s: float = 1.0
    shutdown_grace_s: float = 2.0  # time given to clients to read the reconnect notice

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> GatewaySettings:
        """Settings from the environment variables above, defaults where unset."""
        return cls(
            host=env.get(HOST_ENV, cls.host),
            port=int(env.get(PORT_ENV, cls.port)),
            redis_url=env.get(REDIS_URL_ENV, DEFAULT_REDIS_URL),
            reuse_port=env.get(REUSE_PORT_ENV, "0").lower() in ("1", "true", "yes"),
            pairs_file=env.get(PAIRS_FILE_ENV) or None,
            max_connections=int(env.get(MAX_CONNECTIONS_ENV, cls.max_connections)),
        )
