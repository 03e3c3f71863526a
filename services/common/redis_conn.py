"""Redis connections that work the same on a Redis Cluster and on a single node."""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from services.common.metrics import REDIS_ERRORS

AnyRedis = Redis | RedisCluster

REDIS_URL_ENV = "REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:7000"
# Longer than a failover of the local cluster: its node timeout (2 s), then the election.
FAILOVER_BUDGET_S = 10.0
# The cluster refused the command without running it (between two masters, a slot in
# transit, a slot map with a hole): sending it again is always right.
NOT_RUN = (ClusterDownError, TryAgainError, SlotNotCoveredError)
# redis-py's messages when the nodes' slot maps are unreachable, partial or disagree
# (a bare RedisClusterException, which is not a RedisError).
_SLOT_MAP_TROUBLE = ("cannot be connected", "not covered", "could not agree")


class FailoverTolerantCluster(RedisCluster):
    """A RedisCluster that waits out a master's failover instead of failing each command
    that meets it, and that never runs a write twice.

    redis-py (8.1, asyncio) sends a command again at once, without backoff, after any
    connection error: its retries are spent in milliseconds while a failover takes
    seconds, and a write whose reply was lost runs twice (an XREADGROUP then leaves the
    entries it delivered pending and unseen; a deposit is credited twice). Here a write
    is sent once by the library, and again, with backoff for up to `failover_budget_s`,
    only if it certainly did not run: the cluster refused it, or the connection failed
    before it went out. A read is sent again after any connection error. Otherwise the
    error goes to the caller, whose code knows how to make sure (a stream reader re-reads
    its pending entries, the engine's commit checks the slot).
    """

    failover_budget_s: float = FAILOVER_BUDGET_S

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        targets = kwargs.get("target_nodes")
        if targets is not None and not isinstance(targets, str):
            # Addressed to given nodes (not a flag like "primaries"): their failure is the
            # answer.
            return await super().execute_command(*args, **kwargs)
        command = str(args[0])
        once = targets is None and command not in self.command_flags and not self._reads_only(
            command)
        deadline = time.monotonic() + self.failover_budget_s
        delay = 0.05
        while True:
            try:
                if once:
                    return await self._send_once(*args, **kwargs)
                return await super().execute_command(*args, **kwargs)
            except (RedisError, RedisClusterException, AttributeError, TypeError,
                    RuntimeError, OSError) as exc:
                error, again = self._classify(exc, command)
                if error is None:
                    raise
                REDIS_ERRORS.labels(type(error).__name__).inc()
                if not again or time.monotonic() + delay > deadline:
                    if error is exc:
                        raise
                    raise error from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _send_once(self, *args: Any, **kwargs: Any) -> Any:
        """Send a keyed command to its slot's master with no retry by redis-py (which
        makes none for a command addressed to a node); MOVED and ASK are still followed."""
        if self._initialize:
            await self.initialize()
        node = self.nodes_manager.get_node_from_slot(await self._determine_slot(*args))
        return await super().execute_command(*args, target_nodes=node, **kwargs)

    def _classify(self, exc: BaseException, command: str) -> tuple[Exception | None, bool]:
        """(the error to raise, whether sending the command again is safe); (None, False)
        for an error that is not about reaching the cluster, raised as it is."""
        if isinstance(exc, NOT_RUN):
            return exc, True
        if isinstance(exc, RedisClusterException):
            if not any(trouble in str(exc) for trouble in _SLOT_MAP_TROUBLE):
                return None, False
            return ClusterDownError(str(exc)), True
        link_error: Exception
        if isinstance(exc, ConnectionError | TimeoutError):  # redis-py's, RedisErrors
            link_error = exc
        elif isinstance(exc, OSError) or (
                isinstance(exc, AttributeError | TypeError | RuntimeError)
                and _in_connection(exc)):
            # redis-py 8.1 lets a connection closed under a command (by the peer, or by
            # another task's reset of the client) surface as one of these instead of a
            # ConnectionError (redis/redis-py#3546, #4287).
            link_error = ConnectionError(f"connection failed under the command: {exc!r}")
        else:
            return None, False
        return link_error, _before_sending(exc) or self._reads_only(command)

    def _reads_only(self, command: str) -> bool:
        spec = self.commands_parser.commands.get(command.lower().split(" ", 1)[0])
        return isinstance(spec, dict) and "readonly" in spec.get("flags", ())

    async def _determine_slot(self, command: str, *args: Any) -> int:
        """A stream read's slot from its own arguments. redis-py asks a node (COMMAND
        GETKEYS) on every XREAD/XREADGROUP, whose keys it cannot locate itself: a round
        trip per read, and a failed read whenever that node is the one that is down."""
        if str(command).upper() in ("XREAD", "XREADGROUP"):
            upper = [(a.decode(errors="replace") if isinstance(a, bytes) else str(a)).upper()
                     for a in args]
            if "STREAMS" in upper:
                streams = args[upper.index("STREAMS") + 1:]
                slots = {self.keyslot(key) for key in streams[:len(streams) // 2]}
                if len(slots) == 1:
                    return slots.pop()
        return await super()._determine_slot(command, *args)


def _frames(exc: BaseException) -> list[str]:
    return [frame.f_code.co_name for frame, _ in traceback.walk_tb(exc.__traceback__)]


def _in_connection(exc: BaseException) -> bool:
    """Raised inside redis-py's connection layer (writing, reading or connecting)."""
    return any(name in ("send_packed_command", "_send_packed_command", "read_response",
                        "connect_check_health") for name in _frames(exc))


def _before_sending(exc: BaseException) -> bool:
    """Raised while opening the connection, before the command was written."""
    return "connect_check_health" in _frames(exc)


async def connect(url: str, *, decode_responses: bool = False) -> AnyRedis:
    """A client for `url`: a RedisCluster if that node has cluster mode on, else a Redis.

    Callers use only commands whose keys share one hash tag, so the same code runs on
    both (DESIGN §3).
    """
    probe = Redis.from_url(url)
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    if info.get("cluster_enabled"):
        cluster = FailoverTolerantCluster.from_url(url, decode_responses=decode_responses)
        await cluster.initialize()
        return cluster
    return Redis.from_url(url, decode_responses=decode_responses)


def is_cluster(client: AnyRedis) -> bool:
    return isinstance(client, RedisCluster)
