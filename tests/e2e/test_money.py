"""Money through the whole path: held before matching, settled once, never created."""

from __future__ import annotations

import asyncio
import json
import random
import time
from decimal import Decimal

import pytest

from services.common import keys
from services.common.client import ApiError, ExchangeClient
from services.common.signing import signed_headers
from tests.support.ledger import ledger_totals, wait_until_settled

# symbol -> (mid, tick, lot)
MIDS = {"BTC-USD": (Decimal("60000"), Decimal("0.01"), Decimal("0.0001")),
        "ETH-USD": (Decimal("3000"), Decimal("0.01"), Decimal("0.001")),
        "ETH-BTC": (Decimal("0.05"), Decimal("0.00001"), Decimal("0.001"))}


async def test_random_trading_on_all_pairs_conserves_every_asset(
        admin: ExchangeClient, redis) -> None:
    rnd = random.Random(7)
    traders = []
    for _ in range(5):
        credentials = await admin.create_account()
        for asset, amount in (("USD", "2000000"), ("BTC", "20"), ("ETH", "400")):
            await admin.deposit(credentials.account_id, asset, amount)
        traders.append(admin.as_account(credentials))
    placed, refused = [], 0
    for _ in range(240):
        symbol = rnd.choice(list(MIDS))
        mid, tick, lot = MIDS[symbol]
        price = str(mid + tick * rnd.randint(-15, 15))
        qty = str(lot * rnd.randint(10, 300))
        trader = rnd.choice(traders)
        try:
            placed.append((trader, await trader.place_order(
                symbol, rnd.choice(["buy", "sell"]), price, qty,
                tif=rnd.choice(["GTC", "GTC", "IOC"]))))
        except ApiError as exc:
            assert exc.code == "INSUFFICIENT_FUNDS", exc
            refused += 1
        if placed and rnd.random() < 0.2:
            owner, order = rnd.choice(placed)
            try:
                await owner.cancel_order(order["order_id"])
            except ApiError as exc:
                assert exc.code == "ORDER_NOT_OPEN", exc
    await wait_until_settled(redis, list(MIDS))

    deposited, holdings, negatives = await ledger_totals(redis)
    assert negatives == []
    assert holdings == deposited
    statuses = {(await owner.order(order["order_id"]))["status"] for owner, order in placed}
    assert "filled" in statuses  # the run really traded
    assert statuses <= {"new", "partially_filled", "filled", "cancelled"}
    for owner, order in placed:  # leave an empty book to the tests that follow
        if (await owner.order(order["order_id"]))["status"] in ("new", "partially_filled"):
            await owner.cancel_order(order["order_id"])


async def test_an_order_the_account_cannot_pay_for_is_refused_and_changes_nothing(
        admin: ExchangeClient, redis) -> None:
    credentials = await admin.create_account()
    await admin.deposit(credentials.account_id, "USD", "100")
    trader = admin.as_account(credentials)
    inbox = keys.PairKeys("BTC-USD").inbox
    queued_before = await redis.xlen(inbox)
    with pytest.raises(ApiError) as refused:
        await trader.place_order("BTC-USD", "buy", "60000.00", "0.0100")  # 600 USD > 100
    assert (refused.value.status, refused.value.code) == (400, "INSUFFICIENT_FUNDS")
    assert (await trader.balances())["USD"] == {"asset": "USD", "available": "100.000000",
                                                 "held": "0.000000"}
    assert await redis.xlen(inbox) == queued_before
    assert await redis.scard(keys.AccountKeys(credentials.account_id).open_orders) == 0


async def test_unsigned_or_badly_signed_requests_get_401_and_change_nothing(
        admin: ExchangeClient, redis) -> None:
    credentials = await admin.create_account()
    await admin.deposit(credentials.account_id, "USD", "1000")
    trader = admin.as_account(credentials)
    path = "/api/v1/orders"
    body = json.dumps({"symbol": "BTC-USD", "side": "buy", "price": "50000.00",
                       "qty": "0.0010"}).encode()
    now = int(time.time() * 1000)
    good = signed_headers(credentials.api_key, credentials.api_secret, "POST", path, body, now)
    attempts = {
        "unsigned": {},
        "wrong secret": signed_headers(credentials.api_key, "0" * 64, "POST", path, body, now),
        "unknown key": signed_headers("f" * 32, credentials.api_secret, "POST", path, body, now),
        "stale timestamp": signed_headers(credentials.api_key, credentials.api_secret, "POST",
                                          path, body, now - 60_000),
        "signature of another body": {**good, "X-API-SIGNATURE": signed_headers(
            credentials.api_key, credentials.api_secret, "POST", path, body + b" ", now,
        )["X-API-SIGNATURE"]},
    }
    inbox = keys.PairKeys("BTC-USD").inbox
    queued_before = await redis.xlen(inbox)
    for name, headers in attempts.items():
        response = await admin.http.post(path, content=body,
                                         headers={**headers, "content-type": "application/json"})
        assert response.status_code == 401, name
        assert response.json()["error"]["code"], name
    # The admin token is no key to trading.
    response = await admin.http.post(path, content=body, headers={
        "authorization": f"Bearer {admin.admin_token}", "content-type": "application/json"})
    assert response.status_code == 401
    # A correct request goes through once; the same signature again is a replay.
    good["content-type"] = "application/json"
    first = await admin.http.post(path, content=body, headers=good)
    assert first.status_code == 201
    replay = await admin.http.post(path, content=body, headers=good)
    assert (replay.status_code, replay.json()["error"]["code"]) == (401, "REPLAYED_SIGNATURE")
    assert await redis.xlen(inbox) == queued_before + 1
    # 0.001 BTC at 50000 holds 50 USD plus the 0.2 % taker fee it could pay.
    assert (await trader.balances())["USD"] == {"asset": "USD", "available": "949.900000",
                                                 "held": "50.100000"}
    await trader.cancel_order(first.json()["order_id"])
    await asyncio.wait_for(wait_until_settled(redis, ["BTC-USD"]), 30)
    assert (await trader.balances())["USD"]["available"] == "1000.000000"
