"""The engine loop on a real cluster: batches, one commit each, market data that agrees
with the event log, and recovery by replay."""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict

import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.common import keys
from services.common.intervals import INTERVALS_MS
from services.common.messages import (
    CancelOrder,
    PlaceOrder,
    Trade,
    TradeTick,
    command_decoder,
    encode,
    events_decoder,
    md_decoder,
)
from services.common.pairs import parse_markets
from services.engine.book import OrderBook
from services.engine.runner import Engine, entry_time_ms


def private_pair(symbol: str):
    """A pair of the test's own, so no engine of the shared stack touches its slot."""
    base = symbol.split("-")[0]
    return parse_markets({
        "assets": {base: {"decimals": 8}, "USD": {"decimals": 6}},
        "pairs": [{"symbol": symbol, "tick_size": "0.01", "lot_size": "0.001",
                   "min_qty": "0.001", "max_qty": "1000", "min_notional": "1",
                   "price_decimals": 2, "qty_decimals": 3}],
    }).pair(symbol)


def random_commands(n: int, seed: int) -> list:
    rnd = random.Random(seed)
    commands: list = []
    for i in range(n):
        if commands and rnd.random() < 0.2:
            placed = rnd.choice(commands)
            if isinstance(placed, PlaceOrder):
                commands.append(CancelOrder(placed.order_id, placed.account_id))
                continue
        commands.append(PlaceOrder(f"o{i}", rnd.choice("ab"), rnd.choice(["buy", "sell"]),
                                   10_000 + rnd.randint(-20, 20), rnd.randint(1, 50),
                                   rnd.choice(["GTC", "GTC", "IOC"])))  # type: ignore[arg-type]
    return commands


async def run_engine(redis, engine: Engine, commands: list, batch: int) -> int:
    """Enqueue `commands`, then process them `batch` at a time; returns batches."""
    inbox = engine.keys.inbox
    for command in commands:
        await redis.xadd(inbox, {"c": encode(command), "tp": b""})
    batches = 0
    while True:
        engine.batch_size = batch
        got = await engine.read_batch()
        if not got:
            return batches
        await engine.process_batch(got)
        batches += 1


async def test_each_batch_commits_once_and_market_data_agrees_with_the_event_log(redis) -> None:
    pair = private_pair("CNDL-USD")
    pair_keys = keys.PairKeys(pair.symbol)
    node = redis.get_node_from_key(pair_keys.md)  # sharded channels live on their master
    sub_client = Redis(host=node.host, port=node.port)
    pubsub = sub_client.pubsub()
    await pubsub.ssubscribe(pair_keys.md)

    engine = Engine(redis, pair)
    await engine.recover()
    batches = await run_engine(redis, engine, random_commands(600, seed=1), batch=50)
    assert batches == 12

    updates = []
    deadline = time.monotonic() + 10
    while not updates or updates[-1].seq < engine.md_seq:
        assert time.monotonic() < deadline, "market data did not arrive"
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            updates.append(md_decoder.decode(message["data"]))
    await pubsub.aclose()
    await sub_client.aclose()
    assert 0 < len(updates) <= batches  # one message per batch at most, never per order
    assert [u.seq for u in updates] == list(range(1, len(updates) + 1))
    assert all(u.prev_seq == u.seq - 1 for u in updates)

    # Trades in the event log, aggregated by hand, are exactly the stored candles.
    trades = [e for _, fields in await redis.xrange(pair_keys.events)
              for e in events_decoder.decode(fields[b"e"]) if isinstance(e, Trade)]
    assert trades and [t.trade_id for t in trades] == list(range(1, len(trades) + 1))
    for interval, length in INTERVALS_MS.items():
        expected: dict[int, dict] = {}
        by_bucket: dict[int, list[Trade]] = defaultdict(list)
        for trade in trades:
            by_bucket[trade.ts - trade.ts % length].append(trade)
        for start, bucket in by_bucket.items():
            expected[start] = {
                "t": start, "o": pair.format_price(bucket[0].price),
                "h": pair.format_price(max(t.price for t in bucket)),
                "l": pair.format_price(min(t.price for t in bucket)),
                "c": pair.format_price(bucket[-1].price),
                "v": pair.format_qty(sum(t.qty for t in bucket)),
                "qv": pair.quote.format(sum(pair.notional_units(t.price, t.qty)
                                            for t in bucket)),
                "n": len(bucket),
            }
        stored = [json.loads(m) for m in await redis.zrange(pair_keys.candles(interval), 0, -1)]
        assert stored == [expected[t] for t in sorted(expected)], interval
    # The trade tape and the last price agree with the log too.
    tape = [msgspec.msgpack.decode(t, type=TradeTick)
            for t in await redis.lrange(pair_keys.trades, 0, -1)]
    assert tape == [TradeTick(t.trade_id, t.price, t.qty, t.taker_side, t.ts)
                    for t in reversed(trades)][:len(tape)]
    assert int(await redis.hget(pair_keys.state, "last_price")) == trades[-1].price


async def test_a_restarted_engine_rebuilds_the_same_book_and_replay_is_byte_identical(
        redis) -> None:
    pair = private_pair("RPLY-USD")
    pair_keys = keys.PairKeys(pair.symbol)
    first = Engine(redis, pair)
    await first.recover()
    await run_engine(redis, first, random_commands(400, seed=2), batch=64)

    restarted = Engine(redis, pair)
    await restarted.recover()
    assert restarted.book.depth("buy") == first.book.depth("buy")
    assert restarted.book.depth("sell") == first.book.depth("sell")
    assert (restarted.md_seq, restarted.epoch) == (first.md_seq, first.epoch)

    # The committed inputs, replayed through a fresh book, give the committed events.
    logged = [e for _, fields in await redis.xrange(pair_keys.events)
              for e in events_decoder.decode(fields[b"e"])]
    replayed = []
    fresh = OrderBook(band_bps=pair.market_band_bps)
    for entry_id, fields in await redis.xrange(pair_keys.inbox):
        replayed += fresh.apply(command_decoder.decode(fields[b"c"]), entry_time_ms(entry_id))
    assert encode(replayed) == encode(logged)

    # And the restarted engine carries on where the first stopped.
    late = PlaceOrder("late", "a", "buy", 9_000, 1)  # type: ignore[arg-type]
    await run_engine(redis, restarted, [late], batch=10)
    assert restarted.book.depth("buy")[-1] == (9_000, 1)


async def test_restart_from_a_snapshot_rebuilds_the_live_state_and_old_inputs_are_trimmed(
        redis) -> None:
    pair = private_pair("SNAP-USD")
    pair_keys = keys.PairKeys(pair.symbol)
    engine = Engine(redis, pair, snapshot_every=150)
    await engine.recover()
    for seed in (5, 6, 7):  # three snapshots, each awaited: a forked child writes them
        await run_engine(redis, engine, random_commands(160, seed=seed), batch=50)
        assert engine._snapshotting is not None
        await engine._snapshotting
    assert await redis.exists(pair_keys.snapshot)
    late = PlaceOrder("after-snapshot", "a", "buy", 9_990, 2)  # type: ignore[arg-type]
    await run_engine(redis, engine, [late], batch=50)
    # Inputs older than the previous snapshot are gone; recovery never needs them.
    assert await redis.xlen(pair_keys.inbox) < 3 * 160

    restarted = Engine(redis, pair)
    await restarted.recover()
    assert restarted.book.depth("buy") == engine.book.depth("buy")
    assert restarted.book.depth("sell") == engine.book.depth("sell")
    assert [(o.order_id, o.remaining) for o in restarted.book.orders.values()] == \
        [(o.order_id, o.remaining) for o in engine.book.orders.values()]
    assert (restarted.book.last_price, restarted.book.last_seq) == (
        engine.book.last_price, engine.book.last_seq)
    assert {i: (b.t, b.o, b.h, b.l, b.c, b.v, b.n)
            for i, b in restarted.candles.current.items()} == {
        i: (b.t, b.o, b.h, b.l, b.c, b.v, b.n) for i, b in engine.candles.current.items()}
    assert (restarted.md_seq, restarted.epoch) == (engine.md_seq, engine.epoch)


async def test_a_batch_that_skips_an_input_is_refused_and_changes_nothing(redis) -> None:
    """Inputs commit in stream order: a batch starting past an uncommitted input (as a
    stale read could hand over) is refused whole by the commit script."""
    pair = private_pair("GAPS-USD")
    pair_keys = keys.PairKeys(pair.symbol)
    engine = Engine(redis, pair)
    await engine.recover()
    for order_id in ("g1", "g2"):
        await redis.xadd(pair_keys.inbox, {"c": encode(PlaceOrder(order_id, "a", "buy", 100, 1)),
                                           "tp": b""})
    _, second = await engine.read_batch()
    state_before = await redis.hgetall(pair_keys.state)
    with pytest.raises(ResponseError, match="GAP"):
        await engine.process_batch([second])
    assert await redis.hgetall(pair_keys.state) == state_before
    assert await redis.xlen(pair_keys.events) == 0
    # Recovered, the engine reads on from its last commit and takes both, in order.
    await engine.recover()
    await engine.process_batch(await engine.read_batch())
    assert await redis.hget(pair_keys.state, "last_input_id") == second[0]
    events = [e for _, fields in await redis.xrange(pair_keys.events)
              for e in events_decoder.decode(fields[b"e"])]
    assert [e.order_id for e in events] == ["g1", "g2"]
