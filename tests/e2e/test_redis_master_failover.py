"""kill -9 of the Redis master that owns a pair's slot, while signed orders stream in and a
WebSocket client watches the pair (DESIGN §9 fault tests, §4 invariants).

The module runs its own cluster and exchange (the session's are shared by every other
test): 3 masters with 2 replicas each, so that once the cluster's own failure detection
has promoted a replica, the new master still has a replica for the orders' WAIT. With a
single replica per master the promoted one would have none, and the exchange would
rightly refuse to acknowledge orders on that slot (NOT_DURABLE) until a replica is back.

After the failover every process of the exchange is still the one started (none
restarted) and:
- every order the API acknowledged is in the pair's event log exactly once, and ended
  as the log says (its fills, then filled or cancelled);
- every trade the WebSocket client saw is in the event log, same id, price and quantity;
- the client's book, kept from a snapshot plus deltas, equals the REST book, which equals
  the pure book replayed from the committed inputs;
- each account's balances are its deposits moved by its trades in the log, and per
  asset, all balances and holds add up to the deposits.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from services.common import keys
from services.common.client import ExchangeClient
from services.common.pairs import Markets, load_markets
from services.common.redis_conn import AnyRedis, connect
from services.local.redis_cluster import ClusterSpec, LocalRedisCluster, free_ports
from services.local.up import LocalExchange, UpOptions
from tests.support.faults import (
    TradingLoad,
    balance_changes,
    child_pids,
    duplicates_ignored,
    event_log,
    filled_lots,
    placement_outcomes,
    replay,
    trades_of,
    unconfirmed_orders,
    wire_book,
)
from tests.support.ledger import ledger_totals, wait_until_settled
from tests.support.waiting import eventually
from tests.support.watcher import BookWatcher

SYMBOL = "BTC-USD"
DEPOSITS = {"buyer": {"USD": "1000000"}, "seller": {"BTC": "100"}}
fixture = pytest_asyncio.fixture


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    spec = ClusterSpec(tmp_path_factory.mktemp("failover-redis"), tuple(free_ports(9)),
                       masters=3, replicas=2)
    with LocalRedisCluster(spec) as redis_cluster:
        yield redis_cluster


@pytest.fixture(scope="module")
def exchange(cluster: LocalRedisCluster,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalExchange]:
    api_port, *gateway_ports = free_ports(3)
    root = tmp_path_factory.mktemp("failover-exchange")
    options = UpOptions(data_dir=root, redis_url=cluster.url, api_port=api_port,
                        gateway_ports=tuple(gateway_ports), simulate_rate=0,
                        admin_token=secrets.token_urlsafe(16), log_dir=root / "logs")
    with LocalExchange(options) as running:
        yield running


@fixture(scope="module", loop_scope="session")
async def redis(exchange: LocalExchange) -> AsyncIterator[AnyRedis]:
    # Connected before the kill: the client then knows every node, not only the URL's.
    client = await connect(exchange.redis_url)
    yield client
    await client.aclose()


@fixture(scope="module", loop_scope="session")
async def operator(exchange: LocalExchange) -> AsyncIterator[ExchangeClient]:
    client = ExchangeClient(exchange.api_url, admin_token=exchange.options.admin_token)
    yield client
    await client.aclose()


async def replicas_in_sync(master: Redis) -> bool:
    """Both replicas attached, online and at most one second behind."""
    info = await master.info("replication")
    links = [info[f"slave{i}"] for i in range(int(info["connected_slaves"]))]
    return len(links) == 2 and all(
        link["state"] == "online" and int(link["lag"]) <= 1 for link in links)


async def promoted(ports: list[int]) -> int | None:
    """The port of whichever of `ports` is now a master with the cluster ok, else None."""
    for port in ports:
        async with Redis(port=port, socket_timeout=1) as node:
            role = (await node.info("replication"))["role"]
            state = (await node.cluster("INFO"))["cluster_state"]
        if role == "master" and state == "ok":
            return port
    return None


async def test_killing_the_master_of_a_pairs_slot_under_load_loses_no_acknowledged_order(
        cluster: LocalRedisCluster, exchange: LocalExchange, redis: AnyRedis,
        operator: ExchangeClient) -> None:
    started = time.monotonic()
    markets: Markets = load_markets()
    pair = markets.pair(SYMBOL)
    pids = child_pids(exchange)
    assert None not in pids.values()
    accounts = {}
    for role, deposits in DEPOSITS.items():
        accounts[role] = await operator.create_account()
        for asset, amount in deposits.items():
            await operator.deposit(accounts[role].account_id, asset, amount)
    account_ids = [c.account_id for c in accounts.values()]
    load = TradingLoad(exchange.api_url, pair, accounts["buyer"], accounts["seller"],
                       mid=pair.price_to_ticks("60000.00"), rate=30)
    tally = load.tally

    owner = redis.get_node_from_key(keys.PairKeys(SYMBOL).inbox)
    owner_port = int(owner.port)
    async with Redis(port=owner_port) as master:
        replica_ports = [int(link["port"]) for name, link in
                         (await master.info("replication")).items()
                         if name.startswith("slave")]

    stop = asyncio.Event()
    async with BookWatcher(exchange.ws_urls[0], SYMBOL) as watcher:
        reading = asyncio.create_task(
            watcher.wait_for(lambda w: stop.is_set(), timeout=240, what="the end of the load"))
        running = asyncio.create_task(load.run(stop))
        try:
            await eventually(lambda: len(tally.acked) >= 60 and len(watcher.trades) >= 10,
                             "orders acknowledged and trades watched before the kill",
                             timeout=30)
            async with Redis(port=owner_port) as master:
                await eventually(lambda: replicas_in_sync(master),
                                 "the master's replicas to be in sync")
            last_trade_before = max(int(t["id"]) for t in watcher.trades)
            acked_before = len(tally.acked)
            cluster.kill_node(owner_port)
            killed_at = time.monotonic()

            new_master = None

            async def failed_over() -> bool:
                nonlocal new_master
                new_master = await promoted(replica_ports)
                return new_master is not None

            await eventually(failed_over, "a replica to be promoted", timeout=30)
            failover_s = time.monotonic() - killed_at
            await eventually(
                lambda: tally.acked_since(killed_at + failover_s) >= 60 and any(
                    int(t["id"]) > last_trade_before + 10 for t in watcher.trades),
                "orders acknowledged and trades watched after the failover", timeout=45)
        finally:
            stop.set()
            await running
            await reading

        # Orders held while the slot was down reach the engine (the reconciler re-sends a
        # command that was never appended); then everything ends and settles.
        await eventually(lambda: _no_unconfirmed(redis, account_ids),
                         "every held order to reach the engine", timeout=40)
        for credentials in accounts.values():
            await operator.as_account(credentials).call(
                "DELETE", f"/api/v1/orders?symbol={SYMBOL}", signed=True)
        await wait_until_settled(redis, list(markets.pairs), timeout=30)

        # No process was restarted: the same pids, all running.
        assert child_pids(exchange) == pids

        log = await event_log(redis, SYMBOL)
        outcomes = placement_outcomes(log)
        assert {order_id: outcomes[order_id] for order_id in tally.acked} == dict.fromkeys(
            tally.acked, 1)
        assert max(outcomes.values()) == 1
        trades = trades_of(log)
        assert sorted(trades) == list(range(1, len(trades) + 1))  # consecutive, none twice
        filled = filled_lots(log)
        clients = {c.account_id: operator.as_account(c) for c in accounts.values()}
        for order_id, acked in tally.acked.items():
            order = await clients[_account_of(accounts, acked)].order(order_id)
            assert order["status"] in {"filled", "cancelled"}, order
            assert Decimal(order["filled_qty"]) == pair.lot_size * filled[order_id], order
            assert (order["status"] == "filled") == (
                filled[order_id] == pair.qty_to_lots(order["qty"])), order

        # What the WebSocket client saw is what the log holds.
        assert watcher.violations == []
        assert watcher.trades, "the client saw no trade"
        for seen in watcher.trades:
            trade = trades[int(seen["id"])]
            assert (pair.price_to_ticks(seen["px"]), pair.qty_to_lots(seen["qty"]),
                    seen["side"]) == (trade.price, trade.qty, trade.taker_side), seen
        rest = await operator.book(SYMBOL, depth=50)
        await watcher.wait_for(lambda w: w.seq >= rest["seq"], what="the REST book's seq")
        assert (watcher.seq, watcher.top("bids"), watcher.top("asks")) == (
            rest["seq"], rest["bids"], rest["asks"])
        book, replayed = await replay(redis, pair)
        assert replayed == log
        assert wire_book(pair, book, 50) == {"bids": rest["bids"], "asks": rest["asks"]}

    # Money: each account moved exactly by its trades in the log; nothing created or lost.
    for role, credentials in accounts.items():
        balances = await clients[credentials.account_id].balances()
        change = balance_changes(pair, log, credentials.account_id)
        for asset in (pair.base, pair.quote):
            deposit = int(Decimal(DEPOSITS[role].get(asset.symbol, "0")) / asset.unit)
            assert balances[asset.symbol]["held"] == asset.format(0)
            assert balances[asset.symbol]["available"] == asset.format(
                deposit + change[asset.symbol]), (role, asset.symbol)
    deposited, holdings, negatives = await ledger_totals(redis)
    assert negatives == []
    assert holdings == deposited

    acks = sorted(tally.acked_at.values())
    outage = max(b - a for a, b in itertools.pairwise(acks))
    print(f"\nkill -9 of master :{owner_port} ({SYMBOL}'s slot) with {acked_before} orders "
          f"acknowledged; replica :{new_master} promoted after {failover_s:.1f} s; longest "
          f"gap between acknowledgements {outage:.1f} s; slowest acknowledgement "
          f"{tally.slowest_ack_s:.1f} s; {len(tally.acked)} orders acknowledged, "
          f"{tally.retries} requests re-sent, refused {dict(tally.refused)}, "
          f"{len(tally.unanswered)} unanswered, {tally.cancels} cancels; {len(trades)} "
          f"trades, {len(watcher.trades)} seen on the WebSocket; {duplicates_ignored(log)} "
          f"re-sent commands ignored by the engine; {time.monotonic() - started:.1f} s")
    assert tally.unanswered == []
    assert set(tally.refused) <= {"ORDER_NOT_OPEN"}  # a cancel that came after the fill


async def _no_unconfirmed(redis: AnyRedis, account_ids: list[str]) -> bool:
    return await unconfirmed_orders(redis, account_ids) == 0


def _account_of(accounts: dict, order: dict) -> str:
    role = "buyer" if order["side"] == "buy" else "seller"
    return accounts[role].account_id
