"""One writer per pair: a fenced lease, standbys that take over, and nothing lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from redis.exceptions import ResponseError

from services.common import keys
from services.common.client import ExchangeClient
from services.common.messages import PlaceOrder, encode
from services.common.pairs import parse_markets
from services.common.redis_conn import connect
from services.engine.lease import Lease
from services.engine.runner import Engine
from services.local.up import LocalExchange
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
    entries = (await redis.xreadgroup(keys.ENGINE_GROUP, old.consumer,
                                      {pair_keys.inbox: ">"}))[0][1]
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
    # The new leader commits the same input (redelivered to the pair's one consumer).
    await new.recover()
    pending = (await redis.xreadgroup(keys.ENGINE_GROUP, new.consumer,
                                      {pair_keys.inbox: "0"}))[0][1]
    await new.process_batch(pending)
    assert new.book.depth("buy") == [(100, 1)]


async def test_killing_the_leading_engine_hands_the_pair_to_its_standby_with_nothing_lost(
        stack: LocalExchange, admin: ExchangeClient) -> None:
    redis = await connect(stack.redis_url)
    try:
        lease_key = keys.PairKeys("ETH-USD").lease
        holder = (await redis.hget(lease_key, "holder")).decode()
        token = int(await redis.hget(lease_key, "token"))
        leader_pid = int(holder.rsplit(":", 1)[1])
        engines = [c for c in stack.children if c.name.startswith("engine[ETH-USD]")]
        assert len(engines) == 2 and leader_pid in {c.process.pid for c in engines}
        seller = await admin.create_account()
        await admin.deposit(seller.account_id, "ETH", "1")
        trader = admin.as_account(seller)
        os.kill(leader_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # Acknowledged while no engine leads: must not be lost.
        order = await trader.place_order("ETH-USD", "sell", "3900.00", "0.100")

        async def taken_over() -> bool:
            return int(await redis.hget(lease_key, "token") or 0) > token

        await eventually(taken_over, "a standby to take the lease", timeout=15)
        takeover_s = time.monotonic() - killed_at
        assert takeover_s < 10

        async def resting() -> bool:
            asks = (await admin.book("ETH-USD", depth=5000))["asks"]
            return any(price == "3900.00" for price, _ in asks)

        await eventually(resting, "the order placed during the failover to rest")
        await trader.cancel_order(order["order_id"])
    finally:
        # Put the killed engine back, as the supervisor of `make up` would.
        for child in stack.children:
            if child.process and child.process.poll() is not None:
                stack._spawn(child)
        await redis.aclose()


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
