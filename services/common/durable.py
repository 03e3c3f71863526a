"""Writes acknowledged only once a replica has them (WAIT).

Replication is asynchronous: a master that dies can take writes it acknowledged with
it. WAIT makes the current connection wait until its writes reached N replicas, so the
write and its WAIT must go down one connection: a plain client to the master that owns
the key's slot (redis-py's cluster client gives no hold on connections), refreshed when
the slot moves.

A failover (the master killed, a replica promoted by the cluster) is ridden out, not
reported: the write is sent again, with backoff, until the slot's new master takes it or
a time budget runs out. Sending again must never write twice. The scripts sent here are
idempotent by design (a hold finds its own order record); a stream append is not, so
after an attempt that may have reached the server (the connection broke mid-way), the
entry is first looked for in the stream and only appended if it is not there.

Group commit: the first attempts of writes to one master made in the same pass of the
event loop go down in one pipeline under one WAIT, so concurrent orders share the
replication round trip; each keeps its own outcome (an error reply fails only its write)
and, if it must be sent again, is sent again alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.errors import ExchangeError
from services.common.redis_conn import AnyRedis, is_cluster

log = logging.getLogger("exchange.durable")

WAIT_TIMEOUT_MS = 200
WAIT_REPLICAS_ENV = "EXCHANGE_WAIT_REPLICAS"
# Longer than a failover of the local cluster (node timeout 2 s, then the election).
RETRY_BUDGET_S = 10.0
# Nothing was written: the node refused the command (MOVED and ASK are AskErrors) or the
# cluster is between two masters. Sending it again is always safe.
NOT_APPLIED = (AskError, ClusterDownError, TryAgainError, ReadOnlyError)


class ScriptsMissing(Exception):
    """A master did not know a script of the pipeline (now loaded): send it again."""


# The connection broke or timed out: the command may or may not have been applied; or
# a script was missing, so the rest of the pipeline may have been.
UNCERTAIN = (RedisConnectionError, RedisTimeoutError, OSError, ScriptsMissing)
# Connection settings of the main client that the writer's own connections keep.
_COPIED = ("username", "password", "credential_provider", "db", "client_name")
CLOCK_MARGIN_MS = 1_000  # between our clock and the server's, when finding an entry


class NotReplicated(ExchangeError):
    def __init__(self) -> None:
        super().__init__(
            "NOT_DURABLE", "the write did not reach a replica in time; its outcome is "
            "unknown: retry with the same client_order_id", 503)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _settle(future: asyncio.Future[list[Any]], outcome: list[Any] | BaseException) -> None:
    """Give a grouped write its outcome, unless its caller stopped waiting."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class DurableWriter:
    def __init__(self, redis: AnyRedis, replicas: int, timeout_ms: int = WAIT_TIMEOUT_MS,
                 retry_budget_s: float = RETRY_BUDGET_S) -> None:
        self.redis = redis
        self.replicas = replicas  # 0: acknowledge on the master alone (single node)
        self.timeout_ms = timeout_ms
        self.retry_budget_s = retry_budget_s
        self._masters: dict[tuple[str, int], Redis] = {}
        self._loaded: set[tuple[tuple[str, int], str]] = set()  # (master, script sha)
        # First attempts waiting for this loop pass's pipeline to their master.
        self._groups: dict[tuple[str, int],
                           list[tuple[Callable[[Pipeline], Any], asyncio.Future[list[Any]]]]] = {}
        self._sending: set[asyncio.Task[None]] = set()

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

    def _client_for(self, key: str) -> tuple[tuple[str, int], Redis]:
        """The master that owns `key`'s slot: its address and this writer's client."""
        if is_cluster(self.redis):
            node = self.redis.get_node_from_key(key)
            address, settings = (node.host, node.port), self.redis.nodes_manager.connection_kwargs
        else:
            settings = self.redis.connection_pool.connection_kwargs
            address = (settings.get("host", "localhost"), settings.get("port", 6379))
        client = self._masters.get(address)
        if client is None:
            # retry 0: the library must not send a write again on its own after a broken
            # connection; run() decides whether that is safe.
            client = self._masters[address] = Redis(
                host=address[0], port=address[1], retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=1.0, socket_timeout=1.0 + self.timeout_ms / 1000,
                **{k: v for k, v in settings.items() if k in _COPIED or k.startswith("ssl")})
        return address, client

    async def run(self, key: str, queue: Callable[[Pipeline], Any]) -> list[Any]:
        """Send what `queue` adds to a pipeline on `key`'s master, then WAIT; returns
        the results of the queued commands. NotReplicated if no replica confirmed.

        What `queue` adds must be idempotent scripts or commands and plain appends
        (`XADD key * field value ...`): a failed attempt is sent again until the budget
        runs out (then the last error is raised), and an append that may have landed is
        looked for instead of being repeated."""
        deadline = time.monotonic() + self.retry_budget_s
        delay = 0.05
        uncertain: tuple[int, int] | None = None  # (from, to) ms of attempts that may have landed
        while True:
            started = _now_ms()
            try:
                return await self._attempt(key, queue, uncertain)
            except (*NOT_APPLIED, *UNCERTAIN) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                if isinstance(exc, UNCERTAIN):
                    uncertain = (uncertain[0] if uncertain else started, _now_ms())
                log.warning("write on %s failed (%r); sending again in %.2f s", key, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            if is_cluster(self.redis):
                # The slot may have a new master (failover) or be moving (resharding).
                try:
                    await self.redis.nodes_manager.initialize()
                except (*UNCERTAIN, RedisClusterException) as exc:  # the next attempt waits
                    log.warning("slot map not refreshed: %r", exc)
            # The clients of other masters are left as they are: other requests use them,
            # and a broken connection is opened again when next used.

    async def _attempt(self, key: str, queue: Callable[[Pipeline], Any],
                       uncertain: tuple[int, int] | None) -> list[Any]:
        address, client = self._client_for(key)
        if uncertain is None:
            return await self._grouped(address, client, queue)
        pipe = client.pipeline(transaction=False)
        await queue(pipe)
        scripts = await self._load_scripts(address, client, pipe)
        landed: dict[int, bytes] = {}  # index in the pipeline -> id of the entry found
        if uncertain is not None:
            landed = await self._find_appends(client, pipe, *uncertain)
            pipe.command_stack = [c for i, c in enumerate(pipe.command_stack)
                                  if i not in landed]
        queued = len(pipe.command_stack) + len(landed)
        if self.replicas:
            # An entry found came to this master by replication from the one that took
            # it; WAIT covers what this connection writes (nothing, if all was found).
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
        try:
            results = list(await pipe.execute())
        except NoScriptError:
            self._loaded -= {(address, script.sha) for script in scripts}
            # Nothing of the script ran; an append beside it may have: as after a break.
            raise ScriptsMissing() from None
        if self.replicas and results.pop() < self.replicas:
            raise NotReplicated()
        sent = iter(results)
        return [landed[i] if i in landed else next(sent) for i in range(queued)]

    async def _load_scripts(self, address: tuple[str, int], client: Redis,
                            pipe: Pipeline) -> set[Any]:
        """redis-py asks SCRIPT EXISTS before every pipeline that runs a script: a round
        trip per write. Each master gets each script loaded once instead, and again if
        it answers NOSCRIPT (a promoted replica, a restarted node)."""
        scripts, pipe.scripts = pipe.scripts, set()
        for script in scripts:
            if (address, script.sha) not in self._loaded:
                await client.script_load(script.script)
                self._loaded.add((address, script.sha))
        return scripts

    async def _grouped(self, address: tuple[str, int], client: Redis,
                       queue: Callable[[Pipeline], Any]) -> list[Any]:
        """A write's first attempt, sent with every other first attempt for the same
        master from this pass of the event loop: one pipeline, one WAIT (group commit).
        Concurrent orders then share the replication round trip instead of each paying
        it. Any failure is each write's own to retry (run() sends it again alone)."""
        loop = asyncio.get_running_loop()
        group = self._groups.get(address)
        if group is None:
            group = self._groups[address] = []
            loop.call_soon(self._send_group, address, client)
        future: asyncio.Future[list[Any]] = loop.create_future()
        group.append((queue, future))
        return await future

    def _send_group(self, address: tuple[str, int], client: Redis) -> None:
        group = self._groups.pop(address)
        task = asyncio.create_task(self._send(address, client, group))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, address: tuple[str, int], client: Redis,
                    group: list[tuple[Callable[[Pipeline], Any], asyncio.Future[list[Any]]]]
                    ) -> None:
        pipe = client.pipeline(transaction=False)
        members: list[tuple[int, int, asyncio.Future[list[Any]]]] = []
        for queue, future in group:
            start = len(pipe.command_stack)
            try:
                await queue(pipe)
            except Exception as exc:  # its own fault: the others go on
                del pipe.command_stack[start:]
                _settle(future, exc)
                continue
            members.append((start, len(pipe.command_stack), future))
        if not members:
            return
        try:
            scripts = await self._load_scripts(address, client, pipe)
            if self.replicas:
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
            # Each write's errors are its own: an error reply fails that write alone.
            results = list(await pipe.execute(raise_on_error=False))
        except Exception as exc:  # the connection: every write's outcome is unknown
            for _, _, future in members:
                _settle(future, exc)
            return
        replicated = True
        if self.replicas:
            acked = results.pop()
            replicated = not isinstance(acked, Exception) and acked >= self.replicas
        for start, end, future in members:
            mine = results[start:end]
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if isinstance(error, NoScriptError):
                self._loaded -= {(address, script.sha) for script in scripts}
                _settle(future, ScriptsMissing())
            elif error is not None:
                _settle(future, error)
            elif not replicated:
                _settle(future, NotReplicated())
            else:
                _settle(future, mine)

    @staticmethod
    async def _find_appends(client: Redis, pipe: Pipeline, since_ms: int,
                            until_ms: int) -> dict[int, bytes]:
        """The plain appends of `pipe` whose entry an earlier attempt, between the two
        times, already added: {index in the pipeline: entry id}."""
        encoder = client.get_encoder()
        found: dict[int, bytes] = {}
        for index, (args, _) in enumerate(pipe.command_stack):
            if str(args[0]).upper() != "XADD" or args[2] not in ("*", b"*"):
                continue
            fields = [encoder.encode(part) for part in args[3:]]
            start = f"{since_ms - CLOCK_MARGIN_MS}-0"
            end = f"{until_ms + CLOCK_MARGIN_MS}-0"
            while entries := await client.xrange(args[1], start, end, count=500):
                match = next((entry_id for entry_id, entry in entries
                              if [x for kv in entry.items() for x in kv] == fields), None)
                if match is not None:
                    found[index] = match
                    break
                start = "(" + entries[-1][0].decode()
        return found

    async def aclose(self) -> None:
        for client in self._masters.values():
            await client.aclose()
