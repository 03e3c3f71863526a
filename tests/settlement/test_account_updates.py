"""Every change to an account is published with it, numbered, on the account's channel."""

from __future__ import annotations

import json
import time

from redis.asyncio import Redis

from services.api.accounts import AccountStore
from services.api.orders import OrderService
from services.api.schemas import OrderRequest
from services.common import keys
from services.common.pairs import parse_markets
from services.common.secrets_box import SecretBox, new_key
from tests.support.pipeline import match_queued, settle_all

MARKETS = parse_markets({
    "assets": {"UPD": {"decimals": 8}, "USD": {"decimals": 6}},
    "pairs": [{"symbol": "UPD-USD", "tick_size": "0.01", "lot_size": "0.001",
               "min_qty": "0.001", "max_qty": "1000", "min_notional": "1",
               "price_decimals": 2, "qty_decimals": 3, "taker_fee_bps": 20}],
})
PAIR = MARKETS.pair("UPD-USD")


async def test_deposit_hold_and_fill_each_publish_a_numbered_update(redis) -> None:
    accounts = AccountStore(redis, MARKETS, SecretBox(new_key()))
    orders = OrderService(redis, MARKETS)
    seller, buyer = await accounts.create(), await accounts.create()
    channel = keys.AccountKeys(buyer.account_id).updates
    node = redis.get_node_from_key(channel)  # sharded channels live on the slot's master
    subscriber = Redis(host=node.host, port=node.port)
    pubsub = subscriber.pubsub()
    await pubsub.ssubscribe(channel)
    try:
        await accounts.deposit(seller.account_id, "UPD", "5")
        await accounts.deposit(buyer.account_id, "USD", "1000")
        await orders.place(seller.account_id, OrderRequest(
            symbol="UPD-USD", side="sell", price="100.00", qty="1.000"))
        placed, _ = await orders.place(buyer.account_id, OrderRequest(
            symbol="UPD-USD", side="buy", price="100.00", qty="1.000"))
        await match_queued(redis, PAIR)
        await settle_all(redis, PAIR)

        updates = []
        deadline = time.monotonic() + 10
        while len(updates) < 3:
            assert time.monotonic() < deadline, f"only {updates}"
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message:
                updates.append(json.loads(message["data"]))
    finally:
        await pubsub.aclose()
        await subscriber.aclose()

    deposit, hold, fill = updates
    assert [u["seq"] for u in updates] == [1, 2, 3]
    assert deposit == {"seq": 1, "balances": {"USD": ["1000000000", "0"]}}
    assert hold["orders"][0]["order_id"] == placed["order_id"]
    assert hold["balances"] == {"USD": ["899800000", "100200000"]}  # 100 + 0.2 % fee held
    [order] = fill["orders"]
    assert (order["status"], order["filled"]) == ("filled", "1000")
    [trade] = fill["fills"]
    assert (trade["px"], trade["qty"], trade["fee"], trade["liquidity"]) == (
        "100.00", "1.000", "0.200000", "taker")
    assert fill["balances"] == {"USD": ["899800000", "0"], "UPD": ["100000000", "0"]}
