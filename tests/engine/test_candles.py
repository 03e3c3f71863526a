"""Candles folded from trades, batch by batch, equal bars computed from scratch."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.intervals import INTERVALS_MS
from services.common.messages import OrderCancelled, Trade
from services.engine.candles import Candles

QUOTE_UNITS_PER_TICK_LOT = 7
DAY_MS = 86_400_000


def trade(ts: int, price: int, qty: int) -> Trade:
    return Trade(0, ts, 0, price, qty, "buy", "m", "ma", "t", "ta", False, False)


def bars_from_scratch(trades: list[Trade]) -> dict[tuple[str, int], tuple[int, ...]]:
    """(interval, start) -> (o, h, l, c, v, qv, n), straight from the definition."""
    out: dict[tuple[str, int], list[Trade]] = {}
    for interval, length in INTERVALS_MS.items():
        for t in trades:
            out.setdefault((interval, t.ts - t.ts % length), []).append(t)
    return {key: (ts[0].price, max(t.price for t in ts), min(t.price for t in ts),
                  ts[-1].price, sum(t.qty for t in ts),
                  sum(t.price * t.qty for t in ts) * QUOTE_UNITS_PER_TICK_LOT, len(ts))
            for key, ts in out.items()}


steps = st.lists(st.tuples(st.integers(0, 400_000), st.integers(1, 50), st.integers(1, 9)),
                 min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(steps, st.integers(0, 3 * DAY_MS), st.lists(st.integers(1, 20), min_size=1))
def test_batches_of_trades_give_the_bars_of_every_interval(
        raw: list[tuple[int, int, int]], day_start: int, batch_sizes: list[int]) -> None:
    ts = day_start
    trades = []
    for gap, price, qty in raw:  # times only grow, across minute/hour/day boundaries
        ts += gap
        trades.append(trade(ts, price, qty))
    candles, seen = Candles(), {}
    i = 0
    while i < len(trades):
        size = batch_sizes[i % len(batch_sizes)]
        # Other events in between are ignored.
        batch = [e for t in trades[i:i + size]
                 for e in (t, OrderCancelled(0, t.ts, "x", "a", 1, "user"))]
        candles.on_trades(batch, QUOTE_UNITS_PER_TICK_LOT)
        for bar in candles.take_changed():
            seen[(bar.interval, bar.t)] = (bar.o, bar.h, bar.l, bar.c, bar.v, bar.qv, bar.n)
        i += size
    assert seen == bars_from_scratch(trades)
    last = trades[-1].ts
    assert {i: b.t for i, b in candles.current.items()} == {
        i: last - last % length for i, length in INTERVALS_MS.items()}
