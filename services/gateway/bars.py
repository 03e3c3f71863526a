"""Candle bars and the rolling 24-hour window of the ticker, as the gateway keeps them.

Pure: no I/O, no clock (times are passed in), no wire format. A bar is the engine's
`CandleTick` (prices in ticks, `v` in lots, `qv` in quote units). The states of one bar
are ordered by its trade count `n`, and bars by their start `t`, so a bar read from Redis
and one from the market-data stream merge by keeping the greater (t, n): no sync
protocol is needed, a stale read is simply ignored, and `t` never goes back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from decimal import Decimal

import msgspec

from services.common.intervals import INTERVALS_MS
from services.common.messages import CandleTick
from services.common.pairs import Pair

MINUTE_MS = INTERVALS_MS["1m"]
DAY_BARS = 1440  # 1-minute bars in the ticker's 24 hours

_decode = msgspec.json.decode


def parse_bar(pair: Pair, interval: str, member: bytes) -> CandleTick:
    """A stored bar (wire JSON `{t,o,h,l,c,v,qv,n}`, decimal strings) as integers."""
    doc = _decode(member)

    def scaled(field: str, unit: Decimal) -> int:
        return int(Decimal(doc[field]) / unit)

    tick = pair.tick_size
    return CandleTick(interval, int(doc["t"]), scaled("o", tick), scaled("h", tick),
                      scaled("l", tick), scaled("c", tick), scaled("v", pair.lot_size),
                      scaled("qv", pair.quote.unit), int(doc["n"]))


def window_start(now_ms: int) -> int:
    """The first bar start of the ticker's window: the current minute and the 1439 before
    it (the REST ticker's window, so both agree)."""
    return now_ms - now_ms % MINUTE_MS - (DAY_BARS - 1) * MINUTE_MS


class CandleStream:
    """One interval's current bar as last sent to its watchers, and whether it closed.

    A bar closes when a newer bar starts, or when `grace_ms` after its end time has
    passed (the grace lets a trade stamped just before the end, still in flight through
    the engine, count in its bar rather than arrive after the close).
    """

    __slots__ = ("bar", "closed", "grace_ms", "length")

    def __init__(self, interval: str, grace_ms: int = 0) -> None:
        self.length = INTERVALS_MS[interval]
        self.grace_ms = grace_ms
        self.bar: CandleTick | None = None
        self.closed = False

    @property
    def closes_at(self) -> int | None:
        """When the current bar closes by the clock (ms), unless a newer one starts."""
        return None if self.bar is None else self.bar.t + self.length + self.grace_ms

    def apply(self, tick: CandleTick, now_ms: int) -> list[tuple[CandleTick, bool]]:
        """Take a bar state; return what to send, in order: (bar, closed) pairs."""
        bar = self.bar
        if bar is None or tick.t > bar.t:
            sent = [] if bar is None or self.closed else [(bar, True)]
            self.bar = tick
            self.closed = now_ms >= tick.t + self.length + self.grace_ms  # an old bar
            return [*sent, (tick, self.closed)]
        if tick.t == bar.t and tick.n > bar.n:
            # Once closed, a late trade of the bar (rare: the engine lagged past the grace)
            # is sent as a correction of the closed bar, still closed.
            self.bar = tick
            return [(tick, self.closed)]
        return []  # an older state of what we have: a stale read or message

    def expire(self, now_ms: int) -> CandleTick | None:
        """The bar to send as closed if its time is up (None: nothing to do yet)."""
        closes_at = self.closes_at
        if self.closed or closes_at is None or now_ms < closes_at:
            return None
        self.closed = True
        return self.bar


class RollingDay:
    """The 1-minute bars of the last 24 hours with running totals.

    Appending or updating the newest bar is O(1): a bar's high only rises and its low
    only falls, so the window's extremes just follow. Only when a bar holding an extreme
    leaves the window is that extreme recomputed (O(1440), at most once a minute).
    """

    __slots__ = ("_high", "_low", "bars", "quote_vol", "vol")

    def __init__(self) -> None:
        self.bars: deque[CandleTick] = deque()  # oldest first, strictly increasing t
        self.vol = 0  # lots
        self.quote_vol = 0  # quote units
        self._high: int | None = None  # None: unknown, recompute
        self._low: int | None = None

    def merge(self, loaded: Iterable[CandleTick]) -> None:
        """Merge bars read from Redis with those already held (the newer state wins)."""
        by_start = {bar.t: bar for bar in self.bars}
        for bar in loaded:
            held = by_start.get(bar.t)
            if held is None or bar.n > held.n:
                by_start[bar.t] = bar
        self.bars = deque(sorted(by_start.values(), key=lambda bar: bar.t))
        self.vol = sum(bar.v for bar in self.bars)
        self.quote_vol = sum(bar.qv for bar in self.bars)
        self._high = self._low = None

    def apply(self, tick: CandleTick) -> bool:
        """Take a 1-minute bar state from the stream; False if it changes nothing."""
        bars = self.bars
        if bars and tick.t <= bars[-1].t:
            old = bars[-1]
            if tick.t < old.t or tick.n <= old.n:
                return False  # stale
            bars[-1] = tick
            self.vol += tick.v - old.v
            self.quote_vol += tick.qv - old.qv
        else:
            bars.append(tick)
            self.vol += tick.v
            self.quote_vol += tick.qv
        if self._high is not None and tick.h > self._high:
            self._high = tick.h
        if self._low is not None and tick.l < self._low:
            self._low = tick.l
        return True

    def figures(self, start: int) -> tuple[int, int, int, int, int] | None:
        """(open, high, low, volume, quote volume) of the bars from `start` on, or None
        if there is none. Bars before `start` are dropped for good."""
        bars = self.bars
        while bars and bars[0].t < start:
            old = bars.popleft()
            self.vol -= old.v
            self.quote_vol -= old.qv
            if old.h == self._high:
                self._high = None
            if old.l == self._low:
                self._low = None
        if not bars:
            self._high = self._low = None
            return None
        if self._high is None:
            self._high = max(bar.h for bar in bars)
        if self._low is None:
            self._low = min(bar.l for bar in bars)
        return bars[0].o, self._high, self._low, self.vol, self.quote_vol
