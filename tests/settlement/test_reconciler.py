"""A hold whose command never reached the engine is found and re-sent, never both
re-sent and released; the engine ignores a second delivery."""

from __future__ import annotations

import pytest

from services.api.accounts import AccountStore
from services.api.orders import OrderService
from services.api.schemas import OrderRequest
from services.common import keys
from services.common.messages import Command
from services.common.pairs import Pair, parse_markets
from services.common.secrets_box import SecretBox, new_key
from services.engine.runner import Engine
from services.settlement.reconciler import reconcile_once
from services.settlement.worker import PairSettler

MARKETS = parse_markets({
    "assets": {"STRD": {"decimals": 8}, "USD": {"decimals": 6}},
    "pairs": [{"symbol": "STRD-USD", "tick_size": "0.01", "lot_size": "0.001",
               "min_qty": "0.001", "max_qty": "1000", "min_notional": "1",
               "price_decimals": 2, "qty_decimals": 3}],
})
PAIR = MARKETS.pair("STRD-USD")


class ApiThatDiesBeforeEnqueue(OrderService):
    """Fault injection: the process stops right after the funds are held."""

    async def _enqueue(self, pair: Pair, command: Command) -> None:
        raise ConnectionError("API process died")


async def run_engine_and_settle(redis, engine: Engine) -> None:
    pair_keys = keys.PairKeys(PAIR.symbol)
    batch = await engine.read_batch()
    if batch:
        await engine.process_batch(batch)
    settler = PairSettler(redis, PAIR)
    await settler.ensure_group()
    got = await redis.xreadgroup(keys.SETTLEMENT_GROUP, "test", {pair_keys.events: ">"})
    for _, fields in (got[0][1] if got else []):
        await settler.settle_entry(fields)


async def test_a_stranded_hold_is_re_sent_once_and_ends_up_an_ordinary_order(redis) -> None:
    accounts = AccountStore(redis, MARKETS, SecretBox(new_key()))
    trader = await accounts.create()
    await accounts.deposit(trader.account_id, "USD", "1000")
    request = OrderRequest(symbol="STRD-USD", side="buy", price="100.00", qty="2.000")
    with pytest.raises(ConnectionError):
        await ApiThatDiesBeforeEnqueue(redis, MARKETS).place(trader.account_id, request)
    inbox = keys.PairKeys(PAIR.symbol).inbox
    assert await redis.xlen(inbox) == 0  # held, never enqueued: stranded
    assert (await accounts.balances(trader.account_id))[1]["held"] == "200.000000"
    unconfirmed = keys.AccountKeys(trader.account_id).unconfirmed
    [stranded] = [oid.decode() for oid in await redis.zrange(unconfirmed, 0, -1)]

    assert await reconcile_once(redis, stale_after_ms=0) == [stranded]
    assert await redis.xlen(inbox) == 1
    assert await reconcile_once(redis, stale_after_ms=0) == []  # in the stream: not again

    # A late delivery of the same command by the slow API changes nothing.
    [(_, fields)] = await redis.xrange(inbox)
    await redis.xadd(inbox, fields)
    engine = Engine(redis, PAIR)
    await engine.recover()
    await run_engine_and_settle(redis, engine)
    assert engine.book.depth("buy") == [(10_000, 2_000)]  # one order, not two
    assert await redis.zcard(unconfirmed) == 0
    order = await OrderService(redis, MARKETS).get(trader.account_id, stranded)
    assert (order["status"], order["qty"]) == ("new", "2.000")
    assert (await accounts.balances(trader.account_id))[1] == {
        "asset": "USD", "available": "800.000000", "held": "200.000000"}
