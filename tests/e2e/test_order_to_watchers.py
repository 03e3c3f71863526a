"""One order from REST to every watcher, through real processes on a real cluster."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

from redis.asyncio.cluster import RedisCluster

from services.common import keys
from services.common.client import ExchangeClient
from services.local.up import LocalExchange
from tests.support.accounts import funded
from tests.support.waiting import eventually
from tests.support.watcher import BookWatcher


async def test_a_crossing_order_reaches_watchers_on_both_gateways_in_order(
        stack: LocalExchange, admin: ExchangeClient) -> None:
    symbol = "BTC-USD"
    seller = await funded(admin, BTC="1")
    buyer = await funded(admin, USD="100000")
    gateway_a, gateway_b = stack.ws_urls
    async with BookWatcher(gateway_a, symbol) as watch_a, \
            BookWatcher(gateway_b, symbol) as watch_b:
        # Inside the spread (other tests may leave orders), so ours is the best ask.
        book = await admin.book(symbol, depth=1)
        price = Decimal(book["asks"][0][0]) - Decimal("0.01") if book["asks"] else Decimal(70001)
        assert not book["bids"] or Decimal(book["bids"][0][0]) < price
        px = f"{price:.2f}"
        resting = await seller.place_order(symbol, "sell", px, "0.3000")
        for watcher in (watch_a, watch_b):
            await watcher.wait_for(lambda w: w.asks.get(px) == "0.3000", what="the resting ask")
        taker = await buyer.place_order(symbol, "buy", px, "0.1000")
        for watcher in (watch_a, watch_b):
            await watcher.wait_for(
                lambda w: any(t["px"] == px and t["qty"] == "0.1000" for t in w.trades),
                what="the trade")
            await watcher.wait_for(lambda w: w.asks.get(px) == "0.2000",
                                   what="the ask reduced by the trade")
            trade = next(t for t in watcher.trades if t["qty"] == "0.1000")
            assert trade["side"] == "buy"
            assert watcher.violations == []
            seqs = [m["seq"] for m in watcher.book_messages]
            assert seqs == sorted(seqs)

        # The book a watcher holds equals the REST book at the same seq.
        deadline = time.monotonic() + 10
        while True:
            rest = await admin.book(symbol, depth=50)
            await watch_a.wait_for(lambda w: w.seq >= rest["seq"], what="the REST seq")
            if rest["seq"] == watch_a.seq:
                break
            assert time.monotonic() < deadline, "REST and WebSocket never met at one seq"
        assert rest["bids"] == watch_a.top("bids")
        assert rest["asks"] == watch_a.top("asks")

    async def taker_settled() -> bool:
        order = await buyer.order(taker["order_id"])
        return (order["status"], order["filled_qty"], order["avg_px"]) == ("filled", "0.1000", px)

    await eventually(taker_settled, "the taker order to show its fill")
    cancelled = await seller.cancel_order(resting["order_id"])
    assert cancelled["status"] == "cancelled"


async def shard_subscribers(cluster_url: str, channels: list[str]) -> dict[str, int]:
    client = RedisCluster.from_url(cluster_url)
    await client.initialize()
    try:
        counts: dict[str, int] = {}
        for channel in channels:
            # Sharded subscriptions live on the master that owns the channel's slot.
            owner = client.get_node_from_key(channel)
            [(_, counts[channel])] = await client.pubsub_shardnumsub(channel, target_nodes=owner)
        return counts
    finally:
        await client.aclose()


async def test_gateway_subscribes_only_to_pairs_its_clients_watch(
        stack: LocalExchange, redis_cluster) -> None:
    channels = [keys.PairKeys(s).md for s in ("BTC-USD", "ETH-USD", "ETH-BTC")]
    btc, eth_usd, eth_btc = channels

    async def counts_become(expected: dict[str, int]) -> None:
        deadline = time.monotonic() + 10
        while (counts := await shard_subscribers(redis_cluster.url, channels)) != expected:
            assert time.monotonic() < deadline, f"subscriptions {counts} != {expected}"
            await asyncio.sleep(0.05)

    await counts_become({btc: 0, eth_usd: 0, eth_btc: 0})
    async with BookWatcher(stack.ws_urls[0], "BTC-USD"), BookWatcher(stack.ws_urls[0], "BTC-USD"):
        await counts_become({btc: 1, eth_usd: 0, eth_btc: 0})  # one per gateway, not per client
    await counts_become({btc: 0, eth_usd: 0, eth_btc: 0})
