"""The gateway's registry of watched pairs: one PairFeed per pair with watchers.

A pair's feed (and its Redis subscription) exists exactly while some connection watches
one of its channels: created by the first watch, stopped when the last one leaves.
"""

from __future__ import annotations

import logging

from services.common.pairs import Markets
from services.common.redis_conn import AnyRedis
from services.gateway import frames
from services.gateway.client import Client
from services.gateway.feed import PairFeed
from services.gateway.protocol import Topic, TopicKey
from services.gateway.subscriber import ShardedSubscriber

log = logging.getLogger("exchange.gateway.hub")

UPSTREAM_LOST_CLOSE = (1013, "upstream unavailable")  # 1013: try again later


class MarketHub:
    """Which pairs this gateway watches, and for which clients."""

    def __init__(self, redis: AnyRedis, subscriber: ShardedSubscriber, markets: Markets) -> None:
        self.redis = redis
        self.subscriber = subscriber
        self.markets = markets
        self.feeds: dict[str, PairFeed] = {}

    def watch(self, client: Client, topic: Topic) -> None:
        """Subscribe `client` to `topic`, replacing its previous subscription to the same
        (channel, symbol): a book re-subscription (any depth) sends a fresh snapshot."""
        feed = self.feeds.get(topic.symbol)
        if feed is None:
            feed = PairFeed(self.markets.pair(topic.symbol), self.redis, self.subscriber,
                            self._feed_lost)
            self.feeds[topic.symbol] = feed
            feed.start()
        old = client.subs.pop(topic.key, None)
        if old is not None:
            old.feed.unwatch(client, old)  # the feed stays: this client re-watches it now
        if topic.ch == "book":
            client.subs[topic.key] = feed.watch_book(client, topic.depth)
        elif topic.ch == "trades":
            client.subs[topic.key] = feed.watch_trades(client)
        elif topic.ch == "candles":
            client.subs[topic.key] = feed.watch_candles(client, topic.interval)
        else:
            client.subs[topic.key] = feed.watch_ticker(client)

    async def unwatch(self, client: Client, key: TopicKey) -> None:
        """End one subscription of `client` (no-op if absent); nothing more is sent for it."""
        watch = client.subs.pop(key, None)
        if watch is None:
            return
        feed = watch.feed
        feed.unwatch(client, watch)
        if feed.idle and self.feeds.get(feed.symbol) is feed:
            del self.feeds[feed.symbol]
            await feed.stop()

    async def drop(self, client: Client) -> None:
        """End every subscription of a departing client."""
        for key in list(client.subs):
            await self.unwatch(client, key)

    @property
    def subscriptions(self) -> int:
        """Watches across all pairs (a client watching book and trades counts two)."""
        total = 0
        for feed in self.feeds.values():
            total += len(feed.trade_watchers)
            total += sum(len(w) for w in feed.book_watchers.values())
            total += sum(len(channel.watchers) for channel in feed.candles.values())
            total += len(feed.ticker.watchers) if feed.ticker is not None else 0
        return total

    async def aclose(self) -> None:
        """Stop every feed (their subscriptions are dropped)."""
        feeds, self.feeds = list(self.feeds.values()), {}
        for feed in feeds:
            await feed.stop()

    def _feed_lost(self, feed: PairFeed) -> None:
        """The pair's subscription could not be restored: tell its watchers to reconnect
        (perhaps to another replica) rather than leave them on a silent pair."""
        if self.feeds.get(feed.symbol) is feed:
            del self.feeds[feed.symbol]
        clients = feed.clients()
        log.error("%s: market data unavailable; asking %d clients to reconnect",
                  feed.symbol, len(clients))
        for client in clients:
            client.close_after(frames.UPSTREAM_LOST, *UPSTREAM_LOST_CLOSE)
