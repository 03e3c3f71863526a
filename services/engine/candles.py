"""OHLCV candles built from trades: pure, so replaying trades rebuilds them exactly."""

from __future__ import annotations

from collections.abc import Iterable

from services.common.intervals import INTERVALS_MS
from services.common.messages import Event, Trade

# Every interval is a whole number of the shortest one, aligned to the epoch, so trades
# within one shortest bucket fall in one bucket of every interval.
_SHORTEST_MS = min(INTERVALS_MS.values())
assert all(length % _SHORTEST_MS == 0 for length in INTERVALS_MS.values())


class Bar:
    """One interval's bar. Prices in ticks, `v` in lots, `qv` in quote units."""

    __slots__ = ("c", "h", "interval", "l", "n", "o", "qv", "t", "v")

    def __init__(self, interval: str, t: int, price: int) -> None:
        self.interval = interval
        self.t = t  # bucket start, ms
        self.o = self.h = self.l = self.c = price
        self.v = self.qv = self.n = 0


class Candles:
    """The current bar of every interval, and which bars changed since last asked."""

    def __init__(self) -> None:
        self.current: dict[str, Bar] = {}
        self._changed: dict[tuple[str, int], Bar] = {}

    def on_trades(self, events: Iterable[Event], quote_units_per_tick_lot: int) -> None:
        """Fold the trades among `events` (in time order) into the bars. Consecutive
        trades of one shortest bucket are summed first and folded into every interval
        once: a batch's trades cost one pass, not one pass per interval."""
        bucket = -1
        o = h = l = c = v = notional = n = 0  # noqa: E741
        for event in events:
            if type(event) is not Trade:
                continue
            ts, price, lots = event.ts, event.price, event.qty
            if ts - ts % _SHORTEST_MS != bucket:
                if n:
                    self._fold(bucket, o, h, l, c, v, notional * quote_units_per_tick_lot, n)
                bucket = ts - ts % _SHORTEST_MS
                o = h = l = price  # noqa: E741
                v = notional = n = 0
            if price > h:
                h = price
            elif price < l:
                l = price  # noqa: E741
            c = price
            v += lots
            notional += price * lots
            n += 1
        if n:
            self._fold(bucket, o, h, l, c, v, notional * quote_units_per_tick_lot, n)

    def _fold(self, ts: int, o: int, h: int, l: int, c: int, v: int, qv: int,  # noqa: E741
              n: int) -> None:
        for interval, length in INTERVALS_MS.items():
            start = ts - ts % length
            bar = self.current.get(interval)
            if bar is None or bar.t != start:
                # Trade times come from input entry ids, which only grow: a bar never
                # reopens once the next one started.
                bar = self.current[interval] = Bar(interval, start, o)
            if h > bar.h:
                bar.h = h
            if l < bar.l:
                bar.l = l
            bar.c = c
            bar.v += v
            bar.qv += qv
            bar.n += n
            self._changed[(interval, start)] = bar

    def take_changed(self) -> list[Bar]:
        changed = list(self._changed.values())
        self._changed.clear()
        return changed
