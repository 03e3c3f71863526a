"""One watched pair inside a gateway: its synced book, its watchers, its fan-out.

Sync protocol (DESIGN §6): SSUBSCRIBE `{PAIR}:md` first and buffer what arrives, then
read the book cache (`read_book`: levels + seq in one MULTI), drop buffered updates with
seq <= the snapshot's, apply the rest requiring prev_seq continuity. Live, every update
must continue the previous one; on a gap, an epoch change or a broken subscription the
same sync runs again and every book watcher of the pair gets a fresh snapshot.

Fan-out: each update is decoded once; per depth with watchers, one delta frame is
encoded once (only if that depth's top N changed) and the same bytes queued to every
watcher of that depth; likewise one trades frame for all trade watchers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec

from services.common.book_cache import read_book
from services.common.keys import PairKeys
from services.common.messages import MarketDataUpdate, md_decoder
from services.common.pairs import Pair
from services.common.redis_conn import AnyRedis
from services.gateway import frames
from services.gateway.book_view import BookView, DepthStream
from services.gateway.client import Client
from services.gateway.subscriber import LINK_ERRORS, ShardedSubscriber

log = logging.getLogger("exchange.gateway.feed")

MAX_BUFFERED = 100_000  # updates kept while a snapshot is read; beyond, read another one
SYNC_BACKOFF_S = 0.05
SYNC_MAX_BACKOFF_S = 2.0


class BookWatch:
    """A client's subscription to a pair's book at one depth."""

    __slots__ = ("feed", "depth", "synced")

    def __init__(self, feed: PairFeed, depth: int) -> None:
        self.feed = feed
        self.depth = depth
        self.synced = False  # its snapshot was queued; deltas follow it

    def position(self) -> int | None:
        if not self.synced:
            return None
        return self.feed.streams[self.depth].last_seq


class TradesWatch:
    """A client's subscription to a pair's trades."""

    __slots__ = ("feed",)

    def __init__(self, feed: PairFeed) -> None:
        self.feed = feed

    def position(self) -> int | None:
        return None


class PairFeed:
    """The gateway's live copy of one pair and the clients watching it.

    Implements `subscriber.ChannelHandler` for the pair's market-data channel.
    """

    def __init__(self, pair: Pair, redis: AnyRedis, subscriber: ShardedSubscriber,
                 on_lost: Callable[[PairFeed], None]) -> None:
        self.pair = pair
        self.keys = PairKeys(pair.symbol)
        self.wire = frames.PairWire(pair)
        self.redis = redis
        self.subscriber = subscriber
        self.view = BookView()
        self.live = False  # the view is synced and updates are applied as they come
        self.streams: dict[int, DepthStream] = {}
        self.book_watchers: dict[int, dict[Client, BookWatch]] = {}
        self.trade_watchers: set[Client] = set()
        self._on_lost = on_lost
        self._snapshots: dict[int, bytes] = {}  # depth -> snapshot frame at its last_seq
        self._buffer: list[MarketDataUpdate] = []
        self._overflowed = False
        self._resync_wanted = False
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    @property
    def symbol(self) -> str:
        return self.pair.symbol

    @property
    def idle(self) -> bool:
        """No watcher left: the owner stops the feed."""
        return not self.book_watchers and not self.trade_watchers

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe and sync in the background; watchers get snapshots once synced."""
        self._task = asyncio.create_task(self._start(), name=f"feed-{self.symbol}")
        self._task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        """Stop syncing and drop the Redis subscription."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.live = False
        await self.subscriber.unsubscribe(self.keys.md)

    async def _start(self) -> None:
        await self.subscriber.subscribe(self.keys.md, self)
        await self._sync()

    # ---- watchers -----------------------------------------------------------------------

    def watch_book(self, client: Client, depth: int) -> BookWatch:
        """Add a book watcher; it gets a snapshot now if synced, else once synced."""
        watch = BookWatch(self, depth)
        watchers = self.book_watchers.get(depth)
        if watchers is None:
            watchers = self.book_watchers[depth] = {}
            stream = self.streams[depth] = DepthStream(depth)
            if self.live:
                stream.reset(self.view)
        watchers[client] = watch
        if self.live:
            self._send_snapshot(client, watch)
        return watch

    def watch_trades(self, client: Client) -> TradesWatch:
        self.trade_watchers.add(client)
        return TradesWatch(self)

    def unwatch(self, client: Client, watch: BookWatch | TradesWatch) -> None:
        """Remove one watcher; nothing is sent to it for this watch afterwards."""
        if isinstance(watch, TradesWatch):
            self.trade_watchers.discard(client)
            return
        watchers = self.book_watchers.get(watch.depth)
        if watchers is None or watchers.get(client) is not watch:
            return
        del watchers[client]
        if not watchers:
            del self.book_watchers[watch.depth], self.streams[watch.depth]
            self._snapshots.pop(watch.depth, None)

    def clients(self) -> set[Client]:
        """Every client watching this pair."""
        found = set(self.trade_watchers)
        for watchers in self.book_watchers.values():
            found.update(watchers)
        return found

    # ---- ChannelHandler -----------------------------------------------------------------

    def on_message(self, data: bytes) -> None:
        """One published update of the pair, from the subscriber's reader task."""
        if self._stopped:
            return
        try:
            update = md_decoder.decode(data)
        except msgspec.DecodeError as exc:  # not the engine's: its state is unknowable
            log.error("%s: undecodable market data (%s); resyncing", self.symbol, exc)
            self._begin_sync()
            return
        if update.trades and self.trade_watchers:
            # Trades need no book continuity: forward them as they come, even mid-sync.
            frame = frames.trades(self.wire, update.seq, update.trades)
            for client in self.trade_watchers:
                client.send(frame)
        if not self.live:
            if len(self._buffer) < MAX_BUFFERED:
                self._buffer.append(update)
            else:
                self._overflowed = True
            return
        seq = self.view.seq
        if not self.view.apply(update):
            log.info("%s: gap (have seq %d epoch %s, got %d after %d epoch %s); resyncing",
                     self.symbol, seq, self.view.epoch, update.seq, update.prev_seq,
                     update.epoch)
            self._begin_sync()
            self._buffer.append(update)
            return
        if self.view.seq != seq:
            self._publish(update)

    def on_resync(self) -> None:
        """Updates may have been lost (the subscription broke): sync again."""
        self._begin_sync()

    def on_lost(self) -> None:
        """The subscription cannot be restored: the owner tells the watchers."""
        self._stopped = True
        self.live = False
        if self._task is not None:
            self._task.cancel()
        self._on_lost(self)

    # ---- sync ---------------------------------------------------------------------------

    def _begin_sync(self) -> None:
        if self._stopped:
            return
        self.live = False
        self._buffer.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._sync(), name=f"feed-sync-{self.symbol}")
            self._task.add_done_callback(_log_failure)
        else:
            self._resync_wanted = True  # the running sync reads another snapshot

    async def _sync(self) -> None:
        delay = SYNC_BACKOFF_S
        attempt = 0
        while True:
            if attempt:
                await asyncio.sleep(delay)
                delay = min(delay * 2, SYNC_MAX_BACKOFF_S)
            attempt += 1
            self._resync_wanted = self._overflowed = False
            try:
                snapshot = await read_book(self.redis, self.keys)
            except LINK_ERRORS as exc:
                log.warning("%s: reading the book failed: %r", self.symbol, exc)
                continue
            self.view.load(snapshot, int(time.time() * 1000))
            buffered, self._buffer = self._buffer, []
            if self._resync_wanted or self._overflowed:
                continue
            if all(self.view.apply(update) for update in buffered):
                break
            log.info("%s: buffered updates do not continue snapshot seq %d; again",
                     self.symbol, snapshot.seq)
        # No await from here on: no update can slip in between the sync and going live.
        self.live = True
        self._snapshots.clear()
        for depth, stream in self.streams.items():
            stream.reset(self.view)
            for client, watch in self.book_watchers[depth].items():
                self._send_snapshot(client, watch)
        log.info("%s: synced at seq %d epoch %s", self.symbol, self.view.seq, self.view.epoch)

    # ---- fan-out ------------------------------------------------------------------------

    def _publish(self, update: MarketDataUpdate) -> None:
        view = self.view
        for depth, stream in self.streams.items():
            delta = stream.advance(view, update)
            if delta is None:
                continue
            self._snapshots.pop(depth, None)
            frame = frames.book_delta(self.wire, depth, view.epoch, view.ts, delta)
            for client in self.book_watchers[depth]:
                client.send(frame)

    def _send_snapshot(self, client: Client, watch: BookWatch) -> None:
        depth = watch.depth
        frame = self._snapshots.get(depth)
        if frame is None:
            # The stream's top N is unchanged since its last message, so the snapshot is
            # that state at last_seq and the next delta continues it.
            stream = self.streams[depth]
            bids, asks = stream.top(self.view)
            frame = self._snapshots[depth] = frames.book_snapshot(
                self.wire, depth, self.view.epoch, stream.last_seq, self.view.ts, bids, asks)
        client.send(frame)
        watch.synced = True


def _log_failure(task: asyncio.Task[None]) -> None:
    """A sync task must never die unnoticed: that pair would silently stop updating."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=exc)
