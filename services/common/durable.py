"""Writes acknowledged only once a replica has them (WAIT).

Replication is asynchronous: a master that dies can take writes it acknowledged with
it. WAIT makes the current connection wait until its writes reached N replicas, so the
write and its WAIT must go down one connection: a plain client to the master that owns
the key's slot (redis-py's cluster client gives no hold on connections), refreshed when
the slot moves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError

from services.common.errors import ExchangeError
from services.common.redis_conn import AnyRedis, is_cluster

WAIT_TIMEOUT_MS = 200
WAIT_REPLICAS_ENV = "EXCHANGE_WAIT_REPLICAS"


class NotReplicated(ExchangeError):
    def __init__(self) -> None:
        super().__init__(
            "NOT_DURABLE", "the write did not reach a replica in time; its outcome is "
            "unknown: retry with the same client_order_id", 503)


class DurableWriter:
    def __init__(self, redis: AnyRedis, replicas: int, timeout_ms: int = WAIT_TIMEOUT_MS):
        self.redis = redis
        self.replicas = replicas  # 0: acknowledge on the master alone (single node)
        self.timeout_ms = timeout_ms
        self._masters: dict[tuple[str, int], Redis] = {}

    @classmethod
    async def for_deployment(cls, redis: AnyRedis) -> DurableWriter:
        """$EXCHANGE_WAIT_REPLICAS, else one replica on a cluster (which must have them)
        and, on a single node, one if it has a replica attached now."""
        configured = os.environ.get(WAIT_REPLICAS_ENV)
        if configured is not None:
            return cls(redis, int(configured))
        if is_cluster(redis):
            # Not inferred from the slot map: right after start a node may not list the
            # replicas yet, and a writer that quietly stopped waiting would lose the
            # guarantee without anyone noticing.
            return cls(redis, 1)
        info = await redis.info("replication")
        return cls(redis, 1 if int(info.get("connected_slaves", 0)) > 0 else 0)

    def _client_for(self, key: str) -> Redis | AnyRedis:
        if not is_cluster(self.redis):
            return self.redis
        node = self.redis.get_node_from_key(key)
        client = self._masters.get((node.host, node.port))
        if client is None:
            client = self._masters[(node.host, node.port)] = Redis(host=node.host,
                                                                   port=node.port)
        return client

    async def run(self, key: str, queue: Callable[[Pipeline], Any]) -> list[Any]:
        """Send what `queue` adds to a pipeline on `key`'s master, then WAIT; returns
        the results of the queued commands. NotReplicated if no replica confirmed."""
        for attempt in (1, 2):
            client = self._client_for(key)
            pipe = client.pipeline(transaction=False)
            await queue(pipe)
            if self.replicas:
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
            try:
                results = await pipe.execute()
            except (MovedError, RedisConnectionError):
                if attempt == 2 or not is_cluster(self.redis):
                    raise
                # The slot moved (failover): learn the new master and send once more.
                # A repeat is harmless: the engine ignores an order id it has seen.
                await self.redis.nodes_manager.initialize()
                self._masters.clear()
                continue
            if self.replicas and results[-1] < self.replicas:
                raise NotReplicated()
            return results[:-1] if self.replicas else results
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for client in self._masters.values():
            await client.aclose()
