"""What the exchange acknowledges is on a replica: an order's hold and command, an
operator's deposit or withdrawal; and what was sent again is applied once."""

from __future__ import annotations

from services.common import keys
from services.common.client import ExchangeClient
from services.local.redis_cluster import LocalRedisCluster
from services.local.up import LocalExchange
from tests.support.faults import replica_stalled


async def test_no_ack_while_the_replica_cannot_confirm_and_a_retry_returns_the_same_order(
        stack: LocalExchange, admin: ExchangeClient, redis_cluster: LocalRedisCluster) -> None:
    credentials = await admin.create_account()
    await admin.deposit(credentials.account_id, "ETH", "1")
    trader = admin.as_account(credentials)
    body = {"symbol": "ETH-USD", "side": "sell", "price": "3300.00", "qty": "0.010",
            "client_order_id": "durable-1"}
    async with replica_stalled(redis_cluster, keys.PairKeys("ETH-USD").inbox):
        stalled = await trader.request("POST", "/api/v1/orders", body, signed=True)
    assert stalled.status_code == 503
    assert stalled.json()["error"]["code"] == "NOT_DURABLE"
    # The outcome was unknown to the client; the retry with the same client id finds the
    # one order (held once), now safely replicated.
    retried = await trader.request("POST", "/api/v1/orders", body, signed=True)
    assert retried.status_code == 200
    order = retried.json()
    assert order["client_order_id"] == "durable-1"
    assert (await trader.balances())["ETH"] == {"asset": "ETH", "available": "0.99000000",
                                                 "held": "0.01000000"}
    await trader.cancel_order(order["order_id"])


async def test_a_deposit_is_acknowledged_only_on_a_replica_and_its_resend_credits_once(
        stack: LocalExchange, admin: ExchangeClient, redis_cluster: LocalRedisCluster) -> None:
    credentials = await admin.create_account()
    account_id = credentials.account_id
    body = {"account_id": account_id, "asset": "USD", "amount": "250.00",
            "reference": "wire-2026-0001"}
    async with replica_stalled(redis_cluster, keys.AccountKeys(account_id).balances):
        stalled = await admin.request("POST", "/api/v1/admin/deposits", body, admin=True)
    assert stalled.status_code == 503
    assert stalled.json()["error"]["code"] == "NOT_DURABLE"
    # The operator cannot know whether it landed: sending it again credits it once.
    again = await admin.request("POST", "/api/v1/admin/deposits", body, admin=True)
    assert again.status_code == 200
    assert again.json() == {"account_id": account_id, "asset": "USD", "available": "250.000000",
                            "reference": "wire-2026-0001", "applied": False}
    assert (await admin.as_account(credentials).balances())["USD"]["available"] == "250.000000"


async def test_a_withdrawal_sent_twice_with_its_reference_is_debited_once(
        stack: LocalExchange, admin: ExchangeClient) -> None:
    credentials = await admin.create_account()
    account_id = credentials.account_id
    await admin.deposit(account_id, "ETH", "2")
    body = {"account_id": account_id, "asset": "ETH", "amount": "0.5",
            "reference": "chain-tx-77"}
    first = await admin.call("POST", "/api/v1/admin/withdrawals", body, admin=True)
    second = await admin.call("POST", "/api/v1/admin/withdrawals", body, admin=True)
    assert (first["applied"], second["applied"]) == (True, False)
    assert first["available"] == second["available"] == "1.50000000"
    assert (await admin.as_account(credentials).balances())["ETH"]["available"] == "1.50000000"


async def test_a_reference_names_one_transfer_and_reusing_it_for_another_changes_nothing(
        stack: LocalExchange, admin: ExchangeClient) -> None:
    credentials = await admin.create_account()
    account_id = credentials.account_id
    await admin.deposit(account_id, "USD", "100", reference="ref-1")
    for path, amount in (("deposits", "100.01"), ("withdrawals", "100"), ("deposits", "99")):
        refused = await admin.request("POST", f"/api/v1/admin/{path}", {
            "account_id": account_id, "asset": "USD", "amount": amount,
            "reference": "ref-1"}, admin=True)
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "REFERENCE_REUSED"
    # Without a reference every request is a transfer of its own.
    await admin.deposit(account_id, "USD", "100")
    await admin.deposit(account_id, "USD", "100")
    assert (await admin.as_account(credentials).balances())["USD"]["available"] == "300.000000"
