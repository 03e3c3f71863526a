"""Back-pressure: a pair whose engine or settlement falls behind past its limit gets new
orders refused with 503 BACKLOG (nothing held, nothing queued) instead of an unbounded
queue; other pairs trade on, and the pair takes orders again once it has caught up.

An exchange of its own (two private pairs, limits of 5, no standby engine) on the
session's cluster: a stage is stalled with SIGSTOP, as a paused process would be.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from decimal import Decimal

import httpx
import psutil
import pytest

from services.common import keys
from services.common.client import ExchangeClient
from services.local.redis_cluster import LocalRedisCluster, free_ports
from services.local.up import LocalExchange, UpOptions
from tests.support.ledger import wait_until_settled
from tests.support.waiting import eventually

LIMIT = 5  # both EXCHANGE_MAX_ENGINE_BACKLOG and EXCHANGE_MAX_SETTLEMENT_BACKLOG
STALLED, OTHER = "BKA-USD", "BKB-USD"
QTY = "0.001"
PAIRS_TOML = """
[assets]
BKA = { decimals = 8 }
BKB = { decimals = 8 }
USD = { decimals = 6 }
""" + "".join(f"""
[[pairs]]
symbol = "{symbol}"
tick_size = "0.01"
lot_size = "0.001"
min_qty = "0.001"
max_qty = "1000"
min_notional = "0.01"
price_decimals = 2
qty_decimals = 3
""" for symbol in (STALLED, OTHER))


@pytest.fixture(scope="module")
def exchange(redis_cluster: LocalRedisCluster,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalExchange]:
    root = tmp_path_factory.mktemp("backpressure")
    (root / "pairs.toml").write_text(PAIRS_TOML)
    api_port, gateway_port = free_ports(2)
    options = UpOptions(
        data_dir=root, redis_url=redis_cluster.url, api_port=api_port,
        gateway_ports=(gateway_port,), standbys=0, simulate_rate=0,
        admin_token=secrets.token_urlsafe(16), pairs_file=str(root / "pairs.toml"),
        log_dir=root / "logs")
    with pytest.MonkeyPatch.context() as env:  # read by the API process at start
        env.setenv("EXCHANGE_MAX_ENGINE_BACKLOG", str(LIMIT))
        env.setenv("EXCHANGE_MAX_SETTLEMENT_BACKLOG", str(LIMIT))
        with LocalExchange(options) as running:
            yield running


@pytest.fixture
async def trader(exchange: LocalExchange) -> AsyncIterator[ExchangeClient]:
    admin = ExchangeClient(exchange.api_url, admin_token=exchange.options.admin_token)
    credentials = await admin.create_account()
    await admin.deposit(credentials.account_id, "USD", "1000")
    yield admin.as_account(credentials)
    await admin.aclose()


@contextmanager
def stalled(exchange: LocalExchange, name: str) -> Iterator[None]:
    """The child `name` stopped (SIGSTOP) for the block, then resumed."""
    process = next(c.process for c in exchange.children if c.name == name)
    assert process is not None and process.poll() is None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        stopped = psutil.Process(process.pid)
        while stopped.status() != psutil.STATUS_STOPPED:
            pass  # the kernel stops it within microseconds; never proceed before
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


async def buy(trader: ExchangeClient, symbol: str, price: str, **extra: str) -> httpx.Response:
    return await trader.request("POST", "/api/v1/orders", {
        "symbol": symbol, "side": "buy", "type": "limit", "price": price, "qty": QTY,
        **extra}, signed=True)


async def resting(trader: ExchangeClient, symbol: str, price: str) -> Decimal:
    """Quantity the public book shows at `price` (what the engine has committed)."""
    bids = (await trader.book(symbol, depth=5000))["bids"]
    return sum((Decimal(qty) for px, qty in bids if px == price), Decimal(0))


async def rests(trader: ExchangeClient, symbol: str, price: str, orders: int) -> bool:
    return await resting(trader, symbol, price) == Decimal(QTY) * orders


def assert_backlog(response: httpx.Response, stage: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "BACKLOG"
    assert STALLED in error["message"] and stage in error["message"]
    assert response.headers["retry-after"] == "1"


async def test_a_stalled_engine_gets_new_orders_on_its_pair_refused_until_it_catches_up(
        exchange: LocalExchange, trader: ExchangeClient, redis) -> None:
    price = "10.00"
    assert (await buy(trader, STALLED, price)).status_code == 201
    await eventually(lambda: rests(trader, STALLED, price, 1),
                     "the running engine to rest the first order")
    inbox = keys.PairKeys(STALLED).inbox
    with stalled(exchange, f"engine[{STALLED}]#1"):
        # Up to the limit, orders are still taken (and wait in the pair's input).
        taken = [await buy(trader, STALLED, price, client_order_id=f"queued-{n}")
                 for n in range(LIMIT)]
        assert [r.status_code for r in taken] == [201] * LIMIT, taken[-1].text
        before = await trader.balances()
        open_before = await trader.call("GET", f"/api/v1/orders?symbol={STALLED}",
                                        signed=True)
        queued = await redis.xlen(inbox)

        refused = await buy(trader, STALLED, price, client_order_id="after-backlog")
        assert_backlog(refused, "wait for its engine")
        # Nothing was done: no hold, no order, nothing queued for the engine.
        assert await trader.balances() == before
        assert await trader.call("GET", f"/api/v1/orders?symbol={STALLED}",
                                 signed=True) == open_before
        assert await redis.xlen(inbox) == queued
        # A retry of an order taken before the refusal still learns that order.
        retried = await buy(trader, STALLED, price, client_order_id="queued-0")
        assert retried.status_code == 200
        assert retried.json()["order_id"] == taken[0].json()["order_id"]
        # Another pair is not held back by this one.
        assert (await buy(trader, OTHER, price)).status_code == 201
    await eventually(lambda: rests(trader, STALLED, price, LIMIT + 1),
                     "the resumed engine to commit every accepted order", timeout=20)
    # Caught up: taken again. The refused order left no trace: its client_order_id is new.
    again = await buy(trader, STALLED, price, client_order_id="after-backlog")
    assert again.status_code == 201, again.text
    await trader.call("DELETE", f"/api/v1/orders?symbol={STALLED}", signed=True)
    await trader.call("DELETE", f"/api/v1/orders?symbol={OTHER}", signed=True)


async def test_stalled_settlement_gets_new_orders_refused_until_it_catches_up(
        exchange: LocalExchange, trader: ExchangeClient, redis) -> None:
    price = "11.00"
    await wait_until_settled(redis, [STALLED, OTHER])
    with stalled(exchange, "settlement"):
        # Each order is committed by the engine before the next: one output entry each,
        # none of them settled.
        for n in range(LIMIT):
            accepted = await buy(trader, STALLED, price)
            assert accepted.status_code == 201, (n, accepted.text)
            await eventually(lambda: rests(trader, STALLED, price, n + 1),
                             f"the engine to commit order {n + 1}")
        before = await trader.balances()
        refused = await buy(trader, STALLED, price)
        assert_backlog(refused, "wait for settlement")
        assert await trader.balances() == before
        assert await resting(trader, STALLED, price) == Decimal(QTY) * LIMIT
        assert (await buy(trader, OTHER, price)).status_code == 201
    await wait_until_settled(redis, [STALLED, OTHER])
    assert (await buy(trader, STALLED, price)).status_code == 201
    await trader.call("DELETE", f"/api/v1/orders?symbol={STALLED}", signed=True)
    await trader.call("DELETE", f"/api/v1/orders?symbol={OTHER}", signed=True)
