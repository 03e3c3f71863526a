"""Stopping the whole local exchange and starting it again on the same data directory
loses nothing (README: "a restart keeps the data").

Its own cluster in a temporary data directory (not the session's): two accounts trade,
leaving trades, candles, fills, balances and open orders; everything stops (Ctrl-C's
path: SIGTERM to every child, then to every Redis node, which flushes its AOF); a new
`LocalExchange` starts on the same directory. Every REST answer is what it was, and a
new order trades against an order left open before the restart.
"""

from __future__ import annotations

import random
import secrets
from pathlib import Path
from typing import Any

from services.common.client import ExchangeClient
from services.local.redis_cluster import BUS_OFFSET, free_ports, port_free
from services.local.up import LocalExchange, UpOptions
from tests.support.waiting import eventually

SYMBOL = "BTC-USD"
INTERVALS = ("1m", "5m", "15m", "1h", "4h", "1d")


def free_port_range(count: int) -> int:
    """A first port such that it and the next count-1, with their cluster bus ports, are
    free: the local launcher takes consecutive ports."""
    for _ in range(1000):
        base = random.randint(15000, 22700 - count)
        if all(port_free(p) and port_free(p + BUS_OFFSET) for p in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


async def rest_view(admin: ExchangeClient, traders: dict[str, ExchangeClient]) -> dict[str, Any]:
    """Everything a user can read back over REST about the market and the two accounts
    (the book's `ts` aside: it is the time of the answer)."""
    book = await admin.book(SYMBOL, depth=50)
    book.pop("ts")
    view: dict[str, Any] = {
        "book": book,
        "trades": await admin.trades(SYMBOL, limit=100),
        "ticker": await admin.call("GET", f"/api/v1/markets/{SYMBOL}/ticker"),
        "candles": {i: await admin.call("GET", f"/api/v1/markets/{SYMBOL}/candles?interval={i}")
                    for i in INTERVALS},
        "markets": await admin.markets(),
    }
    for role, trader in traders.items():
        view[role] = {
            "balances": await trader.balances(),
            "open": await trader.call("GET", "/api/v1/orders?status=open", signed=True),
            "closed": await trader.call("GET", "/api/v1/orders?status=closed", signed=True),
            "fills": await trader.call("GET", "/api/v1/fills", signed=True),
        }
    return view


async def test_a_restart_on_the_same_data_keeps_orders_balances_trades_and_candles(
        tmp_path: Path) -> None:
    api_port, gateway_port = free_ports(2)
    options = UpOptions(data_dir=tmp_path / "exchange", api_port=api_port,
                        gateway_ports=(gateway_port,), standbys=0, simulate_rate=0,
                        redis_base_port=free_port_range(6),
                        admin_token=secrets.token_urlsafe(16), log_dir=tmp_path / "logs")

    with LocalExchange(options) as exchange:
        admin = ExchangeClient(exchange.api_url, admin_token=options.admin_token)
        try:
            maker, taker = await admin.create_account(), await admin.create_account()
            await admin.deposit(maker.account_id, "BTC", "2")
            await admin.deposit(taker.account_id, "USD", "500000")
            traders = {"maker": admin.as_account(maker), "taker": admin.as_account(taker)}
            resting = await traders["maker"].place_order(SYMBOL, "sell", "60010.00", "0.5000")
            await traders["maker"].place_order(SYMBOL, "sell", "60000.00", "0.3000")
            await traders["taker"].place_order(SYMBOL, "buy", "60000.00", "0.2000", tif="IOC")
            await traders["taker"].place_order(SYMBOL, "buy", "60005.00", "0.1000", tif="IOC")
            await traders["taker"].place_order(SYMBOL, "buy", "59000.00", "0.4000")

            async def settled() -> bool:
                fills = await traders["maker"].call("GET", "/api/v1/fills", signed=True)
                return len(fills) == 2

            await eventually(settled, "both fills to settle")
            before = await rest_view(admin, traders)
        finally:
            await admin.aclose()
    assert before["book"]["asks"] == [["60010.00", "0.5000"]]
    assert before["book"]["bids"] == [["59000.00", "0.4000"]]
    assert [t["qty"] for t in before["trades"]] == ["0.1000", "0.2000"]
    assert all(before["candles"][i] for i in INTERVALS)
    assert len(before["maker"]["open"]) == 1 and len(before["taker"]["open"]) == 1

    with LocalExchange(options) as exchange:
        admin = ExchangeClient(exchange.api_url, admin_token=options.admin_token)
        try:
            traders = {"maker": admin.as_account(maker), "taker": admin.as_account(taker)}
            after = await rest_view(admin, traders)
            assert after == before

            # The order left open before the restart still trades, first at its price.
            await traders["taker"].place_order(SYMBOL, "buy", "60010.00", "0.2000", tif="IOC")

            async def traded() -> bool:
                order = await traders["maker"].order(resting["order_id"])
                return order["filled_qty"] == "0.2000"

            await eventually(traded, "the old resting order to fill")
            trades = await admin.trades(SYMBOL, limit=1)
            assert trades[0]["id"] == str(int(before["trades"][0]["id"]) + 1)
            assert (trades[0]["px"], trades[0]["qty"]) == ("60010.00", "0.2000")
            book = await admin.book(SYMBOL, depth=50)
            assert book["asks"] == [["60010.00", "0.3000"]]
            assert (book["epoch"], book["seq"]) == (before["book"]["epoch"],
                                                    before["book"]["seq"] + 1)
        finally:
            await admin.aclose()
