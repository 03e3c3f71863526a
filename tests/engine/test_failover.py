"""One writer per pair: a fenced lease, standbys that take over, and nothing lost."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
from redis.exceptions import ResponseError

from services.common import keys
from services.common.client import ExchangeClient
from services.common.messages import PlaceOrder, Trade, encode
from services.common.pairs import load_markets, parse_markets
from services.engine.lease import Lease
from services.engine.runner import Engine
from services.local.up import LocalExchange
from tests.support.faults import (
    TradingLoad,
    balance_changes,
    event_log,
    filled_lots,
    placement_outcomes,
    replay,
    trades_of,
    wire_book,
)
from tests.support.ledger import ledger_totals, wait_until_settled
from tests.support.waiting import eventually

PAIR = parse_markets({
    "assets": {"LSE": {"decimals": 8}, "USD": {"decimals": 6}},
    "pairs": [{"symbol": "LSE-USD", "tick_size": "0.01", "lot_size": "0.001",
               "min_qty": "0.001", "max_qty": "1000", "min_notional": "1",
               "price_decimals": 2, "qty_decimals": 3}],
}).pair("LSE-USD")


async def test_a_writer_paused_past_its_lease_can_never_commit(redis) -> None:
    pair_keys = keys.PairKeys(PAIR.symbol)
    old = Engine(redis, PAIR, lease=Lease(redis, pair_keys, "old", ttl_ms=200))
    assert await old.lease.try_acquire()  # type: ignore[union-attr]
    await old.recover()
    await redis.xadd(pair_keys.inbox, {"c": encode(PlaceOrder("a", "x", "buy", 100, 1)),
                                       "tp": b""})
    entries = await old.read_batch()
    # The old writer stalls (no renewal); a standby takes over once the lease lapses.
    new = Engine(redis, PAIR, lease=Lease(redis, pair_keys, "new", ttl_ms=5_000))
    await eventually(new.lease.try_acquire, "the standby to take the lapsed lease")  # type: ignore[union-attr]
    assert new.lease.token == old.lease.token + 1  # type: ignore[union-attr]
    state_before = await redis.hgetall(pair_keys.state)
    with pytest.raises(ResponseError, match="FENCED"):
        await old.process_batch(entries)
    assert await redis.hgetall(pair_keys.state) == state_before
    assert await redis.xlen(pair_keys.events) == 0
    assert not await old.lease.renew()  # type: ignore[union-attr]
    # The new leader reads on from the last commit, so it commits the same input.
    await new.recover()
    await new.process_batch(await new.read_batch())
    assert new.book.depth("buy") == [(100, 1)]


async def test_inputs_a_fenced_writer_read_late_are_still_matched_first_by_the_leader(
        redis) -> None:
    """A writer that lost its lease can still read inputs (a read is not fenced). Its
    reads must take nothing from the leader, which matches every input in stream order,
    or replaying the inputs would not give its book."""
    pair = parse_markets({
        "assets": {"FNC": {"decimals": 8}, "USD": {"decimals": 6}},
        "pairs": [{"symbol": "FNC-USD", "tick_size": "0.01", "lot_size": "0.001",
                   "min_qty": "0.001", "max_qty": "1000", "min_notional": "0.01",
                   "price_decimals": 2, "qty_decimals": 3}],
    }).pair("FNC-USD")
    pair_keys = keys.PairKeys(pair.symbol)

    async def send(order_id: str, side: str, price: int) -> bytes:
        return await redis.xadd(pair_keys.inbox, {
            "c": encode(PlaceOrder(order_id, order_id, side, price, 1)), "tp": b""})

    old = Engine(redis, pair, lease=Lease(redis, pair_keys, "old", ttl_ms=200))
    assert await old.lease.try_acquire()  # type: ignore[union-attr]
    await old.recover()
    leader = Engine(redis, pair, block_ms=50,
                    lease=Lease(redis, pair_keys, "leader", ttl_ms=5_000))
    stop = asyncio.Event()
    leading = asyncio.create_task(leader.run(stop))
    try:
        first = await send("w", "buy", 90)

        async def committed(entry_id: bytes) -> bool:
            return await redis.hget(pair_keys.state, "last_input_id") == entry_id

        await eventually(lambda: committed(first), "the leader to match a first input")
        # The old writer wakes up and reads the next input too.
        await send("a", "buy", 100)
        stolen = await old.read_batch()
        assert [fields[b"c"] for _, fields in stolen][-1] == encode(
            PlaceOrder("a", "a", "buy", 100, 1))
        with pytest.raises(ResponseError, match="FENCED"):
            await old.process_batch(stolen)
        last = await send("b", "sell", 100)
        await eventually(lambda: committed(last), "the leader to match the last input")
    finally:
        stop.set()
        await leading
    trades = [e for e in await event_log(redis, pair.symbol) if isinstance(e, Trade)]
    assert [(t.maker_order_id, t.taker_order_id, t.price) for t in trades] == [("a", "b", 100)]
    assert leader.book.depth("buy") == [(90, 1)] and leader.book.depth("sell") == []
    book, replayed = await replay(redis, pair)
    assert replayed == await event_log(redis, pair.symbol)
    assert (book.depth("buy"), book.depth("sell")) == ([(90, 1)], [])


async def test_killing_the_leading_engine_under_load_hands_over_within_5_s_losing_nothing(
        stack: LocalExchange, admin: ExchangeClient, redis) -> None:
    """kill -9 of the active engine while two accounts trade: the standby takes over
    within 5 s; every acknowledged order is in the event log once, with its outcome;
    the book and the balances are what a replay of the log gives; money is conserved."""
    symbol = "ETH-USD"
    pair = load_markets().pair(symbol)
    lease_key = keys.PairKeys(symbol).lease
    holder = (await redis.hget(lease_key, "holder")).decode()
    token = int(await redis.hget(lease_key, "token"))
    leader_pid = int(holder.rsplit(":", 1)[1])
    engines = {c.process.pid: c for c in stack.children
               if c.name.startswith(f"engine[{symbol}]") and c.process}
    assert len(engines) == 2 and leader_pid in engines
    deposits = {"buyer": ("USD", "1000000"), "seller": ("ETH", "2000")}
    accounts = {}
    for role, (asset, amount) in deposits.items():
        accounts[role] = await admin.create_account()
        await admin.deposit(accounts[role].account_id, asset, amount)
    last = (await admin.call("GET", f"/api/v1/markets/{symbol}/ticker"))["last"]
    load = TradingLoad(stack.api_url, pair, accounts["buyer"], accounts["seller"],
                       mid=pair.price_to_ticks(last or "3000.00"), rate=30, tag="engine-kill")
    tally = load.tally
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    try:
        await eventually(lambda: len(tally.acked) >= 40, "orders before the kill", timeout=20)
        engines[leader_pid].process.kill()
        killed_at = time.monotonic()

        async def taken_over() -> bool:
            return int(await redis.hget(lease_key, "token") or 0) > token

        await eventually(taken_over, "a standby to take the lease", timeout=5)
        takeover_s = time.monotonic() - killed_at
        await eventually(lambda: tally.acked_since(killed_at + takeover_s) >= 40,
                         "orders after the takeover", timeout=20)
    finally:
        stop.set()
        await running
        # Put the killed engine back, as the supervisor of `make up` would.
        for child in stack.children:
            if child.process and child.process.poll() is not None:
                stack._spawn(child)
    new_holder = (await redis.hget(lease_key, "holder")).decode()
    assert int(new_holder.rsplit(":", 1)[1]) in set(engines) - {leader_pid}
    for credentials in accounts.values():
        await admin.as_account(credentials).call(
            "DELETE", f"/api/v1/orders?symbol={symbol}", signed=True)
    await wait_until_settled(redis, [symbol], timeout=30)

    log = await event_log(redis, symbol)
    outcomes = placement_outcomes(log)
    assert {order_id: outcomes[order_id] for order_id in tally.acked} == dict.fromkeys(
        tally.acked, 1)
    filled = filled_lots(log)
    for order_id, acked in tally.acked.items():
        owner = accounts["buyer" if acked["side"] == "buy" else "seller"]
        order = await admin.as_account(owner).order(order_id)
        assert order["status"] in {"filled", "cancelled"}, order
        assert Decimal(order["filled_qty"]) == pair.lot_size * filled[order_id], order

    # The pure book fed the committed inputs gives the very events logged and the book.
    book, replayed = await replay(redis, pair)
    assert replayed == log
    rest = await admin.book(symbol, depth=5000)
    assert wire_book(pair, book, 5000) == {"bids": rest["bids"], "asks": rest["asks"]}

    for role, credentials in accounts.items():
        balances = await admin.as_account(credentials).balances()
        change = balance_changes(pair, log, credentials.account_id)
        for asset in (pair.base, pair.quote):
            deposit = (int(Decimal(deposits[role][1]) / asset.unit)
                       if deposits[role][0] == asset.symbol else 0)
            assert balances[asset.symbol] == {
                "asset": asset.symbol, "available": asset.format(deposit + change[asset.symbol]),
                "held": asset.format(0)}, (role, asset.symbol)
    deposited, holdings, negatives = await ledger_totals(redis)
    assert negatives == []
    assert holdings == deposited
    print(f"\n{symbol}: leader killed after {len(tally.acked) - tally.acked_since(killed_at)} "
          f"acknowledged orders; standby took over in {takeover_s:.1f} s; "
          f"{len(tally.acked)} orders acknowledged, {tally.retries} requests re-sent, "
          f"slowest acknowledgement {tally.slowest_ack_s:.1f} s, "
          f"{len(trades_of(log))} trades in the log")
    assert tally.unanswered == []
    assert set(tally.refused) <= {"ORDER_NOT_OPEN"}  # a cancel that came after the fill


async def test_a_cleanly_stopped_leader_hands_the_lease_over_at_once(redis) -> None:
    pair_keys = keys.PairKeys("LSE-USD")
    await redis.delete(pair_keys.lease)
    leader = Engine(redis, PAIR, block_ms=50, lease=Lease(redis, pair_keys, "a", ttl_ms=60_000))
    stop = asyncio.Event()
    running = asyncio.create_task(leader.run(stop))
    await eventually(lambda: leader.lease.token > 0, "the leader to take the lease")  # type: ignore[union-attr]
    stop.set()
    await running
    # A 60 s lease, yet the standby gets it straight away.
    standby = Lease(redis, pair_keys, "b", ttl_ms=60_000)
    assert await standby.try_acquire()
    assert standby.token == leader.lease.token + 1  # type: ignore[union-attr]
