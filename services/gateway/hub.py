"""The gateway's registry of watched pairs and accounts: one PairFeed per pair with
watchers, one AccountFeed per logged-in account with private watchers.

A pair's feed (and its Redis subscription) exists exactly while some connection watches
one of its channels: created by the first watch, stopped when the last one leaves. Same
for an account's feed and its `{acct:ID}:updates` subscription, counting the `orders`,
`fills` and `balances` watches of every session logged in as that account.
"""

from __future__ import annotations

import asyncio
import logging

from services.common.pairs import Markets
from services.common.redis_conn import AnyRedis
from services.gateway import frames
from services.gateway.account_feed import AccountFeed, PrivateWatch
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
        self.accounts: dict[str, AccountFeed] = {}
        # Account feeds being stopped: a new feed of the account subscribes after that.
        self._stopping: dict[str, asyncio.Future[None]] = {}

    def watch(self, client: Client, topic: Topic) -> None:
        """Subscribe `client` to `topic`, replacing its previous subscription to the same
        (channel, symbol): a book re-subscription (any depth) sends a fresh snapshot, a
        balances one a fresh balances snapshot. A private topic is of the client's
        account (it must be logged in)."""
        if topic.private:
            self._watch_private(client, topic)
            return
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

    def _watch_private(self, client: Client, topic: Topic) -> None:
        account_id = client.account_id
        assert account_id is not None, "private channels need a login"
        feed = self.accounts.get(account_id)
        if feed is None:
            feed = AccountFeed(account_id, self.redis, self.subscriber, self.markets,
                               self._account_lost, after=self._stopping.get(account_id))
            self.accounts[account_id] = feed
            feed.start()
        old = client.subs.pop(topic.key, None)
        if isinstance(old, PrivateWatch):
            old.feed.unwatch(client, old)
        client.subs[topic.key] = feed.watch(client, topic.ch)

    async def unwatch(self, client: Client, key: TopicKey) -> None:
        """End one subscription of `client` (no-op if absent); nothing more is sent for it."""
        watch = client.subs.pop(key, None)
        if watch is None:
            return
        if isinstance(watch, PrivateWatch):
            await self._unwatch_private(client, watch)
            return
        feed = watch.feed
        feed.unwatch(client, watch)
        if feed.idle and self.feeds.get(feed.symbol) is feed:
            del self.feeds[feed.symbol]
            await feed.stop()

    async def _unwatch_private(self, client: Client, watch: PrivateWatch) -> None:
        feed = watch.feed
        feed.unwatch(client, watch)
        account_id = feed.account_id
        if not feed.idle or self.accounts.get(account_id) is not feed:
            return
        del self.accounts[account_id]
        stopping = asyncio.ensure_future(feed.stop())
        self._stopping[account_id] = stopping
        try:
            await asyncio.shield(stopping)
        finally:
            if self._stopping.get(account_id) is stopping:
                del self._stopping[account_id]

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
        for account in self.accounts.values():
            total += sum(len(watchers) for watchers in account.watchers.values())
        return total

    async def aclose(self) -> None:
        """Stop every feed (their subscriptions are dropped)."""
        feeds, self.feeds = list(self.feeds.values()), {}
        for feed in feeds:
            await feed.stop()
        accounts, self.accounts = list(self.accounts.values()), {}
        for account in accounts:
            await account.stop()

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

    def _account_lost(self, feed: AccountFeed) -> None:
        """The account's subscription could not be restored: its sessions reconnect."""
        if self.accounts.get(feed.account_id) is feed:
            del self.accounts[feed.account_id]
        clients = feed.clients()
        log.error("account %s: private updates unavailable; asking %d clients to reconnect",
                  feed.account_id, len(clients))
        for client in clients:
            client.close_after(frames.UPSTREAM_LOST, *UPSTREAM_LOST_CLOSE)
