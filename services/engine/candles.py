"""OHLCV candles built from trades: pure, so replaying trades rebuilds them exactly."""

from __future__ import annotations

from services.common.intervals import INTERVALS_MS


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

    def on_trade(self, ts: int, price: int, lots: int, quote_units: int) -> None:
        for interval, length in INTERVALS_MS.items():
            start = ts - ts % length
            bar = self.current.get(interval)
            if bar is None or bar.t != start:
                # Trade times come from input entry ids, which only grow: a bar never
                # reopens once the next one started.
                bar = self.current[interval] = Bar(interval, start, price)
            if price > bar.h:
                bar.h = price
            elif price < bar.l:
                bar.l = price
            bar.c = price
            bar.v += lots
            bar.qv += quote_units
            bar.n += 1
            self._changed[(interval, start)] = bar

    def take_changed(self) -> list[Bar]:
        changed = list(self._changed.values())
        self._changed.clear()
        return changed
