"""One writer per pair: a lease with a fencing token, taken by whichever engine process
of the pair gets it first; the others wait as standbys and take over when it lapses."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from importlib import resources

from redis.exceptions import RedisError

from services.common.keys import PairKeys
from services.common.redis_conn import AnyRedis

log = logging.getLogger("exchange.engine.lease")

_LEASE_LUA = resources.files("services.engine").joinpath("lease.lua").read_text()
DEFAULT_TTL_MS = 3_000


def holder_id() -> str:
    """This process, as an operator would find it: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    def __init__(self, redis: AnyRedis, pair_keys: PairKeys, holder: str | None = None,
                 ttl_ms: int = DEFAULT_TTL_MS) -> None:
        self.redis = redis
        self.key = pair_keys.lease
        self.holder = holder or holder_id()
        self.ttl_ms = ttl_ms
        self.token = 0
        self._script = redis.register_script(_LEASE_LUA)

    async def try_acquire(self) -> bool:
        self.token = int(await self._script(keys=[self.key],
                                            args=[self.holder, self.ttl_ms, "acquire", 0]))
        return self.token > 0

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait (as a standby) until the lease is ours; False if `stop` came first."""
        waited = False
        while not stop.is_set():
            try:
                if await self.try_acquire():
                    log.info("%s: leader with fencing token %d", self.key, self.token)
                    return True
            except (RedisError, OSError) as exc:
                # The pair's master is down or failing over: a standby waits it out like
                # any other wait for the lease, and never dies of it.
                log.warning("%s: lease not readable (%s); still waiting", self.key, exc)
            if not waited:
                log.info("%s: standby, waiting for the lease", self.key)
                waited = True
            try:
                await asyncio.wait_for(stop.wait(), self.ttl_ms / 6000)
            except TimeoutError:
                pass
        return False

    async def release(self) -> None:
        """Give the lease up (clean stop), so a standby need not wait for it to lapse."""
        await self._script(keys=[self.key], args=[self.holder, self.ttl_ms, "release",
                                                  self.token])

    async def renew(self) -> bool:
        renewed = await self._script(keys=[self.key],
                                     args=[self.holder, self.ttl_ms, "renew", self.token])
        return int(renewed) == self.token
