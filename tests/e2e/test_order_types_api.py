"""Every order type through the signed API, with the money it holds and releases."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.common.client import ApiError, ExchangeClient
from tests.support.waiting import eventually

SYMBOL = "ETH-BTC"  # tick 0.00001 BTC, lot 0.001 ETH


CREATED: list[ExchangeClient] = []


async def trader(admin: ExchangeClient, **deposits: str) -> ExchangeClient:
    credentials = await admin.create_account()
    for asset, amount in deposits.items():
        await admin.deposit(credentials.account_id, asset, amount)
    CREATED.append(admin.as_account(credentials))
    return CREATED[-1]


@pytest.fixture(autouse=True)
async def leave_an_empty_book(admin: ExchangeClient):
    """Each scenario cancels what it left resting, so the next one starts clean."""
    yield
    while CREATED:
        await CREATED.pop().call("DELETE", f"/api/v1/orders?symbol={SYMBOL}", signed=True)


async def balances(client: ExchangeClient) -> dict[str, tuple[str, str]]:
    return {a: (b["available"], b["held"]) for a, b in (await client.balances()).items()}


async def settled(client: ExchangeClient, order_id: str, status: str) -> dict:
    order: dict = {}

    async def reached() -> bool:
        nonlocal order
        order = await client.order(order_id)
        return order["status"] == status

    await eventually(reached, f"order {order_id} to be {status}")
    return order


async def fresh_level(admin: ExchangeClient) -> Decimal:
    """A price inside the spread, clear of what other tests left resting, so market
    orders meet only the scenario's own liquidity."""
    book = await admin.book(SYMBOL, depth=1)
    margin = Decimal("0.00050")
    if book["asks"]:
        price = Decimal(book["asks"][0][0]) - margin
    elif book["bids"]:
        price = Decimal(book["bids"][0][0]) + margin
    else:
        price = Decimal("0.05000")
    assert not book["bids"] or Decimal(book["bids"][0][0]) < price - Decimal("0.00010")
    return price


async def resting(admin: ExchangeClient, side: str, price: Decimal) -> None:
    """Until the level shows in the committed book (the edge reads the last commit)."""
    async def visible() -> bool:
        levels = (await admin.book(SYMBOL, 200))["asks" if side == "sell" else "bids"]
        return any(px == str(price) for px, _ in levels)

    await eventually(visible, f"a resting {side} at {price}")


@pytest.fixture
async def level(admin: ExchangeClient) -> Decimal:
    return await fresh_level(admin)


async def test_market_buy_by_quantity_holds_at_the_band_edge_and_releases_the_rest(
        admin: ExchangeClient, level: Decimal) -> None:
    maker = await trader(admin, ETH="10")
    buyer = await trader(admin, BTC="1")
    await maker.place_order(SYMBOL, "sell", str(level), "2.000")
    await resting(admin, "sell", level)
    order = await buyer.call("POST", "/api/v1/orders", {
        "symbol": SYMBOL, "side": "buy", "type": "market", "qty": "1.000"}, signed=True)
    done = await settled(buyer, order["order_id"], "filled")
    assert done["avg_px"] == str(level)
    cost = level * 1
    fee = (cost * Decimal("0.002")).quantize(Decimal("0.00000001"), rounding="ROUND_DOWN")
    # Held at the band edge plus fee; what it did not spend came back.
    assert await balances(buyer) == {
        "BTC": (f"{Decimal(1) - cost - fee:.8f}", "0.00000000"),
        "ETH": ("1.00000000", "0.00000000"), "USD": ("0.000000", "0.000000")}


async def test_market_buy_by_quote_amount_spends_no_more_than_it(
        admin: ExchangeClient, level: Decimal) -> None:
    maker = await trader(admin, ETH="10")
    buyer = await trader(admin, BTC="1")
    await maker.place_order(SYMBOL, "sell", str(level), "5.000")
    await resting(admin, "sell", level)
    order = await buyer.call("POST", "/api/v1/orders", {
        "symbol": SYMBOL, "side": "buy", "type": "market", "quote_qty": "0.10000"},
        signed=True)
    done = await settled(buyer, order["order_id"], "filled")
    # 0.1 BTC pays for the fills and their 0.2 % fee: 1e7 satoshi leave 9,980,039 to
    # spend on ETH at `level` (1 tick*lot = 1 satoshi in ETH-BTC).
    level_ticks = int(level / Decimal("0.00001"))
    lots = 9_980_039 // level_ticks
    spent = lots * level_ticks  # satoshi
    fee = spent * 20 // 10_000
    assert done["filled_qty"] == f"{Decimal(lots) / 1000:.3f}"
    btc, eth = (await balances(buyer))["BTC"], (await balances(buyer))["ETH"]
    assert btc == (f"{Decimal(100_000_000 - spent - fee) / 10**8:.8f}", "0.00000000")
    assert eth[0] == f"{Decimal(lots) / 1000:.8f}"


async def test_fok_that_cannot_fill_is_cancelled_and_releases_its_hold(
        admin: ExchangeClient, level: Decimal) -> None:
    maker = await trader(admin, ETH="10")
    buyer = await trader(admin, BTC="1")
    await maker.place_order(SYMBOL, "sell", str(level), "1.000")
    order = await buyer.place_order(SYMBOL, "buy", str(level), "2.000", tif="FOK")
    done = await settled(buyer, order["order_id"], "cancelled")
    assert (done["filled_qty"], done["cancel_reason"]) == ("0.000", "fok_unfilled")
    assert (await balances(buyer))["BTC"] == ("1.00000000", "0.00000000")


async def test_post_only_that_would_take_is_refused_and_changes_nothing(
        admin: ExchangeClient, level: Decimal) -> None:
    maker = await trader(admin, ETH="10")
    buyer = await trader(admin, BTC="1")
    await maker.place_order(SYMBOL, "sell", str(level), "1.000")
    await resting(admin, "sell", level)
    before = (await admin.book(SYMBOL, 200), await balances(buyer))
    with pytest.raises(ApiError) as refused:
        await buyer.place_order(SYMBOL, "buy", str(level), "1.000", post_only=True)
    assert refused.value.code == "POST_ONLY_WOULD_TAKE"
    after = (await admin.book(SYMBOL, 200), await balances(buyer))
    assert (before[0]["bids"], before[0]["asks"], before[1]) == (
        after[0]["bids"], after[0]["asks"], after[1])


async def test_stop_limit_waits_then_trades_once_the_price_trades_through(
        admin: ExchangeClient, level: Decimal) -> None:
    maker = await trader(admin, ETH="10")
    taker = await trader(admin, BTC="1")
    stopper = await trader(admin, BTC="1")
    tick = Decimal("0.00001")
    await maker.place_order(SYMBOL, "sell", str(level), "1.000")
    await maker.place_order(SYMBOL, "sell", str(level + 2 * tick), "1.000")
    await taker.place_order(SYMBOL, "buy", str(level), "0.100", tif="IOC")  # last = level
    stop = await stopper.call("POST", "/api/v1/orders", {
        "symbol": SYMBOL, "side": "buy", "type": "stop_limit", "stop_price": str(level + tick),
        "price": str(level + 2 * tick), "qty": "0.500"}, signed=True)
    assert stop["status"] == "new" and stop["stop_price"] == str(level + tick)
    # Taking the rest of the first level and part of the next trades through the stop.
    await taker.place_order(SYMBOL, "buy", str(level + 2 * tick), "1.000", tif="IOC")
    done = await settled(stopper, stop["order_id"], "filled")
    assert done["avg_px"] == str(level + 2 * tick)


async def test_amend_down_keeps_priority_and_amend_up_needs_funds(
        admin: ExchangeClient, level: Decimal) -> None:
    seller = await trader(admin, ETH="2")
    order = await seller.place_order(SYMBOL, "sell", str(level), "1.500")
    amended = await seller.call("PATCH", f"/api/v1/orders/{order['order_id']}",
                                {"qty": "1.000"}, signed=True)
    assert amended["order_id"] == order["order_id"]

    async def shrunk() -> bool:
        return (await seller.order(order["order_id"]))["qty"] == "1.000"

    await eventually(shrunk, "the smaller quantity")
    with pytest.raises(ApiError) as refused:
        await seller.call("PATCH", f"/api/v1/orders/{order['order_id']}", {"qty": "3.000"},
                          signed=True)
    assert refused.value.code == "INSUFFICIENT_FUNDS"
    assert (await balances(seller))["ETH"] == ("0.50000000", "1.50000000")
    with pytest.raises(ApiError) as unknown:
        await seller.call("PATCH", "/api/v1/orders/nope", {"qty": "1.000"}, signed=True)
    assert (unknown.value.status, unknown.value.code) == (404, "UNKNOWN_ORDER")
    await seller.cancel_order(order["order_id"])
    await settled(seller, order["order_id"], "cancelled")
    assert (await balances(seller))["ETH"] == ("2.00000000", "0.00000000")


async def test_cancel_all_on_a_pair_ends_every_open_order_there(
        admin: ExchangeClient, level: Decimal) -> None:
    seller = await trader(admin, ETH="3")
    ids = {(await seller.place_order(SYMBOL, "sell", str(level + i * Decimal("0.00001")),
                                     "1.000"))["order_id"] for i in range(3)}
    cancelled = await seller.call("DELETE", f"/api/v1/orders?symbol={SYMBOL}", signed=True)
    assert {o["order_id"] for o in cancelled} == ids
    assert {(o["status"], o["cancel_reason"]) for o in cancelled} == {("cancelled",
                                                                       "cancel_all")}
    assert (await balances(seller))["ETH"] == ("3.00000000", "0.00000000")


async def test_a_halted_pair_refuses_orders_until_resumed(
        admin: ExchangeClient, level: Decimal) -> None:
    seller = await trader(admin, ETH="1")
    path = f"/api/v1/admin/markets/{SYMBOL}"
    assert await admin.call("PUT", path, {"status": "halted"}, admin=True) == {
        "symbol": SYMBOL, "status": "halted"}
    try:
        with pytest.raises(ApiError) as refused:
            await seller.place_order(SYMBOL, "sell", str(level), "1.000")
        assert (refused.value.status, refused.value.code) == (409, "MARKET_HALTED")
        assert (await balances(seller))["ETH"] == ("1.00000000", "0.00000000")
        statuses = {m["symbol"]: m["status"] for m in await admin.markets()}
        assert statuses[SYMBOL] == "halted"
    finally:
        await admin.call("PUT", path, {"status": "trading"}, admin=True)
    order = await seller.place_order(SYMBOL, "sell", str(level), "1.000")
    await seller.cancel_order(order["order_id"])


@pytest.mark.parametrize(("body", "code"), [
    ({"type": "market", "price": "0.05000", "qty": "1.000"}, "INVALID_REQUEST"),
    ({"type": "market", "side": "sell", "quote_qty": "0.1"}, "INVALID_QUOTE_QTY"),
    ({"type": "stop_limit", "price": "0.05000", "qty": "1.000"}, "INVALID_REQUEST"),
    ({"type": "limit", "price": "0.05000", "qty": "1.000", "tif": "IOC", "post_only": True},
     "INVALID_POST_ONLY"),
    ({"type": "limit", "price": "0.05000", "qty": "-1.000"}, "INVALID_QTY"),
    ({"type": "limit", "price": "0.05000", "qty": "100000"}, "QTY_TOO_LARGE"),
])
async def test_inconsistent_order_fields_are_refused(admin: ExchangeClient, body: dict,
                                                     code: str) -> None:
    client = await trader(admin, BTC="1", ETH="1")
    before = await balances(client)
    with pytest.raises(ApiError) as refused:
        await client.call("POST", "/api/v1/orders", {"symbol": SYMBOL, "side": "buy", **body},
                          signed=True)
    assert refused.value.code == code
    assert await balances(client) == before
