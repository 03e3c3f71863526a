"""What the fault tests share: a load of signed orders that runs through a fault, and the
invariants checked after it, read straight from the pair's event log and input stream.

The load behaves like a careful bot: a request that fails on the server's side (a 5xx,
a dropped connection, a timeout) is sent again with the same client_order_id, which the
API answers with the first order, never a second. So an order is acknowledged at most
once however often it was sent, and every acknowledgement is recorded for the checks.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis.asyncio.cluster import RedisCluster

from services.common import keys
from services.common.client import Credentials, ExchangeClient
from services.common.messages import (
    DuplicateIgnored,
    Event,
    OrderAccepted,
    OrderRejected,
    Trade,
    command_decoder,
    events_decoder,
)
from services.common.pairs import Pair
from services.common.redis_conn import AnyRedis
from services.engine.book import OrderBook
from services.engine.runner import entry_time_ms
from services.local.redis_cluster import LocalRedisCluster
from services.local.up import LocalExchange

RETRY_BUDGET_S = 30.0  # a bot gives up on an order after this long without an answer


@dataclass
class LoadTally:
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # order id -> order
    acked_at: dict[str, float] = field(default_factory=dict)  # order id -> monotonic time
    refused: Counter[str] = field(default_factory=Counter)  # error code -> count
    retries: int = 0  # requests sent again after a server-side failure
    unanswered: list[str] = field(default_factory=list)  # client ids given up on
    cancels: int = 0
    slowest_ack_s: float = 0.0

    def acked_since(self, moment: float) -> int:
        return sum(1 for at in self.acked_at.values() if at > moment)


class TradingLoad:
    """Two accounts trading one pair against each other at about `rate` orders/s: the
    buyer's limit prices overlap the seller's, so about half the orders trade and the
    rest rest within a few ticks of `mid`; now and then an order is cancelled."""

    def __init__(self, api_url: str, pair: Pair, buyer: Credentials, seller: Credentials,
                 *, mid: int, rate: float = 30.0, workers_per_side: int = 2,
                 seed: int = 7, tag: str = "load") -> None:
        self.api_url = api_url
        self.pair = pair
        self.accounts = {"buy": buyer, "sell": seller}
        self.mid = mid
        self.interval_s = 2 * workers_per_side / rate
        self.workers_per_side = workers_per_side
        self.rnd = random.Random(seed)
        self.tag = tag
        self.tally = LoadTally()
        self._ids = iter(range(1, 1 << 40))

    async def run(self, stop: asyncio.Event) -> None:
        """Send orders until `stop`; each worker finishes the order in hand first."""
        clients = {side: ExchangeClient(self.api_url, credentials=credentials)
                   for side, credentials in self.accounts.items()}
        try:
            await asyncio.gather(*(self._worker(clients[side], side, stop)
                                   for side in clients for _ in range(self.workers_per_side)))
        finally:
            for client in clients.values():
                await client.aclose()

    async def _worker(self, client: ExchangeClient, side: str, stop: asyncio.Event) -> None:
        mine: list[str] = []
        while not stop.is_set():
            started = time.monotonic()
            offset = self.rnd.randint(-8, 4) if side == "buy" else self.rnd.randint(-4, 8)
            body = {"symbol": self.pair.symbol, "side": side, "type": "limit",
                    "price": self.pair.format_price(self.mid + offset),
                    "qty": self.pair.format_qty(self.rnd.randint(1, 20)),
                    "tif": "IOC" if self.rnd.random() < 0.2 else "GTC",
                    "client_order_id": f"{self.tag}-{side}-{next(self._ids)}"}
            order = await self._send(client, "POST", "/api/v1/orders", body)
            if order is not None:
                mine.append(order["order_id"])
            if mine and self.rnd.random() < 0.1:
                victim = mine.pop(self.rnd.randrange(len(mine)))
                if await self._send(client, "DELETE", f"/api/v1/orders/{victim}") is not None:
                    self.tally.cancels += 1
            pause = self.interval_s - (time.monotonic() - started)
            if pause > 0:
                try:
                    await asyncio.wait_for(stop.wait(), pause)
                except TimeoutError:
                    pass

    async def _send(self, client: ExchangeClient, method: str, path: str,
                    body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The answer to one request, sent again (re-signed) after a server-side failure;
        None if refused (counted by code) or never answered within the budget."""
        started = time.monotonic()
        delay = 0.05
        while time.monotonic() - started < RETRY_BUDGET_S:
            try:
                response = await client.request(method, path, body, signed=True)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 429:
                await asyncio.sleep(float(response.headers.get("retry-after", "0.1")))
                continue
            if response is not None and response.status_code < 500:
                if response.status_code >= 400:
                    self.tally.refused[response.json()["error"]["code"]] += 1
                    return None
                answer = response.json()
                if method == "POST":
                    now = time.monotonic()
                    self.tally.acked[answer["order_id"]] = answer
                    self.tally.acked_at[answer["order_id"]] = now
                    self.tally.slowest_ack_s = max(self.tally.slowest_ack_s, now - started)
                return answer
            self.tally.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        self.tally.unanswered.append(str(body.get("client_order_id") if body else path))
        return None


# ---- reading the record -------------------------------------------------------------


async def event_log(redis: AnyRedis, symbol: str) -> list[Event]:
    """Every event the pair's engine committed, in order."""
    events: list[Event] = []
    start = "-"
    stream = keys.PairKeys(symbol).events
    while entries := await redis.xrange(stream, start, "+", count=1000):
        for _, fields in entries:
            events.extend(events_decoder.decode(fields[b"e"]))
        start = "(" + entries[-1][0].decode()
    return events


async def replay(redis: AnyRedis, pair: Pair) -> tuple[OrderBook, list[Event]]:
    """The pure book fed every input the engine committed, from the first: the state and
    the events a fresh engine would derive from the log of inputs."""
    pair_keys = keys.PairKeys(pair.symbol)
    last_input = await redis.hget(pair_keys.state, "last_input_id")
    book = OrderBook(band_bps=pair.market_band_bps)
    events: list[Event] = []
    if last_input is None:
        return book, events
    start = "-"
    while entries := await redis.xrange(pair_keys.inbox, start, last_input, count=1000):
        for entry_id, fields in entries:
            events.extend(book.apply(command_decoder.decode(fields[b"c"]),
                                     entry_time_ms(entry_id)))
        start = "(" + entries[-1][0].decode()
    return book, events


def placement_outcomes(events: list[Event]) -> Counter[str]:
    """How often each order id was accepted or rejected: once per order placed."""
    return Counter(e.order_id for e in events if isinstance(e, OrderAccepted | OrderRejected))


def duplicates_ignored(events: list[Event]) -> int:
    return sum(isinstance(e, DuplicateIgnored) for e in events)


def trades_of(events: list[Event]) -> dict[int, Trade]:
    return {e.trade_id: e for e in events if isinstance(e, Trade)}


def filled_lots(events: list[Event]) -> Counter[str]:
    """Lots each order filled, by order id."""
    filled: Counter[str] = Counter()
    for trade in trades_of(events).values():
        filled[trade.maker_order_id] += trade.qty
        filled[trade.taker_order_id] += trade.qty
    return filled


def balance_changes(pair: Pair, events: list[Event], account_id: str) -> Counter[str]:
    """What the account's trades in `events` move, per asset, in units: the buyer pays
    notional + fee in the quote asset and gets the base; the seller the reverse, less
    its fee (fees are bps of the notional, in the quote asset)."""
    change: Counter[str] = Counter()
    for trade in trades_of(events).values():
        notional = pair.notional_units(trade.price, trade.qty)
        for order_account, side, bps in (
                (trade.taker_account_id, trade.taker_side, pair.taker_fee_bps),
                (trade.maker_account_id, "sell" if trade.taker_side == "buy" else "buy",
                 pair.maker_fee_bps)):
            if order_account != account_id:
                continue
            fee = pair.fee_units(notional, bps)
            sign = 1 if side == "buy" else -1
            change[pair.base.symbol] += sign * pair.base_units(trade.qty)
            change[pair.quote.symbol] += -sign * notional - fee
    return change


def wire_book(pair: Pair, book: OrderBook, depth: int) -> dict[str, list[list[str]]]:
    """The top `depth` levels of a pure book as the REST API writes them."""
    return {name: [[pair.format_price(p), pair.format_qty(q)]
                   for p, q in book.depth(side)[:depth]]
            for name, side in (("bids", "buy"), ("asks", "sell"))}


def child_pids(exchange: LocalExchange) -> dict[str, int | None]:
    """Each child process of the exchange by name: its pid, or None once it has exited."""
    return {child.name: (child.process.pid if child.process and child.process.poll() is None
                         else None)
            for child in exchange.children}


async def unconfirmed_orders(redis: AnyRedis, account_ids: list[str]) -> int:
    """Orders whose funds are held but that their engine has not seen yet."""
    return sum([await redis.zcard(keys.AccountKeys(a).unconfirmed) for a in account_ids])


@asynccontextmanager
async def replica_stalled(cluster: LocalRedisCluster, key: str) -> AsyncIterator[None]:
    """The replica of `key`'s master is stopped (SIGSTOP) inside the block: replication to
    it stalls, too briefly for a failover (< 2 s), so WAIT on that master times out."""
    client = RedisCluster.from_url(cluster.url)
    await client.initialize()
    try:
        master = client.get_node_from_key(key)
        nodes = await client.cluster_nodes()  # {"host:port": {node_id, master_id, ...}}
    finally:
        await client.aclose()
    master_id = nodes[f"{master.host}:{master.port}"]["node_id"]
    port = next(int(address.rsplit(":", 1)[1]) for address, node in nodes.items()
                if node["master_id"] == master_id)
    replica = cluster.processes[port]
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(replica.pid, signal.SIGCONT)
