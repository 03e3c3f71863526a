"""Fees and maker rebates, hand-computed: maker, taker and the fee account."""

from __future__ import annotations

import json
from decimal import Decimal

from services.api.accounts import AccountStore
from services.api.orders import OrderService
from services.api.schemas import OrderRequest
from services.common import keys
from services.common.pairs import parse_markets
from services.common.secrets_box import SecretBox, new_key
from tests.support.pipeline import match_queued, settle_all

# Its own pair (no engine of the shared stack touches its slot): 0.2 % taker fee and a
# 0.05 % maker rebate.
MARKETS = parse_markets({
    "assets": {"FEE": {"decimals": 8}, "USD": {"decimals": 6}},
    "pairs": [{"symbol": "FEE-USD", "tick_size": "0.01", "lot_size": "0.001",
               "min_qty": "0.001", "max_qty": "1000", "min_notional": "1",
               "price_decimals": 2, "qty_decimals": 3, "maker_fee_bps": -5,
               "taker_fee_bps": 20}],
})
PAIR = MARKETS.pair("FEE-USD")


async def test_taker_pays_the_fee_maker_earns_the_rebate_fee_account_keeps_the_rest(
        redis) -> None:
    accounts = AccountStore(redis, MARKETS, SecretBox(new_key()))
    orders = OrderService(redis, MARKETS)
    maker, taker = await accounts.create(), await accounts.create()
    await accounts.deposit(maker.account_id, "FEE", "5")
    await accounts.deposit(taker.account_id, "USD", "1000")
    fees_before = await accounts.balances(keys.FEE_ACCOUNT)
    await orders.place(maker.account_id, OrderRequest(
        symbol="FEE-USD", side="sell", price="100.00", qty="2.000"))
    placed, _ = await orders.place(taker.account_id, OrderRequest(
        symbol="FEE-USD", side="buy", price="101.00", qty="1.500"))
    # The buy holds 101 * 1.5 = 151.5 plus the largest fee it could pay, 0.2 %: 0.303.
    assert (await accounts.balances(taker.account_id))[1] == {
        "asset": "USD", "available": "848.197000", "held": "151.803000"}

    await match_queued(redis, PAIR)
    await settle_all(redis, PAIR)

    # 1.5 traded at the maker's 100.00: notional 150. The taker pays 150 + 0.30 fee; the
    # maker receives 150 + 0.075 rebate; the fee account nets 0.30 - 0.075 = 0.225.
    assert await accounts.balances(taker.account_id) == [
        {"asset": "FEE", "available": "1.50000000", "held": "0.00000000"},
        {"asset": "USD", "available": "849.700000", "held": "0.000000"},
    ]
    assert await accounts.balances(maker.account_id) == [
        {"asset": "FEE", "available": "3.00000000", "held": "0.50000000"},
        {"asset": "USD", "available": "150.075000", "held": "0.000000"},
    ]
    fees_after = await accounts.balances(keys.FEE_ACCOUNT)
    earned = Decimal(fees_after[1]["available"]) - Decimal(fees_before[1]["available"])
    assert earned == Decimal("0.225")
    taker_fill = json.loads(await redis.lindex(keys.AccountKeys(taker.account_id).fills, 0))
    maker_fill = json.loads(await redis.lindex(keys.AccountKeys(maker.account_id).fills, 0))
    assert (taker_fill["fee"], taker_fill["liquidity"], taker_fill["order_id"]) == (
        "0.300000", "taker", placed["order_id"])
    assert (maker_fill["fee"], maker_fill["liquidity"]) == ("-0.075000", "maker")
