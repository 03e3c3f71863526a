"""Sharded pub/sub subscriptions to the pairs' market-data channels, one reader per node.

Why not redis-py's cluster pub/sub: with several nodes its `get_sharded_message` polls
them in turn and waits its full timeout on each idle one, and after a failover it raises
forever (redis-py 8.1). So this module keeps ONE plain `redis.asyncio.Redis` pub/sub
connection per master that owns a subscribed channel's slot (for a single-node Redis,
that one node) and ONE task reading it.

Contract with the owner of a channel (`ChannelHandler`):
- `subscribe(channel, handler)` returns once the server confirmed SSUBSCRIBE (or, if that
  failed, once a repair was scheduled); `handler.on_message(data)` then gets every
  message published on the channel, in order, from the reader task.
- pub/sub is at-most-once: whenever the subscription broke (connection error, failover,
  MOVED, slot migrated) messages may have been lost, so after it is restored on the
  channel's current master, `handler.on_resync()` is called: the owner must reload its
  state from a snapshot.
- if it cannot be restored within `max_attempts` tries (capped exponential backoff, never a
  busy loop), the channel is dropped and `handler.on_lost()` is called.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from redis.asyncio import Connection, ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import MovedError, RedisClusterException, RedisError

from services.common.redis_conn import AnyRedis

log = logging.getLogger("exchange.gateway.subscriber")

Address = tuple[str, int]
# What can go wrong talking to a node; anything else is a bug and propagates.
LINK_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
# Connection settings copied from the main client to the pub/sub connections.
_COPIED_KWARGS = ("username", "password", "credential_provider", "client_name", "db",
                  "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options")


class ChannelHandler(Protocol):
    """The owner of one subscribed channel. Called from the event loop, must not block."""

    def on_message(self, data: bytes) -> None: ...

    def on_resync(self) -> None: ...

    def on_lost(self) -> None: ...


class NodeLink:
    """One pub/sub connection to one node and the task that reads it."""

    def __init__(self, address: Address, pool: ConnectionPool, subscriber: ShardedSubscriber,
                 poll_s: float) -> None:
        self.address = address
        self.pool = pool
        self.pubsub = Redis(connection_pool=pool).pubsub()
        self.channels: set[str] = set()  # subscribed, or SSUBSCRIBE sent
        self.broken = False
        self._subscriber = subscriber
        self._poll_s = poll_s
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._leaving: set[str] = set()  # SUNSUBSCRIBE sent, confirmation not yet read
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self.pubsub.connect()  # the reader needs the connection before any SSUBSCRIBE
        self._reader = asyncio.create_task(self._read(), name=f"md-reader-{self.address}")

    async def ssubscribe(self, channel: str, timeout_s: float) -> None:
        """Subscribe and wait for the server's confirmation (read by the reader task)."""
        future = asyncio.get_running_loop().create_future()
        self._confirmations[channel] = future
        self.channels.add(channel)
        self._leaving.discard(channel)
        try:
            await self.pubsub.ssubscribe(channel)
            async with asyncio.timeout(timeout_s):
                await future
        finally:
            self._confirmations.pop(channel, None)

    async def sunsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        self._leaving.add(channel)
        await self.pubsub.sunsubscribe(channel)

    async def close(self) -> None:
        self.broken = True
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._fail_confirmations(ConnectionError(f"pub/sub link {self.address} closed"))
        try:
            await self.pubsub.aclose()
            await self.pool.disconnect()
        except LINK_ERRORS as exc:  # closing a dead connection: nothing left to do
            log.debug("closing pub/sub link %s: %r", self.address, exc)

    def _fail_confirmations(self, exc: BaseException) -> None:
        for future in self._confirmations.values():
            if not future.done():
                future.set_exception(exc)

    async def _read(self) -> None:
        # A bounded poll rather than blocking forever, so that redis-py's health-check
        # PING goes out on an idle connection and a dead peer is noticed.
        get_message, dispatch = self.pubsub.get_message, self._subscriber._dispatch
        try:
            while True:
                try:
                    message = await get_message(timeout=self._poll_s)
                except MovedError as exc:
                    # The reply to an SSUBSCRIBE sent to a node that no longer owns the
                    # slot: only that slot's channels are concerned, the link is fine.
                    moved = {c for c in self.channels if key_slot(c.encode()) == exc.slot_id}
                    log.info("%s: slot %d moved to %s:%s", self.address, exc.slot_id,
                             exc.host, exc.port)
                    self.channels -= moved
                    for channel in moved:
                        future = self._confirmations.get(channel)
                        if future is not None and not future.done():
                            future.set_exception(exc)
                    self._subscriber._needs_repair(moved, redirect=exc)
                    continue
                if message is None:
                    continue
                kind = message["type"]
                if kind == "smessage":
                    dispatch(message["channel"].decode(), message["data"])
                elif kind == "ssubscribe":
                    future = self._confirmations.get(message["channel"].decode())
                    if future is not None and not future.done():
                        future.set_result(None)
                elif kind == "sunsubscribe":
                    channel = message["channel"].decode()
                    if channel in self._leaving:
                        self._leaving.discard(channel)
                    elif channel in self.channels:
                        # Not asked for: the server moved the slot away (resharding).
                        log.warning("%s dropped %s", self.address, channel)
                        self.channels.discard(channel)
                        self._subscriber._needs_repair({channel}, refresh=True)
        except LINK_ERRORS as exc:
            # Connection lost or timed out (node down, failover, killed client): every
            # channel here must be placed again, perhaps on another master.
            log.warning("pub/sub link %s failed: %r", self.address, exc)
            self.broken = True
            self._fail_confirmations(exc)
            self._subscriber._needs_repair(self.channels, refresh=True)


class ShardedSubscriber:
    """Sharded subscriptions of one gateway process, on a RedisCluster or a single Redis.

    Reference counting is the owner's: it subscribes a pair's channel when the pair's
    first watcher arrives and unsubscribes it when the last one leaves.
    """

    def __init__(self, redis: AnyRedis, *, max_attempts: int = 30, backoff_s: float = 0.05,
                 max_backoff_s: float = 1.0, confirm_timeout_s: float = 5.0,
                 poll_s: float = 1.0, health_check_s: float = 5.0) -> None:
        self.redis = redis
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.confirm_timeout_s = confirm_timeout_s
        self.poll_s = poll_s
        self.health_check_s = health_check_s
        self._handlers: dict[str, ChannelHandler] = {}  # the wanted channels
        self._placed: dict[str, NodeLink] = {}  # channel -> link it is subscribed on
        self._links: dict[Address, NodeLink] = {}
        self._suspect: set[str] = set()  # subscription broke: place it again
        self._refresh = False  # reload the cluster's slot map before placing again
        self._redirects: list[MovedError] = []  # MOVED replies not yet applied to it
        self._unsynced: set[str] = set()  # placed again, owner not told to resync yet
        self._lock = asyncio.Lock()  # subscription changes and repairs run one at a time
        self._repair_task: asyncio.Task[None] | None = None
        self._repair_again = False
        self._closed = False

    @property
    def channels(self) -> list[str]:
        """The channels currently wanted."""
        return list(self._handlers)

    # ---- public API -----------------------------------------------------------------

    async def subscribe(self, channel: str, handler: ChannelHandler) -> None:
        """Deliver `channel`'s messages to `handler` (see the module contract)."""
        async with self._lock:
            self._handlers[channel] = handler
            try:
                await self._place(channel)
            except LINK_ERRORS as exc:
                log.warning("SSUBSCRIBE %s failed: %r; repairing", channel, exc)
                self._needs_repair({channel}, refresh=True)

    async def unsubscribe(self, channel: str, handler: ChannelHandler | None = None) -> None:
        """Stop delivering `channel`; SUNSUBSCRIBE it (no confirmation awaited). With
        `handler`, only if that handler still owns the channel: a new owner that
        subscribed in the meantime keeps it."""
        async with self._lock:
            if handler is not None and self._handlers.get(channel) is not handler:
                return
            self._handlers.pop(channel, None)
            self._suspect.discard(channel)
            self._unsynced.discard(channel)
            link = self._placed.pop(channel, None)
            if link is None or link.broken:
                return
            try:
                await link.sunsubscribe(channel)
            except LINK_ERRORS as exc:
                # The connection is dead, so the server dropped the subscription anyway.
                log.warning("SUNSUBSCRIBE %s failed: %r", channel, exc)
                link.broken = True
                self._needs_repair(link.channels, refresh=True)

    async def aclose(self) -> None:
        """Drop every subscription and connection."""
        self._closed = True
        if self._repair_task is not None:
            self._repair_task.cancel()
        async with self._lock:
            for link in self._links.values():
                await link.close()
            self._links.clear()
            self._placed.clear()
            self._handlers.clear()

    # ---- called from the links' reader tasks ------------------------------------------

    def _dispatch(self, channel: str, data: bytes) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return  # arrived between our SUNSUBSCRIBE and its confirmation
        try:
            handler.on_message(data)
        except Exception:  # one broken pair must not stop the node's other pairs
            log.exception("handler of %s failed; resyncing it", channel)
            handler.on_resync()

    def _needs_repair(self, channels: Iterable[str], *, refresh: bool = False,
                      redirect: MovedError | None = None) -> None:
        """Schedule a repair of `channels`; `refresh`: reload the slot map first;
        `redirect`: a MOVED reply naming the slot's new master."""
        self._suspect.update(channels)
        self._refresh = self._refresh or refresh
        if redirect is not None:
            self._redirects.append(redirect)
        if self._closed:
            return
        if self._repair_task is None or self._repair_task.done():
            self._repair_task = asyncio.create_task(self._repair(), name="md-repair")
        else:
            self._repair_again = True

    # ---- placement and repair ---------------------------------------------------------

    def _owner(self, channel: str) -> Address:
        """The address of the master owning `channel`'s slot (the node, if not a cluster)."""
        if isinstance(self.redis, RedisCluster):
            node = self.redis.get_node_from_key(channel)
            return node.host, int(node.port)
        kwargs = self.redis.connection_pool.connection_kwargs
        return kwargs.get("host", "localhost"), int(kwargs.get("port", 6379))

    def _pool(self, address: Address) -> ConnectionPool:
        if isinstance(self.redis, RedisCluster):
            base = self.redis.nodes_manager.connection_kwargs
            connection_class = base.get("connection_class", Connection)
        else:
            base = self.redis.connection_pool.connection_kwargs
            connection_class = self.redis.connection_pool.connection_class
        kwargs: dict[str, Any] = {k: base[k] for k in _COPIED_KWARGS if k in base}
        kwargs.update((k, v) for k, v in base.items() if k.startswith("ssl"))
        # No silent reconnects (retry 0): a dropped connection loses messages, so the
        # reader must see the error and have the channels' owners resync.
        return ConnectionPool(connection_class=connection_class, host=address[0],
                              port=address[1], retry=Retry(NoBackoff(), 0),
                              health_check_interval=self.health_check_s,
                              socket_timeout=self.confirm_timeout_s, **kwargs)

    async def _link(self, address: Address) -> NodeLink:
        link = self._links.get(address)
        if link is not None and not link.broken:
            return link
        if link is not None:
            await link.close()
        link = NodeLink(address, self._pool(address), self, self.poll_s)
        try:
            await link.open()
        except BaseException:
            await link.close()
            self._links.pop(address, None)
            raise
        self._links[address] = link
        return link

    async def _place(self, channel: str) -> None:
        link = await self._link(self._owner(channel))
        self._placed[channel] = link
        await link.ssubscribe(channel, self.confirm_timeout_s)

    async def _repair(self) -> None:
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            async with self._lock:
                self._repair_again = False
                try:
                    await self._repair_once()
                except LINK_ERRORS as exc:
                    log.warning("pub/sub repair attempt %d/%d failed: %r",
                                attempt, self.max_attempts, exc)
                    # The slot map just read may predate a failover that is still under
                    # way (a dead master still listed): read it again next time.
                    self._refresh = True
                else:
                    resync, self._unsynced = self._unsynced, set()
                    for channel in resync:
                        handler = self._handlers.get(channel)
                        if handler is not None:
                            handler.on_resync()
                    if not self._repair_again:
                        return
                    delay = self.backoff_s
                    continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)
        await self._give_up()

    async def _repair_once(self) -> None:
        """Put every wanted channel on its current master, resubscribing the suspect ones
        even if their owner did not change. Progress is kept across failed attempts."""
        for address, link in list(self._links.items()):
            if link.broken:
                await link.close()
                del self._links[address]
        if isinstance(self.redis, RedisCluster):
            if self._refresh:  # a failover or resharding may have moved slots
                await self.redis.nodes_manager.initialize()
                self._refresh = False
            # A MOVED reply is first-hand news, while the slot map came from any one node
            # and may lag behind it: apply MOVED on top.
            redirects, self._redirects = self._redirects, []
            for redirect in redirects:
                await self.redis.nodes_manager.move_slot(redirect)
        for channel in list(self._handlers):
            address = self._owner(channel)
            link = self._placed.get(channel)
            if (channel not in self._suspect and link is not None and not link.broken
                    and link.address == address):
                continue
            if link is not None and not link.broken and link.address != address:
                self._suspect.add(channel)  # it may have missed messages while moving
                await link.sunsubscribe(channel)  # that node no longer owns the slot
            self._placed.pop(channel, None)
            await self._place(channel)
            if channel in self._suspect:
                self._suspect.discard(channel)
                self._unsynced.add(channel)
        self._suspect &= set(self._handlers)
        for address, link in list(self._links.items()):
            if not link.channels:  # e.g. a former master
                await link.close()
                del self._links[address]

    async def _give_up(self) -> None:
        async with self._lock:
            lost = [c for c in self._handlers if c in self._suspect or c not in self._placed]
            log.error("pub/sub repair gave up after %d attempts; dropping %s",
                      self.max_attempts, lost)
            handlers = [self._handlers.pop(c) for c in lost]
            for channel in lost:
                link = self._placed.pop(channel, None)
                if link is not None:
                    link.channels.discard(channel)  # a later message there is just ignored
            self._suspect.clear()
            resync = [self._handlers[c] for c in self._unsynced if c in self._handlers]
            self._unsynced.clear()
        for handler in handlers:
            handler.on_lost()
        for handler in resync:  # placed again by an attempt that then failed elsewhere
            handler.on_resync()
