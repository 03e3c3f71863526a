"""API keys: secrets sealed at rest and never logged; per-key rate limits answer 429."""

from __future__ import annotations

from services.common import keys
from services.common.client import ExchangeClient
from services.local.up import LocalExchange


async def test_the_api_secret_is_stored_sealed_and_never_logged(
        stack: LocalExchange, admin: ExchangeClient, redis) -> None:
    credentials = await admin.create_account()
    trader = admin.as_account(credentials)
    assert (await trader.balances())["USD"]["available"] == "0.000000"  # the key works
    record = await redis.hgetall(keys.api_key(credentials.api_key))
    stored = b" ".join(record.values())
    assert credentials.api_secret.encode() not in stored
    assert set(record) == {b"account_id", b"secret_sealed", b"rate_per_s", b"burst"}
    for log in (stack.options.log_dir or stack.options.data_dir).glob("*.log"):
        assert credentials.api_secret not in log.read_text(errors="replace"), log.name


async def test_a_key_over_its_rate_gets_429_with_retry_after_and_nothing_is_done(
        admin: ExchangeClient, redis) -> None:
    credentials = await admin.create_account(per_second=0.5, burst=3)
    await admin.deposit(credentials.account_id, "USD", "1000")
    trader = admin.as_account(credentials)
    for _ in range(3):  # the burst
        assert (await trader.request("GET", "/api/v1/balances", signed=True)).status_code == 200
    inbox = keys.PairKeys("BTC-USD").inbox
    queued = await redis.xlen(inbox)
    refused = await trader.request("POST", "/api/v1/orders", {
        "symbol": "BTC-USD", "side": "buy", "price": "50000.00", "qty": "0.0010"}, signed=True)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    assert await redis.xlen(inbox) == queued
    still = await trader.request("GET", "/api/v1/balances", signed=True)
    assert still.status_code == 429  # a refused request does not refill the bucket
