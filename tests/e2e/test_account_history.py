"""What a bot author reads back: idempotent placement, order lists, fills, withdrawals."""

from __future__ import annotations

import pytest

from services.common import keys
from services.common.client import ApiError, ExchangeClient
from tests.support.accounts import funded
from tests.support.ledger import ledger_totals, wait_until_settled
from tests.support.waiting import eventually


async def test_a_repeated_client_order_id_returns_the_first_order_and_enqueues_nothing(
        admin: ExchangeClient, redis) -> None:
    trader = await funded(admin, USD="1000")
    inbox = keys.PairKeys("BTC-USD").inbox
    body = {"symbol": "BTC-USD", "side": "buy", "price": "50000.00", "qty": "0.0010",
            "client_order_id": "bot-42"}
    first = await trader.request("POST", "/api/v1/orders", body, signed=True)
    queued = await redis.xlen(inbox)
    again = await trader.request("POST", "/api/v1/orders", {**body, "qty": "0.0020"},
                                 signed=True)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["order_id"] == first.json()["order_id"]
    assert again.json()["qty"] == "0.0010" and again.json()["client_order_id"] == "bot-42"
    assert await redis.xlen(inbox) == queued
    assert (await trader.balances())["USD"]["held"] == "50.100000"  # held once, not twice
    await trader.cancel_order(first.json()["order_id"])


async def test_open_and_closed_orders_and_fills_read_back_with_fees(
        admin: ExchangeClient, redis) -> None:
    maker = await funded(admin, BTC="1")
    taker = await funded(admin, USD="100000")
    book = await admin.book("BTC-USD", depth=1)
    ask = book["asks"][0][0] if book["asks"] else None
    price = "61234.00" if ask is None or float(ask) > 61234 else None
    assert price, "the book must leave room for this scenario's ask"
    resting = await maker.place_order("BTC-USD", "sell", price, "0.0100")
    other = await maker.place_order("BTC-USD", "sell", "69000.00", "0.0100")
    await taker.place_order("BTC-USD", "buy", price, "0.0100", tif="IOC")

    async def maker_filled() -> bool:
        return (await maker.order(resting["order_id"]))["status"] == "filled"

    await eventually(maker_filled, "the maker's fill")
    open_orders = await maker.call("GET", "/api/v1/orders?symbol=BTC-USD&status=open",
                                   signed=True)
    assert [o["order_id"] for o in open_orders] == [other["order_id"]]
    closed = await maker.call("GET", "/api/v1/orders?status=closed&limit=5", signed=True)
    assert closed[0]["order_id"] == resting["order_id"] and closed[0]["fee"] == "0.612340"
    [maker_fill] = await maker.call("GET", "/api/v1/fills?symbol=BTC-USD", signed=True)
    # Paging: after the last (only) fill, nothing; after the closed order, nothing older.
    cursor = f"{maker_fill['trade_id']}:{maker_fill['order_id']}"
    assert await maker.call("GET", f"/api/v1/fills?before={cursor}", signed=True) == []
    two = await maker.call("GET", "/api/v1/orders?status=open&limit=1", signed=True)
    assert await maker.call("GET", f"/api/v1/orders?status=open&after={two[0]['order_id']}",
                            signed=True) == []
    [taker_fill] = await taker.call("GET", "/api/v1/fills", signed=True)
    # 0.01 BTC at 61234 = 612.34 USD: 0.1 % maker fee 0.61234, 0.2 % taker fee 1.22468.
    assert {k: maker_fill[k] for k in ("px", "qty", "side", "fee", "fee_asset", "liquidity")} \
        == {"px": price, "qty": "0.0100", "side": "sell", "fee": "0.612340",
            "fee_asset": "USD", "liquidity": "maker"}
    assert (taker_fill["fee"], taker_fill["liquidity"], taker_fill["trade_id"]) == (
        "1.224680", "taker", maker_fill["trade_id"])
    assert (await taker.balances())["USD"]["available"] == "99386.435320"
    await maker.cancel_order(other["order_id"])


async def test_a_withdrawal_never_takes_held_funds(admin: ExchangeClient, redis) -> None:
    trader = await funded(admin, USD="100")
    order = await trader.place_order("BTC-USD", "buy", "50000.00", "0.0010")  # holds 50.10
    account_id = trader.credentials.account_id  # type: ignore[union-attr]
    with pytest.raises(ApiError) as refused:
        await admin.call("POST", "/api/v1/admin/withdrawals",
                         {"account_id": account_id, "asset": "USD", "amount": "50"}, admin=True)
    assert refused.value.code == "INSUFFICIENT_FUNDS"
    done = await admin.call("POST", "/api/v1/admin/withdrawals",
                            {"account_id": account_id, "asset": "USD", "amount": "49.9"},
                            admin=True)
    assert done["available"] == "0.000000"
    assert (await trader.balances())["USD"] == {"asset": "USD", "available": "0.000000",
                                                 "held": "50.100000"}
    await trader.cancel_order(order["order_id"])
    await wait_until_settled(redis, ["BTC-USD"])
    deposited, holdings, negatives = await ledger_totals(redis)
    assert negatives == [] and holdings == deposited  # deposits - withdrawals, exactly
