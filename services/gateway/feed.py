"""One watched pair inside a gateway: its synced book, its watchers, its fan-out.

Sync protocol (DESIGN §6): SSUBSCRIBE `{PAIR}:md` first and buffer what arrives, then
read the book cache (`read_book`: levels + seq in one MULTI), drop buffered updates with
seq <= the snapshot's, apply the rest requiring prev_seq continuity. Live, every update
must continue the previous one; on a gap, an epoch change or a broken subscription the
same sync runs again and every book watcher of the pair gets a fresh snapshot.

Fan-out: each update is decoded once; per depth with watchers, one delta frame is
encoded once (only if that depth's top N changed) and the same bytes queued to every
watcher of that depth (a congested watcher conflates instead: see BookWatch); likewise
one trades frame for all trade watchers, one candle frame per interval (bar_channels).

Candles and ticker need no seq continuity (bar states are absolute and ordered, see
bars.py): they take every update as it comes, and are (re)seeded from Redis once the
subscription is up, when their first watcher arrives and whenever updates may have been
lost (the same events that resync the book).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec

from services.common.book_cache import CHECKSUM_LEVELS, read_book
from services.common.keys import PairKeys
from services.common.messages import CandleTick, MarketDataUpdate, md_decoder
from services.common.metrics import WS_DELIVERY_LATENCY, WS_RESYNCS
from services.common.pairs import Pair
from services.common.redis_conn import AnyRedis
from services.common.tracing import exporting, record_gateway_write, setup_tracing
from services.gateway import frames
from services.gateway.bar_channels import CandleChannel, TickerChannel, now_ms
from services.gateway.bars import parse_bar, window_start
from services.gateway.book_view import BookView, DepthDelta, DepthStream, TopN
from services.gateway.client import Client
from services.gateway.subscriber import LINK_ERRORS, ShardedSubscriber

log = logging.getLogger("exchange.gateway.feed")

MAX_BUFFERED = 100_000  # updates kept while a snapshot is read; beyond, read another one
SYNC_BACKOFF_S = 0.05
SYNC_MAX_BACKOFF_S = 2.0


class BookWatch:
    """A client's subscription to a pair's book at one depth.

    Conflation: a delta queued while the client is congested makes the watch `held`: it
    keeps a copy of the levels the client will then hold (`base`, at `sent_seq`) and
    queues no more deltas. When the client's queue drains, `flush` queues ONE delta from
    `base` to the stream's current top N, `prev_seq` = `sent_seq`, so the client's seq
    chain and checksums stay valid however many updates it skipped.
    """

    __slots__ = ("feed", "client", "depth", "synced", "sent_seq", "base")

    def __init__(self, feed: PairFeed, client: Client, depth: int) -> None:
        self.feed = feed
        self.client = client
        self.depth = depth
        self.synced = False  # its snapshot was queued; deltas follow it
        self.sent_seq = 0  # seq of the last book frame queued to the client
        self.base: TopN | None = None  # held: the levels the client holds at sent_seq

    def position(self) -> int | None:
        return self.sent_seq if self.synced else None

    def snapshot(self, frame: bytes, seq: int) -> None:
        """Queue a snapshot: it replaces whatever was held."""
        self.client.send(frame)
        self.synced = True
        self.sent_seq = seq
        self.release()

    def deliver(self, frame: bytes, seq: int) -> None:
        """Queue a delta of the stream, or skip it while held."""
        if self.base is not None:
            return
        client = self.client
        client.send(frame)
        self.sent_seq = seq
        if client.congested:
            self.base = self.feed.streams[self.depth].sent()
            client.held.add(self)

    def flush(self) -> bool:
        """Client.Held: queue one delta for what was skipped (False: resyncing, later)."""
        feed, base = self.feed, self.base
        stream = feed.streams.get(self.depth)
        if base is None or stream is None:
            return True
        if not feed.live:
            return False  # the view is mid-resync; a snapshot will replace all this
        self.base = None
        if stream.last_seq == self.sent_seq:
            return True
        view = feed.view
        bids, asks = stream.changes_since(base)
        k = min(CHECKSUM_LEVELS, self.depth)
        delta = DepthDelta(stream.last_seq, self.sent_seq, bids, asks,
                           view.top("bids", k), view.top("asks", k))
        self.client.send(frames.book_delta(feed.wire, self.depth, view.epoch, view.ts, delta))
        self.sent_seq = stream.last_seq
        return True

    def release(self) -> None:
        self.base = None
        self.client.held.discard(self)


class TradesWatch:
    """A client's subscription to a pair's trades."""

    __slots__ = ("feed",)

    def __init__(self, feed: PairFeed) -> None:
        self.feed = feed

    def position(self) -> int | None:
        return None


class CandlesWatch:
    """A client's subscription to one interval of a pair's candles."""

    __slots__ = ("feed", "interval")

    def __init__(self, feed: PairFeed, interval: str) -> None:
        self.feed = feed
        self.interval = interval

    def position(self) -> int | None:
        return None


class TickerWatch:
    """A client's subscription to a pair's ticker."""

    __slots__ = ("feed",)

    def __init__(self, feed: PairFeed) -> None:
        self.feed = feed

    def position(self) -> int | None:
        return None


AnyWatch = BookWatch | TradesWatch | CandlesWatch | TickerWatch


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
        self.candles: dict[str, CandleChannel] = {}  # interval -> its channel
        self.ticker: TickerChannel | None = None
        self._on_lost = on_lost
        self._subscribed = asyncio.Event()  # SSUBSCRIBE done: reads of Redis miss nothing
        self._seed_wanted = False
        self._seed_task: asyncio.Task[None] | None = None
        self._snapshots: dict[int, bytes] = {}  # depth -> snapshot frame at its last_seq
        self._buffer: list[MarketDataUpdate] = []
        self._overflowed = False
        self._resync_wanted = False
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._tracer = setup_tracing("exchange-gateway")
        self._delivery_latency = WS_DELIVERY_LATENCY.labels(pair.symbol)
        WS_RESYNCS.labels(pair.symbol)  # exported at 0 until the first

    @property
    def symbol(self) -> str:
        return self.pair.symbol

    @property
    def idle(self) -> bool:
        """No watcher left: the owner stops the feed."""
        return not (self.book_watchers or self.trade_watchers or self.candles
                    or self.ticker is not None)

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe and sync in the background; watchers get snapshots once synced."""
        self._task = asyncio.create_task(self._start(), name=f"feed-{self.symbol}")
        self._task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        """Stop syncing and drop the Redis subscription."""
        self._stopped = True
        self._stop_timers()
        tasks = [t for t in (self._task, self._seed_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.live = False
        await self.subscriber.unsubscribe(self.keys.md, self)

    def _stop_timers(self) -> None:
        for channel in self.candles.values():
            channel.stop()
        if self.ticker is not None:
            self.ticker.stop()

    async def _start(self) -> None:
        await self.subscriber.subscribe(self.keys.md, self)
        self._subscribed.set()
        await self._sync()

    # ---- watchers -----------------------------------------------------------------------

    def watch_book(self, client: Client, depth: int) -> BookWatch:
        """Add a book watcher; it gets a snapshot now if synced, else once synced."""
        watch = BookWatch(self, client, depth)
        watchers = self.book_watchers.get(depth)
        if watchers is None:
            watchers = self.book_watchers[depth] = {}
            stream = self.streams[depth] = DepthStream(depth)
            if self.live:
                stream.reset(self.view)
        watchers[client] = watch
        if self.live:
            self._send_snapshot(watch)
        return watch

    def watch_trades(self, client: Client) -> TradesWatch:
        self.trade_watchers.add(client)
        return TradesWatch(self)

    def watch_candles(self, client: Client, interval: str) -> CandlesWatch:
        """Add a candles watcher; it gets the current bar now if known, else once read."""
        channel = self.candles.get(interval)
        if channel is None:
            channel = self.candles[interval] = CandleChannel(self.wire, interval)
            self._want_seed()
        channel.watch(client)
        return CandlesWatch(self, interval)

    def watch_ticker(self, client: Client) -> TickerWatch:
        """Add a ticker watcher; it gets the last ticker now if there is one."""
        if self.ticker is None:
            self.ticker = TickerChannel(self)
            self._want_seed()
        self.ticker.watch(client)
        return TickerWatch(self)

    def unwatch(self, client: Client, watch: AnyWatch) -> None:
        """Remove one watcher; nothing is sent to it for this watch afterwards."""
        if isinstance(watch, TradesWatch):
            self.trade_watchers.discard(client)
            return
        if isinstance(watch, CandlesWatch):
            channel = self.candles.get(watch.interval)
            if channel is not None:
                channel.watchers.discard(client)
                if not channel.watchers:
                    channel.stop()
                    del self.candles[watch.interval]
            return
        if isinstance(watch, TickerWatch):
            if self.ticker is not None:
                self.ticker.watchers.discard(client)
                if not self.ticker.watchers:
                    self.ticker.stop()
                    self.ticker = None
            return
        watch.release()
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
        for channel in self.candles.values():
            found.update(channel.watchers)
        if self.ticker is not None:
            found.update(self.ticker.watchers)
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
        if update.traces and exporting():
            # The update reflects sampled orders: a span of its fan-out in each one's trace.
            started = time.time_ns()
            self._on_update(update)
            record_gateway_write(self._tracer, self.symbol, update.seq, update.traces, started,
                                 len(self.clients()))
        else:
            self._on_update(update)
        # Its frames are queued now and written at the end of this loop pass.
        self._delivery_latency.observe(max(0.0, time.time() - update.ts / 1000))

    def _on_update(self, update: MarketDataUpdate) -> None:
        if update.trades and self.trade_watchers:
            # Trades need no book continuity: forward them as they come, even mid-sync.
            frame = frames.trades(self.wire, update.seq, update.trades)
            for client in self.trade_watchers:
                client.send(frame)
        if update.candles and self.candles:
            self._offer_candles(update.candles)
        ticker = self.ticker
        if ticker is not None:
            ticker.on_update(update)
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
            if ticker is not None:
                ticker.on_book()

    def on_resync(self) -> None:
        """Updates may have been lost (the subscription broke): sync again."""
        self._begin_sync()

    def on_lost(self) -> None:
        """The subscription cannot be restored: the owner tells the watchers."""
        self._stopped = True
        self.live = False
        self._stop_timers()
        for task in (self._task, self._seed_task):
            if task is not None:
                task.cancel()
        self._on_lost(self)

    # ---- sync ---------------------------------------------------------------------------

    def _begin_sync(self) -> None:
        if self._stopped:
            return
        WS_RESYNCS.labels(self.symbol).inc()
        self.live = False
        self._buffer.clear()
        self._want_seed()  # candle and ticker updates may have been lost too
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
            for watch in self.book_watchers[depth].values():
                self._send_snapshot(watch)
        if self.ticker is not None:
            self.ticker.on_book()
        log.info("%s: synced at seq %d epoch %s", self.symbol, self.view.seq, self.view.epoch)

    # ---- candles and ticker seeds ---------------------------------------------------------

    def _want_seed(self) -> None:
        """(Re)read the current bars (and the ticker's inputs) from Redis, soon."""
        if self._stopped or not (self.candles or self.ticker):
            return
        self._seed_wanted = True
        if self._seed_task is None or self._seed_task.done():
            self._seed_task = asyncio.create_task(self._seed(), name=f"feed-seed-{self.symbol}")
            self._seed_task.add_done_callback(_log_failure)

    async def _seed(self) -> None:
        await self._subscribed.wait()  # what is committed after the read then reaches us
        delay = SYNC_BACKOFF_S
        while self._seed_wanted:
            self._seed_wanted = False
            intervals, ticker = list(self.candles), self.ticker
            keys, pair = self.keys, self.pair
            pipe = self.redis.pipeline(transaction=True)
            for interval in intervals:
                pipe.zrange(keys.candles(interval), -1, -1)  # the newest bar
            if ticker is not None:
                pipe.hmget(keys.state, "epoch", "md_seq", "last_price")
                pipe.zrangebyscore(keys.candles("1m"), window_start(now_ms()), "+inf")
            try:
                results = await pipe.execute()
            except LINK_ERRORS as exc:
                log.warning("%s: reading bars failed: %r", self.symbol, exc)
                self._seed_wanted = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, SYNC_MAX_BACKOFF_S)
                continue
            delay = SYNC_BACKOFF_S
            for interval, newest in zip(intervals, results, strict=False):
                channel = self.candles.get(interval)
                if channel is not None and newest:
                    channel.offer([parse_bar(pair, interval, newest[0])])
            if ticker is not None and ticker is self.ticker:
                (epoch, md_seq, last), bars = results[len(intervals):]
                ticker.load(((epoch or b"").decode(), int(md_seq or 0)), int(last or 0),
                            [parse_bar(pair, "1m", bar) for bar in bars])

    # ---- fan-out ------------------------------------------------------------------------

    def _publish(self, update: MarketDataUpdate) -> None:
        view = self.view
        for depth, stream in self.streams.items():
            delta = stream.advance(view, update)
            if delta is None:
                continue
            self._snapshots.pop(depth, None)
            frame = frames.book_delta(self.wire, depth, view.epoch, view.ts, delta)
            seq = delta.seq
            for watch in self.book_watchers[depth].values():
                watch.deliver(frame, seq)

    def _offer_candles(self, ticks: list[CandleTick]) -> None:
        for interval, channel in self.candles.items():
            mine = [tick for tick in ticks if tick.interval == interval]
            if mine:
                channel.offer(mine)

    def _send_snapshot(self, watch: BookWatch) -> None:
        depth = watch.depth
        frame = self._snapshots.get(depth)
        if frame is None:
            # The stream's top N is unchanged since its last message, so the snapshot is
            # that state at last_seq and the next delta continues it.
            stream = self.streams[depth]
            bids, asks = stream.top(self.view)
            frame = self._snapshots[depth] = frames.book_snapshot(
                self.wire, depth, self.view.epoch, stream.last_seq, self.view.ts, bids, asks)
        watch.snapshot(frame, self.streams[depth].last_seq)


def _log_failure(task: asyncio.Task[None]) -> None:
    """A sync task must never die unnoticed: that pair would silently stop updating."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=exc)
