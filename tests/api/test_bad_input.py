"""Bad input gets a clear error with a stable code, and changes nothing."""

from __future__ import annotations

import json

import pytest

from services.common import keys
from services.common.client import ApiError, ExchangeClient
from services.common.redis_conn import connect
from services.common.signing import signed_headers
from services.local.up import LocalExchange

ORDER = {"symbol": "BTC-USD", "side": "buy", "price": "50000.00", "qty": "0.0010"}


@pytest.mark.parametrize(("body", "status", "code"), [
    (b'{"symbol": "BTC-USD", "side": ', 400, "INVALID_JSON"),
    (json.dumps({**ORDER, "price": 50000.0}).encode(), 400, "INVALID_REQUEST"),
    (json.dumps({**ORDER, "qty": 1}).encode(), 400, "INVALID_REQUEST"),
    (json.dumps({**ORDER, "side": "hold"}).encode(), 400, "INVALID_REQUEST"),
    (json.dumps({**ORDER, "surprise": True}).encode(), 400, "INVALID_REQUEST"),
    (json.dumps({**ORDER, "symbol": "DOGE-USD"}).encode(), 404, "UNKNOWN_SYMBOL"),
    (json.dumps({**ORDER, "price": "50000.005"}).encode(), 400, "INVALID_PRICE_TICK"),
    (json.dumps({**ORDER, "qty": "0.00001"}).encode(), 400, "INVALID_QTY_LOT"),
    # 0.001 ETH at 0.05 BTC is 0.00005 BTC, under ETH-BTC's 0.0001 minimum.
    (json.dumps({**ORDER, "symbol": "ETH-BTC", "qty": "0.001", "price": "0.05000"}).encode(),
     400, "MIN_NOTIONAL"),
    (json.dumps({**ORDER, "client_order_id": "x" * 65}).encode(), 400, "INVALID_REQUEST"),
    (json.dumps({**ORDER, "pad": "x" * 70_000}).encode(), 413, "PAYLOAD_TOO_LARGE"),
])
async def test_malformed_order_is_refused_with_a_stable_code_and_changes_nothing(
        stack: LocalExchange, admin: ExchangeClient, body: bytes, status: int,
        code: str) -> None:
    credentials = await admin.create_account()
    await admin.deposit(credentials.account_id, "USD", "1000")
    redis = await connect(stack.redis_url)
    try:
        inbox = keys.PairKeys("BTC-USD").inbox
        queued_before = await redis.xlen(inbox)
        headers = signed_headers(credentials.api_key, credentials.api_secret, "POST",
                                 "/api/v1/orders", body)
        response = await admin.http.post("/api/v1/orders", content=body,
                                         headers={**headers, "content-type": "application/json"})
        assert response.status_code == status
        error = response.json()["error"]
        assert error["code"] == code and error["message"]
        assert await redis.xlen(inbox) == queued_before
        balances = await admin.as_account(credentials).balances()
        assert balances["USD"] == {"asset": "USD", "available": "1000.000000", "held": "0.000000"}
    finally:
        await redis.aclose()


async def test_public_endpoints_describe_markets_and_refuse_unknown_ones(
        admin: ExchangeClient) -> None:
    markets = {m["symbol"]: m for m in await admin.markets()}
    assert markets["BTC-USD"] == {
        "symbol": "BTC-USD", "base": "BTC", "quote": "USD", "tick_size": "0.01",
        "lot_size": "0.0001", "min_qty": "0.0001", "max_qty": "1000", "min_notional": "1",
        "price_decimals": 2, "qty_decimals": 4, "market_band_bps": 500,
        "price_band_bps": 5000, "maker_fee_bps": 10, "taker_fee_bps": 20, "status": "trading",
    }
    response = await admin.http.get("/api/v1/markets/DOGE-USD/book")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "UNKNOWN_SYMBOL")
    response = await admin.http.get("/api/v1/markets/BTC-USD/book?depth=0")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "INVALID_REQUEST")
    assert (await admin.http.get("/healthz")).status_code == 200
    assert (await admin.http.get("/readyz")).status_code == 200
    assert isinstance((await admin.http.get("/api/v1/time")).json()["server_time"], int)


async def test_operator_routes_refuse_api_keys_and_missing_token(admin: ExchangeClient) -> None:
    credentials = await admin.create_account()
    path = "/api/v1/admin/accounts"
    signed = signed_headers(credentials.api_key, credentials.api_secret, "POST", path)
    for headers in ({}, signed, {"authorization": "Bearer wrong"}):
        response = await admin.http.post(path, headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (401, "UNAUTHORIZED")
    response = await admin.http.post("/api/v1/admin/deposits", headers={
        "authorization": f"Bearer {admin.admin_token}"}, json={
        "account_id": "999999", "asset": "USD", "amount": "1"})
    assert (response.status_code, response.json()["error"]["code"]) == (404, "UNKNOWN_ACCOUNT")
    # Balances stay below 2**53 units (exact in the scripts): 9e9 USD is fine once...
    await admin.deposit(credentials.account_id, "USD", "9000000000")
    with pytest.raises(ApiError) as too_much:  # ...but not twice
        await admin.deposit(credentials.account_id, "USD", "9000000000")
    assert too_much.value.code == "INVALID_AMOUNT"
    balances = await admin.as_account(credentials).balances()
    assert balances["USD"]["available"] == "9000000000.000000"
