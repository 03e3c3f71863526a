"""REST market data lines up with what traded: candles, ticker, trades, price band."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.common.client import ApiError, ExchangeClient
from services.local.up import LocalExchange
from tests.support.waiting import eventually


async def test_a_trade_shows_in_trades_candles_and_ticker(stack: LocalExchange,
                                                          admin: ExchangeClient) -> None:
    seller, buyer = await admin.create_account(), await admin.create_account()
    await admin.deposit(seller.account_id, "ETH", "10")
    await admin.deposit(buyer.account_id, "USD", "100000")
    book = await admin.book("ETH-USD", depth=1)
    price = Decimal(book["asks"][0][0]) - Decimal("0.01") if book["asks"] else Decimal(3000)
    px = f"{price:.2f}"
    before = await admin.trades("ETH-USD", limit=1)
    await admin.as_account(seller).place_order("ETH-USD", "sell", px, "0.250")
    await admin.as_account(buyer).place_order("ETH-USD", "buy", px, "0.250", tif="IOC")

    async def traded() -> bool:
        return (await admin.trades("ETH-USD", limit=1)) != before

    await eventually(traded, "the trade on the tape")
    [trade] = await admin.trades("ETH-USD", limit=1)
    assert (trade["px"], trade["qty"], trade["side"]) == (px, "0.250", "buy")
    if before:
        assert int(trade["id"]) == int(before[0]["id"]) + 1  # consecutive ids

    bars = await admin.call("GET", "/api/v1/markets/ETH-USD/candles?interval=1m&limit=2")
    last_bar = bars[-1]
    assert last_bar["t"] <= trade["ts"] < last_bar["t"] + 60_000
    assert last_bar["c"] == px and Decimal(last_bar["v"]) >= Decimal("0.250")
    for interval in ("5m", "15m", "1h", "4h", "1d"):
        [bar] = await admin.call(
            "GET", f"/api/v1/markets/ETH-USD/candles?interval={interval}&limit=1")
        assert bar["c"] == px and bar["n"] >= last_bar["n"]

    ticker = await admin.call("GET", "/api/v1/markets/ETH-USD/ticker")
    assert ticker["last"] == px
    assert Decimal(ticker["low_24h"]) <= price <= Decimal(ticker["high_24h"])
    assert Decimal(ticker["vol_24h"]) >= Decimal("0.250")

    # Now that there is a last price, a limit far from it is refused (50 % band).
    with pytest.raises(ApiError) as refused:
        await admin.as_account(seller).place_order("ETH-USD", "sell", f"{price * 3:.2f}", "0.010")
    assert refused.value.code == "PRICE_OUT_OF_BAND"


async def test_an_unknown_interval_is_refused(admin: ExchangeClient) -> None:
    response = await admin.http.get("/api/v1/markets/ETH-USD/candles?interval=2m")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "INVALID_INTERVAL")
